"""The notebook's MPI cluster: ipyparallel engines that are the ranks of one MPI job (:class:`MPICluster`), how
they start (:mod:`.engines`), and a training run on them (:class:`TrainingRun`). The only package that imports
ipyparallel; it sits above :mod:`gmmkit.training`, whose loop every engine runs."""

from .identity import Rank
from .mpi_cluster import MPICluster
from .training_run import RunHandle, TrainingRun

__all__ = ["MPICluster", "Rank", "RunHandle", "TrainingRun"]
