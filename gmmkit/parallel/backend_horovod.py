"""The Horovod backend (``--backend horovod``, the default where Horovod is installed): every Horovod call of
gmmkit lives here, behind the collectives interface of :mod:`gmmkit.parallel.distributed`.

Gradients are summed by ``hvd.grouped_allreduce(op=Sum)``, a TensorFlow op inside the compiled step (NCCL on
GPUs when Horovod was built with it, MPI or Gloo on CPUs); exact mode's integer max and int64 sum are grouped
allreduces too; the barrier sleeps through :func:`gmmkit.parallel.backend_mpi.sleeping_barrier` (a plain MPI
barrier spins).
"""

from __future__ import annotations

import socket
from typing import Sequence

import numpy as np
import tensorflow as tf

from ..timing import mean_seconds
from .backend_mpi import sleeping_barrier
from .backends import horovod_installed


def version():
    """Horovod's version, None when it is not installed."""
    if not horovod_installed():
        return None
    import horovod  # heavy: only its version

    return horovod.__version__


class HorovodContext:
    """One rank of a Horovod job."""

    threads = 1  # what configure_devices gave the rank; init sets it

    def __init__(self):
        import horovod.tensorflow as hvd  # heavy, and single-process use needs no Horovod

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self.is_chief = self.rank == 0
        self.backend = "horovod-" + ("mpi" if hvd.mpi_enabled() else "gloo")
        if hvd.nccl_built():
            self.backend += "+nccl"
        self.layout = {
            "hosts": [socket.gethostname()] * self.size,
            "local_ranks": [self.local_rank] * self.size,
            "threads": [None] * self.size,
        }  # until gather_layout: what this rank alone knows

    def gather_layout(self, threads: int) -> dict:
        """Every rank's host, local rank and thread count, in rank order (a collective: every rank calls it)."""
        mine = (socket.gethostname(), self.local_rank, threads)
        hosts, local_ranks, counts = zip(*self.hvd.allgather_object(mine))
        self.layout = {"hosts": list(hosts), "local_ranks": list(local_ranks), "threads": list(counts)}
        return self.layout

    def sum_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return self.hvd.grouped_allreduce(list(grads), op=self.hvd.Sum)

    def sum(self, values: np.ndarray) -> np.ndarray:
        tensor = tf.constant(np.asarray(values, dtype=np.float64))
        return self.hvd.allreduce(tensor, op=self.hvd.Sum).numpy()

    def broadcast_variables(self, variables: Sequence[tf.Variable]) -> None:
        self.hvd.broadcast_variables(list(variables), root_rank=0)

    def exact_reductions(self):
        """The max and sum of exact mode across ranks (:class:`gmmkit.training.exact.ExactStep`): grouped
        integer allreduces, exact whatever algorithm Horovod uses."""
        hvd = self.hvd
        return (
            lambda tensors: hvd.grouped_allreduce(list(tensors), op=hvd.Max),
            lambda tensors: hvd.grouped_allreduce(list(tensors), op=hvd.Sum),
        )

    def barrier(self) -> None:
        """Wait for every rank, sleeping: a rank that waits leaves its core to the ones still working."""
        sleeping_barrier()

    def time_gradient_allreduce(self, nbytes: int, repeats: int = 20) -> float:
        """Mean seconds of one sum-allreduce of ``nbytes`` of float32 as the training step runs it."""
        return time_allreduce(nbytes, repeats)


def time_allreduce(nbytes: int, repeats: int = 20) -> float:
    """Mean seconds of one Horovod sum-allreduce of ``nbytes`` of float32 in the current Horovod job, run as
    the training step runs it: inside a ``tf.function`` (eagerly each call costs more)."""
    ctx = HorovodContext()
    buf = tf.ones((max(1, nbytes // 4),), tf.float32)
    reduce = tf.function(lambda x: ctx.hvd.allreduce(x, op=ctx.hvd.Sum))
    return mean_seconds(lambda: reduce(buf).numpy(), repeats, warmup=3)  # the first call traces


def shutdown() -> None:
    """Stop Horovod's background thread (``hvd.shutdown()``); a later context joins again. MPI stays up when
    something else initialised it first (mpi4py imported before the first context keeps it)."""
    import horovod.tensorflow as hvd

    hvd.shutdown()
