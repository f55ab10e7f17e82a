"""Looking inside a run: what the model of a chosen epoch renders for a validation cube, and its mixture.

Everything here is numpy and the model API; the geometry is in :mod:`gmmkit.ui.sections`, the figures in
:mod:`gmmkit.plots`, the widgets in :mod:`gmmkit.ui.viewer`. :class:`Inspector` loads a run directory's
config, builds the model and gives, for validation cube ``i``, a :class:`Sample`: the input, the rendered
density (same units), their difference, and the mixture (alpha, mu, covariance factors, mass). It can show
any epoch the run kept: 0 (the seeded initial weights, rebuilt from the config), the snapshots
(:mod:`gmmkit.training.snapshots`) and the latest checkpoint, which :meth:`Inspector.reload` follows while
the run trains.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import RunConfig
from ..data.phantoms import CATEGORIES
from ..data.sources import load_cubes, load_split
from ..errors import InputError
from ..training.rundir import RunDir
from .format import format_fact

# the per-cube facts a data set may carry (CubeSet.columns), in the order the sample picker names them
FACT_ORDER = ("patient_id", "category", "malignancy", "texture", "calcification", "diameter_mm")


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
    epoch: Optional[int] = None  # the weights' epoch (0: initial, None: weights handed in)

    @property
    def difference(self) -> np.ndarray:
        """Rendered minus input: positive where the model puts too much density."""
        return self.density - self.input

    @property
    def size(self) -> int:
        return int(self.input.shape[0])


def cube_facts(columns: dict, diameter_mm: Optional[np.ndarray], rows: np.ndarray) -> list[dict]:
    """``{name: value}`` for each of ``rows``: every one-value-per-cube column, and a known diameter.

    ``columns``: a :class:`~gmmkit.data.cubes.CubeSet`'s ``columns`` (LIDC's ``texture``, ``malignancy``,
    ``patient_id``, ...). Known names come first (:data:`FACT_ORDER`), the others after, by name."""
    cols = {k: np.asarray(v) for k, v in (columns or {}).items() if np.ndim(v) == 1}
    if "category" in cols and np.issubdtype(cols["category"].dtype, np.integer):  # an index into CATEGORIES
        cols["category"] = np.array([CATEGORIES[i] if 0 <= i < len(CATEGORIES) else str(i) for i in cols["category"]])
    if diameter_mm is not None and "diameter_mm" not in cols and np.isfinite(diameter_mm).any():
        cols["diameter_mm"] = np.asarray(diameter_mm)
    names = [n for n in FACT_ORDER if n in cols] + sorted(n for n in cols if n not in FACT_ORDER)
    facts = []
    for row in rows:
        one = {}
        for n in names:
            value = cols[n][row].item()
            if not (isinstance(value, float) and not np.isfinite(value)) and value != "":
                one[n] = value
        facts.append(one)
    return facts


def fact_label(index: int, facts: dict, limit: int = 3) -> str:
    """The sample picker's label of validation cube ``index``: its number and its first facts."""
    return " · ".join([f"cube {index}", *(format_fact(k, v) for k, v in list(facts.items())[:limit])])


