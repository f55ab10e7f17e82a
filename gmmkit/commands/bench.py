"""``gmmkit bench``: the performance figures of this machine, measured in one run (see gmmkit.bench)."""
from __future__ import annotations

from ..cli import CLIError, output_path


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure step cost, MFU, allreduce and 2-worker efficiency on this machine")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a few minutes)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args, parser) -> int:
    if args.json is not None and not str(args.json).endswith(".json"):
        raise CLIError(f"--json: expected a file name ending in .json, received {args.json!r}")
    if args.json is not None:
        output_path("--json", args.json, "file")  # before minutes of measuring, not after
    from .. import bench
    from ..io import atomic_write_json

    result = bench.run(quick=args.quick, progress=lambda msg: print(msg, flush=True))
    print(bench.format_table(result), flush=True)
    print(f"({result['seconds']:.0f} s)", flush=True)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}", flush=True)
    return 0
