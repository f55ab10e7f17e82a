"""Every Horovod and mpi4py touch-point of gmmkit lives here, and nowhere else.

The training loop talks to a small *context* with the same interface whether it runs alone or as one of
n Horovod ranks:

=====================  ==========================================================================
touch-point            where
=====================  ==========================================================================
``hvd.init()``         :func:`init`, when the process was started by mpirun, horovodrun or an
                       ipyparallel MPI engine set (:func:`gmmkit.parallel.launch.launched_in_parallel`)
GPU pinning            :func:`configure_devices`: one visible GPU per local rank, memory growth
CPU threads            :func:`configure_devices`: ``cores / local ranks`` intra-op threads, both counted
                       on the rank's own host (Horovod's local size is the ranks sharing its host)
where ranks run        ``context.layout``: every rank's host, local rank and threads, gathered once at
                       :func:`init` (``hvd.allgather_object``), recorded in ``summary.json``
gradient averaging     :meth:`HorovodContext.sum_gradients`: ``hvd.grouped_allreduce(op=Sum)``
                       (NCCL on GPUs when Horovod was built with it, MPI or Gloo on CPUs)
metric reduction       :meth:`HorovodContext.sum`: sums of losses and sample counts over ranks
initial broadcast      :meth:`HorovodContext.broadcast_variables` from rank 0
idle wait              :meth:`HorovodContext.barrier`: a barrier that sleeps instead of spinning
exact sums             :meth:`HorovodContext.exact_reductions`: an int32 max and an int64 sum,
                       grouped, for exact mode's fixed-point gradients
rank-0-only writes     ``context.is_chief``, checked by :mod:`gmmkit.training.rundir`
allreduce timing       :func:`allreduce_probe`: Horovod against plain MPI, for the wall-time model
=====================  ==========================================================================

Gradients are *summed*, not averaged: each rank contributes ``sum of its per-sample gradients / global
batch``, which makes the update equal to the sequential one even when ranks hold different numbers of
samples (strong scaling with n not dividing B).
"""

from __future__ import annotations

import socket
import time
import warnings
from typing import Sequence

import numpy as np
import tensorflow as tf

from ..machine import available_cores
from ..timing import mean_seconds
from .launch import launched_in_parallel


class LocalContext:
    """One process, no Horovod: the reductions are identities."""

    backend = "local"
    rank, size, local_rank, local_size = 0, 1, 0, 1
    is_chief = True
    threads = 1

    @property
    def layout(self) -> dict:
        """Where the ranks run: ``hosts``, ``local_ranks`` and ``threads``, one entry per rank."""
        threads = tf.config.threading.get_intra_op_parallelism_threads() or available_cores()
        return {"hosts": [socket.gethostname()], "local_ranks": [0], "threads": [threads]}

    def sum_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return list(grads)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def broadcast_variables(self, variables: Sequence[tf.Variable]) -> None:
        pass

    def barrier(self) -> None:
        pass

    def exact_reductions(self) -> tuple[None, None]:
        """The max and sum of exact mode across ranks: none in one process."""
        return None, None


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
        """Wait for every rank, sleeping: a rank that waits leaves its core to the ones still working (a
        plain MPI barrier spins)."""
        from mpi4py import MPI

        request = MPI.COMM_WORLD.Ibarrier()
        while not request.Test():
            time.sleep(0.002)


def init(threads: int | None = None, use_horovod: bool | None = None, exact: bool = False):
    """Join the Horovod job this process belongs to (or run alone) and configure devices.

    ``use_horovod=None`` decides from the environment (:func:`launched_in_parallel`).
    ``threads``: CPU threads per rank, default ``cores / local ranks``; ``exact``: see
    :func:`configure_devices`. The context's ``threads`` says what the rank got.
    """
    if use_horovod is None:
        use_horovod = launched_in_parallel()
    ctx = HorovodContext() if use_horovod else LocalContext()
    ctx.threads = configure_devices(ctx.local_rank, ctx.local_size, threads, exact)
    if use_horovod:
        ctx.gather_layout(ctx.threads)  # after configure_devices: it runs TensorFlow ops, which fix the threads
    return ctx


