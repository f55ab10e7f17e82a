"""Typed run configuration.

One :class:`RunConfig` describes a training run completely. The CLI builds it from flags, notebooks build
it from keyword arguments, engines receive it as JSON, and every run directory stores it as
``config.json``. Every field is validated in :meth:`RunConfig.validate`, and every error names the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from . import checks
from .errors import ConfigError
from .files import existing_path, writable_path
from .model.config import MIN_CUBE, ModelConfig
from .strategies import STRATEGIES, global_batch

# Validation MSLE the sequential run reaches after 100 epochs on the default data set: the paper's rule
# (README "Default target loss" has the measurement and the command that repeats it).
DEFAULT_TARGET_LOSS = 0.004023

FLOAT32_MAX = 3.4028234663852886e38  # the model trains in float32: a learning rate above cannot be held

# train.checkpoint_every: a number of steps ("200", or 200) or of seconds ("30s", "2.5s")
CHECKPOINT_EVERY = re.compile(r"^\s*(?:(?P<steps>\d+)|(?P<seconds>\d+(?:\.\d*)?|\.\d+)\s*s)\s*$")

# The data sets gmmkit builds itself (gmmkit.data.sources); any other dataset is a .npz path.
BUILT_IN = ("lidc", "phantoms")
BACKENDS = ("horovod", "mpi")  # the ranks' collectives (gmmkit.parallel.distributed); None: horovod where installed


@dataclass
class DataConfig:
    """Which cubes to train on and how to split them."""

    dataset: str = "lidc"  # "lidc" (LIDC-IDRI's nodules), "phantoms" (synthetic) or a path to a .npz with `cubes`
    size: int = 2100  # phantoms only: how many cubes to generate
    min_readers: int = 3  # lidc only: nodules marked by at least this many of the 4 readers (1: the paper's)
    max_slice_thickness: float = 2.5  # lidc only: scans whose slices are at most this thick, mm (LUNA16's)
    min_diameter_mm: float = 3.0  # lidc only: nodules whose mean reader diameter is at least this, mm
    val_size: int = 256
    train_size: Optional[int] = None  # None: every cube not in the validation split
    cube: int = 16
    seed: int = 0

    def validate(self) -> None:
        if self.dataset not in BUILT_IN and not str(self.dataset).endswith(".npz"):
            checks.fail("data.dataset", "'lidc', 'phantoms' or a path to a .npz file", self.dataset)
        checks.positive_int("data.size", self.size)
        checks.positive_int("data.min_readers", self.min_readers)
        if self.min_readers > 4:
            checks.fail("data.min_readers", "1 to 4 (LIDC-IDRI had four readers)", self.min_readers)
        checks.positive_float("data.max_slice_thickness", self.max_slice_thickness)
        checks.non_negative_float("data.min_diameter_mm", self.min_diameter_mm)
        checks.positive_int("data.val_size", self.val_size)
        if self.train_size is not None:
            checks.positive_int("data.train_size", self.train_size)
        checks.integer("data.cube", self.cube)
        if self.cube < MIN_CUBE:
            checks.fail("data.cube", f"at least {MIN_CUBE} (the encoder's receptive field)", self.cube)
        checks.non_negative_int("data.seed", self.seed)
        if self.dataset == "phantoms":
            need = self.val_size + (self.train_size or 1)
            if self.size < need:
                checks.fail("data.size", f"at least val_size + train_size = {need}", self.size)


@dataclass
class TrainConfig:
    """Optimisation, scaling strategy and stop rules (paper Sections IV and VI)."""

    strategy: str = "strong"
    workers: int = 1
    batch_size: int = 32  # base batch B: the global batch of strong scaling, per worker otherwise
    lr: float = 0.00105  # base learning rate eta
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    epochs: int = 400
    target_loss: Optional[float] = DEFAULT_TARGET_LOSS  # None: always run every epoch
    warmup_epochs: int = 5
    seed: int = 0
    threads: Optional[int] = None  # CPU threads per rank; None: cores / local ranks
    exact: bool = False  # the same path to the last bit on any number of ranks (gmmkit.training.exact)
    micro_shards: Optional[int] = None  # exact only: micro-shards per base batch; None: the batch size
    # a mid-epoch state every N steps (200 or "200") or seconds ("30s"); None: states at epoch ends only
    checkpoint_every: Optional[int | str] = None
    elastic: bool = False  # a job that loses a rank or a host restarts on the hosts that answer (training/elastic.py)
    min_workers: int = 1  # elastic: the fewest workers a restart may go on with
    max_restarts: int = 3  # elastic: restarts before the run ends failed
    backend: Optional[str] = None  # the ranks' collectives: "horovod", "mpi"; None: horovod where installed

    @property
    def micro_batch(self) -> int:
        """Samples per micro-shard in exact mode: the base batch cut into ``micro_shards``."""
        return self.batch_size // (self.micro_shards or self.batch_size)

    @property
    def checkpoint_interval(self) -> Optional[tuple[str, float]]:
        """``checkpoint_every`` read: ``("steps", n)`` or ``("seconds", s)``; None without one (or an invalid
        one, which :meth:`validate` refuses)."""
        value = self.checkpoint_every
        if isinstance(value, int) and not isinstance(value, bool):
            return ("steps", value) if value > 0 else None
        found = CHECKPOINT_EVERY.match(value) if isinstance(value, str) else None
        if found is None:
            return None
        kind, number = ("steps", int(found["steps"])) if found["steps"] else ("seconds", float(found["seconds"]))
        return (kind, number) if number > 0 and number != float("inf") else None

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            checks.fail("train.strategy", "one of " + ", ".join(STRATEGIES), self.strategy)
        checks.positive_int("train.workers", self.workers)
        checks.positive_int("train.batch_size", self.batch_size)
        checks.positive_float("train.lr", self.lr)
        scale = self.workers if self.strategy in ("lsr", "warmup") else 1  # the rate the rule reaches
        if self.lr * scale > FLOAT32_MAX:
            checks.fail(
                "train.lr",
                f"a rate that float32 holds{f' times the {scale} workers of {self.strategy}' if scale > 1 else ''} "
                f"(at most {FLOAT32_MAX / scale:.3g})",
                self.lr,
            )
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name)
            if not checks.is_finite_number(value) or not 0 <= value < 1:
                checks.fail(f"train.{name}", "a number in [0, 1)", value)
        checks.positive_float("train.epsilon", self.epsilon)
        checks.positive_int("train.epochs", self.epochs)
        if self.target_loss is not None:
            checks.positive_float("train.target_loss", self.target_loss)
        checks.non_negative_int("train.warmup_epochs", self.warmup_epochs)
        checks.non_negative_int("train.seed", self.seed)
        if self.threads is not None:
            checks.positive_int("train.threads", self.threads)
        if self.strategy == "strong" and self.workers > self.batch_size:
            checks.fail(
                "train.workers",
                f"at most batch_size={self.batch_size} for strong scaling "
                "(each worker needs at least one sample of the global batch)",
                self.workers,
            )
        if not isinstance(self.exact, bool):
            checks.fail("train.exact", "true or false", self.exact)
        if self.micro_shards is not None:
            checks.positive_int("train.micro_shards", self.micro_shards)
            if self.exact is not True:
                checks.fail(
                    "train.micro_shards",
                    "exact mode with it (train.exact: micro-shards cut exact mode's batches, and alone do nothing)",
                    self.micro_shards,
                )
            if self.batch_size % self.micro_shards:
                checks.fail(
                    "train.micro_shards",
                    f"a divisor of batch_size={self.batch_size} (micro-shards of equal size)",
                    self.micro_shards,
                )
        if self.checkpoint_every is not None and self.checkpoint_interval is None:
            checks.fail(
                "train.checkpoint_every",
                "a positive number of steps (200) or seconds (30s)",
                self.checkpoint_every,
            )
        self._validate_elastic()
        if self.backend is not None and self.backend not in BACKENDS:
            checks.fail("train.backend", "one of " + ", ".join(BACKENDS), self.backend)
        if self.exact and self.strategy == "strong" and self.workers > (self.micro_shards or self.batch_size):
            checks.fail(
                "train.workers",
                f"at most micro_shards={self.micro_shards or self.batch_size} in exact "
                "mode (each worker needs at least one micro-shard of the global batch)",
                self.workers,
            )

    def _validate_elastic(self) -> None:
        if not isinstance(self.elastic, bool):
            checks.fail("train.elastic", "true or false", self.elastic)
        if self.elastic and self.strategy != "strong":
            # weak, lsr and warmup: the global batch (and the rate) grow with the workers, so going on with fewer
            # would change the experiment; strong scaling's path does not depend on them
            checks.fail(
                "train.elastic",
                f"strong scaling only (the global batch of {self.strategy} grows with the workers: a restart on "
                "fewer would change the experiment)",
                self.strategy,
            )
        checks.positive_int("train.min_workers", self.min_workers)
        if self.min_workers > self.workers:
            checks.fail("train.min_workers", f"at most workers={self.workers}", self.min_workers)
        checks.non_negative_int("train.max_restarts", self.max_restarts)


@dataclass
class RunConfig:
    """Everything a run needs, in three sections; round-trips through JSON."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/latest"

    def validate(self) -> "RunConfig":
        self.data.validate()
        self.model.validate()
        self.train.validate()
        if not isinstance(self.out, str) or not self.out:
            checks.fail("out", "a directory path", self.out)
        return self

    def resolved(self) -> "RunConfig":
        """This config with its paths absolute (the data set file, the output folder): a run's files then
        open the same from any working directory."""
        dataset = self.data.dataset
        if dataset.endswith(".npz"):
            dataset = os.path.abspath(dataset)
        return self.replace(data={"dataset": dataset}, out=os.path.abspath(self.out))

    def check_batch_fits(self) -> "RunConfig":
        """Refuse an explicit ``data.train_size`` smaller than one global batch before any data is built (a
        config that passes can still meet a data set smaller than that; the trainer refuses it then). Not part
        of :meth:`validate`: a sweep makes such configs for its large-batch points and records them failed."""
        t = self.train
        batch = global_batch(t.strategy, t.workers, t.batch_size)
        if self.data.train_size is not None and self.data.train_size < batch:
            checks.fail(
                "data.train_size",
                f"at least one global batch of {batch} samples (batch size "
                f"{t.batch_size}, {t.strategy} scaling with {t.workers} workers)",
                self.data.train_size,
            )
        return self

    def check_paths(self) -> "RunConfig":
        """Check the paths the run reads and writes, before anything is written: the data set file exists and
        the output folder can be created. (Not part of :meth:`validate`: a stored config stays loadable
        after its data moved.)"""
        if self.data.dataset not in BUILT_IN:
            existing_path("data.dataset", self.data.dataset)
        writable_path("out", self.out)
        return self

    def replace(self, **sections: Any) -> "RunConfig":
        """A copy with fields changed, e.g. ``cfg.replace(train={"workers": 2}, out="runs/x")``."""
        new = RunConfig.from_dict(self.to_dict())
        for key, value in sections.items():
            if key == "out":
                new.out = value
            elif key in ("data", "model", "train") and isinstance(value, dict):
                setattr(
                    new,
                    key,
                    _section_from_dict(
                        type(getattr(new, key)), key, {**dataclasses.asdict(getattr(new, key)), **value}
                    ),
                )
            else:
                checks.fail(key, "one of data, model, train (as dicts) or out", value)
        return new.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Any) -> "RunConfig":
        checks.json_object("config", raw, ("data", "model", "train", "out"))
        cfg = cls(
            data=_section_from_dict(DataConfig, "data", raw.get("data", {})),
            model=_section_from_dict(ModelConfig, "model", raw.get("model", {})),
            train=_section_from_dict(TrainConfig, "train", raw.get("train", {})),
            out=raw.get("out", "runs/latest"),
        )
        return cfg.validate()

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "RunConfig":
        return checks.from_json(text, source, cls.from_dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        return cls.from_json(text, source=str(path))


def _section_from_dict(kind: type, name: str, raw: Any):
    checks.json_object(name, raw, [f.name for f in dataclasses.fields(kind)], prefix=f"{name}.")
    return kind(**raw)
