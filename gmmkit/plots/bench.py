"""The cost-growth curves of ``gmmkit bench`` as one self-contained HTML figure."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import write_html

PANELS = (
    ("step_s_by_components", "step time against K (batch 32)", "components K", "ms per step", 1e3),
    ("step_s_by_cube", "step time against cube side", "cube side S (voxels)", "ms per step", 1e3),
    ("epoch_s_by_train_size", "epoch time against training set", "training samples", "s per epoch", 1.0),
    (
        "epoch_s_predicted_by_workers",
        "strong-scaling epoch, T(n) = Ts + Tp/n + c log2 n",
        "workers n",
        "s per epoch",
        1.0,
    ),
)


def growth_figure(result: dict) -> go.Figure:
    """Four panels from ``result["growth"]`` (the JSON of :func:`gmmkit.study.bench.run`); the workers panel also
    marks the measured 1- and 2-worker epochs when the result has them."""
    growth = result["growth"]
    fig = make_subplots(
        rows=2, cols=2, subplot_titles=[p[1] for p in PANELS], horizontal_spacing=0.1, vertical_spacing=0.16
    )
    for i, (key, _title, xlabel, ylabel, scale) in enumerate(PANELS):
        row, col = divmod(i, 2)
        points = sorted((float(x), y * scale) for x, y in growth[key].items() if y is not None)
        name = "predicted" if key == "epoch_s_predicted_by_workers" else "measured"
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines+markers",
                name=name,
                showlegend=False,
                line={"color": "#1f77b4"},
            ),
            row=row + 1,
            col=col + 1,
        )
        if key == "epoch_s_predicted_by_workers":
            fig.update_xaxes(
                type="log",
                tickvals=[p[0] for p in points],
                ticktext=[f"{p[0]:g}" for p in points],
                row=row + 1,
                col=col + 1,
            )
        fig.update_xaxes(title_text=xlabel, row=row + 1, col=col + 1)
        fig.update_yaxes(title_text=ylabel, row=row + 1, col=col + 1, rangemode="tozero")
    measured = result.get("epoch_s") or {}
    if measured:
        fig.add_trace(
            go.Scatter(
                x=[float(n) for n in measured],
                y=list(measured.values()),
                mode="markers",
                name="measured (Horovod)",
                marker={"color": "#d62728", "size": 10, "symbol": "x"},
            ),
            row=2,
            col=2,
        )
    machine = result.get("machine", {})
    fig.update_layout(
        title=f"gmmkit bench: cost growth ({machine.get('cpu', '?')}, {machine.get('cores', '?')} "
        f"cores, one thread per worker)",
        template="plotly_white",
        width=1100,
        height=760,
        legend={"x": 0.99, "xanchor": "right", "y": 0.36},
    )
    return fig


def write_growth_figure(result: dict, path) -> Path:
    """Write :func:`growth_figure` as a standalone HTML file (plotly.js inside; opens offline)."""
    return write_html(growth_figure(result), path, config={"displayModeBar": False})
