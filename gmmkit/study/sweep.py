"""The paper's study: time to target for each strategy and worker count (Section VII, Tables I and II).

:func:`sweep` runs a grid of (strategy, n): ``n`` real Horovod ranks under mpirun where the placement has
the slots for them (``n <= max_real``, by default every slot: this machine's cores, the hosts of ``--hosts``
or ``--hostfile``, or the SLURM allocation), otherwise, with ``simulate``, one process that follows the exact
optimisation path of n workers (the global batch and the learning-rate schedule are all that matter) and whose wall time
the calibrated :class:`~gmmkit.study.perfmodel.PerfModel` predicts. Where both exist the table shows predicted
beside measured.

Building and tracing the model costs more than a small run's epochs on a CPU, so runs share it: the
sequential run and every simulated run go through one :class:`~gmmkit.training.Trainer` in this process,
and each real worker count is one mpirun job whose ranks train its strategies one after another
(:func:`gmmkit.training.train_many`; ``python -m gmmkit.ranks batch``). Each run still starts from
the same initial weights and a fresh optimiser, and measures its own time from its first step.

Every strategy at n = 1 is the same sequential run, so it is run once and shared.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from .. import training  # its loop (TensorFlow) is imported on first use: `gmmkit --help` stays light
from ..checks import is_finite_number
from ..config import RunConfig
from ..data.sources import load_split
from ..files import atomic_write_json, atomic_write_text, fresh_folder
from ..parallel import launch, network
from ..parallel.backends import resolve_backend
from ..parallel.placement import LOCAL, Placement
from ..signals import StopFlag, raise_on_signals, stop_on_signals
from ..training import RunDir
from .config import StudyConfig
from .perfmodel import PerfModel, calibrate
from .report import RunResult, add_efficiency, same_path, write_report


def run_dir_for(out: Path, strategy: str, n: int) -> Path:
    return out / "runs" / f"{'sequential' if n == 1 else strategy}-n{n}"


def run_real_batch(
    cfgs: Sequence[RunConfig],
    n: int,
    log: Path,
    stop: Optional[StopFlag] = None,
    resume: Sequence[bool] = (),
    placement: Placement = LOCAL,
) -> Optional[str]:
    """Train ``cfgs`` (all with ``n`` workers) one after another in one n-rank Horovod job placed by
    ``placement``, its output in ``log``. Returns None when the job ended well, else what ended it, e.g.
    "rank 1 (pid 4242 on ci) was killed by SIGKILL" or "host node2 (rank 1) was lost" (mpirun then stops the
    other ranks, so the job never hangs). A stop request (``stop``, SIGINT, SIGTERM) asks every run of the batch
    to stop: the current one after its step, the rest at once."""
    log.parent.mkdir(parents=True, exist_ok=True)
    plan, stopped = log.with_suffix(".json"), log.with_suffix(".stop")
    resume = list(resume) or [False] * len(cfgs)
    stopped.unlink(missing_ok=True)  # an earlier job's request
    atomic_write_json(plan, [{"config": cfg.to_dict(), "resume": again} for cfg, again in zip(cfgs, resume)])

    def stop_all() -> None:  # the batch's ranks stop at their next step, or before their next run
        atomic_write_text(stopped, "stop requested\n")
        for cfg in cfgs:
            RunDir(cfg.out).request_stop()  # the run in progress only: a stop belongs to the run asked

    try:
        code, failure = launch.run_ranks(
            n, launch.ranks_argv("batch", str(plan)), log=log, on_interrupt=stop_all, stop=stop, placement=placement
        )
    finally:
        stopped.unlink(missing_ok=True)
    if code == 0:
        return None
    return failure or f"the {n}-rank job exited with status {code}"


class _LocalRuns:
    """The sequential and simulated runs of a sweep, in this process, sharing one traced model."""

    def __init__(self, trainer=None, stop: Optional[StopFlag] = None):
        self.trainer = trainer
        self.stop = stop

    def __call__(self, cfg: RunConfig, simulate: bool, resume: bool = False) -> dict:
        t = cfg.train
        label = f"{'sequential' if t.workers == 1 else t.strategy} n={t.workers}{' (simulated)' if simulate else ''}"

        def show(record: dict) -> None:  # above the progress bar
            tqdm.write(
                f"{label}: epoch {record['epoch']}/{t.epochs}  val {record['val_loss']:.6f}  {record['time_s']:.1f} s"
            )

        self.trainer = training.Trainer.for_config(cfg, simulate, reuse=self.trainer)
        # a failure is recorded in the run's summary.json; the sweep goes on
        (summary,) = training.train_many(
            [cfg], simulate=simulate, callbacks=[show], trainer=self.trainer, stop=self.stop, resume=resume
        )
        tqdm.write(
            f"{label}: {summary['status']}"
            + (f" in {summary['time_to_target_s']:.1f} s" if summary.get("time_to_target_s") and not simulate else "")
            + (f" ({summary['error']})" if summary.get("error") else "")
        )
        return summary


def sweep(
    study: StudyConfig,
    perf: Optional[PerfModel] = None,
    progress: bool = True,
    trainer=None,
    stop: Optional[StopFlag] = None,
    resume: bool = False,
) -> list[RunResult]:
    """Run the grid of ``study`` and write ``results.json``, ``tables.md`` and the figures into ``study.out``.

    Real runs go where ``study.placement`` says, up to ``study.real_limit`` workers; larger counts are
    simulated (``study.simulate``) or skipped. ``study.target_epoch``: choose the target as the paper did, the
    validation loss the sequential run reaches after that many epochs (the paper: about 100), instead of
    ``study.run.train.target_loss``. ``perf``: the wall-time model that times simulated runs.
    ``trainer``: a :class:`~gmmkit.training.Trainer` of ``study.run`` to reuse (e.g. the calibration's).
    ``stop`` (set by SIGINT or SIGTERM inside :func:`run_study`): the current run stops after its step, the
    runs not started are recorded as ``stopped``, and the tables and figures of what ran are written.
    ``resume``: ``study.out`` holds this grid from an earlier call that did not finish: runs that ended are
    kept as they are, the others continue from their last checkpoint.
    """
    study = study.validate()
    base, strategies_, workers, max_real = study.run, study.strategies, study.workers, study.real_limit
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    stop = stop if stop is not None else StopFlag()
    grid = [(s, n) for n in workers for s in strategies_ if not (n == 1 and s != strategies_[0])]
    results: dict[tuple[str, int], RunResult] = {}
    local = _LocalRuns(trainer, stop)
    if study.target_epoch:
        base, results[(strategies_[0], 1)] = sequential_target(base, out, study.target_epoch, perf, local, resume)
        grid = [g for g in grid if g[1] != 1]

    def config(strategy: str, n: int) -> RunConfig:
        return base.replace(
            # not elastic: a worker count's real runs share one mpirun job (gmmkit train --elastic restarts one run)
            train={
                "strategy": strategy if n > 1 else "strong",
                "workers": n,
                "threads": base.train.threads or 1,
                "elastic": False,
                "min_workers": 1,
            },
            out=str(run_dir_for(out, strategy, n)),
        )

    def mode_of(strategy: str, n: int) -> str:
        if strategy == "strong" and n > base.train.batch_size:
            return "skipped"  # strong scaling cannot split a batch of B over more than B workers
        return "real" if n <= max_real else ("simulated" if study.simulate else "skipped")

    bar = tqdm(total=len(grid), desc="sweep", unit="run", disable=not progress)
    for n in dict.fromkeys(n for _, n in grid):
        points = [(s, n, mode_of(s, n)) for s, m in grid if m == n]
        todo = {s: _todo(config(s, n), resume) for s, _, mode in points if mode != "skipped"}
        real = [config(s, n) for s, _, mode in points if mode == "real" and n > 1 and todo[s] != "done"]
        job_failure = None
        if real and not stop:  # one mpirun job trains all strategies of this n
            bar.set_postfix_str(f"n={n}: {len(real)} runs on {n} Horovod ranks")
            log = out / "logs" / f"real-n{n}.log"
            failure = run_real_batch(
                real, n, log, stop, [todo[c.train.strategy] == "resume" for c in real], study.placement
            )
            if failure:
                job_failure = f"{failure}; mpirun stopped the {n}-rank job before this run finished (see {log})"
                tqdm.write(
                    f"error: n={n}: {failure}; mpirun stopped the other ranks. The runs the job had not "
                    f"finished are recorded as failed; see {log}",
                    file=sys.stderr,
                )
        for strategy, _, mode in points:
            cfg = config(strategy, n)
            failure = job_failure if mode == "real" and n > 1 else None
            if (mode == "simulated" or (mode == "real" and n == 1)) and not stop and todo[strategy] != "done":
                bar.set_postfix_str(f"{strategy} n={n} ({mode})")
                failure = local(cfg, simulate=mode == "simulated", resume=todo[strategy] == "resume").get("error")
            if mode == "skipped":
                results[(strategy, n)] = RunResult(strategy, n, "skipped", "skipped", 0, None, None, cfg.out)
            else:
                results[(strategy, n)] = collect(cfg, mode, perf, failure=failure, stopped=bool(stop))
            bar.update(1)
    bar.close()
    rows = []
    for strategy in strategies_:
        for n in workers:
            r = results.get((strategy, n)) or results.get((strategies_[0], 1))
            if r is None:  # stopped before the sequential run
                r = RunResult(strategy, n, "real", "stopped", 0, None, None, str(run_dir_for(out, strategy, n)))
            if n == 1:
                r = RunResult(**{**r.__dict__, "strategy": strategy})
            elif strategy == "strong" and r.mode != "skipped":  # the paper's claim: the sequential path
                r.same_path = same_path(r.run_dir, run_dir_for(out, "strong", 1))
            rows.append(r)
    add_efficiency(rows)
    write_report(rows, out, base, perf)
    return rows


# How a run can end that a resumed study keeps as it is (stopped and failed runs go on).
ENDED = ("reached_target", "diverged", "max_epochs")

# A run on the sequential path reaches the sequential loss only up to float32 reduction noise (the order of
# the sums differs between 1 and n ranks), so the target sits this far above it.
TARGET_RTOL = 1e-4


def sequential_target(
    base: RunConfig,
    out: Path,
    epochs: int,
    perf: Optional[PerfModel],
    local: Optional[_LocalRuns] = None,
    resume: bool = False,
):
    """Run the sequential baseline for ``epochs`` epochs (``resume``: keep or continue the one ``out``
    holds); its last validation loss, times 1 + TARGET_RTOL, becomes the target."""
    run_dir = run_dir_for(out, "strong", 1)
    cfg = base.replace(
        train={
            "strategy": "strong",
            "workers": 1,
            "epochs": epochs,
            "target_loss": None,
            "threads": base.train.threads or 1,
        },
        out=str(run_dir),
    )
    local = local or _LocalRuns()
    todo = _todo(cfg, resume)
    if todo != "done":
        local(cfg, simulate=False, resume=todo == "resume")
    records = RunDir(run_dir).metrics()
    if local.stop:  # stopped before the target was known: the sweep stops too, its tables naming no target
        return base.replace(train={"target_loss": None}), collect(cfg, "real", perf, stopped=True)
    if len(records) < epochs or not is_finite_number(records[-1]["val_loss"]):
        raise RuntimeError(
            f"the sequential run in {run_dir} did not finish {epochs} finite epochs; see {run_dir / 'summary.json'}"
        )
    target = records[-1]["val_loss"] * (1 + TARGET_RTOL)
    result = collect(cfg, "real", perf)
    result.status, result.time_to_target_s = "reached_target", records[-1]["time_s"]
    if perf is not None:
        result.predicted_s = epochs * _epoch_time(perf, cfg)
    return base.replace(train={"target_loss": target}), result


def _todo(cfg: RunConfig, resume: bool) -> str:
    """What a grid point needs: ``"new"``, ``"resume"`` (its run started and did not end), or ``"done"``."""
    run = RunDir(cfg.out)
    if not (resume and run.exists()):
        return "new"
    return "done" if (run.summary() or {}).get("status") in ENDED else "resume"


def _epoch_time(perf: PerfModel, cfg: RunConfig) -> float:
    split = load_split(cfg.data)
    t = cfg.train
    return perf.epoch_time(t.strategy, t.workers, t.batch_size, len(split.train), len(split.val), t.exact)


def collect(cfg: RunConfig, mode: str, perf: Optional[PerfModel], *, failure: Optional[str] = None, stopped=False):
    """Read the summary of the run in ``cfg.out`` and predict its wall time.

    ``failure``: why the run may have ended without finishing (its mpirun job died). Such a run is
    recorded as failed for that reason, in its run directory too when it has one. ``stopped``: the sweep was
    stopped, so a run that never began is recorded as stopped."""
    run = RunDir(cfg.out)
    summary = run.summary()
    if summary is None or summary.get("status") == "running":
        summary = {
            **(summary or {}),
            "status": "stopped" if stopped and not failure else "failed",
            "epochs": len(run.metrics()),
        }
        if failure:
            summary["error"] = failure
            if run.exists():  # the job died mid-run: its files say so (its ranks could not)
                run.commit(run.metrics(), summary)
    t = cfg.train
    predicted = None
    if perf is not None and summary.get("status") == "reached_target":
        predicted = summary["epochs"] * _epoch_time(perf, cfg)
    return RunResult(
        t.strategy,
        t.workers,
        mode,
        summary.get("status", "failed"),
        int(summary.get("epochs", 0)),
        summary.get("time_to_target_s") if mode == "real" else None,
        predicted,
        str(cfg.out),
        error=summary.get("error"),
        exact=t.exact,
    )


def run_study(
    study: StudyConfig, progress: bool = True, say=print, overwrite: bool = False, stop: Optional[StopFlag] = None
) -> list[RunResult]:
    """The whole study of ``study``: trace the model once, measure the wall-time model (unless
    ``study.calibrate`` is off), then :func:`sweep` the grid into ``study.out``, which must be new or empty,
    or hold an earlier study that ``overwrite`` replaces as a whole. ``say`` gets one line per stage.
    SIGINT and SIGTERM stop it: before the grid (the model's set-up, the calibration), at once, keeping nothing
    (:class:`~gmmkit.signals.Interrupted`); during the grid as :func:`sweep` says. Returns the table rows (also
    in ``results.json``)."""
    study = study.validate()
    network.check_hosts(study.placement)
    resolve_backend(study.run.train.backend)  # refused before anything is written
    cfg = study.run
    out = fresh_folder(study.out, "study.json", overwrite)
    atomic_write_json(out / "study.json", study.to_dict())
    with stop_on_signals(stop) as stop:
        perf = None
        with raise_on_signals():  # the set-up and the calibration are thrown away whole when stopped, at once
            # traced once, shared by the calibration and every simulated run
            trainer = training.Trainer(cfg.replace(train={"workers": 1, "strategy": "strong"}), simulate=True)
            if study.calibrate and not stop:
                say("calibrating the wall-time model T(n) = Ts + Tp/n + c log2(n) ...")
                reuse = trainer.ctx.size == 1 and cfg.train.threads == 1  # calibration times one thread
                perf = calibrate(
                    cfg,
                    ranks=min(2, study.real_limit),
                    trainer=trainer if reuse else None,
                    placement=study.placement,
                    exact=cfg.train.exact,
                )
                say(
                    f"  per step {perf.t_fixed * 1e3:.2f} ms fixed + {perf.t_sample * 1e3:.3f} ms per sample; "
                    f"allreduce of {perf.gradient_bytes / 1e6:.2f} MB: {perf.allreduce_s * 1e3:.2f} ms"
                    + (f"; an exact step takes {perf.exact_factor:.2f} times a default one" if cfg.train.exact else "")
                    + (
                        f"; ranks sharing this host: steps {perf.shared_host:.2f} times slower, "
                        f"{perf.step_overhead_s * 1e3:.2f} ms added by a 2-rank step's collectives"
                        if perf.step_overhead_s is not None
                        else ""
                    )
                )
        rows = sweep(dataclasses.replace(study, out=str(out)), perf, progress, trainer, stop)
        if stop:
            say(
                f"stopped by signal {stop.signum}: the tables and figures in {out} hold the runs that finished"
                if stop.signum
                else f"stopped: the tables and figures in {out} hold the runs that finished"
            )
        return rows
