"""The notebook's user interface: the training :class:`Dashboard`, the :class:`SliceViewer`, and the
:class:`Inspector` that looks inside a checkpoint for both. ipywidgets is imported here and nowhere else."""

from .dashboard import Dashboard
from .inspector import Inspector, Sample
from .runs import DashboardRun
from .viewer import SliceViewer

__all__ = ["Dashboard", "DashboardRun", "Inspector", "Sample", "SliceViewer"]