def configure_devices(local_rank: int, local_size: int, threads: int | None, exact: bool = False) -> int:
    """One GPU per local rank (memory growth on), and ``threads`` CPU threads (default ``cores / local_size``);
    returns the thread count TensorFlow runs with. ``exact``: one intra-op thread (oneDNN's results change
    with it) and the threads as inter-op threads, on which exact mode computes micro-shards side by side; on
    GPUs, TensorFlow's deterministic ops.

    ``local_rank`` and ``local_size`` are Horovod's, which count the ranks on this rank's host, and the
    cores are this host's (those this process may use): on every host, its cores are shared by its own
    ranks, and its GPUs handed out one per local rank.

    TensorFlow fixes both when it first runs an op: in a process where it already ran (a notebook kernel,
    a reused engine) they can no longer change, which is fine if they were set the same way before; a
    different thread count is warned about (exact mode itself refuses more than one intra-op thread)."""
    cores = available_cores()
    threads = threads or max(1, cores // max(local_size, 1))
    intra, inter = (1, threads) if exact else (threads, min(2, threads))
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            gpu = gpus[local_rank % len(gpus)]
            tf.config.set_visible_devices(gpu, "GPU")
            tf.config.experimental.set_memory_growth(gpu, True)
            if exact:
                tf.config.experimental.enable_op_determinism()
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads() or cores  # 0: TF's default, every core
        if current != intra:
            warnings.warn(
                f"TensorFlow already runs with {current} threads per rank; asked for {intra}",
                RuntimeWarning,
                stacklevel=3,
            )
        return threads if exact else current
    return threads


def shutdown() -> None:
    """Stop Horovod's background thread (``hvd.shutdown()``); :func:`init` may join again later. MPI stays
    up when something else initialised it first (import mpi4py before :func:`init` to keep using it)."""
    import horovod.tensorflow as hvd

    hvd.shutdown()


def time_horovod_allreduce(nbytes: int, repeats: int = 20) -> float:
    """Mean seconds of one Horovod sum-allreduce of ``nbytes`` of float32 in the current Horovod job, run as
    the training step runs it: inside a ``tf.function`` (eagerly each call costs more)."""
    ctx = HorovodContext()
    buf = tf.ones((max(1, nbytes // 4),), tf.float32)
    reduce = tf.function(lambda x: ctx.hvd.allreduce(x, op=ctx.hvd.Sum))
    return mean_seconds(lambda: reduce(buf).numpy(), repeats, warmup=3)  # the first call traces


def allreduce_probe(nbytes: int, repeats: int = 20, rounds: int = 8) -> dict:
    """In an MPI job: seconds per sum-allreduce of ``nbytes`` through Horovod and through mpi4py, the two
    taking turns in ``rounds`` blocks of ``repeats / rounds`` (medians of the blocks' means).

    Plain MPI runs with Horovod shut down: Horovod's background thread keeps negotiating over MPI and slows
    an mpi4py ``Allreduce`` in the same process. That slowed figure is reported too, as
    ``mpi_beside_horovod_s``. Returns ``horovod_s``, ``mpi_s``, ``mpi_beside_horovod_s``, ``bytes``, ``ranks``.
    """
    from mpi4py import MPI  # first: MPI then outlives each hvd.shutdown()

    comm = MPI.COMM_WORLD
    configure_devices(0, comm.Get_size(), 1)
    send = np.ones(max(1, nbytes // 4), np.float32)
    recv = np.empty_like(send)
    block = max(1, repeats // rounds)

    def plain_mpi() -> float:
        comm.Barrier()
        return mean_seconds(lambda: comm.Allreduce(send, recv, op=MPI.SUM), block)

    plain_mpi()  # warm-up
    times: dict = {"horovod_s": [], "mpi_s": [], "mpi_beside_horovod_s": []}
    for _ in range(rounds):
        times["mpi_s"].append(plain_mpi())
        comm.Barrier()
        times["horovod_s"].append(time_horovod_allreduce(nbytes, block))  # joins Horovod: hvd.init()
        times["mpi_beside_horovod_s"].append(plain_mpi())
        shutdown()
    return {**{key: float(np.median(t)) for key, t in times.items()}, "bytes": nbytes, "ranks": comm.Get_size()}


def versions() -> dict:
    """The versions of the libraries a figure depends on: TensorFlow, Horovod (None when not installed), and the
    GPUs TensorFlow sees."""
    try:
        import horovod  # heavy: only its version

        hvd_version = horovod.__version__
    except ImportError:
        hvd_version = None
    return {"tensorflow": tf.__version__, "horovod": hvd_version, "gpus": len(tf.config.list_physical_devices("GPU"))}
