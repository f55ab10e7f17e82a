"""The runs a dashboard compares: found on disk or started from it, as rows to sort and columns to plot.

Plain Python, no widgets. :func:`discover` finds run directories under a folder (from any source: a shell,
a notebook, a cluster, a sweep); :class:`RunDirHandle` follows one through its files alone, so a dashboard
opened in a new kernel re-attaches to runs still training (their ``.lock`` is held while they run,
:meth:`gmmkit.training.rundir.RunDir.in_use`). :func:`table_rows` and :func:`sort_rows` make the sortable runs
table, :func:`parallel_columns` the parallel-coordinates view of settings against time to target.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..checks import is_finite_number
from ..config import RunConfig
from ..study.perfmodel import efficiency
from ..training.rundir import RunDir
from .restarts import restarts_of

# (key, header) of the runs table, in order
COLUMNS = (
    ("run", "run"),
    ("strategy", "strategy"),
    ("workers", "n"),
    ("hosts", "hosts"),
    ("lr", "lr"),
    ("batch_size", "batch"),
    ("exact", "exact"),
    ("status", "status"),
    ("epochs", "epochs"),
    ("best_val_loss", "best val"),
    ("time_to_target_s", "time to target"),
    ("efficiency", "efficiency"),
    ("restarts", "restarts"),
)
STRATEGY_ORDER = ("strong", "weak", "lsr", "warmup")


@dataclass
class DashboardRun:
    """One run the dashboard shows: started from it, or found in its output folder (``attached``)."""

    number: int
    label: str
    cfg: RunConfig
    trace: int  # its run number on the loss figure
    clicked: float  # time.perf_counter() at Start (or when attached)
    handle: Any = None  # what cluster.train returned, or a RunDirHandle
    records: list = field(default_factory=list)
    first_epoch_s: Optional[float] = None  # Start to first epoch on the plot
    stop_clicked: Optional[float] = None
    stop_s: Optional[float] = None  # Stop to the run's end
    summary: Optional[dict] = None
    error: Optional[str] = None
    attached: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    events_shown: int = 0  # the lines of handle.events (an elastic run's losses and restarts) shown so far

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return self.summary.get("status", "running") if self.summary else "running"


def restart_news(run: DashboardRun) -> list[str]:
    """The lines of ``run``'s losses and restarts not shown yet (an elastic run on a cluster:
    :class:`gmmkit.cluster.elastic.ElasticRun` ``.events``, e.g. ``restart 1/3: rank 1 (pid 42 on node1) was killed
    by SIGKILL; going on with 1 of 2 workers ...``); marks them shown."""
    events = list(getattr(run.handle, "events", None) or ())
    news, run.events_shown = events[run.events_shown :], len(events)
    return news


def discover(folder: str | Path, depth: int = 2) -> list[Path]:
    """Run directories in ``folder`` (itself, or below it down to ``depth`` levels), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if RunDir(folder).exists():
        return [folder]
    found: list[Path] = []
    if depth > 0:
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += discover(child, depth - 1)
    return found


def run_number(path: Path) -> Optional[int]:
    """The number a dashboard gave a run directory (``07-strong-n2`` is 7), or None."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class RunDirHandle:
    """A run followed through its directory alone (the :class:`~gmmkit.cluster.RunHandle`
    protocol): epoch records from ``metrics.jsonl``, done once no process holds the run's lock, the summary
    from ``summary.json``, and stop through the ``STOP`` file. Any run, started anywhere."""

    def __init__(self, path: str | Path):
        self.run_dir = RunDir(path)

    @property
    def metrics(self) -> list[dict]:
        try:
            return self.run_dir.metrics()
        except (FileNotFoundError, ValueError):  # between a run's claim and its first state
            return []

    def done(self) -> bool:
        return not self.run_dir.in_use()

    def wait(self, timeout: Optional[float] = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_dir.path}: still running after {timeout} s")
            time.sleep(0.2)
        return summary_status(self.run_dir.summary() or {}, running=False)

    def stop(self, wait: bool = True, timeout: float = 30.0) -> Optional[dict]:
        if not self.done():
            self.run_dir.request_stop()
        return self.wait(timeout=timeout) if wait else None


def summary_status(summary: dict, running: bool) -> dict:
    """A summary as a dashboard shows it: a run whose summary still says ``running`` but that no process
    holds any more was interrupted (killed, or its machine lost)."""
    if summary.get("status", "running") == "running" and not running:
        return {**summary, "status": "interrupted"}
    return summary


def hosts_of(summary: Optional[dict]) -> list[str]:
    """The distinct hosts a run used, in rank order, from ``summary["hosts"]`` (a list per rank, a mapping
    or a count), or [] when the summary does not say."""
    hosts = (summary or {}).get("hosts")
    if isinstance(hosts, dict):
        hosts = [hosts[k] for k in sorted(hosts, key=str)]
    if isinstance(hosts, (list, tuple)):
        return list(dict.fromkeys(str(h) for h in hosts))
    if isinstance(hosts, int) and not isinstance(hosts, bool):
        return [f"{hosts} hosts"] if hosts != 1 else ["1 host"]
    return []


def table_rows(runs: Sequence[Any]) -> list[dict]:
    """One dict per run for the runs table (keys: :data:`COLUMNS`, plus ``key``, ``number``,
    ``first_epoch_s``, ``stop_s``). ``runs``: objects with ``label``, ``cfg``, ``status``, ``summary``,
    ``records`` (a :class:`DashboardRun`). Efficiency ``T1 / (n Tn)`` is against the
    first sequential run that reached the same target; ``restarts`` counts an elastic run's (None for others)."""
    base = next(
        (
            r
            for r in runs
            if r.cfg.train.workers == 1 and r.summary and is_finite_number(r.summary.get("time_to_target_s"))
        ),
        None,
    )
    rows = []
    for r in runs:
        s, t = r.summary or {}, r.cfg.train
        ttt = s.get("time_to_target_s")
        same = base is not None and base.cfg.train.target_loss == t.target_loss
        finite = [x["val_loss"] for x in r.records if is_finite_number(x.get("val_loss"))]
        restarts = restarts_of(r)
        rows.append(
            {
                "key": r.number,
                "number": r.number,
                "run": r.label,
                "strategy": t.strategy,
                "workers": t.workers,
                "hosts": ", ".join(hosts_of(s)) or "-",
                "lr": t.lr,
                "batch_size": t.batch_size,
                "exact": getattr(t, "exact", None),
                "status": r.status,
                "epochs": s.get("epochs", len(r.records)),
                "best_val_loss": s.get("best_val_loss", min(finite) if finite else None),
                "time_to_target_s": ttt,
                "efficiency": efficiency(base.summary["time_to_target_s"], t.workers, ttt) if same else None,
                "first_epoch_s": getattr(r, "first_epoch_s", None),
                "stop_s": getattr(r, "stop_s", None),
                "restarts": None if restarts is None else len(restarts),
            }
        )
    return rows


