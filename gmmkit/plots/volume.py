"""The 3D view: isosurfaces of the input and of the estimate side by side, in one scene, so one camera
turns both (two scenes would each keep their own). The estimate sits one cube and a gap to the right of the
input; the component means are drawn in it, sized by weight. Arrays come from :mod:`gmmkit.ui`."""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import plotly.graph_objects as go

GAP = 0.3  # between the two cubes, in cube sides
COLOURSCALE = "Viridis"


def offset(size: int) -> float:
    """How far (voxels, along x) the estimate is drawn from the input."""
    return size * (1.0 + GAP)


def volume_figure(widget: bool = True, height: int = 420) -> go.Figure:
    """An empty scene for :func:`update_volume`: two isosurfaces, the means, and the two cubes' names."""
    fig = (go.FigureWidget if widget else go.Figure)()
    for name in ("input", "estimate"):
        fig.add_trace(
            go.Isosurface(
                x=[0],
                y=[0],
                z=[0],
                value=[0.0],
                coloraxis="coloraxis",
                opacity=0.5,
                surface_count=3,
                caps={"x_show": False, "y_show": False, "z_show": False},
                name=name,
                meta={"kind": name},
            )
        )
    fig.add_trace(
        go.Scatter3d(
            x=[],
            y=[],
            z=[],
            mode="markers",
            name="means",
            meta={"kind": "means"},
            marker={"color": "black", "opacity": 0.8},
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        height=height,
        template="plotly_white",
        margin={"l": 0, "r": 0, "t": 30, "b": 0},
        title={"text": "input (left) and estimate (right): isosurfaces, one camera", "x": 0.01, "font": {"size": 13}},
        showlegend=False,
        coloraxis={"colorscale": COLOURSCALE, "showscale": False},
        scene={
            "xaxis": {"title": "axis 2 (input | estimate)"},
            "yaxis": {"title": "axis 1"},
            "zaxis": {"title": "axis 0"},
            "aspectmode": "data",
            "camera": {"eye": {"x": 0.2, "y": -1.9, "z": 0.9}},
        },
    )
    return fig


def update_volume(
    fig: go.Figure,
    input3d: np.ndarray,
    estimate3d: np.ndarray,
    centres: Optional[np.ndarray] = None,
    sizes: Optional[np.ndarray] = None,
    levels: tuple[float, float] = (0.35, 0.85),
) -> None:
    """Isosurfaces of both cubes at the same levels (fractions of the input's maximum); ``centres``: (K, 3)
    voxel indices of the means (array axes 0, 1, 2), drawn on the estimate with marker ``sizes``."""
    cubes = [np.asarray(c, dtype=np.float32) for c in (input3d, estimate3d)]
    if cubes[0].shape != cubes[1].shape or cubes[0].ndim != 3:
        raise ValueError(f"volumes: expected two 3D arrays of one shape, received {cubes[0].shape}, {cubes[1].shape}")
    size = cubes[0].shape[2]
    k0, k1, k2 = np.meshgrid(*(np.arange(n) for n in cubes[0].shape), indexing="ij")
    top = float(max(cubes[0].max(), 1e-6))
    surfaces = {t.meta["kind"]: t for t in fig.data if isinstance(t.meta, dict)}
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext()
    with ctx:
        for (name, cube), shift in zip(zip(("input", "estimate"), cubes), (0.0, offset(size))):
            trace = surfaces[name]
            trace.x, trace.y, trace.z = k2.ravel() + shift, k1.ravel(), k0.ravel()
            trace.value = cube.ravel()
            trace.isomin, trace.isomax = levels[0] * top, levels[1] * top
        fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax = 0.0, top
        points = surfaces["means"]
        if centres is None:
            points.x, points.y, points.z = (), (), ()
        else:
            c = np.asarray(centres, dtype=np.float64)
            points.x, points.y, points.z = c[:, 2] + offset(size), c[:, 1], c[:, 0]
            points.marker.size = np.full(len(c), 4.0) if sizes is None else np.asarray(sizes)
