"""``gmmkit bench``: the performance figures of this machine, measured in one run (see gmmkit.bench)."""
from __future__ import annotations

from ..cli import CLIError, output_path


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure step cost, MFU, allreduce and 2-worker efficiency on this machine")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a few minutes)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="also write the cost-growth curves as a standalone HTML figure")
    p.set_defaults(func=run)


def run(args, parser) -> int:
    if args.json is not None and not str(args.json).endswith(".json"):
        raise CLIError(f"--json: expected a file name ending in .json, received {args.json!r}")
    if args.plot is not None and not str(args.plot).endswith(".html"):
        raise CLIError(f"--plot: expected a file name ending in .html, received {args.plot!r}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            output_path(flag, path, "file")  # before minutes of measuring, not after
    from .. import bench
    from ..io import atomic_write_json

    result = bench.run(quick=args.quick, progress=lambda msg: print(msg, flush=True))
    print(bench.format_table(result), flush=True)
    print(f"({result['seconds']:.0f} s)", flush=True)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}", flush=True)
    if args.plot:
        from ..plots.bench import write_growth_figure

        write_growth_figure(result, args.plot)
        print(f"wrote {args.plot}", flush=True)
    return 0
