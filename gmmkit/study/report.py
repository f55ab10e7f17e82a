"""A study's report: one row per grid point (:class:`RunResult`), the efficiencies, the tables (``tables.md``),
``results.json`` and the figures (Tables I and II, Figures 2 to 5 of the paper)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..config import RunConfig
from ..files import atomic_write_json, atomic_write_text
from ..training import RunDir
from .perfmodel import PerfModel, efficiency


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
    error: Optional[str] = None  # why a failed run failed (its own error, or the rank that ended its job)
    exact: bool = False  # trained in exact mode (train.exact)
    same_path: Optional[str] = None  # strong scaling: "yes" when its losses equal the sequential run's bits
    restarts: int = 0  # an elastic study's restarts of the run (its summary.json lists them: study/batch.py)

    @property
    def time_s(self) -> Optional[float]:
        """The time the tables use: measured where real, predicted where simulated."""
        return self.time_to_target_s if self.mode == "real" else self.predicted_s


def same_path(run_dir: str | Path, reference_dir: str | Path) -> Optional[str]:
    """Whether a run's training and validation losses equal the reference run's to the last bit in every
    epoch both have: ``"yes"``, ``"no (epoch k)"`` from the first epoch that differs, or None when either
    has no epoch. JSON keeps a float's every bit, so the comparison is of the values the runs computed."""
    ours, theirs = RunDir(run_dir).metrics(), RunDir(reference_dir).metrics()
    if not ours or not theirs:
        return None
    for a, b in zip(ours, theirs):
        if (a["train_loss"], a["val_loss"]) != (b["train_loss"], b["val_loss"]):
            return f"no (epoch {a['epoch']})"
    return "yes"


def add_efficiency(rows: Iterable[RunResult]) -> None:
    """Efficiency T1 / (n Tn) per strategy (paper Section VII); NaN where the target was not reached. Both
    times come from one source: a real run's measured Tn over the measured T1, a simulated run's predicted
    Tn over the predicted T1, so that the model's error on this machine cancels instead of scaling the
    simulated efficiencies (measured T1 over predicted Tn put 4 workers at 104 % beside 84 % measured at 2)."""
    rows = list(rows)
    for r in rows:
        base = next((b for b in rows if b.strategy == r.strategy and b.workers == 1), None)
        t1 = None if base is None else base.time_to_target_s if r.mode == "real" else base.predicted_s
        value = efficiency(t1, r.workers, r.time_s)
        r.efficiency = value if r.status == "reached_target" and value is not None else math.nan


def format_tables(rows: Sequence[RunResult]) -> str:
    """One markdown table per strategy: status, time to target (measured and predicted), epochs, efficiency;
    exact runs say so in their mode, and strong scaling's table says whether each run took the sequential
    path to the last bit."""
    parts = []
    for strategy in dict.fromkeys(r.strategy for r in rows):
        path = strategy == "strong"
        parts.append(
            f"### {strategy}\n\n| n | mode | status | epochs | measured s | predicted s | efficiency % |"
            + (" losses = sequential's |" if path else "")
            + "\n|---:|---|---|---:|---:|---:|---:|"
            + ("---|" if path else "")
        )
        for r in (r for r in rows if r.strategy == strategy):
            eff = "NaN" if math.isnan(r.efficiency) else f"{100 * r.efficiency:.2f}"
            same = ("(itself)" if r.workers == 1 else r.same_path or "-") if path else None
            status = r.status + (f" (restarted {r.restarts}x)" if r.restarts else "")
            parts.append(
                f"| {r.workers} | {r.mode}{', exact' if r.exact else ''} | {status} | {r.epochs} | "
                f"{_num(r.time_to_target_s)} | {_num(r.predicted_s)} | {eff} |" + (f" {same} |" if path else "")
            )
        parts.append("")
    return "\n".join(parts)


def _num(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def write_report(rows: Sequence[RunResult], out: Path, base: RunConfig, perf: Optional[PerfModel]) -> None:
    from ..plots import sweep as sweep_plots  # heavy: plotly

    tables = format_tables(rows)
    atomic_write_text(out / "tables.md", tables)
    atomic_write_json(
        out / "results.json",
        {
            "config": base.to_dict(),
            "perf_model": perf.to_dict() if perf else None,
            "runs": [{**r.__dict__, "efficiency": None if math.isnan(r.efficiency) else r.efficiency} for r in rows],
        },
    )
    curves = {(r.strategy, r.workers): RunDir(r.run_dir).metrics() for r in rows if r.mode != "skipped"}
    sweep_plots.write_figures(rows, curves, out, target=base.train.target_loss)
