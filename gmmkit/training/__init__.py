"""Training: the loop, and the run directory it writes."""
from .loop import StopFlag, Trainer, train, train_many
from .rundir import RunDir, RunDirError

__all__ = ["RunDir", "RunDirError", "StopFlag", "Trainer", "train", "train_many"]
