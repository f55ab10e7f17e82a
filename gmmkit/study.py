"""The paper's study: time to target for each strategy and worker count (Section VII, Tables I and II).

:func:`sweep` runs a grid of (strategy, n). Each run is its own process, so runs do not share TensorFlow
state or memory: ``n`` real Horovod ranks under mpirun where this machine can run them (``n <= max_real``),
otherwise, with ``simulate``, one process that follows the exact optimisation path of n workers (the global
batch and the learning-rate schedule are all that matter) and whose wall time the calibrated
:class:`~gmmkit.perfmodel.PerfModel` predicts. Where both exist the table shows predicted beside measured.

Every strategy at n = 1 is the same sequential run, so it is run once and shared.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import launch, strategies
from .config import RunConfig
from .io import atomic_write_json, atomic_write_text, read_jsonl
from .perfmodel import PerfModel


@dataclass
class RunResult:
    strategy: str
    workers: int
    mode: str  # "real" | "simulated" | "skipped"
    status: str
    epochs: int
    time_to_target_s: Optional[float]  # measured (real runs)
    predicted_s: Optional[float]  # from the perf model, at the epochs the run took to reach the target
    run_dir: str
    efficiency: float = math.nan

    @property
    def time_s(self) -> Optional[float]:
        """The time the tables use: measured where real, predicted where simulated."""
        return self.time_to_target_s if self.mode == "real" else self.predicted_s


def run_dir_for(out: Path, strategy: str, n: int) -> Path:
    return out / "runs" / f"{'sequential' if n == 1 else strategy}-n{n}"


def _run_one(cfg: RunConfig, n: int, mode: str, run_dir: Path) -> int:
    """Train one grid point in a fresh process; returns its exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "requested-config.json"
    atomic_write_text(config_path, cfg.to_json())
    argv = [sys.executable, "-m", "gmmkit", "train", "--config", str(config_path)]
    if mode == "simulated":
        argv.append("--simulate")
    if mode == "real" and n > 1:
        cmd = launch.mpirun_command(n, argv)
    else:
        cmd = argv
    with open(run_dir / "stdout.log", "w") as fh:
        return subprocess.run(cmd, env=launch.mpi_env(), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def sweep(base: RunConfig, out: str | Path, strategies_: Sequence[str] = strategies.STRATEGIES,
          workers: Sequence[int] = (1, 2, 4, 8, 16, 32), max_real: int = 2, simulate: bool = True,
          perf: Optional[PerfModel] = None, progress: bool = True,
          target_epoch: Optional[int] = None) -> list[RunResult]:
    """Run the grid and write ``results.json``, ``tables.md`` and the figures under ``out``.

    ``target_epoch``: choose the target as the paper did, the validation loss the sequential run reaches
    after that many epochs (the paper: about 100), instead of ``base.train.target_loss``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = [(s, n) for n in workers for s in strategies_ if not (n == 1 and s != strategies_[0])]
    results: dict[tuple[str, int], RunResult] = {}
    if target_epoch:
        base, results[(strategies_[0], 1)] = sequential_target(base, out, target_epoch, perf)
        grid = [g for g in grid if g[1] != 1]
    bar = tqdm(grid, desc="sweep", unit="run", disable=not progress)
    for strategy, n in bar:
        bar.set_postfix_str(f"{strategy} n={n}")
        mode = "real" if n <= max_real else ("simulated" if simulate else "skipped")
        run_dir = run_dir_for(out, strategy, n)
        if mode == "skipped" or (strategy == "strong" and n > base.train.batch_size):
            results[(strategy, n)] = RunResult(strategy, n, "skipped", "skipped", 0, None, None, str(run_dir))
            continue
        cfg = base.replace(train={"strategy": strategy if n > 1 else "strong", "workers": n,
                                  "threads": base.train.threads or 1}, out=str(run_dir))
        _run_one(cfg, n, mode, run_dir)
        results[(strategy, n)] = collect(cfg, run_dir, mode, perf)
    rows = []
    for strategy in strategies_:
        for n in workers:
            r = results.get((strategy, n)) or results[(strategies_[0], 1)]
            if n == 1:
                r = RunResult(**{**r.__dict__, "strategy": strategy})
            rows.append(r)
    add_efficiency(rows)
    write_report(rows, out, base, perf)
    return rows


def sequential_target(base: RunConfig, out: Path, epochs: int, perf: Optional[PerfModel]):
    """Run the sequential baseline for ``epochs`` epochs; its last validation loss becomes the target."""
    run_dir = run_dir_for(out, "strong", 1)
    cfg = base.replace(train={"strategy": "strong", "workers": 1, "epochs": epochs, "target_loss": None,
                              "threads": base.train.threads or 1}, out=str(run_dir))
    _run_one(cfg, 1, "real", run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    if len(records) < epochs or not math.isfinite(records[-1]["val_loss"]):
        raise RuntimeError(f"the sequential run in {run_dir} did not finish {epochs} finite epochs; "
                           f"see {run_dir / 'stdout.log'}")
    target = records[-1]["val_loss"]
    result = collect(cfg, run_dir, "real", perf)
    result.status, result.time_to_target_s = "reached_target", records[-1]["time_s"]
    if perf is not None:
        result.predicted_s = epochs * _epoch_time(perf, cfg)
    return base.replace(train={"target_loss": target}), result


def _epoch_time(perf: PerfModel, cfg: RunConfig) -> float:
    from .data import load_split

    split = load_split(cfg.data)
    t = cfg.train
    return perf.epoch_time(t.strategy, t.workers, t.batch_size, len(split.train), len(split.val))


def collect(cfg: RunConfig, run_dir: Path, mode: str, perf: Optional[PerfModel]) -> RunResult:
    """Read a finished run's summary and predict its wall time."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        summary = {"status": "failed", "epochs": len(read_jsonl(run_dir / "metrics.jsonl"))}
    t = cfg.train
    predicted = None
    if perf is not None and summary.get("status") == "reached_target":
        predicted = summary["epochs"] * _epoch_time(perf, cfg)
    return RunResult(t.strategy, t.workers, mode, summary.get("status", "failed"), int(summary.get("epochs", 0)),
                     summary.get("time_to_target_s") if mode == "real" else None, predicted, str(run_dir))


def add_efficiency(rows: Iterable[RunResult]) -> None:
    """Efficiency T1 / (n Tn) per strategy (paper Section VII); NaN where the target was not reached."""
    rows = list(rows)
    for r in rows:
        base = next((b for b in rows if b.strategy == r.strategy and b.workers == 1), None)
        t1, tn = (base.time_s if base else None), r.time_s
        if r.status == "reached_target" and t1 and tn:
            r.efficiency = t1 / (r.workers * tn)
        else:
            r.efficiency = math.nan


def format_tables(rows: Sequence[RunResult]) -> str:
    """One markdown table per strategy: status, time to target (measured and predicted), epochs, efficiency."""
    parts = []
    for strategy in dict.fromkeys(r.strategy for r in rows):
        parts.append(f"### {strategy}\n\n| n | mode | status | epochs | measured s | predicted s | efficiency % |\n"
                     "|---:|---|---|---:|---:|---:|---:|")
        for r in (r for r in rows if r.strategy == strategy):
            eff = "NaN" if math.isnan(r.efficiency) else f"{100 * r.efficiency:.2f}"
            parts.append(f"| {r.workers} | {r.mode} | {r.status} | {r.epochs} | {_num(r.time_to_target_s)} | "
                         f"{_num(r.predicted_s)} | {eff} |")
        parts.append("")
    return "\n".join(parts)


def _num(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def write_report(rows: Sequence[RunResult], out: Path, base: RunConfig, perf: Optional[PerfModel]) -> None:
    from .plots import sweep as sweep_plots

    tables = format_tables(rows)
    atomic_write_text(out / "tables.md", tables)
    atomic_write_json(out / "results.json", {
        "config": base.to_dict(), "perf_model": perf.to_dict() if perf else None,
        "runs": [{**r.__dict__, "efficiency": None if math.isnan(r.efficiency) else r.efficiency} for r in rows],
    })
    curves = {(r.strategy, r.workers): read_jsonl(Path(r.run_dir) / "metrics.jsonl") for r in rows
              if r.mode != "skipped"}
    sweep_plots.write_figures(rows, curves, out, target=base.train.target_loss)
