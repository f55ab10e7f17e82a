"""``gmmkit train``: one process, or n Horovod ranks that it launches (or joins).

A run directory belongs to one run: a new run needs a new or empty --out (or --overwrite to replace the run
there); --resume continues the run in --out from its own config.json (only --epochs, --threads,
--checkpoint-every, the elastic flags and, for strong scaling, --workers may change) and its last state: an
epoch's end, or with --checkpoint-every a step inside an epoch, from which it goes on with the same samples (in
exact mode, to the same bits); --resume-or-new resumes the run in --out if there is one, else starts it there (the
same command for a batch job's every start: examples/slurm/train.sbatch). SIGINT and SIGTERM end the run after its
current step as ``stopped`` (with --checkpoint-every, that step's state is committed); a second one ends a
multi-rank job at once. With
--elastic (strong scaling), a job that loses a rank or a host starts again from the last checkpoint on the
hosts that answer, up to --max-restarts times.
"""

from __future__ import annotations

import os
import sys

from ..parallel import launch
from ..parallel.failures import HostFailure
from ..signals import stop_on_signals
from ..training.launcher import Launched, train_or_launch
from ..training.rundir import LOCK_HELD_BY_PARENT, RunDir
from . import flags
from .flags import Flag

LAUNCHER = Flag("--launcher", choices=("mpirun", "horovodrun"), default="mpirun")
SIMULATE = Flag(
    "--simulate", action="store_true", help="follow the optimisation path of N workers exactly, on this one process"
)
RESUME = Flag(
    "--resume", action="store_true", help="continue the run in --out from its last checkpoint, with its own config"
)
OVERWRITE = Flag("--overwrite", action="store_true", help="replace the run --out holds")
RESUME_OR_NEW = Flag(
    "--resume-or-new",
    action="store_true",
    help="--resume the run in --out if it holds one, else start it there (a job that may be requeued)",
)


def register(sub):
    p = flags.add_command(sub, "train", "train DeepDensity (one process, or n Horovod ranks)", run, __doc__)
    flags.add_run_flags(p)
    flags.add_flags(p, (flags.STRATEGY, flags.WORKERS, flags.BACKEND, LAUNCHER, SIMULATE))
    flags.add_placement_flags(p)
    flags.add_flags(p, flags.ELASTIC_FLAGS, p.add_argument_group("elastic runs (strong scaling)"))
    flags.add_flags(p, (RESUME, RESUME_OR_NEW, OVERWRITE), p.add_mutually_exclusive_group())
    return p


def print_epoch(record: dict, epochs: int) -> None:
    print(
        f"epoch {record['epoch']:4d}/{epochs}  train {record['train_loss']:.6f}  val {record['val_loss']:.6f}"
        f"  lr {record['lr']:.3g}  {record['time_s']:8.1f} s  {record['samples_per_s']:7.0f} samples/s",
        flush=True,
    )


def print_summary(summary: dict, out: str) -> None:
    if summary.get("resumed") is False:
        print(
            f"the run in {out} has already ended ({summary['status']} after {summary['epochs']} epochs); nothing to do",
            flush=True,
        )
    elif summary["status"] == "reached_target":
        print(
            f"reached target {summary['target_loss']} in {summary['time_to_target_s']:.1f} s "
            f"(epoch {summary['epochs']}); run files in {out}",
            flush=True,
        )
    else:
        best = summary.get("best_val_loss")
        best = f" (best val {best:.6f})" if best is not None else f" ({summary['error']})" if "error" in summary else ""
        print(f"status {summary['status']} after {summary['epochs']} epochs{best}; run files in {out}", flush=True)


def run(args, parser) -> int:
    with stop_on_signals() as stop:  # before anything heavy loads: a signal during start-up is not lost
        # --resume-or-new: every rank of a job decides as its launcher did, before Horovod starts; rank 0 begins a
        # new run only after every rank has started Horovod
        resume = args.resume or (args.resume_or_new and RunDir(flags.run_out(args)).exists())
        # --resume starts from the run's own config.json (a --config file instead is checked against it)
        base = RunDir.open(flags.run_out(args), "--out").config() if resume and not args.config else None
        cfg = flags.config_from_args(args, base=base)
        mode = "resume" if resume else "overwrite" if args.overwrite else "new"
        ended = train_or_launch(
            cfg,
            launch.gmmkit_argv(*args.argv),
            mode,
            args.simulate,
            args.hosts,
            args.hostfile,
            args.launcher,
            stop,
            callbacks=[lambda r: print_epoch(r, cfg.train.epochs)],
            say=lambda line: print(line, flush=True),
            discovery_script=args.host_discovery_script,
        )
    if isinstance(ended, Launched):
        return _report_launched(ended, cfg, args.launcher)
    if launch.launcher_rank() == 0:
        print_summary(ended, cfg.out)
    if os.environ.get(LOCK_HELD_BY_PARENT):  # a rank of gmmkit's own launcher, which reads how the run ended:
        return 0  # a non-zero status would make mpirun abort the job and print its banner
    return 0 if ended["status"] in ("reached_target", "max_epochs") else 1


def _report_launched(ended: Launched, cfg, launcher: str) -> int:
    if ended.summary is None and isinstance(ended.failure, HostFailure):  # the ranks could not say it
        print(f"gmmkit train: error: the job did not start: {ended.failure}", file=sys.stderr, flush=True)
    elif ended.failure and ended.finished_by_launcher:
        print(
            f"gmmkit train: error: {ended.failure}; {launcher} stopped the other ranks. The metrics of "
            f"every finished epoch are in {cfg.out}; continue with --resume.",
            file=sys.stderr,
            flush=True,
        )
    elif ended.finished_by_launcher and ended.summary:
        print(
            f"status {ended.summary['status']} after {ended.summary.get('epochs', 0)} epochs "
            f"({ended.summary['error']}); run files in {cfg.out}",
            flush=True,
        )
    return (
        ended.code
        if ended.code
        else (0 if (ended.summary or {}).get("status") in ("reached_target", "max_epochs") else 1)
    )
