"""Figures of a sweep (paper Figs. 2 to 5) as self-contained HTML files."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from ..checks import is_finite_number
from . import set_axes, write_html

STRATEGY_COLOURS = {"strong": "#1f77b4", "weak": "#ff7f0e", "lsr": "#d62728", "warmup": "#2ca02c"}


def time_to_target_figure(rows) -> go.Figure:
    """Fig. 2: time to the target loss against n, one line per strategy (missing where not reached)."""
    fig = go.Figure()
    for strategy in dict.fromkeys(r.strategy for r in rows):
        pts = [r for r in rows if r.strategy == strategy]
        exact = all(r.exact for r in pts if r.mode != "skipped")
        fig.add_trace(
            go.Scatter(
                x=[r.workers for r in pts],
                y=[r.time_s if r.status == "reached_target" else None for r in pts],
                mode="lines+markers",
                name=f"{strategy} (exact)" if exact else strategy,
                line={"color": STRATEGY_COLOURS.get(strategy)},
                text=[f"{r.mode}{', exact' if r.exact else ''}, {r.status}, {r.epochs} epochs" for r in pts],
                connectgaps=False,
            )
        )
    seconds = "seconds (measured where real, predicted where simulated)"
    return set_axes(fig, "Time to target loss (Fig. 2)", "workers (GPUs)", seconds, log_x=True, log_y=True)


def loss_curves_figure(
    curves: dict, strategy: str, target: float | None, title: str, workers: list[int] | None = None
) -> go.Figure:
    """Validation loss against epoch for each n of one strategy (Figs. 3, 4, 5)."""
    fig = go.Figure()
    drawn = set()  # the sequential run (n = 1) may be in ``curves`` under every strategy: drawn once
    for (s, n), records in sorted(curves.items(), key=lambda kv: (kv[0][1], kv[0][0] != strategy)):
        if (s != strategy and n != 1) or (workers is not None and n not in workers) or not records or n in drawn:
            continue
        drawn.add(n)
        finite = [is_finite_number(r["val_loss"]) for r in records]
        fig.add_trace(
            go.Scatter(
                x=[r["epoch"] for r in records],
                y=[r["val_loss"] if ok else None for r, ok in zip(records, finite)],
                mode="lines+markers" if sum(finite) == 1 else "lines",
                # a run that diverged draws no line past its last finite loss (none when it diverged at once)
                name=f"n = {n}" if finite[-1] else f"n = {n}: diverged in epoch {records[-1]['epoch']}",
            )
        )
    if target:
        fig.add_hline(y=target, line_dash="dash", annotation_text="target")
    fig.update_layout(
        title=title,
        xaxis_title="epoch",
        yaxis={"title": "validation loss (MSLE)", "type": "log"},
        template="plotly_white",
    )
    return fig


def write_figures(rows, curves: dict, out: Path, target: float | None) -> list[Path]:
    """Write the four figures next to the tables (exact runs named in the titles); returns their paths."""
    strategies = {r.strategy for r in rows}
    exact = {r.strategy for r in rows if r.exact}
    figures = {"fig2_time_to_target.html": time_to_target_figure(rows)}
    if any(s == "warmup" for s, _ in curves):  # every n: the paper's Fig. 3 showed 8 GPUs, its largest that ran
        figures["fig3_warmup_loss.html"] = loss_curves_figure(
            curves, "warmup", target, f"Warm-up losses{_exact('warmup', exact)} (Fig. 3)"
        )
    for strategy, name, fig_no in (("strong", "fig4_strong_losses.html", 4), ("weak", "fig5_weak_losses.html", 5)):
        if strategy in strategies:
            figures[name] = loss_curves_figure(
                curves,
                strategy,
                target,
                f"{strategy.capitalize()} scaling losses{_exact(strategy, exact)} (Fig. {fig_no})",
            )
    return [write_html(fig, Path(out) / name) for name, fig in figures.items()]


def _exact(strategy: str, exact: set) -> str:
    return ", exact mode" if strategy in exact else ""
