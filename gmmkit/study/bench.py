"""How fast gmmkit is on this machine: every figure measured in one run, with its reference measured
beside it (``gmmkit bench``).

==========================  ===========================================================================
key                         what it is
==========================  ===========================================================================
``render_overhead``         training step time with K = 50 over the same step with K = 1
``mfu``                     training FLOP/s (counted analytically, :func:`train_flops`) over the FLOP/s
                            of a dense float32 matmul, same process, same thread count
``allreduce_vs_mpi``        Horovod allreduce throughput over a plain mpi4py ``Allreduce`` of the same
                            buffer (the model's gradient bytes), 2 ranks, the two taking turns, mpi4py
                            with Horovod shut down (:func:`gmmkit.parallel.distributed.allreduce_probe`,
                            the same probe that gives the wall-time model its c)
``strong_efficiency_n2``    one epoch, 1 worker over 2 Horovod workers (1 thread each): T1 / (2 T2),
                            each T the median of three epochs, the two taking turns in one 2-rank job
``strong_efficiency_        the same efficiency as a product of four factors measured step by step in
factors``                   that job: batch split, shared host, Horovod, rest (:func:`efficiency_factors`)
``exact_overhead``          a whole exact training step (``train.exact``, M micro-shards of the batch of 32)
                            over a default one, at M = 2, 8 and 32, the three and the default taking turns
``growth``                  step time against K and cube size, epoch time against the data set size,
                            and the fitted T(n) = Ts + Tp/n + c log2(n) predicted out to 32 workers
``notebook_latency_s``      from Start on the dashboard to the first streamed epoch, 2 MPI engines
                            started beforehand (``notebook_latency``: also later Starts, warm)
``cross_host``              with ``--hostfile``/``--hosts`` of two hosts or more: the allreduce and the
                            2-worker efficiency (with its factors) again, one rank on each of two hosts
                            (:func:`cross_host`); the model's c then comes from there
==========================  ===========================================================================

The steps for every K and the matmul are timed in turns (:func:`gmmkit.timing.take_turns`): on a shared
host the speed drifts by tens of percent within minutes, and taking turns keeps that out of both ratios.
Multi-rank figures run as ``mpirun -np N python -m gmmkit.parallel.ranks allreduce|scaling`` jobs that print
one JSON line on rank 0. No figure here is asserted by a test: they are measurements, not pass/fail checks.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from typing import Optional

import numpy as np

from .. import TENSORFLOW_IMPORTED_FIRST, strategies
from ..config import RunConfig
from ..model.config import KERNELS
from ..parallel import distributed, launch
from ..parallel.placement import LOCAL, Placement
from ..timing import mean_seconds, take_turns
from .perfmodel import from_measurements, measure_allreduce, measure_compute, time_steps

MATMUL_N = 1024  # the dense-matmul reference: (1024 x 1024) @ (1024 x 1024), float32
TARGETS = {"render_overhead": ("<=", 1.2), "mfu": (">=", 0.7), "allreduce_vs_mpi": (">=", 0.9),
           "strong_efficiency_n2": (">=", 0.95), "exact_overhead_m2": ("<=", 1.10), "exact_overhead_m8": ("<=", 1.5)}
EXACT_SHARDS = (2, 8, 32)


def bench_config(components: int = 50, cube: int = 16, train_size: int = 256) -> RunConfig:
    """The paper's model (32 filters, latent 256) on a small synthetic set, one thread, batch 32."""
    return RunConfig().replace(data={"dataset": "phantoms", "size": train_size + 64, "train_size": train_size,
                                     "val_size": 64, "cube": cube},
                               model={"components": components},
                               train={"threads": 1, "target_loss": None, "epochs": 1})


# --- analytic FLOPs ------------------------------------------------------------------------

def _conv_flops(cfg: RunConfig) -> list:
    """Forward FLOPs of each Conv3D of the encoder, for one sample."""
    size, channels, flops = cfg.data.cube, 1, []
    for k in KERNELS:
        size -= k - 1
        flops.append(2.0 * size ** 3 * k ** 3 * channels * cfg.model.filters)
        channels = cfg.model.filters
    return flops


