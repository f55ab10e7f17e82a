"""Training: the loop, the run directory it writes, and stop requests.

The loop needs TensorFlow; the run directory and the stop flag do not, so ``from gmmkit.training import
RunDir`` (the launcher, ``gmmkit stop``) stays light and the loop is imported on first use.
"""

from ..signals import StopFlag, stop_on_signals
from .rundir import RunDir, RunDirError

__all__ = ["RunDir", "RunDirError", "StopFlag", "Trainer", "stop_on_signals", "train", "train_many"]
_LOOP = {"Trainer", "train", "train_many"}  # heavy: TensorFlow, loaded on first use


def __getattr__(name):
    if name in _LOOP:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
