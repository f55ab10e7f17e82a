"""Runs compared: a parallel-coordinates view of their settings against the time to target (the view of
TensorBoard's HParams and of W&B sweeps). The columns are computed by :func:`gmmkit.ui.runs.parallel_columns`."""

from __future__ import annotations

import contextlib

import plotly.graph_objects as go

COLOURSCALE = "Viridis_r"  # fast runs bright


def parallel_figure(widget: bool = True, height: int = 300) -> go.Figure:
    """An empty parallel-coordinates figure for :func:`update_parallel`."""
    fig = (go.FigureWidget if widget else go.Figure)()
    fig.add_trace(
        go.Parcoords(
            dimensions=[],
            line={
                "color": [],
                "colorscale": COLOURSCALE,
                "showscale": True,
                "colorbar": {"title": {"text": "s"}, "thickness": 10},
            },
        )
    )
    fig.update_layout(
        height=height,
        template="plotly_white",
        margin={"l": 60, "r": 60, "t": 80, "b": 20},
        title={
            "text": "settings against time to target (drag along an axis to filter)",
            "x": 0.01,
            "font": {"size": 13},
        },
    )
    return fig


def update_parallel(fig: go.Figure, columns: dict) -> None:
    """Show ``columns`` (``dimensions`` and ``colour``, from :func:`gmmkit.ui.runs.parallel_columns`)."""
    trace = fig.data[0]
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext()
    with ctx:
        trace.dimensions = [dict(d) for d in columns["dimensions"]]
        trace.line.color = list(columns["colour"])
        trace.line.showscale = len(set(columns["colour"])) > 1  # one colour says nothing
        if columns["colour"]:
            trace.line.cmin, trace.line.cmax = min(columns["colour"]), max(columns["colour"])