def forward_flops(cfg: RunConfig) -> float:
    """Floating-point operations of one sample's forward pass (a multiply-add counts 2)."""
    s, f, k_mix, latent = cfg.data.cube, cfg.model.filters, cfg.model.components, cfg.model.latent
    size = s - sum(k - 1 for k in KERNELS)
    flops = sum(_conv_flops(cfg))
    flops += 2.0 * size ** 3 * f * latent  # dense latent
    flops += 2.0 * latent * 10 * k_mix  # heads: alpha K, mu 3K, sigma 3K, correlations 3K
    flops += 2.0 * k_mix * 10 * s ** 3 + 2.0 * k_mix * s ** 3  # renderer: quadratic features, exp and sum
    return flops


def train_flops(cfg: RunConfig) -> float:
    """One sample's training step: forward plus backward (gradients of weights and of inputs), 3 x forward,
    less the first convolution's input gradient, which nothing needs (its input is the data)."""
    return 3.0 * forward_flops(cfg) - _conv_flops(cfg)[0]


# --- single-process measurements ----------------------------------------------------------

def _trainer(cfg: RunConfig):
    from ..training import Trainer  # heavy: TensorFlow

    return Trainer(cfg.replace(train={"workers": 1, "strategy": "strong"}), simulate=True)


def step_timer(trainer, batch: int = 32):
    """A :func:`take_turns` timer: seconds of one training step of ``batch`` samples of ``trainer``."""
    return lambda: time_steps(trainer, batch, 1, warm=False)[0]


def matmul_timer(n: int = 1024):
    """A :func:`take_turns` timer: seconds of one dense float32 (n x n) @ (n x n) product on this process's
    TensorFlow threads (``2 n^3`` FLOPs)."""
    import tensorflow as tf  # heavy

    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))

    def timer():
        t0 = time.perf_counter()
        mm(a, b).numpy()
        return time.perf_counter() - t0

    return timer


def exact_overhead(cfg: RunConfig, default, repeats: int, shards=EXACT_SHARDS) -> dict:
    """An exact training step of ``cfg``'s batch in M micro-shards over ``default``'s step (a default-mode
    trainer of ``cfg``), for each M of ``shards``, all taking turns."""
    exact = {m: _trainer(cfg.replace(train={"exact": True, "micro_shards": m})) for m in shards}
    batch = cfg.train.batch_size
    times = take_turns({"default": step_timer(default, batch), **{m: step_timer(t, batch) for m, t in exact.items()}},
                       repeats)
    return {str(m): times[m] / times["default"] for m in shards}


def epoch_times(cfg: RunConfig, out: str, trainer=None, epochs: int = 1) -> list[float]:
    """Seconds of each of ``epochs`` training epochs with a traced model (in a Horovod job: on rank 0)."""
    from ..training import train  # heavy: TensorFlow

    records = []
    train(cfg.replace(train={"epochs": epochs}, out=out), callbacks=[records.append],
          trainer=trainer or _trainer(cfg))
    return [float(r["epoch_time_s"]) for r in records]


# --- multi-rank probes ----------------------------------------------------------------------

def run_probe(ranks: int, *args: str, timeout: float = 600, placement: Placement = LOCAL) -> dict:
    """``mpirun -np ranks python -m gmmkit.parallel.ranks ...`` placed by ``placement``; the JSON line rank 0
    prints."""
    return launch.run_json(ranks, launch.ranks_argv(*args), timeout=timeout, placement=placement)


