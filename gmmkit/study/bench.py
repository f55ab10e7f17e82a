"""How fast gmmkit is on this machine: every figure measured in one run, with its reference measured
beside it (``gmmkit bench``).

==========================  ===========================================================================
key                         what it is
==========================  ===========================================================================
``render_overhead``         training step time with K = 50 over the same step with K = 1
``mfu``                     training FLOP/s (counted analytically: :func:`gmmkit.model.flops.train_flops`) over the
                            of a dense float32 matmul, same process, same thread count
``allreduce_vs_mpi``        the backend's (``--backend``, default Horovod) allreduce throughput over a
                            plain mpi4py ``Allreduce`` of the same buffer (the model's gradient bytes),
                            2 ranks, taking turns, mpi4py with Horovod shut down
                            (:func:`gmmkit.parallel.distributed.allreduce_probe`, the same probe that
                            gives the wall-time model its c)
``strong_efficiency_n2``    one epoch, 1 worker over 2 workers on the backend (1 thread each): T1 / (2 T2),
                            each T the median of three epochs, the two taking turns in one 2-rank job
``strong_efficiency_        the same efficiency as a product of four factors measured step by step in
factors``                   that job: batch split, shared host, collective, rest (:func:`efficiency_factors`)
``exact_overhead``          a whole exact training step (``train.exact``, M micro-shards of the batch of 32)
                            over a default one, at M = 2, 8 and 32, the three and the default taking turns
``strong_efficiency_n2_      the same 2-worker efficiency in exact mode (M = 32), and its ratio to the
exact``                     default mode's (``exact_efficiency_vs_default``)
``growth``                  step time against K and cube size, epoch time against the data set size,
                            and the fitted T(n) = Ts + Tp/n + c log2(n) predicted out to 32 workers
``backends``                each installed backend side by side: its allreduce of the gradients (the
                            same probe, in turns) and its ``strong_efficiency_n2``, one 2-rank job per
                            backend taking turns (:func:`backends_side_by_side`)
``cross_host``              with ``--hostfile``/``--hosts`` of two hosts or more: the allreduce and the
                            2-worker efficiency (with its factors) again, one rank on each of two hosts
                            (:func:`cross_host`); the model's c then comes from there
``failure_cost``            with the same hosts: an elastic run's rank killed on the second host, the
                            seconds from the kill to the first step after the restart and the work done
                            again (:mod:`gmmkit.study.failure_cost`)
==========================  ===========================================================================

The steps for every K and the matmul are timed in turns (:func:`gmmkit.timing.take_turns`): on a shared
host the speed drifts by tens of percent within minutes, and taking turns keeps that out of both ratios.
Multi-rank figures run as ``mpirun -np N python -m gmmkit.ranks allreduce|scaling`` jobs that print
one JSON line on rank 0. No figure here is asserted by a test: they are measurements, not pass/fail checks. The
notebook's latency (Start on the dashboard to the first streamed epoch) is ``benchmarks/notebook_latency.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Optional

import numpy as np

from .. import machine
from ..config import RunConfig
from ..model.flops import matmul_timer, train_flops
from ..parallel import launch
from ..parallel.backends import PROBE_KEYS, installed_backends, probe_key
from ..parallel.placement import LOCAL, Placement
from ..timing import take_turns
from . import failure_cost
from .perfmodel import from_measurements, measure_allreduce, measure_compute, time_steps

MATMUL_N = 1024  # the dense-matmul reference: (1024 x 1024) @ (1024 x 1024), float32
TARGETS = {
    "render_overhead": ("<=", 1.2),
    "mfu": (">=", 0.7),
    "allreduce_vs_mpi": (">=", 0.9),
    "strong_efficiency_n2": (">=", 0.95),
    "exact_overhead_m2": ("<=", 1.05),
    "exact_overhead_m8": ("<=", 1.15),
    "exact_overhead_m32": ("<=", 1.25),
    "exact_efficiency_vs_default": (">=", 1.0),
}
EXACT_SHARDS = (2, 8, 32)


def bench_config(components: int = 50, cube: int = 16, train_size: int = 256) -> RunConfig:
    """The paper's model (32 filters, latent 256) on a small synthetic set, one thread, batch 32."""
    return RunConfig().replace(
        data={"dataset": "phantoms", "size": train_size + 64, "train_size": train_size, "val_size": 64, "cube": cube},
        model={"components": components},
        train={"threads": 1, "target_loss": None, "epochs": 1},
    )


# --- single-process measurements ----------------------------------------------------------


def _trainer(cfg: RunConfig):
    from ..training import Trainer  # heavy: TensorFlow

    return Trainer(cfg.replace(train={"workers": 1, "strategy": "strong"}), simulate=True)


