"""``gmmkit sweep``: the grid of strategies x worker counts, with tables and figures (paper Section VII)."""

from __future__ import annotations

import sys

from ..errors import CLIError
from ..strategies import STRATEGIES
from ..study.config import StudyConfig
from . import flags
from .flags import Flag

MAX_REAL = Flag(
    "--max-real",
    ("study.max_real",),
    int,
    "run real Horovod ranks up to N workers (default: every slot "
    "of the hosts, or of the SLURM allocation, else this machine's cores)",
    "N",
)
TARGET_EPOCH = Flag(
    "--target-epoch",
    ("study.target_epoch",),
    int,
    "set the target to the validation loss the "
    "sequential run reaches after E epochs (the paper's rule, with E about 100) instead of --target-loss",
    "E",
)
OVERWRITE = Flag("--overwrite", action="store_true", help="replace the earlier study --out holds")
FLAGS = (
    Flag("--strategies", ("study.strategies",), dest="strategy_list", default=",".join(STRATEGIES), metavar="S,S,..."),
    Flag("--workers", ("study.workers",), dest="worker_list", default="1,2,4,8,16,32", metavar="N,N,..."),
    flags.BACKEND,
    MAX_REAL,
    Flag(
        "--simulate",
        action="store_true",
        help="simulate worker counts above --max-real on one process (else they are skipped)",
    ),
    Flag("--no-calibrate", action="store_true", help="skip measuring the wall-time model"),
    TARGET_EPOCH,
    OVERWRITE,
)


def _csv(flag: str, kind, text: str) -> list:
    """A comma-separated flag value as a list of ``kind`` (parsing only: the study config checks values)."""
    try:
        return [kind(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"{flag}: expected a comma-separated list of {kind.__name__}, received {text!r}") from None


def register(sub):
    p = flags.add_command(sub, "sweep", "time to target for strategies x worker counts, with tables and figures", run)
    flags.add_run_flags(p, out_default="runs/sweep")
    flags.add_flags(p, FLAGS)
    flags.add_placement_flags(p)
    return p


def study_from_args(args) -> StudyConfig:
    run = flags.config_from_args(args)
    return StudyConfig(
        run=run,
        strategies=_csv("--strategies", str, args.strategy_list),
        workers=_csv("--workers", int, args.worker_list),
        max_real=args.max_real,
        simulate=args.simulate,
        calibrate=not args.no_calibrate,
        target_epoch=args.target_epoch,
        out=run.out,
        placement=flags.placement_from_args(args),
    ).validate()


def report(rows, out: str) -> int:
    """Print the tables; exit status 1 when a run failed (naming them) or the study was stopped, else 0."""
    from ..study.report import format_tables

    print(format_tables(rows), flush=True)
    print(f"tables, results.json and figures in {out}", flush=True)
    if any(r.status == "stopped" for r in rows):
        return 1
    failed = {r.run_dir: r for r in rows if r.status == "failed"}  # n = 1 is one run shared by every strategy
    if failed:
        names = ", ".join(f"{'sequential' if r.workers == 1 else r.strategy} n={r.workers}" for r in failed.values())
        print(
            f"gmmkit sweep: error: {len(failed)} run(s) failed ({names}); why is in {out}/results.json",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


def run(args, parser) -> int:
    study = study_from_args(args)
    from ..study.sweep import run_study  # heavy: TensorFlow

    return report(run_study(study, say=lambda line: print(line, flush=True), overwrite=args.overwrite), study.out)
