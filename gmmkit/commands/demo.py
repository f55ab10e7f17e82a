"""``gmmkit demo``: the compact study that ``make demo`` runs (a few minutes on 2 CPU cores).

All four strategies; real Horovod ranks at n = 1 and 2; n = 8 and 32 simulated on one process with the
wall time predicted by the calibrated model. The paper's model (K = 50, 32 filters, latent 256) on a
scaled-down data set so the whole grid fits in minutes: 1024 training and 64 validation phantoms, at most
6 epochs. The target is chosen by the paper's rule, the validation loss the sequential run reaches after
``--target-epoch`` epochs. The full-size study is ``gmmkit sweep`` with its defaults.
"""
from __future__ import annotations

import argparse

from ..config import RunConfig

DEMO = RunConfig().replace(
    data={"size": 1088, "train_size": 1024, "val_size": 64},
    model={"components": 50, "filters": 32, "latent": 256},  # the paper's
    train={"epochs": 6, "threads": 1},
    out="runs/demo")
WORKERS = "1,2,8,32"
TARGET_EPOCH = 3


def register(sub) -> None:
    p = sub.add_parser("demo", help="the compact study of `make demo`: 4 strategies, n = 1..32, tables, figures")
    p.add_argument("--out", default=DEMO.out, metavar="DIR")
    p.add_argument("--target-epoch", type=int, default=TARGET_EPOCH, metavar="E")
    p.add_argument("--epochs", type=int, default=DEMO.train.epochs, metavar="MAX")
    p.set_defaults(func=run)


def run(args, parser) -> int:
    from . import sweep

    sweep_parser = argparse.ArgumentParser()
    sub = sweep_parser.add_subparsers()
    sweep.register(sub)
    d = DEMO
    argv = ["sweep", "--out", args.out, "--phantoms", str(d.data.size), "--train-size", str(d.data.train_size),
            "--val-size", str(d.data.val_size), "--components", str(d.model.components),
            "--epochs", str(args.epochs), "--threads", "1", "--target-epoch", str(args.target_epoch),
            "--workers", WORKERS, "--max-real", "2", "--simulate"]
    sweep_args = sweep_parser.parse_args(argv)
    sweep_args.argv = argv
    sweep_args.model_overrides = {"filters": d.model.filters, "latent": d.model.latent}
    print("gmmkit demo: " + " ".join(argv), flush=True)
    return sweep.run(sweep_args, sub.choices["sweep"])