class Inspector:
    """A run's model, at any epoch the run kept, ready to look at validation cubes.

    ``Inspector("runs/demo")`` reads ``config.json`` and the latest ``checkpoint.npz`` (before the first
    epoch: the seeded initial weights, epoch 0). :meth:`epochs` lists what can be shown, :meth:`use_epoch`
    switches, and :meth:`reload` picks up a newer checkpoint while the run trains (moving on with it when
    the latest was shown). ``Inspector.from_config(cfg, weights)`` inspects any weights of a config's model.
    """

    def __init__(self, run: str | os.PathLike, max_samples: Optional[int] = None):
        self.run = RunDir.open(run)
        self._setup(self.run.config(), max_samples)
        self.reload()

    @classmethod
    def from_config(
        cls, cfg: RunConfig, weights: Optional[Sequence[np.ndarray]] = None, max_samples: Optional[int] = None
    ) -> "Inspector":
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
        self._initial = self.model.get_weights()  # seeded: the weights every rank started from
        split = load_split(cfg.data)
        keep = slice(None) if max_samples is None else slice(0, max_samples)
        self.val = split.val[keep]
        cubes = load_cubes(cfg.data)
        self.spacing_mm = float(cubes.spacing_mm)
        self.hu_window = (float(cubes.hu_window[0]), float(cubes.hu_window[1]))
        self.facts = cube_facts(cubes.columns, cubes.diameter_mm, split.val_index[keep])
        self.epoch: Optional[int] = 0
        self.latest = 0  # the latest checkpoint's epoch
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

    def label(self, index: int) -> str:
        return fact_label(index, self.facts[index])

    # --- weights -----------------------------------------------------------------------------
    def set_weights(self, weights: Sequence[np.ndarray], epoch: Optional[int] = None) -> None:
        with self._lock:
            try:
                self.model.set_weights(list(weights))
            except ValueError as exc:
                raise InputError(f"weights: do not fit the model of this config ({exc})") from None
            self.epoch = epoch
            self._cache.clear()

    def epochs(self) -> list[int]:
        """The epochs this inspector can show: 0, the run's snapshots, and its latest checkpoint."""
        if self.run is None:
            return [self.epoch if self.epoch is not None else 0]
        return sorted({0, *self.run.snapshot_epochs(), self.latest})

    def use_epoch(self, epoch: int) -> None:
        """Show the weights of ``epoch`` (one of :meth:`epochs`)."""
        with self._lock:
            if epoch == self.epoch:
                return
            if epoch == 0:
                self.set_weights(self._initial, epoch=0)
            elif self.run is None:
                raise InputError(f"epoch: expected {self.epoch} (weights handed in), received {epoch!r}")
            else:
                self.set_weights(self.run.load_snapshot(int(epoch))["weights"], epoch=int(epoch))

    def reload(self) -> bool:
        """Look for a newer checkpoint; True when there is one. The weights move on with it when the latest
        epoch was shown (a viewer parked on an earlier epoch stays there)."""
        if self.run is None:
            return False
        try:
            stat = self.run.checkpoint_path.stat()
        except FileNotFoundError:
            return False
        # every commit writes a new file: its inode tells two checkpoints of one timestamp tick apart
        mtime = (stat.st_ino, stat.st_mtime_ns)
        if mtime == self._mtime:
            return False
        with self._lock:
            at_latest = self.epoch == self.latest
            ckpt = self.run.load_checkpoint()
            if ckpt is None:
                return False
            self.latest, self._mtime = ckpt["epoch"], mtime
            if at_latest:
                self.set_weights(ckpt["weights"], epoch=ckpt["epoch"])
        return True

    # --- samples -----------------------------------------------------------------------------
    def sample(self, index: int) -> Sample:
        """Validation cube ``index`` with the model's rendering of it (cached until the weights change)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.val):
            raise InputError(
                f"sample: expected an integer in [0, {len(self.val) - 1}] (the validation set), received {index!r}"
            )
        index = int(index)
        with self._lock:
            if index not in self._cache:
                x = self.val[index : index + 1]
                density = np.asarray(self.model(x, training=False))[0]
                alpha, mu, tril, mass = (np.asarray(t) for t in self.mixture(x, training=False))
                loss = float(np.asarray(self._msle(x, density[None]))[0])
                self._cache[index] = Sample(
                    index=index,
                    input=x[0],
                    density=density,
                    alpha=alpha[0],
                    mu=mu[0],
                    tril=tril[0],
                    mass=float(mass[0]),
                    loss=loss,
                    epoch=self.epoch,
                )
            return self._cache[index]

    def describe(self) -> str:
        where = str(self.run.path) if self.run is not None else "weights in memory"
        epoch = "initial weights" if self.epoch == 0 else ("" if self.epoch is None else f"epoch {self.epoch}")
        latest = f"latest {self.latest}" if self.run is not None and self.epoch != self.latest else ""
        return ", ".join(
            p for p in (where, epoch, latest, f"{len(self.val)} validation cubes", f"K = {self.components}") if p
        )
