"""The paper's wall-time model, T(n) = Ts + Tp / n + c log2(n), with its terms measured on this machine.

Per training step of a strategy with n workers, each worker computes its share of the global batch and the
gradients are summed once:

    t_step(n) = (t_fixed + t_sample * max(shares)) * h + c * log2(n)      (h = shared_host for n >= 2)

``t_fixed`` and ``t_sample`` come from a linear fit of measured step times against batch size on one rank;
``c`` is the measured allreduce time of the model's gradient bytes between two ranks (log2 n = 1): one
rank on each of two hosts when the placement has several (the network is what larger jobs cross), else
two ranks on this machine. Under strong scaling ``t_sample * max(shares)`` is the paper's Tp / n. An
epoch adds the validation pass, split over the ranks. A simulated run's predicted wall time is its number
of epochs times the predicted epoch time.

Two terms the paper's formula lacks, both measured by :func:`calibrate`: ``h``, how much slower a step is
when the ranks of one host step at once (they share its memory bandwidth and caches: the model predicted
97 % at n = 2 where 84 % was measured without it), measured with two ranks on this machine when the grid's
real ranks share one (or on hosts that are this machine under other names, :func:`one_machine`); and in exact
mode the step's own fit over the samples of its calls (``exact_fixed + exact_sample * samples``, a call
holding a multiple of 16 samples), not a default step times a factor: a rank of a wider split pays the exact
step's fixed cost on fewer samples. Where the grid's real ranks share a machine, ``c`` of a step is what a
real 2-rank step adds to its share computed side by side (``step_overhead_s``: the collectives and the ranks'
waiting, two collectives in exact mode), not the allreduce alone, taken relative to the job's own step alone
(the machine's speed drifts between the fit and the job).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from .. import signals, strategies
from ..checks import is_finite_number
from ..parallel import launch
from ..parallel.backends import probe_key
from ..parallel.placement import LOCAL, Placement
from ..timing import mean_seconds, take_turns

BOOT_ID = "/proc/sys/kernel/random/boot_id"  # one per running kernel
EXACT_QUANTUM = 16  # exact mode's samples per call: a multiple of gmmkit.training.exact_group.GROUP_QUANTUM


@dataclass
class PerfModel:
    t_fixed: float  # s per step, independent of the batch
    t_sample: float  # s per training sample
    t_eval_sample: float  # s per validation sample
    allreduce_s: float  # c: s per allreduce of the gradients at log2(n) = 1
    gradient_bytes: int
    threads: int = 1
    exact_factor: float = 1.0  # an exact step of the base batch over a default one (micro-shards, exact sums)
    # an exact step's own fit, s + s per sample of a call of a multiple of 16 (None: the factor times a
    # default step, as models calibrated before 2026-12-02 have it)
    exact_fixed: Optional[float] = None
    exact_sample: Optional[float] = None
    # a step's time with every rank of a host stepping at once over the same step alone (memory bandwidth and
    # caches shared), charged from n = 2 on; 1.0: not measured (ranks one per host, or an older model)
    shared_host: float = 1.0
    # what a real step adds to its share computed side by side at log2(n) = 1 (collectives, waiting), measured
    # on the grid's host (None: the allreduce alone, allreduce_s)
    step_overhead_s: Optional[float] = None

    def step_time(self, strategy: str, n: int, base_batch: int, exact: bool = False) -> float:
        compute = self.compute_time(strategy, n, base_batch, exact)
        if n > 1:
            compute *= self.shared_host
        overhead = self.allreduce_s if self.step_overhead_s is None else max(self.step_overhead_s, 0.0)
        return compute + overhead * math.log2(n)

    def compute_time(self, strategy: str, n: int, base_batch: int, exact: bool = False) -> float:
        """A rank's step computing its share alone, nothing else on the host (the fit of one rank's steps)."""
        shares = strategies.shares(strategy, n, base_batch)
        if exact:  # a rank's micro-shards in calls of a multiple of 16 samples: time in proportion to those
            padded = min(-(-max(shares) // EXACT_QUANTUM) * EXACT_QUANTUM, max(max(shares), base_batch))
            if self.exact_fixed is not None and self.exact_sample is not None:
                compute = self.exact_fixed + self.exact_sample * padded
            else:
                compute = self.exact_factor * (self.t_fixed + self.t_sample * base_batch) * padded / base_batch
        else:
            compute = self.t_fixed + self.t_sample * max(shares)
        return compute

    def epoch_time(
        self, strategy: str, n: int, base_batch: int, n_train: int, n_val: int, exact: bool = False
    ) -> float:
        gb = strategies.global_batch(strategy, n, base_batch)
        steps = strategies.steps_per_epoch(n_train, gb)
        val = self.t_eval_sample * math.ceil(n_val / n) + self.allreduce_s * math.log2(n)
        return steps * self.step_time(strategy, n, base_batch, exact) + val

    def terms(self, strategy: str, n: int, base_batch: int, n_train: int, n_val: int) -> dict:
        """Ts, Tp and c of the paper's formula for one epoch."""
        gb = strategies.global_batch(strategy, n, base_batch)
        steps = strategies.steps_per_epoch(n_train, gb)
        return {
            "Ts": steps * self.t_fixed,
            "Tp": steps * self.t_sample * gb + self.t_eval_sample * n_val,
            "c": (steps + 1) * self.allreduce_s,
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "PerfModel":
        return cls(**raw)


def fit_step_times(batches: list[int], times: list[float]) -> tuple[float, float]:
    """Least-squares ``t = t_fixed + t_sample * batch`` (both clipped at 0)."""
    a = np.vstack([np.ones(len(batches)), np.asarray(batches, dtype=float)]).T
    (t_fixed, t_sample), *_ = np.linalg.lstsq(a, np.asarray(times, dtype=float), rcond=None)
    return max(float(t_fixed), 0.0), max(float(t_sample), 1e-9)


def time_steps(trainer, batch: int, repeats: int, warm: bool = True) -> list[float]:
    """Seconds of each of ``repeats`` training steps of ``batch`` samples, after one untimed step (tracing)
    unless ``warm`` is False. The trainer's weights move: reset it before a run."""
    xb = trainer.batch_of(np.sort(np.arange(batch) % len(trainer.data.train)))  # tiled from a smaller split
    if warm:
        trainer.step(xb, batch)
    times = []
    for _ in range(repeats):
        signals.check()  # a stop request abandons the measurement
        t0 = time.perf_counter()
        trainer.step(xb, batch)
        times.append(time.perf_counter() - t0)
    return times


def measure_compute(cfg, batches=(8, 32), repeats: int = 5, trainer=None, exact: bool = False) -> dict:
    """Time training steps at several batch sizes and the validation pass, in this process
    (with ``trainer`` when given, else a new :class:`~gmmkit.training.Trainer` of ``cfg``); ``exact``: also
    an exact step of the base batch, in turns with a default one (``exact_factor``). ``trainer`` may be an
    exact one: the default steps are then timed on a new default trainer."""
    from ..training import Trainer  # heavy: TensorFlow

    def trainer_of(exact_mode: bool):
        if trainer is not None and (trainer.exact is not None) == exact_mode:
            return trainer
        shards = {} if exact_mode else {"micro_shards": None}  # micro-shards belong to exact mode
        return Trainer(cfg.replace(train={"workers": 1, "exact": exact_mode, **shards}), simulate=True)

    default = trainer_of(False)
    times = [float(np.median(time_steps(default, b, repeats))) for b in batches]  # median: a shared machine
    t_eval = mean_seconds(default.validation_loss, repeats, warmup=1) / len(default.data.val)
    t_fixed, t_sample = fit_step_times(list(batches), times)
    factor, exact_fit = 1.0, {}
    if exact:
        exact_trainer, b = trainer_of(True), cfg.train.batch_size
        timers = {
            "default": lambda: time_steps(default, b, 1, warm=False)[0],
            "exact": lambda: time_steps(exact_trainer, b, 1, warm=False)[0],
        }
        small = EXACT_QUANTUM if b > EXACT_QUANTUM and b % EXACT_QUANTUM == 0 else None
        if small:  # a call of 16 samples, what a rank of a wider split computes: the exact step's own fit
            timers["exact_small"] = lambda: time_steps(exact_trainer, small, 1, warm=False)[0]
        paired = take_turns(timers, repeats)
        factor = paired["exact"] / paired["default"]
        if small:
            fixed, per_sample = fit_step_times([small, b], [paired["exact_small"], paired["exact"]])
            exact_fit = {"exact_fixed": fixed, "exact_sample": per_sample}
    return {
        "t_fixed": t_fixed,
        "t_sample": t_sample,
        "t_eval_sample": t_eval,
        "exact_factor": factor,
        **exact_fit,
        "gradient_bytes": default.gradient_bytes(),
        "step_times": dict(zip(map(str, batches), times)),
    }


def measure_allreduce(nbytes: int, ranks: int = 2, repeats: int = 20, placement: Placement = LOCAL) -> dict:
    """Seconds per allreduce of ``nbytes`` between ``ranks`` real MPI ranks placed by ``placement`` (default:
    this machine), through each backend (``horovod_s``, ``mpi4py_s``: the model's c) and plain MPI (``mpi_s``):
    :func:`gmmkit.parallel.distributed.allreduce_probe`."""
    probe = launch.ranks_argv("allreduce", "--bytes", str(nbytes), "--repeats", str(repeats))
    return launch.run_json(ranks, probe, timeout=600, placement=placement)


def allreduce_placement(placement: Placement, ranks: int = 2) -> Placement:
    """Where the model's c is measured: one rank on each of ``ranks`` hosts when the placement has that many
    hosts, else the placement as it is (this machine, or one host's slots)."""
    return placement.one_per_host(ranks) if len(placement.hosts) >= ranks else placement


def measure_contention(cfg, ranks: int = 2, placement: Placement = LOCAL) -> dict:
    """``shared_host``, ``step_overhead_s`` and the gradients' Horovod ``allreduce_s`` of ``ranks`` ranks of
    one host, one thread each, in one job (:func:`gmmkit.ranks.scaling.contention_probe`)."""
    probe = launch.ranks_argv("contention", "--config", cfg.replace(train={"threads": 1}).to_json(), "--rounds", "6")
    found = launch.run_json(ranks, probe, timeout=600, placement=placement)
    return {key: float(found[key]) for key in ("shared_host", "step_overhead_s", "allreduce_s", "alone")}


def one_machine(placement: Placement) -> bool:
    """Whether every host of ``placement`` is this machine under another name (one kernel: the same boot id), as
    the tests' emulated hosts are: their ranks then share its cores and memory like ranks of one host (measured:
    the model that took them for machines apart predicted 79.9 % at n = 2 where 70.2 % was measured)."""
    try:
        here = Path(BOOT_ID).read_text().strip()
    except OSError:  # a kernel without the file: every host taken for another machine
        return False
    same = f"import sys; sys.exit(open({BOOT_ID!r}).read().strip() != {here!r})"  # each host asked at once
    return set(launch.alive_hosts(placement, timeout_s=60, code=same)) == set(placement.names)


def from_measurements(compute: dict, allreduce_s: float, contention: Optional[dict] = None) -> PerfModel:
    """The model from :func:`measure_compute`'s result, the seconds of one gradient allreduce and, where
    measured, :func:`measure_contention`'s terms."""
    return PerfModel(
        t_fixed=compute["t_fixed"],
        t_sample=compute["t_sample"],
        t_eval_sample=compute["t_eval_sample"],
        allreduce_s=allreduce_s,
        gradient_bytes=compute["gradient_bytes"],
        threads=1,
        exact_factor=compute.get("exact_factor", 1.0),
        exact_fixed=compute.get("exact_fixed"),
        exact_sample=compute.get("exact_sample"),
        shared_host=(contention or {}).get("shared_host", 1.0),
        step_overhead_s=(contention or {}).get("step_overhead_s"),
    )


def calibrate(cfg, ranks: int = 2, trainer=None, placement: Placement = LOCAL, exact: bool = False) -> PerfModel:
    """Measure every term of the model for ``cfg`` (one thread per rank): the compute here, the allreduce
    where :func:`allreduce_placement` puts it; ``trainer``: a :class:`~gmmkit.training.Trainer` of ``cfg``
    with one thread to time (its weights move: reset it); ``exact``: also what exact mode costs a step."""
    compute = measure_compute(cfg.replace(train={"threads": 1}), trainer=trainer, exact=exact)
    model = from_measurements(compute, 0.0)
    where = allreduce_placement(placement, ranks)
    if ranks > 1 and (len(placement.hosts) <= 1 or one_machine(where)):  # the ranks share a machine: one job
        contention = measure_contention(cfg, ranks, where)
        # The job's steps run at another moment than the fit's, and a shared machine's speed drifts by more
        # than the overhead (its share's step alone took 51 ms in the fit and 66 ms in the job, minutes apart):
        # the overhead is taken in the job's own measure, relative to its step alone, then put in the fit's.
        alone = model.compute_time("strong", ranks, cfg.train.batch_size, exact)
        overhead = contention["step_overhead_s"] * alone / contention["alone"]
        return replace(
            model,
            allreduce_s=contention["allreduce_s"],
            shared_host=contention["shared_host"],
            step_overhead_s=overhead,
        )
    if ranks > 1:
        measured = measure_allreduce(compute["gradient_bytes"], ranks, placement=where)
        model = replace(model, allreduce_s=measured[probe_key(cfg.train.backend)])
    return model


def efficiency(t1: Optional[float], n: int, tn: Optional[float]) -> Optional[float]:
    """Parallel efficiency ``T1 / (n Tn)`` of reaching the target (paper Section VII); None when either time
    is missing."""
    if not (is_finite_number(t1) and is_finite_number(tn) and t1 > 0 and tn > 0) or n < 1:
        return None
    return t1 / (n * tn)
