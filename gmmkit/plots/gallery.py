"""A gallery of nodule slices: a grid of grey-scale images, one nodule per cell.

Slices are handed in as 2-D arrays (rows, columns of the image), already cut from their volumes (see
:func:`gmmkit.synthesis.central_slices`). Each cell is drawn over the coordinates [-1, 1] of the cube it
came from, so slices of cubes rendered at different sizes (a 16^3 training cube beside a 32^3 generated
one) cover the same extent and line up.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def nodule_gallery(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    zmin: float = 0.0,
    zmax: float = 1.0,
    cell_px: int = 160,
) -> go.Figure:
    """A figure with one row per entry of ``rows``, each a list of 2-D slices (rows may differ in length).

    Intensities are shown in grey from ``zmin`` (black) to ``zmax`` (white): the defaults suit normalised
    cubes (:func:`gmmkit.data.normalize_hu`); hovering shows a voxel's value.
    """
    rows = [list(r) for r in rows]
    if not rows or not all(rows):
        raise ValueError("rows: expected at least one row, each with at least one 2-D slice")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            if np.ndim(image) != 2:
                raise ValueError(f"rows[{r}][{c}]: expected a 2-D slice, received shape {np.shape(image)}")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    for name, labels, count in (("column_titles", column_titles, n_cols), ("row_titles", row_titles, n_rows)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name}: expected {count} labels, received {len(labels)}")
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        column_titles=list(column_titles) if column_titles else None,
        row_titles=list(row_titles) if row_titles else None,
        horizontal_spacing=0.02,
        vertical_spacing=0.03,
    )
    for r, row in enumerate(rows, start=1):
        for c, image in enumerate(row, start=1):
            image = np.asarray(image, dtype=np.float32)
            y_axis = (2.0 * np.arange(image.shape[0]) + 1.0) / image.shape[0] - 1.0
            x_axis = (2.0 * np.arange(image.shape[1]) + 1.0) / image.shape[1] - 1.0
            fig.add_trace(
                go.Heatmap(
                    z=image,
                    x=x_axis,
                    y=y_axis,
                    zmin=zmin,
                    zmax=zmax,
                    colorscale="gray",
                    showscale=False,
                    hovertemplate="%{z:.3f}<extra></extra>",
                ),
                row=r,
                col=c,
            )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-1, 1], constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, range=[1, -1], constrain="domain")
    for i in range(1, n_rows * n_cols + 1):  # square pixels: each y axis follows its own x axis
        fig.update_layout({f"yaxis{'' if i == 1 else i}": {"scaleanchor": f"x{'' if i == 1 else i}"}})
    fig.update_layout(
        title=title,
        height=cell_px * n_rows + (100 if title else 60),
        width=cell_px * n_cols + 160,
        margin={"l": 20, "r": 120, "t": 80 if title else 40, "b": 20},
        plot_bgcolor="black",
    )
    return fig
