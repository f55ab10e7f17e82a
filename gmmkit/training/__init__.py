"""Training: the loop, and the run directory it writes."""
from .loop import StopFlag, Trainer, train
from .rundir import RunDir, RunDirError

__all__ = ["RunDir", "RunDirError", "StopFlag", "Trainer", "train"]