def step_timer(trainer, batch: int = 32):
    """A :func:`take_turns` timer: seconds of one training step of ``batch`` samples of ``trainer``."""
    return lambda: time_steps(trainer, batch, 1, warm=False)[0]


def exact_overhead(cfg: RunConfig, default, repeats: int, shards=EXACT_SHARDS) -> dict:
    """An exact training step of ``cfg``'s batch in M micro-shards over ``default``'s step (a default-mode
    trainer of ``cfg``), for each M of ``shards``, all taking turns."""
    exact = {m: _trainer(cfg.replace(train={"exact": True, "micro_shards": m})) for m in shards}
    batch = cfg.train.batch_size
    times = take_turns(
        {"default": step_timer(default, batch), **{m: step_timer(t, batch) for m, t in exact.items()}}, repeats
    )
    return {str(m): times[m] / times["default"] for m in shards}


def epoch_times(cfg: RunConfig, out: str, trainer=None, epochs: int = 1) -> list[float]:
    """Seconds of each of ``epochs`` training epochs with a traced model (in a Horovod job: on rank 0)."""
    from ..training import train  # heavy: TensorFlow

    records = []
    train(cfg.replace(train={"epochs": epochs}, out=out), callbacks=[records.append], trainer=trainer or _trainer(cfg))
    return [float(r["epoch_time_s"]) for r in records]


# --- multi-rank probes ----------------------------------------------------------------------


def run_probe(ranks: int, *args: str, timeout: float = 600, placement: Placement = LOCAL) -> dict:
    """``mpirun -np ranks python -m gmmkit.ranks ...`` placed by ``placement``; the JSON line rank 0
    prints."""
    return launch.run_json(ranks, launch.ranks_argv(*args), timeout=timeout, placement=placement)


def efficiency_factors(steps_s: dict, efficiency: float, n: int) -> dict:
    """Split a strong-scaling efficiency into four factors whose product it is, from the single-step times
    of :func:`scaling_probe` (``steps_s``):

    ``batch_split``  ``alone_batch / (n alone_share)``: what cutting the batch into n shares costs the
                     kernels of one rank, nothing else running (the most the efficiency can reach here)
    ``shared_host``  ``alone_share / side_by_side_share``: the ranks' steps slowing each other down on one
                     host (caches, memory bandwidth), still without a collective
    ``collective``   ``side_by_side_share / collective_share``: the backend's allreduce (Horovod's or mpi4py's)
                     and the ranks waiting for each other (recordings before 2026-12-02: ``horovod``)
    ``rest``         ``efficiency`` over the product of the three: what an epoch adds around its steps
                     (validation, the loop, the data), and the noise between the two measurements
    """
    factors = {
        "batch_split": steps_s["alone_batch"] / (n * steps_s["alone_share"]),
        "shared_host": steps_s["alone_share"] / steps_s["side_by_side_share"],
        "collective": steps_s["side_by_side_share"] / steps_s["collective_share"],
    }
    factors["rest"] = efficiency / float(np.prod(list(factors.values())))
    return factors


# --- the whole benchmark --------------------------------------------------------------------


def two_workers(gradient_bytes: int, cfg: RunConfig, repeats: int, quick: bool, placement: Placement = LOCAL) -> dict:
    """The 2-rank figures, ranks placed by ``placement``: Horovod's allreduce of the gradients against
    mpi4py's, and one epoch on 1 and on 2 workers in turns, the efficiency and its factors."""
    ar = measure_allreduce(gradient_bytes, 2, repeats * 4, placement=placement)
    scaling = run_probe(2, "scaling", "--config", cfg.to_json(), "--rounds", "2" if quick else "3", placement=placement)
    epoch_s = {n: float(np.median(t)) for n, t in scaling["epochs_s"].items()}
    efficiency = epoch_s["1"] / (2 * epoch_s["2"])
    allreduce_s = ar[probe_key(cfg.train.backend)]
    return {
        "allreduce": ar,
        "allreduce_s": allreduce_s,  # the backend's: the model's c
        "allreduce_vs_mpi": ar["mpi_s"] / allreduce_s,
        "epochs_s": scaling["epochs_s"],
        "epoch_s": epoch_s,
        "strong_efficiency_n2": efficiency,
        "steps_s": scaling["steps_s"],
        "strong_efficiency_factors": efficiency_factors(scaling["steps_s"], efficiency, 2),
    }


