"""The training dashboard of a notebook: start, watch, stop and compare runs on an MPI cluster.

Pick a strategy, the number of workers (one MPI rank, one GPU each), the base learning rate and batch, the
target loss and the epoch limit, then Start. The run goes to the cluster's engines (see
:mod:`gmmkit.parallel.cluster`); a background thread follows it, adding each epoch to the live loss plot
and the status line while the notebook stays free. Stop asks the run to end after its current step. Every
run keeps its curves, so successive runs compare on one plot, and the table below fills in as they finish.

The logic behind every control is a plain method (``Dashboard.start``, ``Dashboard.stop``,
``Dashboard.update``), so it runs, and is tested, without a browser; the buttons only call those methods.
The modules of :mod:`gmmkit.ui` are the only ones that import ipywidgets.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import ipywidgets as W

from ..config import RunConfig
from ..errors import InputError
from ..plots import live
from ..strategies import STRATEGIES
from ..study.perfmodel import efficiency
from .format import estimate_remaining, format_number, format_seconds, parse_target
from .viewer import SliceViewer


@dataclass
class DashboardRun:
    """One run started from the dashboard, as the dashboard tracks it."""

    number: int
    label: str
    cfg: RunConfig
    trace: int  # its run number on the loss figure
    clicked: float  # time.perf_counter() at Start
    handle: Any = None  # what cluster.train returned
    records: list = field(default_factory=list)
    first_epoch_s: Optional[float] = None  # Start to first epoch on the plot
    stop_clicked: Optional[float] = None
    stop_s: Optional[float] = None  # Stop to the run's end
    summary: Optional[dict] = None
    error: Optional[str] = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return self.summary["status"] if self.summary else "running"


class Dashboard:
    """Start, watch, stop and compare training runs on an MPI cluster, from a notebook.

    ``cluster``: an :class:`gmmkit.parallel.cluster.MPICluster` (or anything with ``train(cfg)`` returning a
    :class:`~gmmkit.parallel.training_run.RunHandle`, and ``resize(n)``), or a factory ``n -> cluster``
    called when a run needs one. ``base``: the :class:`RunConfig` the controls start from (data
    and model settings are taken from it as they are). Runs write to ``out/NN-strategy-nN``.
    ``viewer=True`` adds a :class:`SliceViewer` that follows the current run's checkpoints.
    ``poll_interval``: seconds between looks at a running run; ``None`` follows nothing by itself (call
    :meth:`poll`), which is what tests do.

    Display it by leaving it last in a cell. :meth:`start`, :meth:`stop` and :meth:`wait` do from code what
    the buttons do.
    """

    def __init__(self, cluster: Any, base: Optional[RunConfig] = None, out: str = "runs/dashboard",
                 viewer: bool = True, poll_interval: Optional[float] = 0.5, max_workers: int = 64):
        if cluster is None:
            raise InputError("cluster: expected an MPICluster, a factory n -> cluster, or an object with "
                             "train(cfg), received None")
        self._factory: Optional[Callable[[int], Any]] = None
        self.cluster = None
        if hasattr(cluster, "train"):
            self.cluster = cluster
        elif callable(cluster):
            self._factory = cluster
        else:
            raise InputError(f"cluster: expected an MPICluster, a factory n -> cluster, or an object with "
                             f"train(cfg), received {type(cluster).__name__}")
        self.base = (base or RunConfig()).validate()
        self.out = str(out)
        self.poll_interval = poll_interval
        self.runs: list[DashboardRun] = []
        self._lock = threading.RLock()
        self._thread: Optional[threading.Thread] = None

        t = self.base.train
        style = {"description_width": "88px"}
        layout = W.Layout(width="210px")
        self.strategy = W.Dropdown(options=list(STRATEGIES), value=t.strategy, description="strategy",
                                   style=style, layout=layout)
        self.workers = W.BoundedIntText(value=t.workers, min=1, max=max_workers, description="workers (GPUs)",
                                        style=style, layout=layout)
        self.lr = W.FloatText(value=t.lr, description="lr", style=style, layout=layout)
        self.batch = W.BoundedIntText(value=t.batch_size, min=1, max=1 << 16, description="batch",
                                      style=style, layout=layout)
        self.target = W.Text(value="none" if t.target_loss is None else f"{t.target_loss:g}",
                             description="target loss", style=style, layout=layout)
        self.epochs = W.BoundedIntText(value=t.epochs, min=1, max=100000, description="max epochs",
                                       style=style, layout=layout)
        self.start_button = W.Button(description="Start", button_style="success", icon="play",
                                     layout=W.Layout(width="100px"))
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    layout=W.Layout(width="100px"))
        self.start_button.on_click(self.on_start)
        self.stop_button.on_click(self.on_stop)
        self.status = W.HTML(value=self._status_html("ready: choose a strategy and press Start"))
        self.figure = live.loss_figure(self.base.train.target_loss)
        self.table = W.HTML(value=self._table_html())
        self.viewer: Optional[SliceViewer] = SliceViewer(volume=False) if viewer else None
        controls = W.HBox([
            W.VBox([self.strategy, self.workers]), W.VBox([self.lr, self.batch]),
            W.VBox([self.target, self.epochs]), W.VBox([self.start_button, self.stop_button]),
        ])
        parts = [controls, self.status, self.figure, self.table]
        if self.viewer is not None:
            parts.append(self.viewer.widget)
        self.widget = W.VBox(parts, layout=W.Layout(width="100%"))
        self.widget.add_class("gmmkit-dashboard")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # --- what the controls do ----------------------------------------------------------------
    def config(self) -> RunConfig:
        """The RunConfig the controls describe (the next run's, before its ``out`` is chosen)."""
        return self.base.replace(train={
            "strategy": self.strategy.value, "workers": int(self.workers.value), "lr": float(self.lr.value),
            "batch_size": int(self.batch.value), "target_loss": parse_target(self.target.value),
            "epochs": int(self.epochs.value)})

    @property
    def current(self) -> Optional[DashboardRun]:
        """The latest run (running or finished), or None before the first Start."""
        return self.runs[-1] if self.runs else None

    @property
    def running(self) -> bool:
        run = self.current
        return run is not None and not run.finished.is_set()

    def on_start(self, _button=None) -> None:
        """The Start button: :meth:`start`, with errors shown on the status line instead of raised."""
        try:
            self.start()
        except Exception as exc:  # a click has nowhere to raise to
            self._set_status(f"could not start: {exc}", error=True)

    def on_stop(self, _button=None) -> None:
        """The Stop button."""
        try:
            self.stop()
        except Exception as exc:
            self._set_status(f"could not stop: {exc}", error=True)

    def start(self) -> DashboardRun:
        """Start a run with the controls' settings; returns at once (the run is followed in the background)."""
        with self._lock:
            if self.running:
                raise InputError("a run is in progress: press Stop (or call dashboard.stop()) first")
            cfg = self.config()
            number = self._next_number()
            t = cfg.train
            label = f"#{number} {t.strategy} n={t.workers}"
            cfg = cfg.replace(out=f"{self.out}/{number:02d}-{t.strategy}-n{t.workers}")
            run = DashboardRun(number=number, label=label, cfg=cfg, clicked=time.perf_counter(),
                               trace=live.add_run(self.figure, label, t.strategy))
            self.runs.append(run)
            live.set_target(self.figure, t.target_loss)
            self.start_button.disabled, self.stop_button.disabled = True, False
        if self.poll_interval is None:
            self._submit(run)
        else:
            self._thread = threading.Thread(target=self._follow, args=(run,), name=f"gmmkit-run-{number}",
                                            daemon=True)
            self._thread.start()
        return run

    def _next_number(self) -> int:
        """The next run's number: after this dashboard's runs and after any run directory already in ``out``
        (a run directory belongs to one run; an earlier session's runs stay as they are)."""
        taken = [r.number for r in self.runs]
        folder = Path(self.out)
        if folder.is_dir():
            taken += [int(p.name.split("-", 1)[0]) for p in folder.iterdir() if p.name.split("-", 1)[0].isdigit()]
        return max(taken, default=0) + 1

    def stop(self) -> None:
        """Ask the current run to stop after its current step (it ends with status ``stopped``)."""
        run = self.current
        if run is None or run.finished.is_set():
            self._set_status("nothing is running")
            return
        run.stop_clicked = time.perf_counter()
        self.stop_button.disabled = True
        self._set_status(f"{run.label}: stopping after the current step ...")
        if run.handle is not None:
            run.handle.stop(wait=False)

    def wait(self, timeout: Optional[float] = None) -> Optional[dict]:
        """Block until the current run has finished; returns its summary (raises if it failed)."""
        run = self.current
        if run is None:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not run.finished.is_set():
            if self.poll_interval is None:
                self.poll()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{run.label}: still running after {timeout} s")
            run.finished.wait(0.2 if remaining is None else min(0.2, remaining))
        if run.error:
            raise RuntimeError(f"{run.label} failed: {run.error}")
        return run.summary

    # --- following a run -------------------------------------------------------------------
    def _cluster_for(self, n: int):
        if self.cluster is None:
            self._set_status(f"starting a cluster of {n} MPI engines ...")
            self.cluster = self._factory(n)
        elif getattr(self.cluster, "n", n) != n or not getattr(self.cluster, "running", True):
            self._set_status(f"restarting the engines with n = {n} (an MPI world is fixed at launch) ...")
            self.cluster.resize(n)
        return self.cluster

    def _submit(self, run: DashboardRun) -> None:
        try:
            cluster = self._cluster_for(run.cfg.train.workers)
            self._set_status(f"{run.label}: starting on {run.cfg.train.workers} engine(s) ...")
            run.handle = cluster.train(run.cfg)
            if run.stop_clicked is not None:  # Stop pressed while the engines were starting
                run.handle.stop(wait=False)
        except Exception as exc:
            self._finish(run, error=f"{type(exc).__name__}: {exc}")

    def _follow(self, run: DashboardRun) -> None:
        self._submit(run)
        while not run.finished.is_set():
            self.poll()
            if not run.finished.is_set():
                time.sleep(self.poll_interval)

    def poll(self) -> int:
        """Look at the current run once: draw its new epochs, and finish it if it ended. Returns new epochs."""
        run = self.current
        if run is None or run.finished.is_set() or run.handle is None:
            return 0
        records = list(run.handle.metrics)
        new = records[len(run.records):]
        for record in new:
            self.update(record, run)
        if run.handle.done():
            try:
                summary = run.handle.wait(timeout=10)
            except Exception as exc:
                self._finish(run, error=f"{type(exc).__name__}: {exc}")
            else:
                for record in list(run.handle.metrics)[len(run.records):]:
                    self.update(record, run)
                self._finish(run, summary=summary)
        return len(new)

    def update(self, record: dict, run: Optional[DashboardRun] = None) -> None:
        """Add one epoch's metrics record to the plot and the status line."""
        run = run or self.current
        if run is None:
            raise InputError("update: no run to add the record to; start one first")
        now = time.perf_counter()
        with self._lock:
            run.records.append(record)
            if run.first_epoch_s is None:
                run.first_epoch_s = now - run.clicked
            live.add_record(self.figure, run.trace, record)
        t = run.cfg.train
        left = estimate_remaining(run.records, t.epochs, t.target_loss)
        self._set_status(f"{run.label}: epoch {record['epoch']}/{t.epochs} &middot; train "
                         f"{format_number(record['train_loss'])} &middot; val {format_number(record['val_loss'])} &middot; "
                         f"{format_seconds(record['time_s'])} elapsed &middot; about {format_seconds(left)} left",
                         escape=False)
        if self.viewer is not None:
            self.viewer.follow(run.cfg.out)

    def _finish(self, run: DashboardRun, summary: Optional[dict] = None, error: Optional[str] = None) -> None:
        with self._lock:
            if run.finished.is_set():
                return
            run.summary, run.error = summary, error
            if run.stop_clicked is not None:
                run.stop_s = time.perf_counter() - run.stop_clicked
            run.finished.set()
            self.start_button.disabled, self.stop_button.disabled = False, True
            self.table.value = self._table_html()
        if error:
            self._set_status(f"{run.label} failed: {error}", error=True)
        else:
            ttt = summary.get("time_to_target_s")
            reached = f", target reached in {format_seconds(ttt)}" if ttt is not None else ""
            self._set_status(f"{run.label}: {summary['status']} after {summary['epochs']} epochs{reached}; "
                             f"best val {format_number(summary.get('best_val_loss'))}")
        if self.viewer is not None and not error:
            self.viewer.follow(run.cfg.out)

    # --- rendering --------------------------------------------------------------------------
    def _set_status(self, text: str, error: bool = False, escape: bool = True) -> None:
        self.status.value = self._status_html(html.escape(text) if escape else text, error)

    @staticmethod
    def _status_html(text: str, error: bool = False) -> str:
        colour = "#b00020" if error else "#333"
        return f'<div class="gmmkit-status" style="font-family:monospace;color:{colour}">{text}</div>'

    def rows(self) -> list[dict]:
        """The runs table as dicts: time to target and efficiency against the first sequential run."""
        done = [r for r in self.runs if r.finished.is_set()]
        base = next((r for r in done if r.cfg.train.workers == 1 and r.summary
                     and r.summary.get("time_to_target_s") is not None), None)
        rows = []
        for r in done:
            s = r.summary or {}
            ttt = s.get("time_to_target_s")
            t1 = base.summary["time_to_target_s"] if base is not None else None
            same_target = base is not None and base.cfg.train.target_loss == r.cfg.train.target_loss
            rows.append({"run": r.label, "strategy": r.cfg.train.strategy, "workers": r.cfg.train.workers,
                         "status": r.status, "epochs": s.get("epochs", len(r.records)),
                         "best_val_loss": s.get("best_val_loss"), "time_to_target_s": ttt,
                         "efficiency": efficiency(t1, r.cfg.train.workers, ttt) if same_target else None,
                         "first_epoch_s": r.first_epoch_s, "stop_s": r.stop_s})
        return rows

    def _table_html(self) -> str:
        rows = self.rows()
        if not rows:
            return "<i>finished runs appear here: time to target and efficiency T1 / (n Tn)</i>"
        head = ("run", "status", "epochs", "best val", "time to target", "efficiency")
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r["run"], r["status"], r["epochs"], format_number(r["best_val_loss"]),
                format_seconds(r["time_to_target_s"]),
                "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f} %")) + "</tr>"
            for r in rows)
        return ('<table class="gmmkit-runs" style="border-collapse:collapse">'
                + "<tr>" + "".join(f"<th style='padding:0 12px 0 0;text-align:left'>{h}</th>" for h in head)
                + "</tr>" + cells + "</table>")
