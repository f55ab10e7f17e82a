"""``gmmkit sweep``: the grid of strategies x worker counts, with tables and figures (paper Section VII)."""
from __future__ import annotations

import sys

from ..cli import CLIError, add_placement_flags, add_run_flags, config_from_args, placement_from_args
from ..strategies import STRATEGIES
from ..study.config import StudyConfig

FLAGS = {"study.strategies": "--strategies", "study.workers": "--workers", "study.max_real": "--max-real",
         "study.target_epoch": "--target-epoch"}


def _csv(flag: str, kind, text: str) -> list:
    """A comma-separated flag value as a list of ``kind`` (parsing only: the study config checks values)."""
    try:
        return [kind(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"{flag}: expected a comma-separated list of {kind.__name__}, received {text!r}") from None


def register(sub):
    p = sub.add_parser("sweep", help="time to target for strategies x worker counts, with tables and figures")
    add_run_flags(p, out_default="runs/sweep")
    p.add_argument("--strategies", dest="strategy_list", default=",".join(STRATEGIES), metavar="S,S,...")
    p.add_argument("--workers", dest="worker_list", default="1,2,4,8,16,32", metavar="N,N,...")
    p.add_argument("--max-real", type=int, default=None, metavar="N",
                   help="run real Horovod ranks up to N workers (default: every slot of the hosts, or of the "
                        "SLURM allocation, else this machine's cores)")
    p.add_argument("--simulate", action="store_true",
                   help="simulate worker counts above --max-real on one process (else they are skipped)")
    p.add_argument("--no-calibrate", action="store_true", help="skip measuring the wall-time model")
    p.add_argument("--target-epoch", type=int, default=None, metavar="E",
                   help="set the target to the validation loss the sequential run reaches after E epochs "
                        "(the paper's rule, with E about 100) instead of --target-loss")
    p.add_argument("--overwrite", action="store_true", help="replace the earlier study --out holds")
    add_placement_flags(p)
    p.set_defaults(func=run, flags=FLAGS)
    return p


def study_from_args(args, parser) -> StudyConfig:
    return StudyConfig(run=config_from_args(args, parser), strategies=_csv("--strategies", str, args.strategy_list),
                       workers=_csv("--workers", int, args.worker_list), max_real=args.max_real,
                       simulate=args.simulate, calibrate=not args.no_calibrate, target_epoch=args.target_epoch,
                       out=args.out, placement=placement_from_args(args)).validate()


def report(rows, out: str) -> int:
    """Print the tables; exit status 1 when a run failed (naming them) or the study was stopped, else 0."""
    from ..study.sweep import format_tables

    print(format_tables(rows), flush=True)
    print(f"tables, results.json and figures in {out}", flush=True)
    if any(r.status == "stopped" for r in rows):
        return 1
    failed = {r.run_dir: r for r in rows if r.status == "failed"}  # n = 1 is one run shared by every strategy
    if failed:
        names = ", ".join(f"{'sequential' if r.workers == 1 else r.strategy} n={r.workers}" for r in failed.values())
        print(f"gmmkit sweep: error: {len(failed)} run(s) failed ({names}); why is in {out}/results.json",
              file=sys.stderr, flush=True)
        return 1
    return 0


def run(args, parser) -> int:
    study = study_from_args(args, parser)
    from ..study.sweep import run_study  # heavy: TensorFlow

    return report(run_study(study, say=lambda line: print(line, flush=True), overwrite=args.overwrite), study.out)
