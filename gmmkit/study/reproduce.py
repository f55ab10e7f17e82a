"""The paper's protocol end to end (``gmmkit reproduce``): the learning rate, the target, the grid, the claims.

1. **eta.** A learning-rate range test (:mod:`gmmkit.study.lr_find`) suggests the largest rate at which
   training still progresses; the sequential run of step 2 confirms it converges (the paper chose eta so:
   "further increasing it in the sequential model causes divergence"), and halves it if it diverges.
   ``lr`` fixes eta instead (``PAPER_LR``: the paper's 0.00105): no range test, no halving, the same eta
   for the sequential run and every strategy, as the paper ran them.
2. **Target.** The sequential run's validation loss after E epochs (the paper: E = 100).
3. **Cap.** Every other run may train 4 E epochs.
4. **Grid.** strong, weak, lsr and warmup (5 warm-up epochs) at n = 1, 2, 4, 8, 16, 32: real Horovod ranks
   up to the slots this machine (or allocation) has, simulated above; every run in exact mode (so the
   strong runs' losses are the sequential run's to the last bit, and each efficiency compares like with
   like), unless the run config says otherwise.
5. **Report.** Tables I and II, Figures 2 to 5 (:mod:`gmmkit.study.sweep`), and the paper's claims
   evaluated from the results (:mod:`gmmkit.study.claims`) into ``claims.json`` and ``claims.md``.

It takes hours, so it is resumable: every grid point is its own run directory, the protocol's choices
(eta, the target) are kept in ``protocol.json`` as soon as they are made, and a second
``gmmkit reproduce --out DIR`` continues where the first stopped: ended runs are kept, the others resume.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import (
    checks,
    training,  # its loop (TensorFlow) is imported on first use
)
from ..config import RunConfig
from ..errors import ConfigError
from ..files import atomic_write_json, atomic_write_text, writable_path
from ..parallel import network
from ..parallel.backends import resolve_backend
from ..parallel.placement import LOCAL, Placement
from ..signals import StopFlag, raise_on_signals, stop_on_signals
from ..strategies import STRATEGIES
from ..training import RunDir
from . import claims as claims_lib
from .config import StudyConfig
from .lr_find import lr_range_test, write_lr_find
from .perfmodel import PerfModel, calibrate
from .sweep import run_dir_for, sweep

# E of each scale: the paper's 100 epochs, and a quick one (9 minutes on this project's 2-core machine:
# REPRODUCTION.md)
SCALES = {"quick": 6, "paper": 100}
CAP = 4  # the cap on every run but the sequential one, in multiples of E
HALVINGS = 8  # at most this many halvings of eta when the sequential run diverges (0.1 down to 4e-4)
PAPER_LR = 0.00105  # the paper's eta (Adam, batch 32)
ELASTIC = ("elastic", "min_workers", "max_restarts")  # how lost jobs are met: a reproduction may change them


def paper_run() -> RunConfig:
    """The paper's settings on LIDC-IDRI's population: every nodule of 3 mm or more that any reader marked
    on the thin-slice scans (2288; the paper had 2100 from LUNA16's scans). The default selection (3
    readers, 930 training nodules) is too small for n = 32 weak scaling, whose global batch is 1024."""
    return RunConfig().replace(
        data={"dataset": "lidc", "min_readers": 1, "val_size": 256},
        train={"threads": 1, "warmup_epochs": 5, "exact": True},
    )


@dataclass
class ReproduceConfig:
    """What ``gmmkit reproduce`` runs. ``target_epoch`` overrides the scale's E; ``placement``: where real
    ranks run (:class:`~gmmkit.parallel.placement.Placement`); ``max_real``: real ranks up to this many
    workers (None: the placement's slots), simulated above."""

    out: str = "runs/reproduce"
    scale: str = "quick"
    run: RunConfig = field(default_factory=paper_run)
    target_epoch: Optional[int] = None
    workers: tuple = (1, 2, 4, 8, 16, 32)
    strategies: tuple = STRATEGIES
    max_real: Optional[int] = None
    lr_range: tuple = (1e-5, 1e-1, 100)
    placement: Placement = LOCAL
    lr: Optional[float] = None  # eta fixed (PAPER_LR: the paper's); None: the range test and halving
    # the grid's real batches go on when a job loses a rank or a host (StudyConfig's, study/batch.py)
    elastic: bool = False
    min_workers: int = 1
    max_restarts: int = 3

    def validate(self) -> "ReproduceConfig":
        checks.one_of("reproduce.scale", self.scale, tuple(SCALES))
        if self.target_epoch is not None:
            checks.positive_int("reproduce.target_epoch", self.target_epoch)
        self.placement.validate()
        if self.lr is not None:
            checks.positive_float("reproduce.lr", self.lr)
        if self.max_real is not None:
            checks.positive_int("reproduce.max_real", self.max_real)
            self.placement.check_workers(self.max_real, "reproduce.max_real")
        if not isinstance(self.out, str) or not self.out:
            checks.fail("reproduce.out", "a directory path", self.out)
        if not isinstance(self.elastic, bool):
            checks.fail("reproduce.elastic", "true or false", self.elastic)
        checks.positive_int("reproduce.min_workers", self.min_workers)
        if self.min_workers > max(self.workers):
            checks.fail(
                "reproduce.min_workers", f"at most the largest worker count, {max(self.workers)}", self.min_workers
            )
        checks.non_negative_int("reproduce.max_restarts", self.max_restarts)
        self.run.validate()
        return self

    @property
    def real_limit(self) -> int:
        """The largest worker count run on real ranks."""
        return self.placement.slots if self.max_real is None else self.max_real

    @property
    def epochs(self) -> int:
        """E: the sequential run's length, whose last validation loss is the target."""
        return self.target_epoch or SCALES[self.scale]

    def to_dict(self) -> dict:
        return {
            "out": self.out,
            "scale": self.scale,
            "run": self.run.to_dict(),
            "target_epoch": self.epochs,
            "workers": list(self.workers),
            "strategies": list(self.strategies),
            "max_real": self.max_real,
            "lr_range": list(self.lr_range),
            **({"lr": self.lr} if self.lr is not None else {}),  # absent: a folder of an older gmmkit continues
            **{name: getattr(self, name) for name in ELASTIC},
        }

    @property
    def lr_choice(self) -> str:
        """How eta is chosen, in words (``protocol.json``, ``claims.md``, ``tables.md``)."""
        if self.lr is None:
            return "the range test's suggestion, halved while the sequential run diverged"
        return "the paper's (--lr paper)" if self.lr == PAPER_LR else "fixed by --lr"


def reproduce(
    what: ReproduceConfig, say=print, progress: bool = True, overwrite: bool = False, stop: Optional[StopFlag] = None
) -> list[claims_lib.Claim]:
    """Run (or continue) the protocol into ``what.out``; returns the claims. ``overwrite`` starts over in a
    folder that holds another reproduction (a different configuration is refused without it).

    A stop request (``stop``, SIGINT, SIGTERM) during the range test or the calibration abandons them
    (:class:`~gmmkit.signals.Interrupted`: nothing of them is kept); during the grid, the runs stop as a
    sweep's do (:func:`~gmmkit.study.sweep.sweep`). Either way no claim is evaluated and no target recorded
    that was not measured, and returning to it with the same configuration continues where it stopped."""
    what = what.validate()
    network.check_hosts(what.placement)
    resolve_backend(what.run.train.backend)  # refused before anything is written
    out = writable_path("out", what.out)
    state = _open(out, what, overwrite)
    with stop_on_signals(stop) as stop:
        with raise_on_signals():  # what comes before the grid is thrown away whole when stopped, at once
            trainer = training.Trainer(what.run.replace(train={"workers": 1, "strategy": "strong"}), simulate=True)
            if "lr" not in state and what.lr is not None:
                say(f"1. eta = {what.lr:.4g}: {what.lr_choice}; no range test")
                state.update(lr=what.lr, lr_choice=what.lr_choice, halvings=0)
                _save(out, state)
            if "lr" not in state:
                say("1. learning-rate range test ...")
                found = lr_range_test(what.run, *what.lr_range)
                write_lr_find(found, out / "lr_find")
                state.update(
                    lr=found["suggested_lr"], lr_found=found["suggested_lr"], lr_choice=what.lr_choice, halvings=0
                )
                _save(out, state)
            if "perf" not in state:
                say("   calibrating the wall-time model for the simulated runs' times ...")
                state["perf"] = calibrate(
                    what.run,
                    ranks=min(2, what.real_limit),
                    trainer=trainer,
                    placement=what.placement,
                    exact=what.run.train.exact,
                ).to_dict()
                _save(out, state)
        base = what.run.replace(train={"lr": state["lr"], "epochs": CAP * what.epochs})
        say(
            f"2. the sequential run at eta = {state['lr']:.4g} for E = {what.epochs} epochs; "
            f"3. cap {CAP * what.epochs} epochs; 4. the grid ..."
        )
        while True:
            try:
                grid = grid_of(what, base, out)
                rows = sweep(grid, PerfModel.from_dict(state["perf"]), progress, trainer, stop, resume=True)
            except RuntimeError:  # the sequential run did not finish E finite epochs
                if not _diverged_sequential(out):
                    raise
                if what.lr is not None:
                    raise RuntimeError(
                        f"the sequential run diverged at eta = {what.lr:.4g} ({what.lr_choice}); see "
                        f"{run_dir_for(out, 'strong', 1) / 'summary.json'}"
                    ) from None
                if state["halvings"] >= HALVINGS:
                    raise RuntimeError(
                        f"the sequential run diverged at every eta from {state['lr_found']:.4g} down "
                        f"to {state['lr']:.4g} ({HALVINGS} halvings); see "
                        f"{run_dir_for(out, 'strong', 1) / 'summary.json'}"
                    ) from None
                rows = None
            if rows is not None:
                break
            state.update(lr=state["lr"] / 2, halvings=state["halvings"] + 1)
            say(f"   the sequential run diverged: eta halved to {state['lr']:.4g} and the grid started again")
            shutil.rmtree(out / "runs", ignore_errors=True)
            _save(out, state)
            base = base.replace(train={"lr": state["lr"]})
        if stop:  # the grid is not complete: its claims are not evaluated, and the target may be unknown
            say(f"   stopped: the tables in {out} hold the runs that finished; no claim was evaluated")
            return []
        state["target"] = json.loads((out / "results.json").read_text())["config"]["train"]["target_loss"]
        _save(out, state)
        eta = f"eta = {state['lr']:.4g}: {state.get('lr_choice', what.lr_choice)}"
        found = write_claims(out, rows, warmup_epochs=what.run.train.warmup_epochs, eta=eta)
        atomic_write_text(out / "tables.md", f"{eta}\n\n" + (out / "tables.md").read_text())
        say(f"5. tables, figures and claims in {out}")
        return found


def grid_of(what: ReproduceConfig, base: RunConfig, out: Path) -> StudyConfig:
    """The grid of step 4: every strategy and worker count of ``what`` on the runs ``base`` describes (eta and
    the cap set), real up to ``what.max_real`` and simulated above, elastic as ``what`` says."""
    return StudyConfig(
        run=base,
        strategies=what.strategies,
        workers=what.workers,
        max_real=what.max_real,
        simulate=True,
        target_epoch=what.epochs,
        out=str(out),
        placement=what.placement,
        **{name: getattr(what, name) for name in ELASTIC},
    )


def write_claims(out: Path, rows, warmup_epochs: int = 5, eta: str = "") -> list[claims_lib.Claim]:
    """Evaluate the claims from the study's rows and curves; write ``claims.json`` and ``claims.md`` (``eta``:
    which eta the runs used and how it was chosen, a line of its own)."""
    curves = {(r.strategy, r.workers): RunDir(r.run_dir).metrics() for r in rows if r.mode != "skipped"}
    curves[("strong", 1)] = RunDir(run_dir_for(out, "strong", 1)).metrics()
    found = claims_lib.evaluate(rows, curves, exact=_strong_exact(rows), warmup_epochs=warmup_epochs)
    atomic_write_json(out / "claims.json", [c.to_dict() for c in found])
    intro = f"{eta}\n\n" if eta else ""
    atomic_write_text(out / "claims.md", "# The paper's claims, evaluated\n\n" + intro + claims_lib.to_markdown(found))
    return found


def progress_of(out: str | Path) -> dict:
    """Where a reproduction stands: its choices so far and each grid point's status (for the shell and
    notebook 03, also while it runs)."""
    out = Path(out)
    state = json.loads((out / "protocol.json").read_text()) if (out / "protocol.json").exists() else {}
    points = (
        {p.name: (RunDir(p).summary() or {}).get("status", "not started") for p in sorted((out / "runs").iterdir())}
        if (out / "runs").is_dir()
        else {}
    )
    return {"protocol": state, "runs": points, "claims": (out / "claims.json").exists()}


def _open(out: Path, what: ReproduceConfig, overwrite: bool) -> dict:
    """The protocol state of ``out``: new, or the one an earlier call with the same configuration left."""
    recorded = out / "reproduce.json"
    if recorded.exists():
        if _protocol(json.loads(recorded.read_text())) != _protocol(json.loads(json.dumps(what.to_dict()))):
            if not overwrite:
                checks.fail(
                    "out",
                    "a folder holding this reproduction, or a new one (pass --overwrite to start over: "
                    f"{out} holds a reproduction with other settings)",
                    str(out),
                )
            shutil.rmtree(out)
        elif not overwrite:
            return json.loads((out / "protocol.json").read_text()) if (out / "protocol.json").exists() else {}
        else:
            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        checks.fail("out", "a new or empty folder, or one holding an earlier reproduction", str(out))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(recorded, what.to_dict())
    return {}


def _protocol(recorded: dict) -> dict:
    """What makes two reproductions the same: every setting but how often their runs commit a state and how
    lost jobs are met (``--elastic`` and its bounds)."""
    run = recorded.get("run", {})
    with contextlib.suppress(ConfigError):  # a setting added since the recording began has its default there
        run = RunConfig.from_dict(run).to_dict()
    train = {k: v for k, v in run.get("train", {}).items() if k != "checkpoint_every"}
    kept = {k: v for k, v in recorded.items() if k not in ELASTIC}
    return {**kept, "run": {**run, "train": train}}


def _save(out: Path, state: dict) -> None:
    atomic_write_json(out / "protocol.json", state)


def _diverged_sequential(out: Path) -> bool:
    return (RunDir(run_dir_for(out, "strong", 1)).summary() or {}).get("status") == "diverged"


def _strong_exact(rows) -> bool:
    strong = [r for r in rows if r.strategy == "strong" and r.workers > 1 and r.mode != "skipped"]
    return bool(strong) and all(
        getattr(RunDir(r.run_dir).config().train, "exact", False) for r in strong if RunDir(r.run_dir).exists()
    )
