"""Training metanetworks: tasks, loggers and a resumable loop (Hydra lives only in :mod:`.entry`)."""

from .loggers import CSVLogger, NullLogger, WandbLogger
from .loop import evaluate, fit
from .tasks import Classification, INREditing, Pruning, Regression, kendall_tau

__all__ = ["CSVLogger", "Classification", "INREditing", "NullLogger", "Pruning", "Regression", "WandbLogger", "evaluate",
           "fit", "kendall_tau"]
