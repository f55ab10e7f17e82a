"""``gmmkit lr-find``: a learning-rate range test to find the largest rate that still converges."""

from __future__ import annotations

from .flags import Flag, add_command, add_flags, add_run_flags, config_from_args

FLAGS = (
    Flag("--lr-min", ("lr_find.lr_min",), float, default=1e-5),
    Flag("--lr-max", ("lr_find.lr_max",), float, default=1e-1),
    Flag("--steps", ("lr_find.steps",), int, default=100),
)


def register(sub):
    p = add_command(sub, "lr-find", "learning-rate range test (the paper used the largest stable rate)", run)
    add_run_flags(p, out_default="runs/lr-find")
    add_flags(p, FLAGS)
    return p


def run(args, parser) -> int:
    cfg = config_from_args(args)
    from ..study.lr_find import lr_range_test, write_lr_find  # heavy: TensorFlow

    result = lr_range_test(cfg, args.lr_min, args.lr_max, args.steps)
    write_lr_find(result, cfg.out)
    print(
        f"lowest loss at lr {result['lr_at_min_loss']:.3g}; diverged at "
        f"{'never' if result['lr_diverged'] is None else format(result['lr_diverged'], '.3g')}; "
        f"suggested lr {result['suggested_lr']:.3g} (batch {result['batch']}); see {cfg.out}/lr_find.html"
    )
    return 0
