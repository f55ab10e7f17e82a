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

The annotations CSV (:func:`read_annotations`) and the ``cubes.npz`` format that ``gmmkit prepare-luna``
writes and ``gmmkit train --dataset`` reads (:class:`CubeSet`) are defined here too. Nothing here imports
SimpleITK: :mod:`gmmkit.ct` reads the scans and hands the arrays in.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DatasetError
from .intensity import AIR_HU, HU_WINDOW

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
REQUIRED_COLUMNS = ANNOTATION_COLUMNS[:4]  # diameter_mm is optional (NaN when absent)


# --- geometry ------------------------------------------------------------------------------------

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


def cut_cube(volume_zyx: np.ndarray, geometry: Geometry, center_xyz_mm, size: int = 16,
             spacing_mm: float = 1.0, fill: float = AIR_HU) -> tuple[np.ndarray, float]:
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


# --- annotations ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Annotations:
    """Nodule positions in world mm, one row each, in the order of the CSV."""

    seriesuid: np.ndarray  # (N,) unicode
    center_xyz_mm: np.ndarray  # (N, 3) float64
    diameter_mm: np.ndarray  # (N,) float32, NaN where the CSV has no diameter

    def __len__(self) -> int:
        return len(self.seriesuid)

    def by_series(self) -> dict[str, np.ndarray]:
        """Row indices of each seriesuid, in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for i, uid in enumerate(self.seriesuid):
            groups.setdefault(str(uid), []).append(i)
        return {uid: np.asarray(rows) for uid, rows in groups.items()}


def read_annotations(path: str | Path) -> Annotations:
    """Read a LUNA16-style CSV: ``seriesuid,coordX,coordY,coordZ[,diameter_mm]`` (world mm, x y z).

    Other columns (LUNA's ``candidates.csv`` has ``class``) are ignored. Errors name the file, and the
    column or line at fault.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such annotations file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read it as CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: empty; expected a header {','.join(ANNOTATION_COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                           f"expected {','.join(ANNOTATION_COLUMNS)} (diameter_mm optional), found "
                           f"{','.join(header) or 'no columns'}")
    col = {name: header.index(name) for name in ANNOTATION_COLUMNS if name in header}
    uids, centres, diameters = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) < len(header):
            raise DatasetError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        uid = row[col["seriesuid"]].strip()
        if not uid:
            raise DatasetError(f"{path}: line {line}: empty seriesuid")
        xyz = [_number(path, line, name, row[col[name]]) for name in ("coordX", "coordY", "coordZ")]
        diameter = _number(path, line, "diameter_mm", row[col["diameter_mm"]]) if "diameter_mm" in col else math.nan
        uids.append(uid)
        centres.append(xyz)
        diameters.append(diameter)
    if not uids:
        raise DatasetError(f"{path}: no annotation rows after the header")
    return Annotations(seriesuid=np.asarray(uids, dtype=str),
                       center_xyz_mm=np.asarray(centres, dtype=np.float64).reshape(-1, 3),
                       diameter_mm=np.asarray(diameters, dtype=np.float32))


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}: line {line}, column {column}: expected a number, "
                           f"received {text.strip()!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}: line {line}, column {column}: expected a finite number, received {text!r}")
    return value


def write_annotations(path: str | Path, annotations: Annotations) -> None:
    """Write ``annotations`` as a LUNA16 CSV (atomically)."""
    from ..io import atomic_open

    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ANNOTATION_COLUMNS)
        for uid, (x, y, z), d in zip(annotations.seriesuid, annotations.center_xyz_mm, annotations.diameter_mm):
            writer.writerow([uid, repr(float(x)), repr(float(y)), repr(float(z)),
                             "" if math.isnan(d) else repr(float(d))])


# --- the cubes.npz format ------------------------------------------------------------------------

@dataclass(frozen=True)
class CubeSet:
    """Nodule cubes and where they came from: the arrays of a ``cubes.npz``.

    ===================  ===========================  =================================================
    ``cubes``            (N, S, S, S) float32         normalised by :func:`normalize_hu` (0 is air)
    ``seriesuid``        (N,) unicode ('U')           the scan each cube was cut from
    ``center_xyz_mm``    (N, 3) float64               nodule centre in world mm (x, y, z)
    ``diameter_mm``      (N,) float32                 from the annotations (NaN if not given)
    ``inside_fraction``  (N,) float32                 fraction of the cube inside the scan (rest is air)
    ``spacing_mm``       () float64                   voxel size of the cubes (isotropic)
    ``hu_window``        (2,) float64                 the window ``normalize_hu`` used
    ===================  ===========================  =================================================

    Strings are fixed-width unicode, never objects, so everything loads with ``allow_pickle=False``;
    :func:`gmmkit.data.load_cubes` reads the ``cubes`` of such a file for training.
    """

    cubes: np.ndarray
    seriesuid: np.ndarray
    center_xyz_mm: np.ndarray
    diameter_mm: np.ndarray
    inside_fraction: np.ndarray
    spacing_mm: float = 1.0
    hu_window: tuple[float, float] = HU_WINDOW

    def __len__(self) -> int:
        return len(self.cubes)

    def save(self, path: str | Path) -> None:
        """Write the arrays to ``path`` atomically (a crash never leaves a half-written file)."""
        from ..io import atomic_savez

        atomic_savez(path, cubes=np.asarray(self.cubes, dtype=np.float32),
                     seriesuid=np.asarray(self.seriesuid, dtype=str).astype("U"),
                     center_xyz_mm=np.asarray(self.center_xyz_mm, dtype=np.float64).reshape(-1, 3),
                     diameter_mm=np.asarray(self.diameter_mm, dtype=np.float32),
                     inside_fraction=np.asarray(self.inside_fraction, dtype=np.float32),
                     spacing_mm=np.float64(self.spacing_mm), hu_window=np.asarray(self.hu_window, np.float64))

    @classmethod
    def load(cls, path: str | Path) -> "CubeSet":
        """Read a ``cubes.npz``; only ``cubes`` is required (other arrays get neutral defaults)."""
        from .datasets import load_cubes

        cubes = load_cubes(path)  # checks the file and the cubes' shape
        with np.load(path, allow_pickle=False) as f:
            n = len(cubes)
            get = (lambda key, default: f[key] if key in f.files else default)
            return cls(cubes=cubes,
                       seriesuid=np.asarray(get("seriesuid", np.full(n, "", dtype="U1"))).astype(str),
                       center_xyz_mm=np.asarray(get("center_xyz_mm", np.full((n, 3), np.nan)), np.float64),
                       diameter_mm=np.asarray(get("diameter_mm", np.full(n, np.nan)), np.float32),
                       inside_fraction=np.asarray(get("inside_fraction", np.ones(n)), np.float32),
                       spacing_mm=float(get("spacing_mm", 1.0)),
                       hu_window=tuple(float(v) for v in get("hu_window", HU_WINDOW)))


def stored_spacing(path: str | Path, default: float = 1.0) -> float:
    """The ``spacing_mm`` a cubes.npz records (``default`` when it has none, e.g. hand-made files)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return float(f["spacing_mm"]) if "spacing_mm" in f.files else default
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None

