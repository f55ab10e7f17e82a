"""The data set a :class:`~gmmkit.config.DataConfig` names, and its training and validation split.

``lidc`` (the default): LIDC-IDRI's nodules, built at first use into the cache
(:func:`gmmkit.data.lidc_cache.load_lidc`) and split by patient; ``phantoms``: the synthetic set; a path: a
``cubes.npz`` (:class:`~gmmkit.data.cubes.CubeSet`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import checks
from ..config import DataConfig
from ..errors import DatasetError
from .cubes import CubeSet, split_indices
from .lidc import LidcOptions
from .lidc_cache import load_lidc
from .phantoms import load_phantoms


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # (N_train, S, S, S) float32
    val: np.ndarray  # (N_val, S, S, S) float32
    train_index: np.ndarray  # rows of the whole set
    val_index: np.ndarray


def load_cubes(cfg: DataConfig) -> CubeSet:
    """The whole data set ``cfg`` names."""
    if cfg.dataset == "phantoms":
        return CubeSet.of(load_phantoms(cfg.size, cfg.seed, cfg.cube).cubes)
    if cfg.dataset == "lidc":
        return load_lidc(
            LidcOptions(
                cube=cfg.cube,
                min_readers=cfg.min_readers,
                max_slice_thickness=cfg.max_slice_thickness,
                min_diameter_mm=cfg.min_diameter_mm,
            )
        )
    try:
        return CubeSet.load(cfg.dataset, cfg.cube)
    except DatasetError as exc:
        raise DatasetError(str(exc), field="data.dataset", detail=str(exc)) from None


def load_split(cfg: DataConfig) -> Split:
    """The training and validation cubes of ``cfg`` (:func:`gmmkit.data.cubes.split_indices`; by patient when
    the set knows its patients)."""
    data = load_cubes(cfg)
    n = len(data)
    if cfg.val_size >= n:
        checks.fail("data.val_size", f"fewer than the {n} cubes of {cfg.dataset}", cfg.val_size)
    val, train = split_indices(n, cfg.val_size, cfg.train_size, cfg.seed, data.column("patient_id"))
    if cfg.train_size is not None and len(train) < cfg.train_size:
        checks.fail(
            "data.train_size", f"at most the {len(train)} cubes of {cfg.dataset} outside validation", cfg.train_size
        )
    return Split(
        train=np.ascontiguousarray(data.cubes[train]),
        val=np.ascontiguousarray(data.cubes[val]),
        train_index=train,
        val_index=val,
    )
