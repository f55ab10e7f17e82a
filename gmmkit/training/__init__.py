"""Training: the loop, and the run directory it writes.

The loop needs TensorFlow; the run directory does not, so ``from gmmkit.training import RunDir`` (the
launcher, ``gmmkit stop``) stays light and the loop is imported on first use.
"""
from .rundir import RunDir, RunDirError

__all__ = ["RunDir", "RunDirError", "StopFlag", "Trainer", "train", "train_many"]
_LOOP = {"StopFlag", "Trainer", "train", "train_many"}


def __getattr__(name):
    if name in _LOOP:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
