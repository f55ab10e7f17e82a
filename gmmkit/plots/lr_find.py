"""The learning-rate range test's loss against learning rate."""

from __future__ import annotations

import plotly.graph_objects as go

from . import set_axes


def lr_find_figure(result: dict) -> go.Figure:
    h = result["history"]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[r["lr"] for r in h],
            y=[r["loss"] for r in h],
            mode="markers",
            name="loss",
            marker={"size": 4, "opacity": 0.5},
        )
    )
    fig.add_trace(go.Scatter(x=[r["lr"] for r in h], y=[r["smoothed"] for r in h], mode="lines", name="smoothed"))
    fig.add_vline(x=result["suggested_lr"], line_dash="dash", annotation_text=f"suggested {result['suggested_lr']:.2g}")
    if result.get("lr_diverged"):
        fig.add_vline(x=result["lr_diverged"], line_color="red", annotation_text="diverged")
    return set_axes(fig, "Learning-rate range test", "learning rate", "training loss (MSLE)", log_x=True, log_y=True)
