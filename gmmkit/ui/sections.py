"""The geometry the slice viewer shows, in plain numpy: planes, crosshairs, windows and Gaussian sections.

Coordinates: a cube of S voxels spans [-1, 1]; voxel i sits at ``-1 + (2 i + 1) / S`` (see
:mod:`gmmkit.model.mixture`), so a mean coordinate m is at fractional voxel index ``(m + 1) S / 2 - 1/2``
and a covariance scales by ``(S / 2)^2``. The three :data:`AXES` (axial, coronal, sagittal) are array axes
0, 1, 2 of a cube in CT order (z, y, x); a slice along one keeps the other two as (rows, columns).

**A Gaussian cut by a plane.** For N(mu, Sigma) and the plane ``x_a = c``, the Mahalanobis distance of an
in-plane point u splits as ``d^2 = (u - m)^T S^-1 (u - m) + (c - mu_a)^2 / Sigma_aa`` with
``m = mu_u + Sigma_ua (c - mu_a) / Sigma_aa`` and the Schur complement ``S = Sigma_uu - Sigma_ua Sigma_au /
Sigma_aa``. So the k-sigma ellipsoid's section is the ellipse ``(u - m)^T S^-1 (u - m) = k^2 - delta^2``
(``delta^2 = (c - mu_a)^2 / Sigma_aa``), empty once the plane is k sigmas or more from the centre:
:func:`gaussian_sections`.

**Windows.** CT is read in greys through a window of width W and level L in Hounsfield units;
:func:`window_range` turns one into the range of the cubes' normalised units
(:func:`gmmkit.data.intensity.normalize_hu`), where values outside [0, 1] simply saturate.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..data.intensity import HU_WINDOW
from ..errors import InputError

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
# name -> (width, level) in HU: the radiologists' lung and mediastinum windows, and the model's own range
WINDOWS = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "model": (HU_WINDOW[1] - HU_WINDOW[0], (HU_WINDOW[0] + HU_WINDOW[1]) / 2.0),
}
SIGMAS = (1.0, 2.0)


def axis_index(axis: str | int) -> int:
    """Array axis of ``axis``: a name in :data:`AXES` or 0, 1, 2."""
    if isinstance(axis, str) and axis in AXES:
        return AXES[axis]
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= axis <= 2:
        return int(axis)
    raise InputError(f"axis: expected one of {', '.join(AXES)} or 0, 1, 2, received {axis!r}")


def in_plane_axes(axis: str | int) -> tuple[int, int]:
    """The two array axes a slice along ``axis`` keeps: (rows, columns) of the 2D image."""
    a = axis_index(axis)
    rows, cols = (b for b in range(3) if b != a)
    return rows, cols


def slice_volume(volume: np.ndarray, axis: str | int, index: int) -> np.ndarray:
    """The 2D slice ``index`` of a cube along ``axis``; rows and columns follow :func:`in_plane_axes`."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"volume: expected a 3D cube, received shape {volume.shape}")
    a = axis_index(axis)
    size = volume.shape[a]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < size:
        raise InputError(f"slice index: expected an integer in [0, {size - 1}], received {index!r}")
    return np.take(volume, int(index), axis=a)


def to_voxel(coords: np.ndarray, size: int) -> np.ndarray:
    """Grid coordinates in [-1, 1] to fractional voxel indices of a ``size``-cube."""
    return (np.asarray(coords, dtype=np.float64) + 1.0) * size / 2.0 - 0.5


def voxel_covariances(tril: np.ndarray, size: int) -> np.ndarray:
    """Covariances ``L L^T`` of (K, 3, 3) Cholesky factors, in voxel units of a ``size``-cube."""
    tril = np.asarray(tril, dtype=np.float64)
    return (size / 2.0) ** 2 * tril @ np.swapaxes(tril, -1, -2)


def shared_range(*arrays: np.ndarray, symmetric: bool = True) -> tuple[float, float]:
    """One colour range for several images: ``(-m, m)`` with m the largest magnitude, or (min, max)."""
    finite = [np.asarray(a)[np.isfinite(a)] for a in arrays]
    finite = [f for f in finite if f.size]
    if not finite:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        m = max(float(np.abs(f).max()) for f in finite) or 1.0
        return -m, m
    lo, hi = min(float(f.min()) for f in finite), max(float(f.max()) for f in finite)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# --- windows ---------------------------------------------------------------------------------


def window_range(width: float, level: float, hu_window: tuple[float, float] = HU_WINDOW) -> tuple[float, float]:
    """The (low, high) of a CT window (``width``, ``level`` in HU) in the normalised units of ``hu_window``."""
    if not (math.isfinite(width) and math.isfinite(level)) or width <= 0:
        raise InputError(
            f"window: expected a positive width and a level in HU, received width {width!r}, level {level!r}"
        )
    lo, hi = hu_window
    return ((level - width / 2.0 - lo) / (hi - lo), (level + width / 2.0 - lo) / (hi - lo))


def window_of(preset: str) -> tuple[float, float]:
    """(width, level) of a preset in :data:`WINDOWS`."""
    if preset not in WINDOWS:
        raise InputError(f"window: expected one of {', '.join(WINDOWS)}, received {preset!r}")
    return WINDOWS[preset]


def preset_of(width: float, level: float) -> Optional[str]:
    """The preset a (width, level) is, or None for a window of one's own."""
    return next((name for name, (w, c) in WINDOWS.items() if abs(w - width) < 0.5 and abs(c - level) < 0.5), None)


