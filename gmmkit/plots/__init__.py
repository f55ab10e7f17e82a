"""Everything plotly lives in this package; geometry and numbers are computed elsewhere and handed in."""
from __future__ import annotations

import os
from pathlib import Path

from ..files import atomic_write_text


def write_html(fig, path: str | os.PathLike, **options) -> Path:
    """Write a figure as one self-contained HTML file (plotly.js inside: it opens offline), atomically.
    ``options`` go to plotly's ``to_html`` (e.g. ``config={"displayModeBar": False}``)."""
    path = Path(path)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True, **options))
    return path
