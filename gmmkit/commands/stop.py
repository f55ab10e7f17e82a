"""``gmmkit stop RUN_DIR``: ask a running training run to stop after its current step."""
from __future__ import annotations

from pathlib import Path

from ..cli import CLIError


def register(sub) -> None:
    p = sub.add_parser("stop", help="ask a running run to stop (it ends with status 'stopped')")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=run)


def run(args, parser) -> int:
    from ..training import RunDir

    if not (Path(args.run_dir) / "config.json").is_file():
        raise CLIError(f"RUN_DIR {args.run_dir}: not a gmmkit run directory (no config.json)")
    RunDir(args.run_dir).request_stop()
    print(f"asked {args.run_dir} to stop", flush=True)
    return 0
