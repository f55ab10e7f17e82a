"""Every Horovod touch-point of gmmkit lives here, and nowhere else.

The training loop talks to a small *context* with the same interface whether it runs alone or as one of
n Horovod ranks:

=====================  ==========================================================================
touch-point            where
=====================  ==========================================================================
``hvd.init()``         :func:`init`, when the process was started by mpirun, horovodrun or an
                       ipyparallel MPI engine set
GPU pinning            :func:`_configure_devices`: one visible GPU per local rank, memory growth
CPU threads            :func:`_configure_devices`: ``cores / local ranks`` intra-op threads
gradient averaging     :meth:`HorovodContext.sum_gradients`: ``hvd.grouped_allreduce(op=Sum)``
                       (NCCL on GPUs when Horovod was built with it, MPI or Gloo on CPUs)
metric reduction       :meth:`HorovodContext.sum`: sums of losses and sample counts over ranks
initial broadcast      :meth:`HorovodContext.broadcast_variables` from rank 0
rank-0-only writes     ``context.is_chief``, checked by :mod:`gmmkit.training.rundir`
=====================  ==========================================================================

Gradients are *summed*, not averaged: each rank contributes ``sum of its per-sample gradients / global
batch``, which makes the update equal to the sequential one even when ranks hold different numbers of
samples (strong scaling with n not dividing B).
"""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

_LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "HOROVOD_RANK", "MV2_COMM_WORLD_SIZE")


def launched_in_parallel() -> bool:
    """True when this process is one rank of a job started by mpirun, horovodrun or ipyparallel's MPI launcher."""
    return any(name in os.environ for name in _LAUNCHER_ENV)


def launcher_size() -> int:
    """The job's rank count as the launcher announced it (1 outside a parallel job)."""
    for name in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        if name in os.environ:
            return int(os.environ[name])
    return 1


def launcher_rank() -> int:
    """This process's rank as the launcher announced it (0 outside a parallel job)."""
    for name in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


class LocalContext:
    """One process, no Horovod: the reductions are identities."""

    backend = "local"
    rank, size, local_rank, local_size = 0, 1, 0, 1
    is_chief = True

    def sum_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return list(grads)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def broadcast_variables(self, variables: Sequence[tf.Variable]) -> None:
        pass


class HorovodContext:
    """One rank of a Horovod job."""

    def __init__(self):
        import horovod.tensorflow as hvd  # imported here only: single-process use needs no Horovod

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self.is_chief = self.rank == 0
        self.backend = "horovod-" + ("mpi" if hvd.mpi_enabled() else "gloo")
        if hvd.nccl_built():
            self.backend += "+nccl"

    def sum_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return self.hvd.grouped_allreduce(list(grads), op=self.hvd.Sum)

    def sum(self, values: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        tensor = tf.constant(np.asarray(values, dtype=np.float64))
        return self.hvd.allreduce(tensor, op=self.hvd.Sum).numpy()

    def broadcast_variables(self, variables: Sequence[tf.Variable]) -> None:
        self.hvd.broadcast_variables(list(variables), root_rank=0)


def init(threads: int | None = None, use_horovod: bool | None = None):
    """Join the Horovod job this process belongs to (or run alone) and configure devices.

    ``use_horovod=None`` decides from the environment (:func:`launched_in_parallel`).
    ``threads``: CPU threads per rank, default ``cores / local ranks``.
    """
    if use_horovod is None:
        use_horovod = launched_in_parallel()
    ctx = HorovodContext() if use_horovod else LocalContext()
    _configure_devices(ctx.local_rank, ctx.local_size, threads)
    return ctx


def _configure_devices(local_rank: int, local_size: int, threads: int | None) -> None:
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or max(1, cores // max(local_size, 1))
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            gpu = gpus[local_rank % len(gpus)]
            tf.config.set_visible_devices(gpu, "GPU")
            tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        # TensorFlow was initialised earlier in this process (a notebook kernel or a reused engine):
        # devices and threads can no longer change, which is fine if they were set the same way before.
        current = tf.config.threading.get_intra_op_parallelism_threads() or cores  # 0: TF's default, every core
        if current != threads:
            warnings.warn(f"TensorFlow already runs with {current} threads per rank; asked for {threads}",
                          RuntimeWarning, stacklevel=3)


def time_allreduce(nbytes: int, repeats: int = 20, warmup: int = 3) -> float:
    """Mean seconds of one Horovod sum-allreduce of ``nbytes`` of float32 in the current Horovod job, run as
    the training step runs it: inside a ``tf.function`` (eagerly each call costs about 2 ms more here)."""
    import time

    import tensorflow as tf

    ctx = HorovodContext()
    buf = tf.ones((max(1, nbytes // 4),), tf.float32)
    reduce = tf.function(lambda x: ctx.hvd.allreduce(x, op=ctx.hvd.Sum))
    for _ in range(max(1, warmup)):  # the first call traces
        reduce(buf).numpy()
    t0 = time.perf_counter()
    for _ in range(repeats):
        reduce(buf).numpy()
    return (time.perf_counter() - t0) / repeats


def shutdown() -> None:
    """Stop Horovod's background thread (``hvd.shutdown()``); :func:`init` may join again later. MPI stays
    up when something else initialised it first (import mpi4py before :func:`init` to keep using it)."""
    import horovod.tensorflow as hvd

    hvd.shutdown()


def _main(argv=None) -> int:
    """``mpirun -np N python -m gmmkit.distributed --allreduce-bytes B``: rank 0 prints the timing as JSON."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m gmmkit.distributed")
    p.add_argument("--allreduce-bytes", type=int, required=True)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    _configure_devices(0, launcher_size(), 1)
    seconds = time_allreduce(args.allreduce_bytes, args.repeats)
    if launcher_rank() == 0:
        print(json.dumps({"allreduce_s": seconds, "bytes": args.allreduce_bytes, "ranks": launcher_size()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
