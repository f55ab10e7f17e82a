"""``gmmkit stop RUN_DIR``: ask a running training run to stop after its current step.

The run ends as ``stopped`` with its files consistent; a run that is still starting stops at its first step.
A run directory where nothing runs is refused. The request names the run in progress: one it never sees (it
was killed first) stops no later run.
"""

from __future__ import annotations

from ..errors import RunDirError
from ..training.rundir import RunDir
from .flags import add_command


def register(sub):
    p = add_command(sub, "stop", "ask a running run to stop (it ends with status 'stopped')", run)
    p.add_argument("run_dir", metavar="RUN_DIR")
    return p


def run(args, parser) -> int:
    run_dir = RunDir(args.run_dir)
    if not run_dir.request_stop():  # the request names the run in progress; with none, nothing is written
        if not run_dir.exists():
            RunDir.open(args.run_dir, "RUN_DIR")  # says what is wrong with it
        status = (run_dir.summary() or {}).get("status", "unknown")
        raise RunDirError(f"RUN_DIR {args.run_dir}: no run is in progress there (status {status})")
    print(f"asked {args.run_dir} to stop", flush=True)
    return 0
