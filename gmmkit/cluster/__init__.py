"""The notebook's MPI cluster: ipyparallel engines that are the ranks of one MPI job (:class:`MPICluster`), how
they start (:mod:`.engines`), a training run on them (:class:`TrainingRun`), and an elastic one (:class:`ElasticRun`:
restarted on the hosts that answer when it loses an engine or a host). The only package that imports ipyparallel;
it sits above :mod:`gmmkit.training`, whose loop every engine runs."""

from .elastic import ElasticRun
from .identity import Rank
from .mpi_cluster import MPICluster
from .training_run import RunHandle, TrainingRun

__all__ = ["ElasticRun", "MPICluster", "Rank", "RunHandle", "TrainingRun"]
