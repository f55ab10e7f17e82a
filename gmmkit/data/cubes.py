"""Nodule cubes: the ``cubes.npz`` format (its one reader and writer), and how a set splits into training and
validation.

Every data source ends as a :class:`CubeSet`: the synthetic phantoms, LIDC-IDRI's nodules
(``gmmkit prepare-lidc``), LUNA16 scans (``gmmkit prepare-luna``) and hand-made files.
:mod:`gmmkit.data.sources` turns a :class:`~gmmkit.config.DataConfig` into the arrays the training loop reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import atomic_savez
from ..model.config import MIN_CUBE
from .intensity import HU_WINDOW

RANGE_SLACK = 1e-3  # normalised intensities lie in [0, 1]; this much beyond is rounding, more is another unit
_KNOWN = ("cubes", "seriesuid", "center_xyz_mm", "diameter_mm", "inside_fraction", "spacing_mm", "hu_window")


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
    ``columns``          any other (N, ...) arrays    per-cube facts a source adds, e.g. LIDC's ``patient_id``,
                                                      ``texture``, ``malignancy``
    ``meta``             any other () values          facts about the whole set, e.g. how it was built
    ===================  ===========================  =================================================

    Strings are fixed-width unicode, never objects, so everything loads with ``allow_pickle=False``. Only
    ``cubes`` is required in a file; the other arrays get neutral defaults. A ``patient_id`` column makes
    :func:`load_split` keep each patient's cubes on one side of the split.
    """

    cubes: np.ndarray
    seriesuid: np.ndarray
    center_xyz_mm: np.ndarray
    diameter_mm: np.ndarray
    inside_fraction: np.ndarray
    spacing_mm: float = 1.0
    hu_window: tuple[float, float] = HU_WINDOW
    columns: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cubes)

    @classmethod
    def of(
        cls,
        cubes: np.ndarray,
        spacing_mm: float = 1.0,
        seriesuid=None,
        diameter_mm=None,
        meta: dict | None = None,
        **columns: np.ndarray,
    ) -> "CubeSet":
        """A set of cubes not cut from a scan (no world centre; every voxel inside), with ``columns``."""
        n = len(cubes)
        return cls(
            cubes=np.asarray(cubes, np.float32),
            seriesuid=np.asarray(seriesuid if seriesuid is not None else np.full(n, "", dtype="U1"), str),
            center_xyz_mm=np.full((n, 3), np.nan),
            diameter_mm=np.asarray(diameter_mm if diameter_mm is not None else np.full(n, np.nan), np.float32),
            inside_fraction=np.ones(n, np.float32),
            spacing_mm=float(spacing_mm),
            columns=columns,
            meta=dict(meta or {}),
        )

    def column(self, name: str, default=None):
        """A per-cube fact (``columns[name]``), or ``default`` when this set has none."""
        return self.columns.get(name, default)

    def save(self, path: str | os.PathLike) -> None:
        """Write the arrays to ``path`` atomically (a crash never leaves a half-written file)."""
        atomic_savez(
            path,
            cubes=np.asarray(self.cubes, dtype=np.float32),
            seriesuid=np.asarray(self.seriesuid, dtype=str).astype("U"),
            center_xyz_mm=np.asarray(self.center_xyz_mm, dtype=np.float64).reshape(-1, 3),
            diameter_mm=np.asarray(self.diameter_mm, dtype=np.float32),
            inside_fraction=np.asarray(self.inside_fraction, dtype=np.float32),
            spacing_mm=np.float64(self.spacing_mm),
            hu_window=np.asarray(self.hu_window, np.float64),
            **{k: np.asarray(v) for k, v in self.columns.items()},
            **{k: np.asarray(v) for k, v in self.meta.items()},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, cube: int | None = None) -> "CubeSet":
        """Read and check a ``cubes.npz``: N > 0 cubes (N, S, S, S) of real, finite, normalised intensities (in
        [0, 1]: :func:`~gmmkit.data.intensity.normalize_hu`), S at least the encoder's receptive field (and
        equal to ``cube`` when given). Errors name the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as f:
                if "cubes" not in f.files:
                    raise DatasetError(f"{path}: expected an array named 'cubes', found {sorted(f.files)}")
                arrays = {name: f[name] for name in f.files}
        except DatasetError:
            raise
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
            raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
        cubes = _checked_cubes(path, arrays.pop("cubes"), cube)
        n = len(cubes)
        get = arrays.pop
        return cls(
            cubes=cubes,
            seriesuid=np.asarray(get("seriesuid", np.full(n, "", dtype="U1"))).astype(str),
            center_xyz_mm=np.asarray(get("center_xyz_mm", np.full((n, 3), np.nan)), np.float64),
            diameter_mm=np.asarray(get("diameter_mm", np.full(n, np.nan)), np.float32),
            inside_fraction=np.asarray(get("inside_fraction", np.ones(n)), np.float32),
            spacing_mm=float(get("spacing_mm", 1.0)),
            hu_window=tuple(float(v) for v in get("hu_window", HU_WINDOW)),
            columns={k: v for k, v in arrays.items() if v.ndim >= 1 and len(v) == n},
            meta={k: v.item() for k, v in arrays.items() if v.ndim == 0},
        )


def _checked_cubes(path: Path, cubes: np.ndarray, cube: int | None) -> np.ndarray:
    if cubes.ndim != 4 or len(set(cubes.shape[1:])) != 1:
        raise DatasetError(f"{path}: 'cubes' must have shape (N, S, S, S), found {cubes.shape}")
    if cubes.shape[1] < MIN_CUBE:
        raise DatasetError(
            f"{path}: cubes of {cubes.shape[1]} voxels are smaller than the encoder's receptive field ({MIN_CUBE})"
        )
    if cube is not None and cubes.shape[1] != cube:
        raise DatasetError(
            f"{path}: cubes are {cubes.shape[1]} voxels wide, the config asks for {cube} (pass --cube {cubes.shape[1]})"
        )
    if len(cubes) == 0:
        raise DatasetError(f"{path}: 'cubes' holds no cubes (shape {cubes.shape})")
    if not np.issubdtype(cubes.dtype, np.number) or np.issubdtype(cubes.dtype, np.complexfloating):
        raise DatasetError(f"{path}: 'cubes' must hold real numbers, found dtype {cubes.dtype}")
    cubes = cubes.astype(np.float32, copy=False)
    bad = ~np.isfinite(cubes)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(cubes), -1).any(axis=1))[0, 0])
        raise DatasetError(f"{path}: 'cubes' holds {int(bad.sum())} non-finite voxels (first in cube {first})")
    low, high = float(cubes.min()), float(cubes.max())
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        hu = ": these look like Hounsfield units" if low < -100 or high > 100 else ""
        raise DatasetError(
            f"{path}: 'cubes' holds values from {low:g} to {high:g}; gmmkit trains on intensities normalised to "
            f"[0, 1]{hu} (gmmkit.data.intensity.normalize_hu maps -1000..400 HU there, as prepare-luna and "
            "prepare-lidc do)"
        )
    return cubes


# --- splits ----------------------------------------------------------------------------------


def split_indices(
    n: int, val_size: int, train_size: int | None, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validation and training rows of a set of ``n``: ``(val, train)``.

    Without ``groups``, the first ``val_size`` rows of a seeded permutation are validation and the next
    ``train_size`` (default: the rest) training. With ``groups`` (e.g. patient ids) no group is on both sides:
    groups are visited in a seeded order, each joining the validation side whole while it fits, so it holds
    exactly ``val_size`` rows unless no combination of the remaining groups fits; training takes the other
    rows (the first ``train_size`` of them) in the same order."""
    if groups is None:
        order = np.random.default_rng(seed).permutation(n)
        train_size = n - val_size if train_size is None else train_size
        return order[:val_size], order[val_size : val_size + train_size]
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    val: list[int] = []
    train: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(names)):
        rows = np.flatnonzero(inverse == g).tolist()
        (val if len(val) + len(rows) <= val_size else train).extend(rows)
    train = train if train_size is None else train[:train_size]
    return np.asarray(val, dtype=np.int64), np.asarray(train, dtype=np.int64)
