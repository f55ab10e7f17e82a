"""The slice viewer's figure: three orthogonal planes of one cube, input, estimate and difference.

A 3 x 3 grid: one row per plane (axial, coronal, sagittal), one column per image (input, estimate, their
difference). Input and estimate are CT in greys on one colour axis, in HU, through the window the viewer
chooses; the difference has its own diverging scale centred on 0 HU. On every panel a crosshair marks the
other two planes; on the input and estimate panels each Gaussian's section by the plane is drawn as its 1-
and 2-sigma ellipses (solid, dotted), more opaque for heavier components, with a marker at their centre
whose hover gives the component's alpha, mu and sigma. (The outlines themselves take no hover: plotly
reports a click as the closest point within ``hoverdistance``, and a click meant for a voxel would land on
an outline passing by; a centre is where a click may rightly snap to.)

The figure is built once, empty, and updated in place (:func:`update_planes`), so sliders and clicks change
data without rebuilding the widget. Every trace carries ``meta`` = ``{"kind", "plane", "image", ...}`` so the
viewer finds the panel a click landed in. Geometry (sections, crosshairs, windows) is computed by
:mod:`gmmkit.ui.sections` and handed in; nothing here knows about models or files.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import empty_trace

PLANES = ("axial", "coronal", "sagittal")
IMAGES = ("input", "estimate", "difference")
TITLES = ("input", "estimate", "difference (estimate - input)")
OVERLAID = ("input", "estimate")  # the panels that show the Gaussians
LEVELS = (0.35, 0.65, 1.0)  # outline opacities: components fall into these by weight
SIGMA_DASH = {1.0: "solid", 2.0: "dot"}
GAUSSIAN_COLOUR = "#ffb000"
CROSSHAIR_COLOUR = "rgba(0, 200, 255, 0.75)"
DIFFERENCE_SCALE = "RdBu_r"


def planes_figure(widget: bool = True, height: int = 800) -> go.Figure:
    """The empty 3 x 3 figure for :func:`update_planes`."""
    base = make_subplots(
        rows=3,
        cols=3,
        column_titles=list(TITLES),
        row_titles=list(PLANES),
        horizontal_spacing=0.03,
        vertical_spacing=0.04,
    )
    fig = go.FigureWidget(base) if widget else base
    for r, plane in enumerate(PLANES, start=1):
        for c, image in enumerate(IMAGES, start=1):
            fig.add_trace(
                go.Heatmap(
                    z=[[0.0]],
                    coloraxis="coloraxis2" if image == "difference" else "coloraxis",
                    meta={"kind": "image", "plane": plane, "image": image},
                    hovertemplate=f"{plane} {image}<br>row %{{y}}, column %{{x}}: %{{z:.0f}} HU<extra></extra>",
                ),
                row=r,
                col=c,
            )
    for r, plane in enumerate(PLANES, start=1):
        for c, image in enumerate(IMAGES, start=1):
            if image in OVERLAID:
                for sigma, dash in SIGMA_DASH.items():
                    for level in LEVELS:
                        fig.add_trace(
                            empty_trace(
                                mode="lines",
                                opacity=level,
                                showlegend=False,
                                hoverinfo="skip",
                                line={"color": GAUSSIAN_COLOUR, "width": 1.6 if sigma == 1.0 else 1.0, "dash": dash},
                                meta={
                                    "kind": "gaussians",
                                    "plane": plane,
                                    "image": image,
                                    "sigma": sigma,
                                    "level": level,
                                },
                            ),
                            row=r,
                            col=c,
                        )
                fig.add_trace(
                    empty_trace(
                        mode="markers",
                        showlegend=False,
                        hovertemplate="%{text}<extra></extra>",
                        marker={"symbol": "x-thin", "size": 7, "line": {"color": GAUSSIAN_COLOUR, "width": 1.5}},
                        meta={"kind": "centres", "plane": plane, "image": image},
                    ),
                    row=r,
                    col=c,
                )
            fig.add_trace(
                empty_trace(
                    mode="lines",
                    showlegend=False,
                    hoverinfo="skip",
                    line={"color": CROSSHAIR_COLOUR, "width": 1},
                    meta={"kind": "crosshair", "plane": plane, "image": image},
                ),
                row=r,
                col=c,
            )
    fig.update_layout(
        height=height,
        template="plotly_white",
        margin={"l": 40, "r": 30, "t": 70, "b": 20},
        title={"text": "", "x": 0.01, "font": {"size": 13}},
        hovermode="closest",
        clickmode="event",
        hoverdistance=8,
        coloraxis={
            "colorscale": "gray",
            "colorbar": {"title": {"text": "HU"}, "x": 1.01, "y": 0.76, "len": 0.46, "thickness": 10},
        },
        coloraxis2={
            "colorscale": DIFFERENCE_SCALE,
            "cmid": 0.0,
            "colorbar": {"title": {"text": "diff. HU"}, "x": 1.01, "y": 0.24, "len": 0.46, "thickness": 10},
        },
        plot_bgcolor="black",
    )
    for note in fig.layout.annotations:  # row titles on the left: the colour bars take the right
        if note.text in PLANES:
            note.update(x=-0.01, xanchor="right", textangle=-90)
    for i in range(1, 10):  # square voxels, no grid over the image (update_planes sets the ranges, row 0 on top)
        suffix = "" if i == 1 else str(i)
        fig.update_layout(
            {
                f"yaxis{suffix}": {
                    "scaleanchor": f"x{suffix}",
                    "constrain": "domain",
                    "showgrid": False,
                    "zeroline": False,
                    "showticklabels": False,
                },
                f"xaxis{suffix}": {
                    "constrain": "domain",
                    "showgrid": False,
                    "zeroline": False,
                    "showticklabels": False,
                },
            }
        )
    return fig


def traces(fig: go.Figure, kind: str, plane: Optional[str] = None, image: Optional[str] = None) -> list:
    """The traces of one kind (``image``, ``gaussians``, ``crosshair``), of one plane and image if given."""
    return [
        t
        for t in fig.data
        if isinstance(t.meta, dict)
        and t.meta.get("kind") == kind
        and plane in (None, t.meta.get("plane"))
        and image in (None, t.meta.get("image"))
    ]


def crosshair_path(row: float, col: float, size: int) -> tuple[list, list]:
    """x and y of a crosshair through (row, col): a horizontal and a vertical line, with a gap between."""
    lo, hi = -0.5, size - 0.5
    return [lo, hi, None, col, col], [row, row, None, lo, hi]


def level_of(opacity: float) -> float:
    """The :data:`LEVELS` entry an outline of ``opacity`` is drawn at."""
    return next((lv for lv in LEVELS if opacity <= lv + 1e-9), LEVELS[-1])


def update_planes(
    fig: go.Figure,
    images: dict,
    crosshairs: dict,
    size: int,
    window: tuple[float, float],
    difference_range: tuple[float, float],
    sections: Optional[dict] = None,
    labels: Optional[dict] = None,
    title: str = "",
) -> None:
    """Show one cube's three planes.

    ``images``: ``{plane: (input, estimate, difference)}`` 2D arrays in HU; ``crosshairs``: ``{plane: (row,
    col)}``; ``window``: (low, high) HU of the greys; ``difference_range``: (low, high) HU of the diverging
    scale; ``sections``: ``{plane: [section, ...]}`` from :func:`gmmkit.ui.sections.gaussian_sections`, each
    with an ``opacity``; ``labels``: ``{component: hover text}``. Missing sections hide the outlines."""
    for plane in PLANES:
        arrays = [np.asarray(a, dtype=np.float64) for a in images[plane]]
        if len(arrays) != 3 or len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 2:
            raise ValueError(
                f"images[{plane!r}]: expected three 2D arrays of one shape, received {[a.shape for a in arrays]}"
            )
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext()
    with ctx:
        for plane in PLANES:
            for image, array in zip(IMAGES, images[plane]):
                traces(fig, "image", plane, image)[0].z = np.asarray(array, dtype=np.float32)
            x, y = crosshair_path(*crosshairs[plane], size)
            for trace in traces(fig, "crosshair", plane):
                trace.x, trace.y = x, y
            _draw_sections(fig, plane, (sections or {}).get(plane, []), labels or {})
        fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax = float(window[0]), float(window[1])
        fig.layout.coloraxis2.cmin, fig.layout.coloraxis2.cmax = (
            float(difference_range[0]),
            float(difference_range[1]),
        )
        fig.layout.title.text = title
        for i in range(1, 10):  # the cube's extent: outlines of wide Gaussians are clipped, not zoomed out to
            suffix = "" if i == 1 else str(i)
            fig.layout[f"xaxis{suffix}"].range = (-0.5, size - 0.5)
            fig.layout[f"yaxis{suffix}"].range = (size - 0.5, -0.5)


def _draw_sections(fig: go.Figure, plane: str, sections: Sequence[dict], labels: dict) -> None:
    groups: dict = {}
    centres: dict = {}
    for s in sections:
        xs, ys = groups.setdefault((float(s["sigma"]), level_of(s["opacity"])), ([], []))
        xs.extend([*np.asarray(s["col"]).tolist(), None])
        ys.extend([*np.asarray(s["row"]).tolist(), None])
        centres.setdefault(s["component"], (s["centre"], s["opacity"]))
    for trace in traces(fig, "gaussians", plane):
        trace.x, trace.y = groups.get((trace.meta["sigma"], trace.meta["level"]), ((), ()))
    texts = [labels.get(k, f"component {k}") for k in centres]
    for trace in traces(fig, "centres", plane):
        trace.x = [c[1] for c, _ in centres.values()]
        trace.y = [c[0] for c, _ in centres.values()]
        trace.text = texts
        trace.marker.opacity = [o for _, o in centres.values()]


def set_gaussians_visible(fig: go.Figure, visible: bool) -> None:
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext()
    with ctx:
        for trace in traces(fig, "gaussians") + traces(fig, "centres"):
            trace.visible = visible
