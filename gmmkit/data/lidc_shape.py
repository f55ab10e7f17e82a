"""The readers' consensus shape of a LIDC nodule, as a signed distance field on an isotropic cube.

Each reader's mask (:func:`gmmkit.data.lidc_db.annotation_mask`, pylidc's ``boolean_mask``) lives on the
scan's own grid: ``pixel_spacing`` in-plane (0.46 to 0.98 mm in LIDC) and the slice spacing along z (0.45 to
3 mm). :func:`consensus_shape` turns every reader's mask into a signed distance field in millimetres on
that grid (negative inside, positive outside, the surface halfway between a voxel inside and one outside,
``scipy.ndimage.distance_transform_edt`` with the grid's anisotropic sampling), averages the readers'
fields (so each reader counts once and the result is smoother than any one mask, which also softens the
slice steps), and resamples the mean by trilinear interpolation onto a cube of ``cube`` voxels of
``spacing_mm`` each.

Coordinates: the scan's millimetres, ``z`` = the slice position (``Scan.slice_zvals``), ``y`` = row index
times pixel spacing, ``x`` = column index times pixel spacing (LIDC's contours carry no origin; only
relative positions matter here). The cube's axes are (z, y, x), like every gmmkit cube.

The centre: the centroid (mean position, each voxel weighted by its volume) of the consensus, the voxels
of the scan grid where the mean field is negative. Voxel ``k`` of the cube lies ``(k - (cube - 1) / 2) *
spacing_mm`` from it along each axis (as :func:`gmmkit.data.luna.cube_points`), so the centroid is the
cube's exact centre. Where the readers' masks overlap too little for the mean field to be negative anywhere
(pylidc's clustering sometimes groups 5 to 8 annotations of neighbouring nodules), there is no consensus:
:func:`consensus_shape` raises :class:`NoConsensus`.

The distance transform assumes evenly spaced slices; a few LIDC scans have a missing or doubled slice. The
field then uses the median spacing while the resampling places every slice at its true position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .lidc_db import Nodule, annotation_mask

MARGIN_VOXELS = 2  # beyond the cube on the scan grid, so that its border voxels interpolate between real samples


class NoConsensus(ValueError):
    """The readers' masks of a nodule share no voxel on average: there is no shape to build."""


@dataclass(frozen=True, eq=False)
class Consensus:
    """The readers' consensus of one nodule on the cube grid."""

    sdf_mm: np.ndarray  # (S, S, S) float32: mean signed distance in mm, negative inside; axes (z, y, x)
    centre_mm: np.ndarray  # (3,) float64: the consensus centroid in scan mm (z, y, x)
    volume_mm3: float  # volume of the consensus on the scan grid
    clipped: bool  # part of the consensus lies outside the cube
    readers_with_shape: int  # readers whose contours enclose at least one voxel


def signed_distance(mask: np.ndarray, sampling: tuple[float, float, float]) -> np.ndarray:
    """Signed distance in mm of each voxel of ``mask`` to its surface: minus the distance to the nearest
    outside voxel inside, plus the distance to the nearest inside voxel outside (``sampling``: voxel size
    along each axis). ``mask`` must hold both inside and outside voxels."""
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return outside - inside


def _slice_positions(zvals: np.ndarray, first: int, count: int, step: float) -> np.ndarray:
    """Positions in mm of scan slices ``first .. first + count - 1``; beyond the scan's own slices they
    continue at ``step`` mm."""
    k = np.arange(first, first + count)
    inside = np.clip(k, 0, len(zvals) - 1)
    return zvals[inside] + (k - inside) * step


def consensus_shape(nodule: Nodule, cube: int = 16, spacing_mm: float = 1.0) -> Consensus:
    """The readers' mean signed distance field of ``nodule`` on a ``cube``-voxel isotropic grid centred on
    the consensus centroid (see the module docstring). Raises :class:`NoConsensus` when no reader's contours
    enclose a voxel, or when the readers' mean field is nowhere negative."""
    scan = nodule.scan
    masks = [annotation_mask(a, scan) for a in nodule.annotations]
    masks = [(m, box) for m, box in masks if m.any()]
    if not masks:
        raise NoConsensus(f"annotations {list(nodule.annotation_ids)}: no reader's contours enclose a voxel")
    ps, dz = scan.pixel_spacing, scan.slice_spacing
    half = cube * spacing_mm / 2.0
    # the scan grid: the readers' boxes, padded so that a cube centred anywhere inside them fits, plus a margin
    pad = np.array([math.ceil(half / ps), math.ceil(half / ps), math.ceil(half / dz)]) + MARGIN_VOXELS
    lo = np.min([box[:, 0] for _, box in masks], axis=0) - pad
    hi = np.max([box[:, 1] for _, box in masks], axis=0) + pad
    shape = tuple(int(v) for v in hi - lo + 1)
    total = np.zeros(shape, dtype=np.float64)
    for mask, box in masks:
        placed = np.zeros(shape, dtype=bool)
        a = box[:, 0] - lo
        placed[a[0] : a[0] + mask.shape[0], a[1] : a[1] + mask.shape[1], a[2] : a[2] + mask.shape[2]] = mask
        total += signed_distance(placed, (ps, ps, dz))
    mean = total / len(masks)  # axes (i, j, k) = (y, x, z)

    z = _slice_positions(scan.slice_zvals, int(lo[2]), shape[2], dz)
    y = (lo[0] + np.arange(shape[0])) * ps
    x = (lo[1] + np.arange(shape[1])) * ps
    inside = mean < 0
    if not inside.any():
        raise NoConsensus(f"annotations {list(nodule.annotation_ids)}: the readers' masks share no voxel on average")
    # voxel volumes: slices may be unevenly spaced, each counts for half the gaps to its neighbours
    dzk = np.gradient(z) if len(z) > 1 else np.array([dz])
    weight = inside * dzk[None, None, :]
    total_weight = float(weight.sum())
    centre = (
        np.array(
            [
                float((weight.sum(axis=(0, 1)) * z).sum()),
                float((weight.sum(axis=(1, 2)) * y).sum()),
                float((weight.sum(axis=(0, 2)) * x).sum()),
            ]
        )
        / total_weight
    )
    volume = float(inside.sum(axis=(0, 1)) @ dzk) * ps * ps

    offsets = (np.arange(cube, dtype=np.float64) - (cube - 1) / 2.0) * spacing_mm
    cz, cy, cx = centre[0] + offsets, centre[1] + offsets, centre[2] + offsets
    kz = np.interp(cz, z, np.arange(len(z)))
    iy = cy / ps - lo[0]
    jx = cx / ps - lo[1]
    gi, gj, gk = np.meshgrid(iy, jx, kz, indexing="ij")
    sampled = ndimage.map_coordinates(mean, [gi.ravel(), gj.ravel(), gk.ravel()], order=1, mode="nearest")
    sdf = sampled.reshape(cube, cube, cube).transpose(2, 0, 1)  # (i, j, k) -> (z, y, x)

    outside_cube = (
        (np.abs(y - centre[1]) > half)[:, None, None]
        | (np.abs(x - centre[2]) > half)[None, :, None]
        | (np.abs(z - centre[0]) > half)[None, None, :]
    )
    return Consensus(
        sdf_mm=np.ascontiguousarray(sdf, dtype=np.float32),
        centre_mm=centre,
        volume_mm3=volume,
        clipped=bool((inside & outside_cube).any()),
        readers_with_shape=len(masks),
    )