def scaling_probe(cfg_json: str, rounds: int = 3) -> dict:
    """In a Horovod job of n ranks: one-worker epochs (rank 0 alone while the others sleep) and n-worker
    strong-scaling epochs, taking turns ``rounds`` times, each epoch from the config's initial weights on
    traced models. Measured in turns for the reason :func:`gmmkit.timing.take_turns` gives: a shared
    host's speed drifts by more than the efficiency's distance from 1.

    Then single steps, also in turns, that split the efficiency into factors (``steps_s``):
    ``alone_batch`` and ``alone_share``, rank 0 stepping the global batch and one rank's share with the
    other ranks asleep; ``side_by_side_share``, every rank stepping its share at once without Horovod;
    ``horovod_share``, the real n-worker step."""
    from ..training import Trainer  # heavy: TensorFlow

    ctx = distributed.init(1)
    cfg = RunConfig.from_json(cfg_json).replace(train={"strategy": "strong"})
    alone = cfg.replace(train={"workers": 1})
    together = cfg.replace(train={"workers": ctx.size})
    solo = Trainer(alone, ctx=distributed.LocalContext())
    team = Trainer(together, ctx=ctx)
    times: dict = {"1": [], str(ctx.size): []}
    with tempfile.TemporaryDirectory(prefix="gmmkit-scaling-") as tmp:
        for i in range(rounds):
            if ctx.is_chief:
                times["1"] += epoch_times(alone, os.path.join(tmp, f"one-{i}"), solo)
            ctx.barrier()
            times[str(ctx.size)] += epoch_times(together, os.path.join(tmp, f"all-{i}"), team)

    batch = cfg.train.batch_size
    plan = strategies.plan("strong", ctx.size, batch, cfg.train.lr)
    start = plan.offset(ctx.rank)
    x_batch, x_share = solo.data.train[:batch], solo.data.train[start:start + plan.shares[ctx.rank]]
    steps = {"alone_batch": (True, lambda: solo.step(x_batch, batch)),
             "alone_share": (True, lambda: solo.step(x_share, batch)),
             "side_by_side_share": (False, lambda: solo.step(x_share, batch)),
             "horovod_share": (False, lambda: team.step(x_share, batch))}
    step_times: dict = {key: [] for key in steps}
    for i in range(1 + 2 * rounds):  # the first round is untimed: oneDNN sets up its kernels per shape
        for key, (chief_only, step) in steps.items():
            ctx.barrier()
            if ctx.is_chief or not chief_only:
                seconds = mean_seconds(step, 4)
                if i:
                    step_times[key].append(seconds)
    return {"epochs_s": times, "ranks": ctx.size,
            "steps_s": {key: float(np.median(t)) for key, t in step_times.items()} if ctx.is_chief else {}}


def efficiency_factors(steps_s: dict, efficiency: float, n: int) -> dict:
    """Split a strong-scaling efficiency into four factors whose product it is, from the single-step times
    of :func:`scaling_probe` (``steps_s``):

    ``batch_split``  ``alone_batch / (n alone_share)``: what cutting the batch into n shares costs the
                     kernels of one rank, nothing else running (the most the efficiency can reach here)
    ``shared_host``  ``alone_share / side_by_side_share``: the ranks' steps slowing each other down on one
                     host (caches, memory bandwidth), still without Horovod
    ``horovod``      ``side_by_side_share / horovod_share``: the allreduce and the ranks waiting for each other
    ``rest``         ``efficiency`` over the product of the three: what an epoch adds around its steps
                     (validation, the loop, the data), and the noise between the two measurements
    """
    factors = {"batch_split": steps_s["alone_batch"] / (n * steps_s["alone_share"]),
               "shared_host": steps_s["alone_share"] / steps_s["side_by_side_share"],
               "horovod": steps_s["side_by_side_share"] / steps_s["horovod_share"]}
    factors["rest"] = efficiency / float(np.prod(list(factors.values())))
    return factors


# --- the notebook path ---------------------------------------------------------------------

def notebook_latency(cfg: RunConfig, workers: int = 2, starts: int = 2, timeout: float = 300) -> dict:
    """Seconds from Start on a :class:`~gmmkit.ui.dashboard.Dashboard` to its first streamed epoch, on an
    :class:`~gmmkit.parallel.cluster.MPICluster` of ``workers`` engines started beforehand (as a notebook's earlier
    cell does). The first Start pays the engines' imports and tracing; later ones find them warm. Each run
    is stopped after its first epoch. ``epoch_time_s``: that epoch's own training time, for comparison."""
    from ..parallel.cluster import MPICluster  # heavy: ipyparallel
    from ..ui.dashboard import Dashboard  # heavy: ipywidgets

    latencies, epochs, statuses = [], [], []
    with MPICluster(n=workers) as cluster, tempfile.TemporaryDirectory(prefix="gmmkit-latency-") as tmp:
        dash = Dashboard(cluster, base=cfg.replace(train={"workers": workers, "target_loss": None}), out=tmp,
                         viewer=False, poll_interval=0.02)
        for _ in range(starts):
            run = dash.start()
            deadline = time.monotonic() + timeout
            while run.first_epoch_s is None and not run.finished.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            if run.first_epoch_s is None:
                dash.stop()
                raise RuntimeError(f"notebook latency: no epoch streamed within {timeout} s "
                                   f"({run.error or 'still running'})")
            latencies.append(run.first_epoch_s)
            epochs.append(run.records[0]["epoch_time_s"])
            dash.stop()
            dash.wait(timeout=timeout)
            statuses.append(run.status)
    return {"first_start_s": latencies[0], "later_starts_s": latencies[1:], "epoch_time_s": epochs,
            "status": statuses, "workers": workers}


