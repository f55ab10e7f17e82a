"""``gmmkit reproduce``: the paper's protocol end to end, resumable (see gmmkit.study.reproduce).

The learning-rate range test picks eta, the sequential run's validation loss after E epochs is the target
(--scale paper: E = 100; quick: E = 6, 9 minutes on a 2-core machine), every run may take 4 E
epochs, and strong, weak, lsr and warmup run at n = 1 to 32 (real ranks up to --max-real, simulated above).
--lr X (or 'paper') fixes eta instead of the range test. Tables I and II, Figures 2 to 5 and the paper's
claims (claims.json, claims.md) go to --out. Run it again with the same flags to continue where it stopped.
"""

from __future__ import annotations

import argparse
import sys

from ..signals import StopFlag
from ..study.reproduce import PAPER_LR, SCALES, ReproduceConfig
from .flags import BACKEND, CHECKPOINT_EVERY, Flag, add_command, add_flags, add_placement_flags, placement_from_args


def eta(text: str) -> float:
    """``--lr``: a positive number, or ``paper``."""
    if text.lower() == "paper":
        return PAPER_LR
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number or 'paper', received {text!r}")
    return value


FLAGS = (
    Flag("--out", ("reproduce.out", "out"), metavar="DIR", required=True),
    Flag("--scale", ("reproduce.scale",), default="quick", help=f"{' or '.join(SCALES)} (default %(default)s)"),
    Flag("--target-epoch", ("reproduce.target_epoch",), int, "E instead of the scale's", "E"),
    Flag(
        "--lr",
        ("reproduce.lr",),
        eta,
        f"eta for the sequential run and every strategy, no range test ('paper': the paper's {PAPER_LR}; "
        "default: the range test's suggestion, halved while the sequential run diverges)",
        "X",
    ),
    Flag(
        "--max-real",
        ("reproduce.max_real",),
        int,
        "real Horovod ranks up to N workers, simulated above (default: "
        "every slot of the hosts, or of the SLURM allocation, else this machine's cores)",
        "N",
    ),
    Flag(
        "--exact",
        ("train.exact",),
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every run in exact mode (default; --no-exact: float32 sums, whose real ranks drift)",
    ),
    CHECKPOINT_EVERY,
    BACKEND,
    Flag("--overwrite", action="store_true", help="start over in a folder holding another reproduction"),
    Flag("--no-progress", action="store_true"),
)


def register(sub):
    p = add_command(
        sub, "reproduce", "the paper's protocol end to end: eta, target, grid, tables, claims", run, __doc__
    )
    add_flags(p, FLAGS)
    add_placement_flags(p)
    return p


def run(args, parser) -> int:
    from ..study.claims import to_markdown
    from ..study.reproduce import reproduce

    base = ReproduceConfig().run
    what = ReproduceConfig(
        out=args.out,
        scale=args.scale,
        target_epoch=args.target_epoch,
        run=base.replace(
            train={
                "exact": args.exact,
                "checkpoint_every": getattr(args, "checkpoint_every", None),
                "backend": getattr(args, "backend", None),
            }
        ),
        max_real=args.max_real,
        placement=placement_from_args(args),
        lr=args.lr,
    ).validate()
    stop = StopFlag()
    try:
        found = reproduce(
            what,
            say=lambda line: print(line, flush=True),
            progress=not args.no_progress,
            overwrite=args.overwrite,
            stop=stop,
        )
    except RuntimeError as exc:  # the protocol could not go on (e.g. no eta at which the sequential run converges)
        print(f"gmmkit reproduce: error: {exc}", file=sys.stderr)
        return 1
    if stop:
        print(
            "gmmkit reproduce: stopped; no claim was evaluated; run it again with the same flags to continue",
            file=sys.stderr,
        )
        return 1
    print(to_markdown(found), flush=True)
    return 0
