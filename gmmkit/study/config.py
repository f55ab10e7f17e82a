"""The configuration of a scaling study: which strategies, which worker counts, how, and where.

A :class:`StudyConfig` is what ``gmmkit sweep``, ``gmmkit demo`` and notebook 03 hand to
:func:`gmmkit.study.sweep.run_study`; like :class:`~gmmkit.config.RunConfig` it is validated field by field
and round-trips through JSON (``study.json`` in the study's folder).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import checks
from ..config import RunConfig
from ..parallel.placement import LOCAL, Placement
from ..strategies import STRATEGIES


@dataclass
class StudyConfig:
    """A grid of (strategy, workers) runs of one base configuration (paper Section VII).

    ``run``: every run's settings but strategy and workers. ``placement``: where real ranks run (this
    machine, hosts, a SLURM allocation: :class:`~gmmkit.parallel.placement.Placement`). ``max_real``:
    real Horovod ranks up to this many workers (None: the placement's slots); above it the runs are
    simulated on one process (``simulate``) or skipped.
    ``calibrate``: measure the wall-time model first (simulated runs need it for their times).
    ``target_epoch``: set the target by the paper's rule, the sequential validation loss after that many
    epochs, instead of ``run.train.target_loss``.
    ``elastic``: a real batch job that loses a rank or a host goes on (:mod:`gmmkit.study.elastic_batch`): the
    run it was training is resumed from its last committed state, a strong one on the hosts that answer (at
    least ``min_workers``, fewer than n if need be), the others on n workers or not at all; up to
    ``max_restarts`` times a run.
    """

    run: RunConfig = field(default_factory=RunConfig)
    strategies: tuple = STRATEGIES
    workers: tuple = (1, 2, 4, 8, 16, 32)
    max_real: Optional[int] = None
    simulate: bool = True
    calibrate: bool = True
    target_epoch: Optional[int] = None
    out: str = "runs/sweep"
    placement: Placement = LOCAL
    elastic: bool = False
    min_workers: int = 1
    max_restarts: int = 3

    @property
    def real_limit(self) -> int:
        """The largest worker count run on real ranks: ``max_real``, or every slot of the placement."""
        return self.placement.slots if self.max_real is None else self.max_real

    def validate(self) -> "StudyConfig":
        self.run.validate()
        self.strategies, self.workers = tuple(self.strategies), tuple(sorted(set(self.workers)))
        if not self.strategies:
            checks.fail("study.strategies", "at least one of " + ", ".join(STRATEGIES), "none")
        for s in self.strategies:
            checks.one_of("study.strategies", s, STRATEGIES)
        if len(set(self.strategies)) != len(self.strategies):
            checks.fail("study.strategies", "each strategy once", list(self.strategies))
        for n in self.workers:
            checks.positive_int("study.workers", n)
        if not self.workers or self.workers[0] != 1:
            checks.fail(
                "study.workers",
                "a list that includes 1 (the sequential baseline of every efficiency)",
                list(self.workers),
            )
        if not isinstance(self.placement, Placement):
            checks.fail("study.placement", "a Placement", self.placement)
        self.placement.validate()
        if self.max_real is not None:
            checks.positive_int("study.max_real", self.max_real)
            self.placement.check_workers(self.max_real, "study.max_real")
        for name in ("simulate", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                checks.fail(f"study.{name}", "true or false", getattr(self, name))
        if self.target_epoch is not None:
            checks.positive_int("study.target_epoch", self.target_epoch)
        self._validate_elastic()
        if not isinstance(self.out, str) or not self.out:
            checks.fail("study.out", "a directory path", self.out)
        return self

    def _validate_elastic(self) -> None:
        if not isinstance(self.elastic, bool):
            checks.fail("study.elastic", "true or false", self.elastic)
        checks.positive_int("study.min_workers", self.min_workers)
        if self.min_workers > self.workers[-1]:
            checks.fail("study.min_workers", f"at most the largest worker count, {self.workers[-1]}", self.min_workers)
        checks.non_negative_int("study.max_restarts", self.max_restarts)

    def to_dict(self) -> dict:
        return {
            "run": self.run.to_dict(),
            "strategies": list(self.strategies),
            "workers": list(self.workers),
            "max_real": self.max_real,
            "simulate": self.simulate,
            "calibrate": self.calibrate,
            "target_epoch": self.target_epoch,
            "out": self.out,
            "placement": self.placement.to_dict(),
            "elastic": self.elastic,
            "min_workers": self.min_workers,
            "max_restarts": self.max_restarts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Any) -> "StudyConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        checks.json_object("study", raw, sorted(known), prefix="study.")
        values = {k: v for k, v in raw.items() if k not in ("run", "placement")}
        if "placement" in raw:
            values["placement"] = Placement.from_dict(raw["placement"])
        for name in ("strategies", "workers"):
            if name in values and not isinstance(values[name], (list, tuple)):
                checks.fail(f"study.{name}", "a list", values[name])
        return cls(run=RunConfig.from_dict(raw.get("run", {})), **values).validate()

    @classmethod
    def from_json(cls, text: str, source: str = "study") -> "StudyConfig":
        """A study from JSON; a syntax error or a bad field is one :class:`ConfigError` naming ``source``."""
        return checks.from_json(text, source, cls.from_dict)
