"""Input/output helpers: loading and validating model checkpoints."""

from wsl.io.checkpoint import CheckpointError, check_state_dict, load_checkpoint

__all__ = ["CheckpointError", "check_state_dict", "load_checkpoint"]