def strong_efficiency(cfg: RunConfig, quick: bool, placement: Placement = LOCAL) -> float:
    """T1 / (2 T2) of one epoch of ``cfg`` on 1 and on 2 workers in turns (the scaling probe's epochs)."""
    scaling = run_probe(2, "scaling", "--config", cfg.to_json(), "--rounds", "2" if quick else "3", placement=placement)
    epoch_s = {n: float(np.median(t)) for n, t in scaling["epochs_s"].items()}
    return epoch_s["1"] / (2 * epoch_s["2"])


def backends_side_by_side(cfg: RunConfig, allreduce: dict, quick: bool) -> dict:
    """Each installed backend's allreduce of the gradients (from ``allreduce``, the probe that timed them in
    turns) and 2-rank ``strong_efficiency_n2`` of ``cfg``: one scaling job per backend, the backends taking
    turns (one round quick, else two; the median), each job itself timing its 1 and 2 workers in turns."""
    names = installed_backends()
    found: dict = {name: [] for name in names}
    for _ in range(1 if quick else 2):
        for name in names:
            found[name].append(strong_efficiency(cfg.replace(train={"backend": name}), quick=True))
    return {
        name: {"allreduce_s": allreduce[PROBE_KEYS[name]], "strong_efficiency_n2": float(np.median(found[name]))}
        for name in names
    }


