"""``gmmkit bench``: the performance figures of this machine, measured in one run (see gmmkit.study.bench)."""

from __future__ import annotations

from ..errors import CLIError
from ..files import writable_path
from .flags import BACKEND, Flag, add_command, add_flags, add_placement_flags, placement_from_args

FLAGS = (
    Flag("--quick", action="store_true", help="fewer sizes and repeats (a few minutes)"),
    Flag("--json", metavar="FILE", help="also write the figures as JSON"),
    Flag("--plot", metavar="FILE", help="also write the cost-growth curves as a standalone HTML figure"),
    BACKEND,  # the backend of the 2-rank figures and the model's c; every installed one is measured side by side
)


def register(sub):
    p = add_command(sub, "bench", "measure step cost, MFU, allreduce and 2-worker efficiency on this machine", run)
    add_flags(p, FLAGS)
    add_placement_flags(p)  # two hosts or more: the allreduce and the 2-worker efficiency across hosts too
    return p


def run(args, parser) -> int:
    for flag, path, suffix in (("--json", args.json, ".json"), ("--plot", args.plot, ".html")):
        if path is not None:
            if not str(path).endswith(suffix):
                raise CLIError(f"{flag}: expected a file name ending in {suffix}, received {path!r}")
            writable_path(flag, path, "file")  # before minutes of measuring, not after
    where = placement_from_args(args)
    if not where.is_local:
        where.one_per_host(2)  # refused now, not after minutes of measuring, when there is only one host
    from ..files import atomic_write_json
    from ..study import bench

    result = bench.run(
        quick=args.quick,
        progress=lambda msg: print(msg, flush=True),
        placement=where,
        backend=getattr(args, "backend", None),
    )
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
