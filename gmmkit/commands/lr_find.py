"""``gmmkit lr-find``: a learning-rate range test to find the largest rate that still converges."""
from __future__ import annotations

from ..cli import add_run_flags, config_from_args


def register(sub):
    p = sub.add_parser("lr-find", help="learning-rate range test (the paper used the largest stable rate)")
    add_run_flags(p, out_default="runs/lr-find")
    p.add_argument("--lr-min", type=float, default=1e-5)
    p.add_argument("--lr-max", type=float, default=1e-1)
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=run, flags={"lr_find.lr_min": "--lr-min", "lr_find.lr_max": "--lr-max",
                                    "lr_find.steps": "--steps"})
    return p


def run(args, parser) -> int:
    cfg = config_from_args(args, parser)
    from ..study.lr_find import lr_range_test, write_lr_find  # heavy: TensorFlow

    result = lr_range_test(cfg, args.lr_min, args.lr_max, args.steps)
    write_lr_find(result, cfg.out)
    print(f"lowest loss at lr {result['lr_at_min_loss']:.3g}; diverged at "
          f"{'never' if result['lr_diverged'] is None else format(result['lr_diverged'], '.3g')}; "
          f"suggested lr {result['suggested_lr']:.3g} (batch {result['batch']}); see {cfg.out}/lr_find.html")
    return 0
