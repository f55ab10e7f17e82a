"""``gmmkit stop RUN_DIR``: ask a running training run to stop after its current step."""
from __future__ import annotations

from ..training.rundir import RunDir


def register(sub):
    p = sub.add_parser("stop", help="ask a running run to stop (it ends with status 'stopped')")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=run)
    return p


def run(args, parser) -> int:
    RunDir.open(args.run_dir, "RUN_DIR").request_stop()
    print(f"asked {args.run_dir} to stop", flush=True)
    return 0
