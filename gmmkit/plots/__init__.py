"""Everything plotly lives in this package; geometry and numbers are computed elsewhere and handed in."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.basedatatypes import BaseFigure

from ..files import atomic_write_text


def empty_trace(**kwargs) -> go.Scatter:
    """A scatter trace with no points yet: filled later, as a run goes on or a view is drawn."""
    return go.Scatter(x=[], y=[], **kwargs)


def set_axes(fig: BaseFigure, title: str, x_title: str, y_title: str, log_x: bool = False, log_y: bool = False):
    """A figure's title and axes titles, white template; ``log_x``, ``log_y``: logarithmic axes."""
    fig.update_layout(
        title=title,
        xaxis={"title": x_title, "type": "log" if log_x else "linear"},
        yaxis={"title": y_title, "type": "log" if log_y else "linear"},
        template="plotly_white",
    )
    return fig


def write_html(fig: BaseFigure | Sequence[BaseFigure], path: str | os.PathLike, title: str = "", **options) -> Path:
    """Write a figure, or several one below the other, as one self-contained HTML file (plotly.js inside, once:
    it opens offline), atomically. ``options`` go to plotly's ``to_html`` (e.g. ``config={"displayModeBar":
    False}``)."""
    path = Path(path)
    figures = [fig] if isinstance(fig, BaseFigure) else list(fig)
    if len(figures) == 1:
        text = go.Figure(figures[0]).to_html(include_plotlyjs=True, full_html=True, **options)
    else:
        divs = [
            go.Figure(f).to_html(include_plotlyjs=i == 0, full_html=False, **options) for i, f in enumerate(figures)
        ]
        text = (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head><body>\n"
            + "\n".join(divs)
            + "\n</body></html>\n"
        )
    atomic_write_text(path, text)
    return path


def write_png(
    fig: BaseFigure, path: str | os.PathLike, width: int = 1200, height: int | None = None, scale: float = 1.0
) -> Path:
    """Render a figure to PNG with kaleido (which drives the machine's Chromium), atomically.

    The ``lab`` extra installs kaleido; it needs a Chrome or Chromium (Debian: ``apt-get install
    chromium``)."""
    try:
        import kaleido  # noqa: F401  heavy, and only PNG export needs it
    except ImportError:
        raise RuntimeError(
            "PNG export: expected kaleido (pip install -e '.[lab]'), received an environment "
            "without it; HTML export needs nothing more"
        ) from None
    path = Path(path)
    figure = go.Figure(fig)
    height = height or int(figure.layout.height or 600)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".png", delete=False) as tmp:
        staged = Path(tmp.name)
    try:
        figure.write_image(str(staged), format="png", width=width, height=height, scale=scale)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path
