"""The MPI backend (``--backend mpi``): every mpi4py call of gmmkit lives here, behind the collectives
interface of :mod:`gmmkit.parallel.distributed`. It needs no Horovod: it runs on any TensorFlow that
mpi4py runs beside (the current lane: TensorFlow 2.21 and tf-keras).

The ranks are ``MPI.COMM_WORLD``'s (the context talks on a duplicate of it, so nothing else's messages mix
with its own); a rank's local rank and local size are those of the ranks sharing its host
(``COMM_TYPE_SHARED``), which place it on one GPU as Horovod's do.

Inside the compiled step
    Horovod's allreduce is a TensorFlow op; mpi4py's is a Python call. A grouped reduction
    (:meth:`MPIContext.allreduce_group`) concatenates its tensors into one flat buffer per dtype with
    TensorFlow ops, hands it to one ``tf.numpy_function`` that runs ``Allreduce`` on it, and splits the
    result back: one MPI call per step for the gradients, the loss and the stop vote together, the step
    still one ``tf.function``. ``tf.numpy_function`` is stateful, so TensorFlow runs a function's calls in
    program order and every rank makes the same calls in the same order. Integer reductions (exact mode's
    max and int64 sum) are exact in any order; a float32 sum of two ranks is the same bits either way.
"""

from __future__ import annotations

import functools
import socket
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from ..timing import mean_seconds


def version():
    """mpi4py's version and the MPI library under it (``"4.0.1 (Open MPI 4.1.2)"``), None without mpi4py."""
    try:
        import mpi4py
        from mpi4py import MPI
    except ImportError:
        return None
    name, numbers = MPI.get_vendor()
    return f"{mpi4py.__version__} ({name} {'.'.join(map(str, numbers))})"


def sleeping_barrier(comm=None) -> None:
    """Wait for every rank of ``comm`` (default ``COMM_WORLD``), sleeping: a rank that waits leaves its core
    to the ones still working (a plain MPI barrier spins)."""
    from mpi4py import MPI

    request = (comm or MPI.COMM_WORLD).Ibarrier()
    while not request.Test():
        time.sleep(0.002)


class MPIContext:
    """One rank of an MPI job, collectives through mpi4py."""

    threads = 1  # what configure_devices gave the rank; init sets it

    def __init__(self):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.is_chief = self.rank == 0
        self.backend = "mpi4py-" + MPI.get_vendor()[0].lower().replace(" ", "")  # mpi4py-openmpi, mpi4py-mpich
        self.layout = {
            "hosts": [socket.gethostname()] * self.size,
            "local_ranks": [self.local_rank] * self.size,
            "threads": [None] * self.size,
        }

    def gather_layout(self, threads: int) -> dict:
        """Every rank's host, local rank and thread count, in rank order (a collective: every rank calls it)."""
        hosts, local_ranks, counts = zip(*self.comm.allgather((socket.gethostname(), self.local_rank, threads)))
        self.layout = {"hosts": list(hosts), "local_ranks": list(local_ranks), "threads": list(counts)}
        return self.layout

    # --- collectives of tensors (eager, or inside a tf.function) -----------------------------
    def _reduce_array(self, array: np.ndarray, op) -> np.ndarray:
        out = np.empty_like(array)  # the input may share TensorFlow's memory: never written
        self.comm.Allreduce(np.ascontiguousarray(array), out, op=op)
        return out

    def allreduce_group(self, tensors: Sequence[tf.Tensor], op) -> list[tf.Tensor]:
        """``op`` (``MPI.SUM``, ``MPI.MAX``) of each tensor over the ranks, in one ``Allreduce`` per dtype."""
        tensors = [tf.convert_to_tensor(t) for t in tensors]
        by_dtype: dict = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        out: list = [None] * len(tensors)
        for dtype, members in by_dtype.items():
            flat = tf.concat([tf.reshape(tensors[i], [-1]) for i in members], 0)
            total = tf.numpy_function(functools.partial(self._reduce_array, op=op), [flat], dtype, stateful=True)
            total.set_shape(flat.shape)
            known = all(tensors[i].shape.is_fully_defined() for i in members)
            sizes = [tensors[i].shape.num_elements() if known else tf.size(tensors[i]) for i in members]
            parts = tf.split(total, sizes if known else tf.stack(sizes))
            for i, part in zip(members, parts):
                shape = tensors[i].shape
                out[i] = tf.reshape(part, shape if shape.is_fully_defined() else tf.shape(tensors[i]))
        return out

    def sum_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return self.allreduce_group(grads, self.MPI.SUM)

    def exact_reductions(self):
        """The max and sum of exact mode across ranks (:class:`gmmkit.training.exact.ExactStep`): integer
        ``Allreduce`` calls, exact in any order."""
        return (
            lambda tensors: self.allreduce_group(tensors, self.MPI.MAX),
            lambda tensors: self.allreduce_group(tensors, self.MPI.SUM),
        )

    # --- collectives of Python values -----------------------------------------------------------
    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._reduce_array(np.asarray(values, dtype=np.float64), self.MPI.SUM)

    def broadcast_variables(self, variables: Sequence[tf.Variable]) -> None:
        """Rank 0's values of ``variables`` on every rank."""
        for var in variables:
            value = np.array(var.numpy(), order="C")  # a copy of the var's shape (0-d for a scalar)
            self.comm.Bcast(value.reshape(-1), root=0)  # into value, through a flat view
            var.assign(value)

    def barrier(self) -> None:
        sleeping_barrier(self.comm)

    def time_gradient_allreduce(self, nbytes: int, repeats: int = 20) -> float:
        """Mean seconds of one sum-allreduce of ``nbytes`` of float32 as the training step runs it (one
        grouped reduction inside a ``tf.function``)."""
        buf = tf.ones((max(1, nbytes // 4),), tf.float32)
        reduce = tf.function(lambda x: self.sum_gradients([x])[0])
        return mean_seconds(lambda: reduce(buf).numpy(), repeats, warmup=3)


def time_plain_allreduce(nbytes: int, repeats: int) -> float:
    """Mean seconds of one ``COMM_WORLD.Allreduce`` of ``nbytes`` of float32 numpy buffers, after a barrier:
    MPI itself, without TensorFlow."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    send = np.ones(max(1, nbytes // 4), np.float32)
    recv = np.empty_like(send)
    comm.Barrier()
    return mean_seconds(lambda: comm.Allreduce(send, recv, op=MPI.SUM), repeats)


def world_size() -> int:
    """Ranks of ``COMM_WORLD`` (imports mpi4py, which initialises MPI: it then outlives Horovod's shutdowns)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()
