"""Slice and volume figures of one cube: input, rendered density and their difference.

The three slice panels share one colour axis (a diverging scale centred on zero, so the difference panel
reads blue where the model renders too little and red where it renders too much, and the two density panels
read on the same scale). Component centres are drawn as open circles on the input and density panels,
sized by their weight alpha and faded with their distance from the slice plane.

The figures are built once, empty, and updated in place (:func:`update_slices`, :func:`update_volume`), so a
slider moving through slices changes the image without rebuilding the widget. The arrays come from
:mod:`gmmkit.ui.inspector`; nothing here knows about models or files.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PANELS = ("input", "rendered density", "difference (rendered - input)")
COLOURSCALE = "RdBu_r"
MARKER_MIN, MARKER_MAX = 5.0, 28.0


def slice_figure(widget: bool = True, height: int = 340) -> go.Figure:
    """Three empty heatmap panels on one colour axis, plus a centre-marker trace on the first two."""
    base = make_subplots(rows=1, cols=3, subplot_titles=PANELS, horizontal_spacing=0.06)
    fig = go.FigureWidget(base) if widget else base
    for col in (1, 2, 3):
        fig.add_trace(go.Heatmap(z=[[0.0]], coloraxis="coloraxis", name=PANELS[col - 1],
                                 hovertemplate="row %{y}, column %{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=col)
    for col in (1, 2):
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="centres", showlegend=col == 1,
                                 legendgroup="centres", hoverinfo="text",
                                 marker={"symbol": "circle-open", "color": "black", "line": {"width": 2}}),
                      row=1, col=col)
    fig.update_layout(
        height=height, template="plotly_white", margin={"l": 30, "r": 10, "t": 60, "b": 30},
        coloraxis={"colorscale": COLOURSCALE, "cmid": 0.0, "colorbar": {"title": {"text": "norm. HU"},
                                                                           "thickness": 12}},
        legend={"orientation": "h", "x": 0.0, "y": -0.08}, title={"text": "", "x": 0.02},
    )
    for col in (1, 2, 3):
        suffix = "" if col == 1 else str(col)
        fig.update_yaxes(autorange="reversed", scaleanchor="x" + suffix, constrain="domain", row=1, col=col)
        fig.update_xaxes(constrain="domain", row=1, col=col)
    return fig


def marker_sizes(alpha: np.ndarray) -> np.ndarray:
    """Marker diameters in pixels: area grows with alpha, the heaviest component gets MARKER_MAX."""
    alpha = np.clip(np.asarray(alpha, dtype=np.float64), 0.0, None)
    top = alpha.max() if alpha.size and alpha.max() > 0 else 1.0
    return MARKER_MIN + (MARKER_MAX - MARKER_MIN) * np.sqrt(alpha / top)


def marker_opacity(distance: np.ndarray, size: int) -> np.ndarray:
    """Opaque on the slice plane, fading to 0.15 a quarter of the cube away."""
    reach = max(size / 4.0, 1.0)
    return np.clip(1.0 - np.asarray(distance, dtype=np.float64) / reach, 0.15, 1.0)


def update_slices(fig: go.Figure, input2d: np.ndarray, density2d: np.ndarray, difference2d: np.ndarray,
                  centres: Optional[dict] = None, zrange: Optional[tuple[float, float]] = None,
                  title: str = "", size: Optional[int] = None) -> None:
    """Show three 2D slices and the projected centres (``row``, ``col``, ``alpha``, ``distance`` arrays).

    ``zrange``: the shared colour range (default: symmetric about zero over all three slices).
    """
    images = [np.asarray(a, dtype=np.float64) for a in (input2d, density2d, difference2d)]
    if len({a.shape for a in images}) != 1 or images[0].ndim != 2:
        raise ValueError(f"slices: expected three 2D arrays of one shape, received {[a.shape for a in images]}")
    if zrange is None:
        m = max(float(np.nanmax(np.abs(a))) if a.size else 0.0 for a in images) or 1.0
        zrange = (-m, m)
    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    markers = [t for t in fig.data if isinstance(t, go.Scatter)]
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else _Nothing()
    with ctx:
        for trace, image in zip(heatmaps, images):
            trace.z = image
        fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax = float(zrange[0]), float(zrange[1])
        fig.layout.title.text = title
        for trace in markers:
            if centres is None or len(centres["alpha"]) == 0:
                trace.x, trace.y, trace.text = (), (), ()
                continue
            s = size or images[0].shape[0]
            trace.x, trace.y = tuple(centres["col"]), tuple(centres["row"])
            trace.marker.size = marker_sizes(centres["alpha"])
            trace.marker.opacity = marker_opacity(centres["distance"], s)
            trace.text = [f"component {k}: alpha {a:.3f}, {d:.1f} voxels from this slice"
                          for k, (a, d) in enumerate(zip(centres["alpha"], centres["distance"]))]


def volume_figure(widget: bool = True, height: int = 380) -> go.Figure:
    """Two empty 3D scenes, input and rendered density, for :func:`update_volume`."""
    base = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "scene"}]],
                         subplot_titles=("input (isosurfaces)", "rendered density (isosurfaces)"),
                         horizontal_spacing=0.02)
    fig = go.FigureWidget(base) if widget else base
    for col in (1, 2):
        fig.add_trace(go.Isosurface(x=[0], y=[0], z=[0], value=[0.0], coloraxis="coloraxis", opacity=0.45,
                                    surface_count=3, caps={"x_show": False, "y_show": False, "z_show": False},
                                    name=("input", "rendered")[col - 1]),
                      row=1, col=col)
    fig.add_trace(go.Scatter3d(x=[], y=[], z=[], mode="markers", name="centres",
                               marker={"color": "black", "opacity": 0.8}), row=1, col=2)
    scene = {"xaxis": {"title": "axis 2"}, "yaxis": {"title": "axis 1"}, "zaxis": {"title": "axis 0"},
             "aspectmode": "cube", "camera": {"eye": {"x": 1.5, "y": 1.5, "z": 1.1}}}
    fig.update_layout(height=height, template="plotly_white", margin={"l": 0, "r": 0, "t": 40, "b": 0},
                      scene=scene, scene2=scene, showlegend=False,
                      coloraxis={"colorscale": COLOURSCALE, "cmid": 0.0, "showscale": False})
    return fig


def update_volume(fig: go.Figure, input3d: np.ndarray, density3d: np.ndarray,
                  centres: Optional[np.ndarray] = None, alpha: Optional[np.ndarray] = None,
                  levels: tuple[float, float] = (0.35, 0.85)) -> None:
    """Draw isosurfaces of both cubes at the same levels (fractions of the input's maximum).

    ``centres``: (K, 3) fractional voxel indices of the component means, drawn in the density scene,
    sized by ``alpha``.
    """
    cubes = [np.asarray(c, dtype=np.float32) for c in (input3d, density3d)]
    if cubes[0].shape != cubes[1].shape or cubes[0].ndim != 3:
        raise ValueError(f"volumes: expected two 3D arrays of one shape, received {cubes[0].shape}, "
                         f"{cubes[1].shape}")
    k0, k1, k2 = np.meshgrid(*(np.arange(n) for n in cubes[0].shape), indexing="ij")
    top = float(max(cubes[0].max(), 1e-6))
    surfaces = [t for t in fig.data if isinstance(t, go.Isosurface)]
    points = next(t for t in fig.data if isinstance(t, go.Scatter3d))
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else _Nothing()
    with ctx:
        for trace, cube in zip(surfaces, cubes):
            trace.x, trace.y, trace.z = k2.ravel(), k1.ravel(), k0.ravel()
            trace.value = cube.ravel()
            trace.isomin, trace.isomax = levels[0] * top, levels[1] * top
        fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax = -top, top
        if centres is None:
            points.x, points.y, points.z = (), (), ()
        else:
            c = np.asarray(centres, dtype=np.float64)
            points.x, points.y, points.z = c[:, 2], c[:, 1], c[:, 0]
            points.marker.size = marker_sizes(alpha if alpha is not None else np.ones(len(c))) / 2.5


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