def difference_range(difference: np.ndarray) -> tuple[float, float]:
    """A colour range centred on 0 for the difference cube: +-(its largest magnitude)."""
    return shared_range(difference, symmetric=True)


# --- crosshair -------------------------------------------------------------------------------


def click_position(position: Sequence[int], axis: str | int, row: float, col: float, size: int) -> tuple:
    """The crosshair after a click at (``row``, ``col``) of the slice along ``axis``: the two in-plane axes
    move to the voxel clicked, the slice itself stays. Indices are clamped to the cube."""
    a = axis_index(axis)
    rows, cols = in_plane_axes(a)
    new = [int(p) for p in position]
    if len(new) != 3:
        raise InputError(f"position: expected three voxel indices (axial, coronal, sagittal), received {position!r}")
    new[rows] = min(max(int(round(float(row))), 0), size - 1)
    new[cols] = min(max(int(round(float(col))), 0), size - 1)
    return tuple(new)


def crosshair(position: Sequence[int], axis: str | int) -> tuple[int, int]:
    """Where the crosshair crosses the slice along ``axis``: (row, column) of the other two planes."""
    rows, cols = in_plane_axes(axis)
    return int(position[rows]), int(position[cols])


# --- the mixture ------------------------------------------------------------------------------


def gaussian_sections(
    alpha: np.ndarray,
    mu: np.ndarray,
    tril: np.ndarray,
    axis: str | int,
    index: float,
    size: int,
    sigmas: Sequence[float] = SIGMAS,
    points: int = 40,
) -> list[dict]:
    """The sections of each component's k-sigma ellipsoids by the slice ``index`` along ``axis``.

    Returns one dict per non-empty section: ``component``, ``sigma`` (k), ``row`` and ``col`` (closed
    outlines of ``points + 1`` voxel coordinates, as :func:`slice_volume` lays the slice out), ``centre``
    (the ellipses' common centre, (row, col)) and ``alpha``. Sections are listed heaviest component first."""
    alpha, mu = np.asarray(alpha, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    k = alpha.shape[0] if alpha.ndim == 1 else -1
    if alpha.ndim != 1 or mu.shape != (k, 3) or np.shape(tril) != (k, 3, 3):
        raise InputError(
            f"mixture: expected alpha (K,), mu (K, 3) and tril (K, 3, 3), received "
            f"{alpha.shape}, {mu.shape} and {np.shape(tril)}"
        )
    a = axis_index(axis)
    u = list(in_plane_axes(a))
    centre, cov = to_voxel(mu, size), voxel_covariances(tril, size)
    t = np.linspace(0.0, 2.0 * np.pi, points + 1)
    circle = np.stack([np.cos(t), np.sin(t)])  # (2, points + 1)
    out = []
    for c in np.argsort(-alpha, kind="stable"):
        s_aa = cov[c, a, a]
        s_ua = cov[c, u, a]
        offset = float(index) - centre[c, a]
        m = centre[c, u] + s_ua * offset / s_aa
        schur = cov[c][np.ix_(u, u)] - np.outer(s_ua, s_ua) / s_aa
        chol = np.linalg.cholesky(schur + 1e-12 * np.eye(2))
        delta2 = offset * offset / s_aa
        for sigma in sigmas:
            if delta2 >= sigma * sigma:
                continue
            outline = m[:, None] + math.sqrt(sigma * sigma - delta2) * chol @ circle
            out.append(
                {
                    "component": int(c),
                    "sigma": float(sigma),
                    "alpha": float(alpha[c]),
                    "row": outline[0],
                    "col": outline[1],
                    "centre": (float(m[0]), float(m[1])),
                }
            )
    return out


def weight_opacity(alpha: np.ndarray | float, top: float) -> np.ndarray:
    """Outline opacity by weight: the heaviest component opaque, the lightest faint but visible."""
    top = top if top > 0 else 1.0
    return np.clip(0.15 + 0.85 * np.asarray(alpha, dtype=np.float64) / top, 0.15, 1.0)


def components_table(
    alpha: np.ndarray, mu: np.ndarray, tril: np.ndarray, size: int, top: int = 8, spacing_mm: float = 1.0
) -> list[dict]:
    """The ``top`` heaviest components: ``component``, ``alpha``, ``mu`` (voxel indices, array axes 0, 1, 2)
    and ``sigma_mm`` (the standard deviation along each axis, in mm)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    centre, cov = to_voxel(mu, size), voxel_covariances(tril, size)
    rows = []
    for c in np.argsort(-alpha, kind="stable")[:top]:
        rows.append(
            {
                "component": int(c),
                "alpha": float(alpha[c]),
                "mu": centre[c].tolist(),
                "sigma_mm": (np.sqrt(np.diag(cov[c])) * spacing_mm).tolist(),
            }
        )
    return rows


def describe_component(row: dict) -> str:
    """One line for a hover label or a table: ``component 3: alpha 0.214, mu (7.5, 8.0, 6.1) vox, sigma (...) mm``."""
    mu = ", ".join(f"{v:.1f}" for v in row["mu"])
    sigma = ", ".join(f"{v:.2f}" for v in row["sigma_mm"])
    return f"component {row['component']}: alpha {row['alpha']:.3f}, mu ({mu}) vox, sigma ({sigma}) mm"
