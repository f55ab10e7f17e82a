"""``gmmkit train``: one process, or n Horovod ranks that it launches (or joins)."""
from __future__ import annotations

import argparse
import sys

from ..cli import CLIError, add_run_flags, config_from_args
from ..parallel import launch
from ..strategies import STRATEGIES
from ..training.rundir import RunDir


def register(sub):
    p = sub.add_parser("train", help="train DeepDensity (one process, or n Horovod ranks)",
                       description=__doc__.strip("`\n"))
    add_run_flags(p)
    add_parallel_flags(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
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
    if summary["status"] == "reached_target":
        print(f"reached target {summary['target_loss']} in {summary['time_to_target_s']:.1f} s "
              f"(epoch {summary['epochs']}); run files in {out}", flush=True)
        return
    best = summary.get("best_val_loss")
    best = f" (best val {best:.6f})" if best is not None else ""
    print(f"status {summary['status']} after {summary['epochs']} epochs{best}; run files in {out}", flush=True)


def run(args, parser) -> int:
    cfg = config_from_args(args, parser)
    n = cfg.train.workers
    if n > 1 and not args.simulate and not launch.launched_in_parallel():
        print(f"launching {n} ranks with {args.launcher}", flush=True)
        code, failure = launch.run_ranks(n, launch.gmmkit_argv(*args.argv), args.launcher,
                                         on_interrupt=RunDir(cfg.out).request_stop)
        ended = (RunDir(cfg.out).summary() or {}).get("status")  # a run that stopped or diverged says so itself
        if failure and ended in (None, "running", "failed"):
            print(f"gmmkit train: error: {failure}; {args.launcher} stopped the other ranks. The metrics of "
                  f"every finished epoch are in {cfg.out}; continue with --resume.", file=sys.stderr, flush=True)
        return code
    if launch.launched_in_parallel() and not args.simulate and launch.launcher_size() != n:
        raise CLIError(f"--workers {n}: this job was started with {launch.launcher_size()} ranks")
    from ..training import train  # heavy: TensorFlow

    summary = train(cfg, callbacks=[lambda r: print_epoch(r, cfg.train.epochs)], resume=args.resume,
                    simulate=args.simulate, handle_sigint=True)
    if launch.launcher_rank() == 0:
        print_summary(summary, cfg.out)
    return 0 if summary["status"] in ("reached_target", "max_epochs") else 1
