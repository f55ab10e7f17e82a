"""The collectives the training loop uses, and the choice of the library that provides them.

The training loop, exact mode, the stop vote and the probes talk to a small *context* with one interface
whether they run alone (:class:`LocalContext`) or as one of n ranks, on either backend (``train.backend``,
``--backend``): Horovod (:mod:`.backend_horovod`, the default where Horovod is installed) or MPI through
mpi4py (:mod:`.backend_mpi`, which needs no Horovod). Each backend module owns its library.

=====================  ==========================================================================
the interface          what it does
=====================  ==========================================================================
``rank``, ``size``     this rank and the ranks of the job; ``local_rank``, ``local_size``: the same
                       among the ranks sharing this rank's host; ``is_chief``: rank 0, which alone
                       writes the run directory (:mod:`gmmkit.training.rundir`)
``backend``            what summary.json records: ``horovod-mpi+nccl``, ``mpi4py-openmpi``, ``local``
``layout``             every rank's host, local rank and threads, gathered once at :func:`init`
``sum_gradients``      a sum over ranks of a list of float32 tensors in one grouped call, inside
                       the compiled step (the gradients, the loss and the stop vote together)
``sum``                sums of a small float64 array (losses and sample counts)
``exact_reductions``   exact mode's grouped int32 max and int64 sum (exact in any order)
``broadcast_variables``  rank 0's weights and optimiser state on every rank
``barrier``            waits for every rank, sleeping instead of spinning
=====================  ==========================================================================

:func:`init` joins the job (when the process was started by mpirun, horovodrun or an ipyparallel MPI engine
set: :func:`gmmkit.parallel.launch.launched_in_parallel`) and places the rank on its devices
(:func:`configure_devices`: one GPU per local rank, ``cores / local ranks`` CPU threads).
:func:`allreduce_probe` times the gradients' allreduce of each backend, in turns, for the wall-time model
and ``gmmkit bench``.

Gradients are *summed*, not averaged: each rank contributes ``sum of its per-sample gradients / global
batch``, which makes the update equal to the sequential one even when ranks hold different numbers of
samples (strong scaling with n not dividing B).
"""

from __future__ import annotations

import socket
import warnings
from typing import Sequence

import numpy as np
import tensorflow as tf

from ..machine import available_cores
from . import backend_horovod, backend_mpi
from .backends import horovod_installed, resolve_backend
from .launch import launched_in_parallel


class LocalContext:
    """One process: the reductions are identities."""

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


def init(threads: int | None = None, parallel: bool | None = None, exact: bool = False, backend: str | None = None):
    """Join the job this process belongs to (or run alone) and configure devices.

    ``parallel=None`` decides from the environment (:func:`launched_in_parallel`); ``backend``: ``horovod``,
    ``mpi`` or None (:func:`resolve_backend`). ``threads``: CPU threads per rank, default ``cores / local
    ranks``; ``exact``: see :func:`configure_devices`. The context's ``threads`` says what the rank got.
    """
    if parallel is None:
        parallel = launched_in_parallel()
    if not parallel:
        ctx = LocalContext()
    elif resolve_backend(backend) == "horovod":
        ctx = backend_horovod.HorovodContext()
    else:
        ctx = backend_mpi.MPIContext()
    ctx.threads = configure_devices(ctx.local_rank, ctx.local_size, threads, exact)
    if parallel:
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


def allreduce_probe(nbytes: int, repeats: int = 20, rounds: int = 8) -> dict:
    """In an MPI job: seconds per sum-allreduce of ``nbytes`` of float32 through each backend as the training
    step runs it (inside a ``tf.function``: ``horovod_s`` where Horovod is installed, ``mpi4py_s``) and through
    plain MPI on numpy buffers (``mpi_s``), taking turns in ``rounds`` blocks of ``repeats / rounds`` (medians
    of the blocks' means).

    mpi4py runs with Horovod shut down: Horovod's background thread keeps negotiating over MPI and slows an
    mpi4py ``Allreduce`` in the same process. That slowed figure is reported too, as
    ``mpi_beside_horovod_s``. Also returns ``bytes`` and ``ranks``.
    """
    ranks = backend_mpi.world_size()  # first: MPI then outlives each Horovod shutdown
    configure_devices(0, ranks, 1)
    block = max(1, repeats // rounds)
    mpi = backend_mpi.MPIContext()
    timers = {
        "mpi_s": lambda: backend_mpi.time_plain_allreduce(nbytes, block),
        "mpi4py_s": lambda: _after_barrier(mpi, lambda: mpi.time_gradient_allreduce(nbytes, block)),
    }
    if horovod_installed():

        def horovod() -> float:  # joins Horovod, times it and mpi4py beside it, and leaves
            mpi.barrier()
            seconds = backend_horovod.time_allreduce(nbytes, block)
            times["mpi_beside_horovod_s"].append(backend_mpi.time_plain_allreduce(nbytes, block))
            backend_horovod.shutdown()
            return seconds

        timers["horovod_s"] = horovod
    times: dict = {key: [] for key in (*timers, "mpi_beside_horovod_s")}
    timers["mpi_s"]()  # warm-up
    for _ in range(rounds):
        for key, timer in timers.items():
            times[key].append(timer())
    return {**{key: float(np.median(t)) for key, t in times.items() if t}, "bytes": nbytes, "ranks": ranks}


def _after_barrier(ctx, timer) -> float:
    ctx.barrier()
    return timer()


def versions() -> dict:
    """The versions of the libraries a figure depends on: TensorFlow, Horovod and mpi4py (None when not
    installed), and the GPUs TensorFlow sees."""
    return {
        "tensorflow": tf.__version__,
        "horovod": backend_horovod.version(),
        "mpi4py": backend_mpi.version(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }
