"""``gmmkit sweep``: the grid of strategies x worker counts, with tables and figures (paper Section VII)."""
from __future__ import annotations

import sys

from ..cli import CLIError, add_run_flags, config_from_args
from ..config import STRATEGIES


def _csv(kind, choices=None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            values = [kind(t) for t in items]
        except ValueError:
            raise CLIError(f"expected a comma-separated list of {kind.__name__}, received {text!r}") from None
        if not values:
            raise CLIError(f"expected a non-empty comma-separated list, received {text!r}")
        for v in values:
            if choices and v not in choices:
                raise CLIError(f"expected values among {', '.join(choices)}, received {v!r}")
            if kind is int and v < 1:
                raise CLIError(f"expected positive worker counts, received {v}")
        return values
    return parse


def register(sub) -> None:
    p = sub.add_parser("sweep", help="time to target for strategies x worker counts, with tables and figures")
    add_run_flags(p, out_default="runs/sweep")
    p.add_argument("--strategies", dest="strategy_list", default=",".join(STRATEGIES), metavar="S,S,...")
    p.add_argument("--workers", dest="worker_list", default="1,2,4,8,16,32", metavar="N,N,...")
    p.add_argument("--max-real", type=int, default=2, metavar="N",
                   help="run real Horovod ranks up to N workers (default %(default)s: this machine's cores)")
    p.add_argument("--simulate", action="store_true",
                   help="simulate worker counts above --max-real on one process (else they are skipped)")
    p.add_argument("--no-calibrate", action="store_true", help="skip measuring the wall-time model")
    p.add_argument("--target-epoch", type=int, default=None, metavar="E",
                   help="set the target to the validation loss the sequential run reaches after E epochs "
                        "(the paper's rule, with E about 100) instead of --target-loss")
    p.set_defaults(func=run)


def run(args, parser) -> int:
    try:
        strategies_ = _csv(str, STRATEGIES)(args.strategy_list)
    except CLIError as exc:
        raise CLIError(f"--strategies: {exc}") from None
    try:
        workers = sorted(set(_csv(int)(args.worker_list)))
    except CLIError as exc:
        raise CLIError(f"--workers: {exc}") from None
    if workers[0] != 1:
        raise CLIError(f"--workers: must include 1 (the sequential baseline of every efficiency), "
                       f"received {args.worker_list}")
    if args.max_real < 1:
        raise CLIError(f"--max-real: expected a positive integer, received {args.max_real}")
    cfg = config_from_args(args, parser)
    if getattr(args, "model_overrides", None):
        cfg = cfg.replace(model=args.model_overrides)
    from .. import perfmodel, study
    from ..training import Trainer

    if args.target_epoch is not None and args.target_epoch < 1:
        raise CLIError(f"--target-epoch: expected a positive integer, received {args.target_epoch}")
    perf = None
    trainer = Trainer(cfg.replace(train={"workers": 1, "strategy": "strong"}), simulate=True)  # traced once
    if not args.no_calibrate:
        print("calibrating the wall-time model T(n) = Ts + Tp/n + c log2(n) ...", flush=True)
        perf = perfmodel.calibrate(cfg, ranks=min(2, args.max_real),
                                   trainer=trainer if trainer.ctx.size == 1 and cfg.train.threads == 1 else None)
        print(f"  t_fixed {perf.t_fixed * 1e3:.2f} ms/step, t_sample {perf.t_sample * 1e3:.3f} ms/sample, "
              f"allreduce {perf.allreduce_s * 1e3:.2f} ms for {perf.gradient_bytes / 1e6:.1f} MB", flush=True)
    rows = study.sweep(cfg, args.out, strategies_, workers, max_real=args.max_real, simulate=args.simulate,
                       perf=perf, target_epoch=args.target_epoch, trainer=trainer)
    print(study.format_tables(rows), flush=True)
    print(f"tables, results.json and figures in {args.out}", flush=True)
    failed = {r.run_dir: r for r in rows if r.status == "failed"}  # n = 1 is one run shared by every strategy
    if failed:
        names = ", ".join(f"{'sequential' if r.workers == 1 else r.strategy} n={r.workers}" for r in failed.values())
        print(f"gmmkit sweep: error: {len(failed)} run(s) failed ({names}); why is in {args.out}/results.json",
              file=sys.stderr, flush=True)
        return 1
    return 0