def sort_rows(rows: list[dict], key: str, descending: bool = False) -> list[dict]:
    """``rows`` ordered by ``key``; missing values (None, NaN, "-") last in either direction."""

    def present(r):
        v = r.get(key)
        return not (v is None or v == "-" or (isinstance(v, float) and math.isnan(v)))

    have = [r for r in rows if present(r)]
    order = sorted(have, key=lambda r: _sort_key(key, r[key]), reverse=descending)
    return order + [r for r in rows if not present(r)]


def _sort_key(key: str, value):
    if key == "strategy" and value in STRATEGY_ORDER:
        return (0, STRATEGY_ORDER.index(value))
    if key == "run":
        return (0, value.split(" ", 1)[0].lstrip("#").zfill(6) + value)
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def parallel_columns(rows: Sequence[dict]) -> dict:
    """What the parallel-coordinates view draws: ``dimensions`` (label, values, and ticks for the coded
    ones) and ``colour`` (time to target). A run that did not reach the target is drawn above the slowest one,
    on a tick named "not reached"; the learning rate is on a log10 axis."""
    if not rows:
        return {"dimensions": [], "colour": []}
    reached = [r["time_to_target_s"] for r in rows if is_finite_number(r["time_to_target_s"])]
    missing = max(reached) * 1.25 if reached else 1.0
    ttt = [r["time_to_target_s"] if is_finite_number(r["time_to_target_s"]) else missing for r in rows]
    strategies = [s for s in STRATEGY_ORDER if any(r["strategy"] == s for r in rows)]
    strategies += sorted({r["strategy"] for r in rows} - set(strategies))
    lrs = [math.log10(r["lr"]) for r in rows]
    dims = [
        {
            "label": "strategy",
            "values": [strategies.index(r["strategy"]) for r in rows],
            "tickvals": list(range(len(strategies))),
            "ticktext": strategies,
        },
        {"label": "workers n", "values": [r["workers"] for r in rows]},
        {
            "label": "lr",
            "values": lrs,
            "tickvals": sorted(set(lrs)),
            "ticktext": [f"{10**v:.2g}" for v in sorted(set(lrs))],
        },
        {"label": "batch", "values": [r["batch_size"] for r in rows]},
    ]
    if any(r["exact"] is not None for r in rows):
        dims.append(
            {
                "label": "exact",
                "values": [int(bool(r["exact"])) for r in rows],
                "tickvals": [0, 1],
                "ticktext": ["no", "yes"],
            }
        )
    dims.append({"label": "epochs", "values": [r["epochs"] or 0 for r in rows]})
    ticks = sorted(set(reached))
    if len(ticks) > 6:  # a few round ticks, not one per run
        lo, hi = ticks[0], ticks[-1]
        ticks = [lo + (hi - lo) * i / 4 for i in range(5)]
    labels = [f"{v:.3g}" for v in ticks]
    if len(reached) < len(rows):
        ticks, labels = ticks + [missing], labels + ["not reached"]
    dims.append({"label": "time to target (s)", "values": ttt, "tickvals": ticks, "ticktext": labels})
    return {"dimensions": dims, "colour": ttt}
