"""Training and validation splits from a :class:`~gmmkit.config.DataConfig`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import MIN_CUBE, DataConfig
from ..errors import DatasetError
from .phantoms import load_phantoms




@dataclass(frozen=True)
class Split:
    train: np.ndarray  # (N_train, S, S, S) float32
    val: np.ndarray  # (N_val, S, S, S) float32


def load_cubes(path: str | Path, cube: int | None = None) -> np.ndarray:
    """The ``cubes`` array of a gmmkit .npz (written by ``prepare-luna`` or by hand), checked."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "cubes" not in f.files:
                raise DatasetError(f"{path}: expected an array named 'cubes', found {sorted(f.files)}")
            cubes = f["cubes"]
    except DatasetError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    if cubes.ndim != 4 or len(set(cubes.shape[1:])) != 1:
        raise DatasetError(f"{path}: 'cubes' must have shape (N, S, S, S), found {cubes.shape}")
    if cubes.shape[1] < MIN_CUBE:
        raise DatasetError(f"{path}: cubes of {cubes.shape[1]} voxels are smaller than the encoder's "
                           f"receptive field ({MIN_CUBE})")
    if cube is not None and cubes.shape[1] != cube:
        raise DatasetError(f"{path}: cubes are {cubes.shape[1]} voxels wide, the config asks for {cube} "
                           f"(pass --cube {cubes.shape[1]})")
    if not np.issubdtype(cubes.dtype, np.number):
        raise DatasetError(f"{path}: 'cubes' must be numeric, found dtype {cubes.dtype}")
    cubes = cubes.astype(np.float32, copy=False)
    bad = ~np.isfinite(cubes)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(cubes), -1).any(axis=1))[0, 0])
        raise DatasetError(f"{path}: 'cubes' holds {int(bad.sum())} non-finite voxels (first in cube {first})")
    return cubes


def load_split(cfg: DataConfig) -> Split:
    """The validation split is the first ``val_size`` cubes of a seeded permutation, training the next."""
    if cfg.dataset == "phantoms":
        cubes = load_phantoms(cfg.size, cfg.seed, cfg.cube).cubes
    else:
        cubes = load_cubes(cfg.dataset, cfg.cube)
    train_size = cfg.train_size if cfg.train_size is not None else len(cubes) - cfg.val_size
    if train_size <= 0 or cfg.val_size + train_size > len(cubes):
        raise DatasetError(f"{cfg.dataset}: holds {len(cubes)} cubes, fewer than val_size={cfg.val_size} "
                           f"+ train_size={train_size}")
    order = np.random.default_rng(cfg.seed).permutation(len(cubes))
    val = cubes[order[: cfg.val_size]]
    train = cubes[order[cfg.val_size: cfg.val_size + train_size]]
    return Split(train=np.ascontiguousarray(train), val=np.ascontiguousarray(val))
