"""Looking inside a checkpoint: what the model renders for a validation cube, and where its Gaussians sit.

Everything here is numpy and the model API; the figures are drawn by :mod:`gmmkit.plots.slices` and the
widgets by :mod:`gmmkit.ui.viewer`. The pieces:

* :class:`Inspector` loads a run directory's config and latest checkpoint (or any config and weights),
  builds the model, and gives, for validation cube ``i``, a :class:`Sample`: the input, the rendered
  density (same units), their difference, and the mixture (alpha, mu, covariance factors, mass).
* :func:`slice_volume` cuts a cube along one of the three :data:`AXES` (axial, coronal, sagittal are array
  axes 0, 1, 2 of a cube in CT order z, y, x).
* :func:`centres_on_slice` projects the component means onto a slice, in voxel units, with each centre's
  weight and its distance from the slice plane, so a figure can size markers by alpha and fade those far
  from the plane.

Coordinates: a cube of S voxels spans [-1, 1]; voxel i sits at ``-1 + (2 i + 1) / S`` (see
:mod:`gmmkit.model.mixture`), so mean coordinate m is at fractional voxel index ``(m + 1) S / 2 - 1/2``.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import RunConfig
from ..data.sources import load_split
from ..errors import InputError
from ..training.rundir import RunDir

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


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


def centres_on_slice(alpha: np.ndarray, mu: np.ndarray, axis: str | int, index: int, size: int) -> dict:
    """Component centres projected onto slice ``index`` along ``axis``, in voxel units.

    ``alpha`` (K,) and ``mu`` (K, 3) are one sample's mixture. Returns arrays of length K: ``row`` and
    ``col`` (image coordinates, as :func:`slice_volume` lays the slice out), ``alpha``, and ``distance``,
    the distance in voxels from each centre to the slice plane.
    """
    alpha, mu = np.asarray(alpha, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    if alpha.ndim != 1 or mu.shape != (alpha.shape[0], 3):
        raise InputError(f"mixture: expected alpha (K,) and mu (K, 3), received {alpha.shape} and {mu.shape}")
    a = axis_index(axis)
    rows, cols = in_plane_axes(a)
    vox = to_voxel(mu, size)
    return {"row": vox[:, rows], "col": vox[:, cols], "alpha": alpha, "distance": np.abs(vox[:, a] - index)}


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


@dataclass(frozen=True)
class Sample:
    """One validation cube through the model: all arrays numpy, densities in input units."""

    index: int
    input: np.ndarray  # (S, S, S)
    density: np.ndarray  # (S, S, S): the rendered mixture, mass-scaled like the input
    alpha: np.ndarray  # (K,)
    mu: np.ndarray  # (K, 3) in [-1, 1]
    tril: np.ndarray  # (K, 3, 3)
    mass: float
    loss: float  # this cube's MSLE

    @property
    def difference(self) -> np.ndarray:
        """Rendered minus input: positive where the model puts too much density."""
        return self.density - self.input

    @property
    def size(self) -> int:
        return int(self.input.shape[0])


class Inspector:
    """A model loaded from a run directory's latest checkpoint, ready to look at validation cubes.

    ``Inspector("runs/demo")`` reads ``config.json`` and ``checkpoint.npz``; without a checkpoint yet the
    model keeps its seeded initial weights (``epoch == 0``). :meth:`reload` picks up a newer checkpoint
    (the training loop rewrites it after every epoch), so a viewer can refresh during a run.
    ``Inspector.from_config(cfg, weights)`` inspects any weights of a config's model.
    """

    def __init__(self, run: str | os.PathLike, max_samples: Optional[int] = None):
        self.run = RunDir.open(run)
        self._setup(self.run.config(), max_samples)
        self.reload()

    @classmethod
    def from_config(cls, cfg: RunConfig, weights: Optional[Sequence[np.ndarray]] = None,
                    max_samples: Optional[int] = None) -> "Inspector":
        """Inspect ``cfg``'s model with ``weights`` (default: its seeded initial weights)."""
        self = cls.__new__(cls)
        self.run = None
        self._setup(cfg, max_samples)
        if weights is not None:
            self.set_weights(weights, epoch=None)
        return self

    def _setup(self, cfg: RunConfig, max_samples: Optional[int]) -> None:
        from .. import model as model_lib  # heavy: TensorFlow

        self.cfg = cfg
        self.model = model_lib.from_config(cfg)
        self.mixture = model_lib.mixture_model(self.model)
        self._msle = model_lib.per_sample_msle
        val = load_split(cfg.data).val
        self.val = val if max_samples is None else val[:max_samples]
        self.epoch: Optional[int] = 0
        self._mtime = None
        self._cache: dict[int, Sample] = {}
        self._lock = threading.RLock()

    @property
    def size(self) -> int:
        return int(self.cfg.data.cube)

    @property
    def components(self) -> int:
        return int(self.cfg.model.components)

    def __len__(self) -> int:
        return len(self.val)

    def set_weights(self, weights: Sequence[np.ndarray], epoch: Optional[int] = None) -> None:
        with self._lock:
            try:
                self.model.set_weights(list(weights))
            except ValueError as exc:
                raise InputError(f"weights: do not fit the model of this config ({exc})") from None
            self.epoch = epoch
            self._cache.clear()

    def reload(self) -> bool:
        """Load the run's checkpoint if it changed since the last call; True when it did."""
        if self.run is None:
            return False
        path = self.run.checkpoint_path
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        ckpt = self.run.load_checkpoint()
        if ckpt is None:
            return False
        self.set_weights(ckpt["weights"], epoch=ckpt["epoch"])
        self._mtime = mtime
        return True

    def sample(self, index: int) -> Sample:
        """Validation cube ``index`` with the model's rendering of it (cached until the weights change)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.val):
            raise InputError(f"sample: expected an integer in [0, {len(self.val) - 1}] (the validation set), "
                             f"received {index!r}")
        index = int(index)
        with self._lock:
            if index not in self._cache:
                x = self.val[index:index + 1]
                density = np.asarray(self.model(x, training=False))[0]
                alpha, mu, tril, mass = (np.asarray(t) for t in self.mixture(x, training=False))
                loss = float(np.asarray(self._msle(x, density[None]))[0])
                self._cache[index] = Sample(index=index, input=x[0], density=density, alpha=alpha[0], mu=mu[0],
                                            tril=tril[0], mass=float(mass[0]), loss=loss)
            return self._cache[index]

    def describe(self) -> str:
        where = str(self.run.path) if self.run is not None else "weights in memory"
        epoch = "initial weights" if self.epoch == 0 else ("" if self.epoch is None else f"epoch {self.epoch}")
        return ", ".join(p for p in (where, epoch, f"{len(self.val)} validation cubes",
                                     f"K = {self.components}") if p)
