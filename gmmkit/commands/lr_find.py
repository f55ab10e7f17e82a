"""``gmmkit lr-find``: a learning-rate range test to find the largest rate that still converges."""
from __future__ import annotations

import math

from ..cli import CLIError, add_run_flags, config_from_args


def register(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test (the paper used the largest stable rate)")
    add_run_flags(p, out_default="runs/lr-find")
    p.add_argument("--lr-min", type=float, default=1e-5)
    p.add_argument("--lr-max", type=float, default=1e-1)
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=run)


def run(args, parser) -> int:
    if not 0 < args.lr_min < args.lr_max:
        raise CLIError(f"--lr-min/--lr-max: expected 0 < lr-min < lr-max, received {args.lr_min}, {args.lr_max}")
    if not math.isfinite(args.lr_max):
        raise CLIError(f"--lr-max: expected a finite number, received {args.lr_max}")
    if args.steps < 2:
        raise CLIError(f"--steps: expected at least 2, received {args.steps}")
    cfg = config_from_args(args, parser)
    from ..lr_find import lr_range_test, write_lr_find

    result = lr_range_test(cfg, args.lr_min, args.lr_max, args.steps)
    write_lr_find(result, cfg.out)
    print(f"lowest loss at lr {result['lr_at_min_loss']:.3g}; diverged at "
          f"{'never' if result['lr_diverged'] is None else format(result['lr_diverged'], '.3g')}; "
          f"suggested lr {result['suggested_lr']:.3g} (batch {result['batch']}); see {cfg.out}/lr_find.html")
    return 0
