"""The training dashboard of a notebook: start, watch, stop and compare runs on an MPI cluster.

Pick a strategy, the number of workers (one MPI rank, one GPU each; at most the cluster's slots when it
knows them), the base learning rate and batch, the target loss and the epoch limit, then Start. The run goes
to the cluster's engines (see :mod:`gmmkit.cluster`); a background thread follows it, adding each
epoch to the live loss plot, the runs table and the status line while the notebook stays free. Stop asks the
run to end after its current step.

Runs compare in a sortable table (click a header) and a parallel-coordinates view of their settings against
the time to target; each run's curves can be hidden from the table. Below, one run's details: each rank's
step time with the slowest rank named, an elastic run's restarts (:mod:`gmmkit.ui.restarts`), and each
rank's output (stdout and stderr) with errors marked (:mod:`gmmkit.ui.panels`). A dashboard opened in a new
kernel re-attaches: it finds the runs already under its output folder, finished or still training, and
follows the latter through their files.

The logic behind every control is a plain method (``start``, ``stop``, ``poll``, ``update``, ``attach``), so
it runs, and is tested, without a browser; the buttons only call those methods.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import ipywidgets as W

from ..config import RunConfig
from ..errors import InputError
from ..plots import live
from ..plots import runs as run_plots
from ..training.rundir import RunDir
from . import runs as run_rows
from .controls import RunControls
from .format import estimate_remaining, format_number, format_seconds
from .panels import RankLogs, rank_hosts, ranks_html
from .restarts import restarts_html
from .runs import DashboardRun
from .runs_table import RunsTable
from .viewer import SliceViewer


class Dashboard:
    """Start, watch, stop and compare training runs on an MPI cluster, from a notebook.

    ``cluster``: an :class:`gmmkit.cluster.MPICluster` (or anything with ``train(cfg)`` returning a
    :class:`~gmmkit.cluster.RunHandle`, and ``resize(n)``), or a factory ``n -> cluster``
    called when a run needs one. ``base``: the :class:`RunConfig` the controls start from. Runs write to
    ``out/NN-strategy-nN``; the runs already in ``out`` are shown at once. ``viewer=True`` adds a
    :class:`SliceViewer` that follows the current run. ``poll_interval``: seconds between looks at running
    runs; ``None`` follows nothing by itself (call :meth:`poll`), which is what tests do.
    """

    def __init__(
        self,
        cluster: Any,
        base: Optional[RunConfig] = None,
        out: str = "runs/dashboard",
        viewer: bool = True,
        poll_interval: Optional[float] = 0.5,
        max_workers: int = 64,
    ):
        if cluster is None or not (hasattr(cluster, "train") or callable(cluster)):
            raise InputError(
                f"cluster: expected an MPICluster, a factory n -> cluster, or an object with "
                f"train(cfg), received {type(cluster).__name__ if cluster is not None else None}"
            )
        self.cluster = cluster if hasattr(cluster, "train") else None
        self._factory: Optional[Callable[[int], Any]] = None if self.cluster is not None else cluster
        self.base = (base or RunConfig()).validate()
        self.out = str(out)
        self.poll_interval = poll_interval
        self.runs: list[DashboardRun] = []
        self.current: Optional[DashboardRun] = None  # the latest run started here
        self._lock = threading.RLock()
        self._thread: Optional[threading.Thread] = None

        t = self.base.train
        slots = getattr(self.cluster, "slots", None)
        limit = min(max_workers, slots) if isinstance(slots, int) and slots > 0 else max_workers
        c = self.controls = RunControls(t, limit, max_workers)
        self.strategy, self.workers, self.lr, self.batch = c.strategy, c.workers, c.lr, c.batch
        self.target, self.epochs, self.exact = c.target, c.epochs, c.exact
        self.start_button, self.stop_button = c.start_button, c.stop_button
        self.start_button.on_click(self.on_start)
        self.stop_button.on_click(self.on_stop)
        self.status = W.HTML(value=self._status_html("ready: choose a strategy and press Start"))
        self.figure = live.loss_figure(self.base.train.target_loss)
        self.table = RunsTable(on_visible=self.show_curves)
        self.parallel = run_plots.parallel_figure()
        self.detail = W.Dropdown(
            options=[("-", None)], value=None, description="details of", layout=W.Layout(width="330px")
        )
        self.detail.observe(lambda _c: self._draw_details(), names="value")
        self.ranks = W.HTML(value=ranks_html(None, label="no run yet"))
        self.logs = RankLogs()
        self.viewer: Optional[SliceViewer] = SliceViewer(volume=False) if viewer else None
        parts = [
            W.HBox([*c.settings, W.VBox([c.start_button, c.stop_button, c.exact])]),
            self.status,
            self.figure,
            self.table.widget,
            self.parallel,
            W.HTML("<b>one run in detail</b>"),
            self.detail,
            self.ranks,
            self.logs.widget,
        ]
        if self.viewer is not None:
            parts.append(self.viewer.widget)
        self.widget = W.VBox(parts, layout=W.Layout(width="100%"))
        self.widget.add_class("gmmkit-dashboard")
        self.attach()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # --- what the controls do ----------------------------------------------------------------
    def config(self) -> RunConfig:
        """The RunConfig the controls describe (the next run's, before its ``out`` is chosen)."""
        return self.base.replace(train=self.controls.fields())

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
            cfg = cfg.replace(out=f"{self.out}/{number:02d}-{t.strategy}-n{t.workers}")
            run = self._add(
                DashboardRun(
                    number=number,
                    label=f"#{number} {t.strategy} n={t.workers}",
                    cfg=cfg,
                    clicked=time.perf_counter(),
                    trace=-1,
                )
            )
            self.current = run
            live.set_target(self.figure, t.target_loss)
            self.start_button.disabled, self.stop_button.disabled = True, False
        if self.poll_interval is None:
            self._submit(run)
        else:
            threading.Thread(target=self._submit, args=(run,), name=f"gmmkit-start-{number}", daemon=True).start()
            self._watch()
        return run

    def _add(self, run: DashboardRun) -> DashboardRun:
        run.trace = live.add_run(self.figure, run.label, run.cfg.train.strategy)
        self.runs.append(run)
        self.detail.options = [(r.label, r.number) for r in self.runs]
        self.detail.value = run.number
        self._redraw_tables()
        return run

    def _next_number(self) -> int:
        """The next run's number: after every run shown and every numbered folder in ``out``."""
        taken = [r.number for r in self.runs]
        folder = Path(self.out)
        if folder.is_dir():
            taken += [n for n in (run_rows.run_number(p) for p in folder.iterdir()) if n is not None]
        return max(taken, default=0) + 1

    def attach(self) -> list[DashboardRun]:
        """Show the runs under ``out`` that the dashboard does not show yet (finished, or still training: those
        are followed through their files); returns them."""
        known = {Path(r.cfg.out).resolve() for r in self.runs}
        added = []
        for path in run_rows.discover(self.out):
            if path.resolve() in known:
                continue
            run_dir = RunDir(path)
            try:
                cfg = run_dir.config()
            except Exception:  # not readable (yet): the next look will try again
                continue
            t, number = cfg.train, run_rows.run_number(path) or self._next_number()
            run = DashboardRun(
                number=number,
                label=f"#{number} {t.strategy} n={t.workers}",
                cfg=cfg,
                clicked=time.perf_counter(),
                trace=-1,
                attached=True,
                handle=run_rows.RunDirHandle(path),
            )
            self._add(run)
            for record in run.handle.metrics:
                self.update(record, run, quiet=True)
            if run.handle.done():
                self._finish(run, summary=run_rows.summary_status(run_dir.summary() or {}, running=False), quiet=True)
            added.append(run)
        if added:
            self._redraw_tables()
        if added and any(not r.finished.is_set() for r in added) and self.poll_interval is not None:
            self._watch()
        return added

    def stop(self, run: Optional[DashboardRun] = None) -> None:
        """Ask a run (default: the current one) to stop after its current step (status ``stopped``)."""
        run = run or self.current
        if run is None or run.finished.is_set():
            self._set_status("nothing is running")
            return
        run.stop_clicked = time.perf_counter()
        if run is self.current:
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

    def show_curves(self, number: int, visible: bool) -> None:
        """Show or hide run ``number``'s curves on the loss plot (the table's checkboxes)."""
        run = next((r for r in self.runs if r.number == number), None)
        if run is None:
            raise InputError(f"run: expected one of {[r.number for r in self.runs]}, received {number!r}")
        live.set_run_visible(self.figure, run.trace, visible)

    # --- following runs ---------------------------------------------------------------------
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

    def _watch(self) -> None:
        """Follow every unfinished run in one background thread, while there is any (the thread decides to end
        under the lock that adding a run holds, so a run added meanwhile is never left unfollowed)."""
        with self._lock:
            if self._thread is not None:
                return

            def loop():
                while True:
                    with self._lock:
                        if all(r.finished.is_set() for r in self.runs):
                            self._thread = None
                            return
                    self.poll()
                    time.sleep(self.poll_interval)

            self._thread = threading.Thread(target=loop, name="gmmkit-dashboard", daemon=True)
            self._thread.start()

    def poll(self) -> int:
        """Look at every unfinished run once: draw new epochs, finish the runs that ended. Returns new epochs."""
        new = 0
        for run in [r for r in self.runs if not r.finished.is_set() and r.handle is not None]:
            records = list(run.handle.metrics)
            for record in records[len(run.records) :]:
                self.update(record, run)
                new += 1
            for line in run_rows.restart_news(run):  # an elastic run lost an engine or a host, and goes on
                self._set_status(f"{run.label}: {line}")
            if run.handle.done():
                try:
                    summary = run.handle.wait(timeout=10)
                except Exception as exc:
                    self._finish(run, error=f"{type(exc).__name__}: {exc}")
                else:
                    for record in list(run.handle.metrics)[len(run.records) :]:
                        self.update(record, run)
                    self._finish(run, summary=summary)
        if self.rows() != self.table.rows:  # a change no epoch brings: an elastic run's restart
            self._redraw_tables()
        self._draw_details()
        return new

    def update(self, record: dict, run: Optional[DashboardRun] = None, quiet: bool = False) -> None:
        """Add one epoch's metrics record of ``run`` (default: the current one) to the plot and the status."""
        run = run or self.current
        if run is None:
            raise InputError("update: no run to add the record to; start one first")
        with self._lock:
            run.records.append(record)
            if run.first_epoch_s is None and not run.attached:
                run.first_epoch_s = time.perf_counter() - run.clicked
            live.add_record(self.figure, run.trace, record)
        if quiet:
            return
        self._redraw_tables()
        t = run.cfg.train
        left = estimate_remaining(run.records, t.epochs, t.target_loss)
        self._set_status(
            f"{run.label}: epoch {record['epoch']}/{t.epochs} &middot; train "
            f"{format_number(record['train_loss'])} &middot; val {format_number(record['val_loss'])} &middot; "
            f"{format_seconds(record['time_s'])} elapsed &middot; about {format_seconds(left)} left",
            escape=False,
        )
        if self.viewer is not None and (run is self.current or self.current is None):
            self.viewer.follow(run.cfg.out)

    def _finish(
        self, run: DashboardRun, summary: Optional[dict] = None, error: Optional[str] = None, quiet: bool = False
    ) -> None:
        with self._lock:
            if run.finished.is_set():
                return
            run.summary, run.error = summary, error
            if run.stop_clicked is not None:
                run.stop_s = time.perf_counter() - run.stop_clicked
            run.finished.set()
            if run is self.current:
                self.start_button.disabled, self.stop_button.disabled = False, True
        self._redraw_tables()
        if quiet:
            return
        if error:
            self._set_status(f"{run.label} failed: {error}", error=True)
        else:
            ttt = summary.get("time_to_target_s")
            reached = f", target reached in {format_seconds(ttt)}" if ttt is not None else ""
            self._set_status(
                f"{run.label}: {summary['status']} after {summary.get('epochs', len(run.records))} "
                f"epochs{reached}; best val {format_number(summary.get('best_val_loss'))}"
            )
        if self.viewer is not None and not error and run is self.current:
            self.viewer.follow(run.cfg.out)

    # --- rendering --------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """The runs table as dicts (:func:`gmmkit.ui.runs.table_rows`), in the order runs were added."""
        return run_rows.table_rows(self.runs)

    def _redraw_tables(self) -> None:
        rows = self.rows()
        self.table.set_rows(rows)
        run_plots.update_parallel(self.parallel, run_rows.parallel_columns(rows))

    def _draw_details(self) -> None:
        run = next((r for r in self.runs if r.number == self.detail.value), None)
        if run is None:
            return
        last = run.records[-1] if run.records else None
        self.ranks.value = ranks_html(last, rank_hosts(run.summary), label=run.label) + restarts_html(run)
        # the processes that ran (one for a simulated run of n workers); a run found on disk left no output here
        ranks = len((last or {}).get("rank_step_s") or ()) or run.cfg.train.workers
        self.logs.update(run.handle if not run.attached else None, 1 if run.attached else ranks, label=run.label)

    def _set_status(self, text: str, error: bool = False, escape: bool = True) -> None:
        self.status.value = self._status_html(html.escape(text) if escape else text, error)

    @staticmethod
    def _status_html(text: str, error: bool = False) -> str:
        colour = "#b00020" if error else "#333"
        return f'<div class="gmmkit-status" style="font-family:monospace;color:{colour}">{text}</div>'
