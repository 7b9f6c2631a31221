"""Input/output helpers: loading and validating model checkpoints."""

from wsl.io.checkpoint import load_checkpoint
from wsl.io.validate import CheckpointError, check_state_dict

__all__ = ["CheckpointError", "check_state_dict", "load_checkpoint"]
