"""Real-CT geometry in plain numpy: world millimetres to voxels, and nodule cubes cut from a scan.

A CT scan is a voxel array plus three things that place it in the patient (all in the order x, y, z, as
SimpleITK and the .mhd header give them):

``origin``
    the world position in mm of the centre of voxel (0, 0, 0);
``spacing``
    the voxel size in mm along each array axis (LUNA16: about 0.7 mm in-plane, 0.6 to 2.5 mm between
    slices);
``direction``
    a 3x3 matrix (row-major, 9 numbers) whose columns are the world directions of the array axes; the
    identity for most scans, a flipped axis (``-1`` on the diagonal) for some.

A world point ``p`` and a continuous voxel index ``i`` (x, y, z order) are related by
``p = origin + direction @ (spacing * i)``, so ``i = direction^-1 (p - origin) / spacing``
(:func:`world_to_index`, :func:`index_to_world`). The voxel array itself is indexed the other way round,
``volume[z, y, x]`` (``SimpleITK.GetArrayFromImage``).

A nodule cube (:func:`cut_cube`) is an ``S x S x S`` grid of isotropic spacing (1 mm by default) aligned with
the world axes, centred exactly on the annotated world position: the centre of the cube, between its two
middle voxels when S is even, is the nodule centre. Its array axes are world (z, y, x), the same as the
cube's ``mu[..., d]`` axes in :mod:`gmmkit.model.mixture`, whatever the scan's direction, so every cube
has the same orientation. Each cube voxel is read from the scan by trilinear interpolation at its world
position: resampling to isotropic spacing, converting the centre to voxels and cutting are one step, one
interpolation (not two) and exact to a fraction of a voxel. Cube voxels beyond the scan's border are air
(-1000 HU).

Nothing here reads files: :mod:`gmmkit.data.images` reads the scans and hands the arrays in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .intensity import AIR_HU


@dataclass(frozen=True)
class Geometry:
    """Where a voxel array sits in the world: origin (3,), spacing (3,), direction (3, 3); all x, y, z."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    @classmethod
    def of(cls, origin, spacing, direction=None) -> "Geometry":
        """Checked geometry from sequences (``direction``: 9 numbers row-major or a 3x3 matrix; default identity)."""
        origin = np.asarray(origin, dtype=np.float64).reshape(-1)
        spacing = np.asarray(spacing, dtype=np.float64).reshape(-1)
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"origin: expected 3 finite numbers (x, y, z), received {origin.tolist()}")
        if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
            raise ValueError(f"spacing: expected 3 positive numbers (x, y, z), received {spacing.tolist()}")
        if direction.size != 9:
            raise ValueError(f"direction: expected 9 numbers (a 3x3 matrix, row-major), received {direction.size}")
        direction = direction.reshape(3, 3)
        if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
            raise ValueError(f"direction: expected an invertible 3x3 matrix, received {direction.tolist()}")
        return cls(origin, spacing, direction)


def world_to_index(points_xyz: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Continuous voxel indices (x, y, z) of world points in mm: (..., 3) -> (..., 3).

    ``i = direction^-1 (p - origin) / spacing``; integer results are voxel centres.
    """
    p = np.asarray(points_xyz, dtype=np.float64)
    inverse = np.linalg.inv(geometry.direction)
    return ((p - geometry.origin) @ inverse.T) / geometry.spacing


def index_to_world(index_xyz: np.ndarray, geometry: Geometry) -> np.ndarray:
    """World points in mm of continuous voxel indices (x, y, z): (..., 3) -> (..., 3)."""
    i = np.asarray(index_xyz, dtype=np.float64)
    return geometry.origin + (i * geometry.spacing) @ geometry.direction.T


def inside_extent(index_xyz: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Whether each continuous index lies within the scan's voxels (their half-voxel extent included)."""
    size_xyz = np.asarray(shape_zyx[::-1], dtype=np.float64)
    i = np.asarray(index_xyz, dtype=np.float64)
    return np.all((i >= -0.5) & (i <= size_xyz - 0.5), axis=-1)


def cube_points(center_xyz_mm, size: int, spacing_mm: float = 1.0) -> np.ndarray:
    """World positions (x, y, z) of the voxel centres of a world-aligned cube: (size, size, size, 3).

    Array axes are (z, y, x); voxel ``k`` along an axis sits ``(k - (size - 1) / 2) * spacing_mm`` from the
    centre, so the cube's centre is exactly ``center_xyz_mm``.
    """
    offsets = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * spacing_mm
    z, y, x = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    return np.stack([x, y, z], axis=-1) + np.asarray(center_xyz_mm, dtype=np.float64)


def cut_cube(
    volume_zyx: np.ndarray,
    geometry: Geometry,
    center_xyz_mm,
    size: int = 16,
    spacing_mm: float = 1.0,
    fill: float = AIR_HU,
) -> tuple[np.ndarray, float]:
    """A world-aligned ``size``-cube of ``volume_zyx`` centred on a world point, and the fraction inside.

    Each cube voxel is the trilinear interpolation of the scan at its world position
    (:func:`cube_points`); voxels beyond the scan's extent are ``fill`` (air, -1000 HU, by default).
    Returns the cube in the volume's units as float32 (z, y, x), and the fraction of its voxels that lie
    inside the scan (1.0: entirely inside, 0.0: entirely outside).
    """
    volume_zyx = np.asarray(volume_zyx)
    if volume_zyx.ndim != 3:
        raise ValueError(f"volume_zyx: expected a 3-D array, received shape {volume_zyx.shape}")
    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise ValueError(f"size: expected a positive integer, received {size!r}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm: expected a positive number, received {spacing_mm!r}")
    index = world_to_index(cube_points(center_xyz_mm, size, spacing_mm), geometry)
    inside = inside_extent(index, volume_zyx.shape)
    upper = np.asarray(volume_zyx.shape[::-1], dtype=np.float64) - 1.0
    clamped = np.clip(index, 0.0, upper)  # the half-voxel rims read their edge voxel
    coords = clamped[..., ::-1].reshape(-1, 3).T  # (3, P) in array order z, y, x
    values = ndimage.map_coordinates(volume_zyx, coords, order=1, mode="nearest", output=np.float32)
    cube = values.reshape(size, size, size)
    cube[~inside] = fill
    return cube, float(inside.mean())