# --- the whole benchmark --------------------------------------------------------------------

def two_workers(gradient_bytes: int, cfg: RunConfig, repeats: int, quick: bool,
                placement: Placement = LOCAL) -> dict:
    """The 2-rank figures, ranks placed by ``placement``: Horovod's allreduce of the gradients against
    mpi4py's, and one epoch on 1 and on 2 workers in turns, the efficiency and its factors."""
    ar = measure_allreduce(gradient_bytes, 2, repeats * 4, placement=placement)
    scaling = run_probe(2, "scaling", "--config", cfg.to_json(), "--rounds", "2" if quick else "3",
                        placement=placement)
    epoch_s = {n: float(np.median(t)) for n, t in scaling["epochs_s"].items()}
    efficiency = epoch_s["1"] / (2 * epoch_s["2"])
    return {"allreduce": ar, "allreduce_vs_mpi": ar["mpi_s"] / ar["horovod_s"], "epochs_s": scaling["epochs_s"],
            "epoch_s": epoch_s, "strong_efficiency_n2": efficiency, "steps_s": scaling["steps_s"],
            "strong_efficiency_factors": efficiency_factors(scaling["steps_s"], efficiency, 2)}


def run(quick: bool = False, out_dir: Optional[str] = None, progress=print, placement: Placement = LOCAL) -> dict:
    """Measure everything; returns the JSON-ready dict (keys in the module docstring). ``placement`` with two
    hosts or more adds the cross-host figures."""
    repeats = 5 if quick else 20
    components = (1, 10, 50) if quick else (1, 10, 25, 50, 100)
    cubes = (16, 24) if quick else (16, 24, 32)
    sizes = (128, 256) if quick else (256, 512, 1024)
    began = time.perf_counter()
    result: dict = {"quick": quick, "machine": machine()}
    tmp = out_dir or tempfile.mkdtemp(prefix="gmmkit-bench-")

    progress("step time against K and the matmul reference, in turns (batch 32, one thread) ...")
    trainers = {k: _trainer(bench_config(k)) for k in components}
    base = trainers[50]
    by_k = take_turns({**{k: step_timer(t, 32) for k, t in trainers.items()}, "matmul": matmul_timer(MATMUL_N)},
                      repeats)
    result["render_overhead"] = by_k[50] / by_k[1]
    peak = 2.0 * MATMUL_N ** 3 / by_k.pop("matmul")
    achieved = 32 * train_flops(bench_config(50)) / by_k[50]
    result["mfu"] = achieved / peak
    result["flops"] = {"train_step_per_sample": train_flops(bench_config(50)), "achieved_per_s": achieved,
                       "matmul_per_s": peak}

    progress(f"exact mode: a step in M = {', '.join(map(str, EXACT_SHARDS))} micro-shards over a default step ...")
    result["exact_overhead"] = exact_overhead(bench_config(50), base, repeats)
    for m in (2, 8):
        result[f"exact_overhead_m{m}"] = result["exact_overhead"][str(m)]

    progress("step time against cube size ...")
    by_cube = {16: by_k[50], **take_turns({s: step_timer(_trainer(bench_config(50, cube=s)), 32)
                                           for s in cubes if s != 16}, repeats)}

    progress("epoch time against data set size ...")
    by_size = {}
    for n in sizes:
        cfg = bench_config(50, train_size=n)
        by_size[n] = epoch_times(cfg, os.path.join(tmp, f"size-{n}"), _trainer(cfg))[0]

    progress("wall-time model T(n) = Ts + Tp/n + c log2(n) ...")
    compute = measure_compute(bench_config(50, train_size=sizes[-1]), trainer=base)

    progress("Horovod allreduce against mpi4py, and one epoch on 1 and on 2 workers in turns (2 ranks) ...")
    cfg = bench_config(50, train_size=sizes[-1])
    result.update(two_workers(compute["gradient_bytes"], cfg, repeats, quick))
    c = result["allreduce"]["horovod_s"]  # the model's c: the same Horovod allreduce
    if len(placement.hosts) >= 2:
        cross = placement.one_per_host(2)
        progress(f"the same across hosts: one rank on each of {', '.join(cross.names)} ...")
        result["cross_host"] = {"hosts": cross.names, **two_workers(compute["gradient_bytes"], cfg, repeats, quick,
                                                                   cross)}
        c = result["cross_host"]["allreduce"]["horovod_s"]  # larger jobs span hosts: their c is the network's
    perf = from_measurements(compute, c)

    predicted = {str(n): perf.epoch_time("strong", n, 32, sizes[-1], 64) for n in (1, 2, 4, 8, 16, 32)}
    result["growth"] = {
        "step_s_by_components": {str(k): v for k, v in by_k.items()},
        "step_s_by_cube": {str(k): v for k, v in by_cube.items()},
        "epoch_s_by_train_size": {str(k): v for k, v in by_size.items()},
        "epoch_s_predicted_by_workers": predicted, "perf_model": perf.to_dict(),
    }
    progress("notebook latency: Start on the dashboard to the first streamed epoch (2 engines) ...")
    latency = notebook_latency(bench_config(50, train_size=sizes[0]).replace(train={"epochs": 3}))
    result["notebook_latency_s"] = latency["first_start_s"]
    result["notebook_latency"] = latency
    result["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    result["seconds"] = time.perf_counter() - began
    return result


def onednn_enabled() -> Optional[bool]:
    """Whether TensorFlow runs its CPU kernels through oneDNN. TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS``
    once, when it is imported; gmmkit sets it to 1 at its own import (``gmmkit/__init__.py``) unless it is
    set already. None when TensorFlow was imported before gmmkit and the variable was unset (TensorFlow's
    own default then decides, by CPU)."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if TENSORFLOW_IMPORTED_FIRST and value is None:
        return None
    return value == "1"


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cores": launch.available_cores()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        import horovod  # heavy: only to report the versions
        import tensorflow as tf

        info["tensorflow"], info["horovod"] = tf.__version__, horovod.__version__
        info["gpus"] = len(tf.config.list_physical_devices("GPU"))
        info["onednn"] = onednn_enabled()
    except ImportError:
        pass
    return info


def format_table(result: dict) -> str:
    rows = ["| figure | measured | target |", "|---|---:|---|"]
    for key, (op, target) in TARGETS.items():  # a result file of an older gmmkit may lack newer figures
        rows.append(f"| {key} | {result[key]:.3f} | {op} {target} |" if key in result
                    else f"| {key} | not measured | {op} {target} |")
    rows.append("")
    if "exact_overhead" in result:
        rows.append("exact_overhead by micro-shards M: " + ", ".join(
            f"M={m}: {v:.2f}" for m, v in result["exact_overhead"].items()))
    rows.append("strong_efficiency_n2 = " + " x ".join(
        f"{k} {v:.3f}" for k, v in result["strong_efficiency_factors"].items()))
    cross = result.get("cross_host")
    if cross:
        rows.append(f"across hosts ({', '.join(cross['hosts'])}, one rank each): gradient allreduce "
                    f"{cross['allreduce']['horovod_s'] * 1e3:.2f} ms (same host {result['allreduce']['horovod_s'] * 1e3:.2f}"
                    f" ms), allreduce_vs_mpi {cross['allreduce_vs_mpi']:.3f}, strong_efficiency_n2 "
                    f"{cross['strong_efficiency_n2']:.3f} = " + " x ".join(
                        f"{k} {v:.3f}" for k, v in cross["strong_efficiency_factors"].items()))
    g = result["growth"]
    rows.append("")
    rows.append("step time (ms, batch 32) by K: " + ", ".join(
        f"K={k}: {v * 1e3:.0f}" for k, v in g["step_s_by_components"].items()))
    rows.append("step time (ms, batch 32) by cube: " + ", ".join(
        f"{k}^3: {v * 1e3:.0f}" for k, v in g["step_s_by_cube"].items()))
    rows.append("epoch time (s) by training set: " + ", ".join(
        f"{k}: {v:.1f}" for k, v in g["epoch_s_by_train_size"].items()))
    rows.append("strong-scaling epoch predicted (s) by workers: " + ", ".join(
        f"{k}: {v:.2f}" for k, v in g["epoch_s_predicted_by_workers"].items()))
    return "\n".join(rows)
