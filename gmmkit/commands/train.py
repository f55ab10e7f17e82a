"""``gmmkit train``: one process, or n Horovod ranks that it launches (or joins).

A run directory belongs to one run: a new run needs a new or empty --out (or --overwrite to replace the run
there); --resume continues the run in --out from its own config.json (only --epochs, --threads and, for
strong scaling, --workers may change). SIGINT and SIGTERM end the run after its current step as
``stopped``; a second one ends a multi-rank job at once.
"""
from __future__ import annotations

import argparse
import sys

from ..cli import CLIError, add_placement_flags, add_run_flags, config_from_args, placement_from_args
from ..parallel import launch
from ..signals import stop_on_signals
from ..strategies import STRATEGIES
from ..training.rundir import RunDir


def register(sub):
    p = sub.add_parser("train", help="train DeepDensity (one process, or n Horovod ranks)",
                       description=__doc__.replace("``", "").strip())
    add_run_flags(p)
    add_parallel_flags(p)
    add_placement_flags(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint, with its own config")
    how.add_argument("--overwrite", action="store_true", help="replace the run --out holds")
    p.set_defaults(func=run)
    return p


def add_parallel_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=STRATEGIES, default="strong")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="Horovod ranks (one per GPU)")
    p.add_argument("--launcher", choices=("mpirun", "horovodrun"), default="mpirun")
    p.add_argument("--simulate", action="store_true",
                   help="follow the optimisation path of N workers exactly, on this one process")


def print_epoch(record: dict, epochs: int) -> None:
    print(f"epoch {record['epoch']:4d}/{epochs}  train {record['train_loss']:.6f}  val {record['val_loss']:.6f}"
          f"  lr {record['lr']:.3g}  {record['time_s']:8.1f} s  {record['samples_per_s']:7.0f} samples/s",
          flush=True)


def print_summary(summary: dict, out: str) -> None:
    if summary.get("resumed") is False:
        print(f"the run in {out} has already ended ({summary['status']} after {summary['epochs']} epochs); "
              "nothing to do", flush=True)
    elif summary["status"] == "reached_target":
        print(f"reached target {summary['target_loss']} in {summary['time_to_target_s']:.1f} s "
              f"(epoch {summary['epochs']}); run files in {out}", flush=True)
    else:
        best = summary.get("best_val_loss")
        best = f" (best val {best:.6f})" if best is not None else ""
        print(f"status {summary['status']} after {summary['epochs']} epochs{best}; run files in {out}", flush=True)


def run(args, parser) -> int:
    with stop_on_signals() as stop:  # before anything heavy loads: a signal during start-up is not lost
        # --resume starts from the run's own config.json (a --config file instead is checked against it)
        base = RunDir.open(args.out, "--out").config() if args.resume and not args.config else None
        cfg = config_from_args(args, parser, base=base)
        mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
        n = cfg.train.workers
        launching = n > 1 and not args.simulate and not launch.launched_in_parallel()
        if launching or ((args.hosts or args.hostfile) and not launch.launched_in_parallel()):
            where = placement_from_args(args)  # checked even when unused: every flag is
            where.check_workers(n)
        if launching:
            return _launch(cfg, args, mode, stop, where)
        if launch.launched_in_parallel() and not args.simulate and launch.launcher_size() != n:
            raise CLIError(f"--workers {n}: this job was started with {launch.launcher_size()} ranks")
        from ..training import train  # heavy: TensorFlow

        summary = train(cfg, callbacks=[lambda r: print_epoch(r, cfg.train.epochs)], resume=args.resume,
                        overwrite=args.overwrite, simulate=args.simulate, stop=stop)
    if launch.launcher_rank() == 0:
        print_summary(summary, cfg.out)
    return 0 if summary["status"] in ("reached_target", "max_epochs") else 1


def _launch(cfg, args, mode: str, stop, where) -> int:
    from ..training.launcher import run_on_ranks

    on = "" if where.is_local else f" on {where.describe()}"
    print(f"launching {cfg.train.workers} ranks with {args.launcher}{on}", flush=True)
    ended = run_on_ranks(cfg, launch.gmmkit_argv(*args.argv), mode, args.launcher, stop=stop, placement=where)
    if ended.failure and ended.finished_by_launcher:
        print(f"gmmkit train: error: {ended.failure}; {args.launcher} stopped the other ranks. The metrics of "
              f"every finished epoch are in {cfg.out}; continue with --resume.", file=sys.stderr, flush=True)
    elif ended.finished_by_launcher and ended.summary:
        print(f"status {ended.summary['status']} after {ended.summary.get('epochs', 0)} epochs ({ended.summary['error']}); "
              f"run files in {cfg.out}", flush=True)
    return ended.code if ended.code else (0 if (ended.summary or {}).get("status") in ("reached_target", "max_epochs")
                                          else 1)
