"""``gmmkit demo``: the compact study that ``make demo`` runs (a few minutes on 2 CPU cores).

All four strategies; real Horovod ranks at n = 1 and 2 (and at 8 and 32 when ``--hosts``, ``--hostfile``
or a SLURM allocation gives that many slots); the rest simulated on one process with the wall time
predicted by the calibrated model. The paper's model (K = 50, 32 filters, latent 256) on the default data
set, LIDC-IDRI's nodules, scaled down so the whole grid fits in minutes: 1024 training and 64 validation
nodules (whole patients), at most 6 epochs. The target is chosen by the paper's rule, the validation loss
the sequential run reaches after ``--target-epoch`` epochs. Every run is in exact mode (``--no-exact`` turns
it off), so the strong runs' losses can be compared with the sequential run's to the last bit, and the
efficiencies compare like with like. The full-size study is ``gmmkit sweep`` with its defaults.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..config import RunConfig
from ..study.config import StudyConfig
from .flags import BACKEND, Flag, add_command, add_flags, add_placement_flags, placement_from_args
from .sweep import OVERWRITE, report

DEMO = StudyConfig(
    run=RunConfig().replace(
        data={"train_size": 1024, "val_size": 64},
        model={"components": 50, "filters": 32, "latent": 256},  # the paper's
        train={"epochs": 6, "threads": 1, "exact": True},
    ),
    workers=(1, 2, 8, 32),
    max_real=2,
    simulate=True,
    calibrate=True,
    target_epoch=3,
    out="runs/demo",
)


FLAGS = (
    Flag("--out", ("study.out", "out"), metavar="DIR", default=DEMO.out),
    Flag("--target-epoch", ("study.target_epoch",), int, metavar="E", default=DEMO.target_epoch),
    Flag("--epochs", ("train.epochs",), int, metavar="MAX", default=DEMO.run.train.epochs),
    Flag(
        "--exact",
        ("train.exact",),
        action=argparse.BooleanOptionalAction,
        default=DEMO.run.train.exact,
        help="every run in exact mode, so strong runs follow the sequential path to the last bit "
        "(default; --no-exact: float32 sums, faster, drifting)",
    ),
    BACKEND,
    OVERWRITE,
)


def register(sub):
    p = add_command(sub, "demo", "the compact study of `make demo`: 4 strategies, n = 1..32, tables, figures", run)
    add_flags(p, FLAGS)
    add_placement_flags(p)
    return p


def run(args, parser) -> int:
    where = placement_from_args(args)
    study = dataclasses.replace(
        DEMO,
        run=DEMO.run.replace(
            train={"epochs": args.epochs, "exact": args.exact, "backend": getattr(args, "backend", None)}, out=args.out
        ),
        target_epoch=args.target_epoch,
        out=args.out,
        placement=where,
        max_real=DEMO.max_real if where.is_local else None,
    ).validate()
    study.run.check_paths()
    from ..study.sweep import run_study  # heavy: TensorFlow

    on = "" if where.is_local else f" on {where.describe()}"
    print(
        f"gmmkit demo: {', '.join(study.strategies)} at n = {', '.join(map(str, study.workers))} (real up to "
        f"{study.real_limit}{on}, simulated above), target at epoch {study.target_epoch}, into {study.out}",
        flush=True,
    )
    return report(run_study(study, say=lambda line: print(line, flush=True), overwrite=args.overwrite), study.out)
