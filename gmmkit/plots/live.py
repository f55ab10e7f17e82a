"""The live loss figure: training and validation loss of every run against wall time, on one log axis.

Each run gets a pair of traces in one colour (validation solid, training dotted), so runs started one after
another stay on the plot and compare directly: the run that reaches the dashed target line first wins.
:func:`add_record` takes one epoch's metrics record (the dict the training loop writes to
``metrics.jsonl``) and appends its point; it works on a plain ``go.Figure`` as well as on the
``go.FigureWidget`` a notebook shows, where each append redraws only that figure in the browser.
"""

from __future__ import annotations

import math
from typing import Optional

import plotly.graph_objects as go

from . import empty_trace
from .sweep import STRATEGY_COLOURS

EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
TARGET_NAME = "target"


def loss_figure(target: Optional[float] = None, widget: bool = True, height: int = 380) -> go.Figure:
    """An empty loss-against-time figure (a ``FigureWidget`` when ``widget``), with the target line."""
    fig = (go.FigureWidget if widget else go.Figure)()
    fig.update_layout(
        height=height,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 40, "b": 45},
        title={"text": "Loss against wall time", "x": 0.02},
        xaxis={"title": "wall time since the run started (s)", "rangemode": "tozero"},
        yaxis={"title": "loss (MSLE)", "type": "log", "exponentformat": "power"},
        legend={"orientation": "v", "x": 1.02, "y": 1.0},
    )
    fig.add_trace(
        empty_trace(
            mode="lines",
            name=TARGET_NAME,
            line={"color": "black", "dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    set_target(fig, target)
    return fig


def run_colour(index: int, strategy: Optional[str] = None, used: tuple = ()) -> str:
    """The strategy's colour for its first run, then colours no other run uses."""
    if strategy in STRATEGY_COLOURS and STRATEGY_COLOURS[strategy] not in used:
        return STRATEGY_COLOURS[strategy]
    palette = [c for c in (*STRATEGY_COLOURS.values(), *EXTRA_COLOURS) if c not in used]
    return palette[0] if palette else EXTRA_COLOURS[index % len(EXTRA_COLOURS)]


def add_run(fig: go.Figure, label: str, strategy: Optional[str] = None) -> int:
    """Add the (validation, training) trace pair of a new run; returns the run's number (0, 1, ...)."""
    runs = run_count(fig)
    used = tuple(t.line.color for t in fig.data if t.name != TARGET_NAME)
    colour = run_colour(runs, strategy, used)
    with _batch(fig):
        fig.add_trace(
            empty_trace(
                mode="lines+markers",
                name=f"{label} val",
                legendgroup=label,
                line={"color": colour, "width": 2},
                marker={"size": 5},
                meta={"run": runs, "kind": "val_loss"},
                hovertemplate="%{y:.4g} at %{x:.1f} s<extra>" + label + " val</extra>",
            )
        )
        fig.add_trace(
            empty_trace(
                mode="lines",
                name=f"{label} train",
                legendgroup=label,
                line={"color": colour, "width": 1, "dash": "dot"},
                meta={"run": runs, "kind": "train_loss"},
                hovertemplate="%{y:.4g} at %{x:.1f} s<extra>" + label + " train</extra>",
            )
        )
    _stretch_target(fig)
    return runs


def run_count(fig: go.Figure) -> int:
    return sum(1 for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == "val_loss")


def run_traces(fig: go.Figure, run: int) -> dict:
    """``{"val_loss": trace, "train_loss": trace}`` of run ``run``."""
    found = {t.meta["kind"]: t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("run") == run}
    if len(found) != 2:
        raise ValueError(f"run: expected one of 0..{run_count(fig) - 1} (runs on this figure), received {run!r}")
    return found


def add_record(fig: go.Figure, run: int, record: dict) -> None:
    """Append one epoch's point (``time_s``, ``train_loss``, ``val_loss``) to run ``run``'s traces.

    Non-finite losses (a diverged run) are drawn as gaps: a log axis cannot show them.
    """
    missing = [k for k in ("time_s", "train_loss", "val_loss") if k not in record]
    if missing:
        raise ValueError(f"record: expected keys time_s, train_loss, val_loss, missing {', '.join(missing)}")
    traces = run_traces(fig, run)
    with _batch(fig):
        for kind, trace in traces.items():
            trace.x = (*(trace.x or ()), float(record["time_s"]))
            trace.y = (*(trace.y or ()), _loggable(record[kind]))
    _stretch_target(fig)


def set_run_visible(fig: go.Figure, run: int, visible: bool) -> None:
    """Show or hide run ``run``'s curves (legend entry included)."""
    with _batch(fig):
        for trace in run_traces(fig, run).values():
            trace.visible = bool(visible)


def point_count(fig: go.Figure, run: Optional[int] = None) -> int:
    """How many validation points are drawn (of one run, or of all)."""
    traces = [
        t
        for t in fig.data
        if isinstance(t.meta, dict) and t.meta.get("kind") == "val_loss" and (run is None or t.meta.get("run") == run)
    ]
    return sum(len(t.x or ()) for t in traces)


def set_target(fig: go.Figure, target: Optional[float]) -> None:
    """Draw the target loss as a dashed line across every run's time span (hidden when None)."""
    trace = next(t for t in fig.data if t.name == TARGET_NAME)
    with _batch(fig):
        trace.meta = {"target": target}
        trace.visible = target is not None
        trace.hovertemplate = None if target is None else f"target {target:.4g}<extra></extra>"
    _stretch_target(fig)


def _stretch_target(fig: go.Figure) -> None:
    trace = next(t for t in fig.data if t.name == TARGET_NAME)
    target = (trace.meta or {}).get("target")
    if target is None:
        trace.x, trace.y = (), ()
        return
    xs = [x for t in fig.data if t is not trace for x in (t.x or ())]
    trace.x, trace.y = (0.0, max(xs, default=1.0) or 1.0), (target, target)


def _loggable(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class _batch:
    """``fig.batch_update()`` on a FigureWidget (one message to the browser), nothing on a Figure."""

    def __init__(self, fig):
        self._cm = fig.batch_update() if isinstance(fig, go.FigureWidget) else None

    def __enter__(self):
        if self._cm is not None:
            self._cm.__enter__()

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc) if self._cm is not None else False