def run(
    quick: bool = False,
    out_dir: Optional[str] = None,
    progress=print,
    placement: Placement = LOCAL,
    backend: Optional[str] = None,
) -> dict:
    """Measure everything; returns the JSON-ready dict (keys in the module docstring). ``placement`` with two
    hosts or more adds the cross-host figures; ``backend`` (default: Horovod where installed) is the 2-rank
    figures' and the model's c; every installed backend is also measured side by side."""
    probe_key(backend)  # a missing backend is refused now, not after minutes of measuring
    repeats = 5 if quick else 20
    components = (1, 10, 50) if quick else (1, 10, 25, 50, 100)
    cubes = (16, 24) if quick else (16, 24, 32)
    sizes = (128, 256) if quick else (256, 512, 1024)
    began = time.perf_counter()
    result: dict = {"quick": quick, "machine": machine_facts()}
    tmp = out_dir or tempfile.mkdtemp(prefix="gmmkit-bench-")

    progress("step time against K and the matmul reference, in turns (batch 32, one thread) ...")
    trainers = {k: _trainer(bench_config(k)) for k in components}
    base = trainers[50]
    by_k = take_turns(
        {**{k: step_timer(t, 32) for k, t in trainers.items()}, "matmul": matmul_timer(MATMUL_N)}, repeats
    )
    result["render_overhead"] = by_k[50] / by_k[1]
    peak = 2.0 * MATMUL_N**3 / by_k.pop("matmul")
    per_sample = train_flops(bench_config(50).model, 16)
    achieved = 32 * per_sample / by_k[50]
    result["mfu"] = achieved / peak
    result["flops"] = {"train_step_per_sample": per_sample, "achieved_per_s": achieved, "matmul_per_s": peak}

    progress(f"exact mode: a step in M = {', '.join(map(str, EXACT_SHARDS))} micro-shards over a default step ...")
    result["exact_overhead"] = exact_overhead(bench_config(50), base, repeats)
    for m in EXACT_SHARDS:
        result[f"exact_overhead_m{m}"] = result["exact_overhead"][str(m)]

    progress("step time against cube size ...")
    by_cube = {
        16: by_k[50],
        **take_turns({s: step_timer(_trainer(bench_config(50, cube=s)), 32) for s in cubes if s != 16}, repeats),
    }

    progress("epoch time against data set size ...")
    by_size = {}
    for n in sizes:
        cfg = bench_config(50, train_size=n)
        by_size[n] = epoch_times(cfg, os.path.join(tmp, f"size-{n}"), _trainer(cfg))[0]

    progress("wall-time model T(n) = Ts + Tp/n + c log2(n) ...")
    compute = measure_compute(bench_config(50, train_size=sizes[-1]), trainer=base)

    progress("each backend's allreduce and plain mpi4py's, and one epoch on 1 and on 2 workers in turns (2 ranks) ...")
    cfg = bench_config(50, train_size=sizes[-1]).replace(train={"backend": backend})
    result.update(two_workers(compute["gradient_bytes"], cfg, repeats, quick))
    progress("each backend's 2-worker efficiency, the backends taking turns (2 ranks) ...")
    result["backends"] = backends_side_by_side(cfg, result["allreduce"], quick)
    progress("the same epochs in exact mode (M = 32), 1 and 2 workers in turns (2 ranks) ...")
    result["strong_efficiency_n2_exact"] = strong_efficiency(cfg.replace(train={"exact": True}), quick)
    result["exact_efficiency_vs_default"] = result["strong_efficiency_n2_exact"] / result["strong_efficiency_n2"]
    c = result["allreduce_s"]  # the model's c: the same allreduce
    if len(placement.hosts) >= 2:
        cross = placement.one_per_host(2)
        progress(f"the same across hosts: one rank on each of {', '.join(cross.names)} ...")
        result["cross_host"] = {
            "hosts": cross.names,
            **two_workers(compute["gradient_bytes"], cfg, repeats, quick, cross),
        }
        c = result["cross_host"]["allreduce_s"]  # larger jobs span hosts: their c is the network's
        progress(f"a failure's cost: an elastic run's rank killed on {cross.names[1]}, to the first step after ...")
        elastic_cfg = bench_config(50, train_size=128)
        result["failure_cost"] = failure_cost.measure(elastic_cfg, cross, os.path.join(tmp, "elastic"), lambda _: None)
    perf = from_measurements(compute, c)

    predicted = {str(n): perf.epoch_time("strong", n, 32, sizes[-1], 64) for n in (1, 2, 4, 8, 16, 32)}
    result["growth"] = {
        "step_s_by_components": {str(k): v for k, v in by_k.items()},
        "step_s_by_cube": {str(k): v for k, v in by_cube.items()},
        "epoch_s_by_train_size": {str(k): v for k, v in by_size.items()},
        "epoch_s_predicted_by_workers": predicted,
        "perf_model": perf.to_dict(),
    }
    result["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    result["seconds"] = time.perf_counter() - began
    return result


def machine_facts() -> dict:
    """What the figures were measured on: the machine (:func:`gmmkit.machine.describe`) and the libraries'
    versions (:func:`gmmkit.parallel.distributed.versions`)."""
    from ..parallel.distributed import versions  # heavy: TensorFlow

    return {**machine.describe(), **versions()}


def format_table(result: dict) -> str:
    rows = ["| figure | measured | target |", "|---|---:|---|"]
    for key, (op, target) in TARGETS.items():  # a result file of an older gmmkit may lack newer figures
        rows.append(
            f"| {key} | {result[key]:.3f} | {op} {target} |"
            if key in result
            else f"| {key} | not measured | {op} {target} |"
        )
    rows.append("")
    if "exact_overhead" in result:
        rows.append(
            "exact_overhead by micro-shards M: "
            + ", ".join(f"M={m}: {v:.2f}" for m, v in result["exact_overhead"].items())
        )
    rows.append(
        "strong_efficiency_n2 = " + " x ".join(f"{k} {v:.3f}" for k, v in result["strong_efficiency_factors"].items())
    )
    if "backends" in result:
        rows.append(
            "backends side by side (2 ranks): "
            + "; ".join(
                f"{name}: gradient allreduce {b['allreduce_s'] * 1e3:.2f} ms, strong_efficiency_n2 "
                f"{b['strong_efficiency_n2']:.3f}"
                for name, b in result["backends"].items()
            )
        )
    cross = result.get("cross_host")
    if cross:
        rows.append(
            f"across hosts ({', '.join(cross['hosts'])}, one rank each): gradient allreduce "
            f"{_allreduce_s(cross) * 1e3:.2f} ms (same host {_allreduce_s(result) * 1e3:.2f}"
            f" ms), allreduce_vs_mpi {cross['allreduce_vs_mpi']:.3f}, strong_efficiency_n2 "
            f"{cross['strong_efficiency_n2']:.3f} = "
            + " x ".join(f"{k} {v:.3f}" for k, v in cross["strong_efficiency_factors"].items())
        )
    if "failure_cost" in result:
        rows.append(failure_cost.format_line(result["failure_cost"]))
    g = result["growth"]
    rows.append("")
    rows.append(
        "step time (ms, batch 32) by K: "
        + ", ".join(f"K={k}: {v * 1e3:.0f}" for k, v in g["step_s_by_components"].items())
    )
    rows.append(
        "step time (ms, batch 32) by cube: "
        + ", ".join(f"{k}^3: {v * 1e3:.0f}" for k, v in g["step_s_by_cube"].items())
    )
    rows.append(
        "epoch time (s) by training set: " + ", ".join(f"{k}: {v:.1f}" for k, v in g["epoch_s_by_train_size"].items())
    )
    rows.append(
        "strong-scaling epoch predicted (s) by workers: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in g["epoch_s_predicted_by_workers"].items())
    )
    return "\n".join(rows)


def _allreduce_s(figures: dict) -> float:
    """The 2-rank figures' gradient allreduce on their backend (results of older gmmkit: Horovod's)."""
    return figures.get("allreduce_s", figures["allreduce"].get("horovod_s"))
