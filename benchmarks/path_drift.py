"""How far a real 2-rank strong-scaling run drifts from the sequential run, over seeds.

    .venv/bin/python benchmarks/path_drift.py --seeds 0-7 --json benchmarks/path-drift.json
    .venv/bin/python benchmarks/path_drift.py --seeds 0-3 --exact --json benchmarks/path-drift-exact.json

For each seed (weight initialisation and sample order, ``train.seed``) it runs the paper's model on 512
synthetic samples, batch 32, with ``gmmkit train`` on 1 and on 2 Horovod ranks, and prints the relative
difference of the validation losses after each epoch. Every step of the two agrees to float32 rounding
(tests/test_training.py, the two-shares test); this measures what Adam makes of those last bits over
whole epochs, which depends on the path, so one seed says little: compare versions over several.
About 45 s a seed on 2 cores.

``--exact`` runs each seed in both modes, the default one and exact mode (``train.exact``, 32 micro-shards
of one sample), and prints both drifts side by side: exact mode's is 0 by construction, which the script
checks on every loss rather than assumes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from gmmkit.config import RunConfig
from gmmkit.files import atomic_write_json, read_jsonl
from gmmkit.parallel.launch import mpi_env


def seeds_arg(text: str) -> list[int]:
    """``0-7`` or ``0,3,5``."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a range like 0-7 or a list like 0,3,5, received {text!r}")


def val_losses(cfg: RunConfig) -> list[float]:
    os.makedirs(cfg.out, exist_ok=True)
    config = os.path.join(cfg.out, "input-config.json")
    with open(config, "w") as fh:
        fh.write(cfg.to_json())
    proc = subprocess.run(
        [sys.executable, "-m", "gmmkit", "train", "--config", config], capture_output=True, text=True, env=mpi_env()
    )
    if proc.returncode != 0:
        raise SystemExit(f"gmmkit train (workers={cfg.train.workers}) exited {proc.returncode}:\n{proc.stderr}")
    return [r["val_loss"] for r in read_jsonl(os.path.join(cfg.out, "metrics.jsonl"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-7"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--exact", action="store_true", help="also each seed in exact mode, beside the default mode")
    args = p.parse_args(argv)
    modes = (False, True) if args.exact else (False,)
    rows = []
    for seed in args.seeds:
        for exact in modes:
            cfg = RunConfig().replace(
                data={"dataset": "phantoms", "size": 576, "train_size": 512, "val_size": 64},
                train={
                    "epochs": args.epochs,
                    "target_loss": None,
                    "threads": 1,
                    "strategy": "strong",
                    "seed": seed,
                    "exact": exact,
                },
            )
            with tempfile.TemporaryDirectory(prefix="gmmkit-drift-") as tmp:
                one = val_losses(cfg.replace(out=os.path.join(tmp, "n1")))
                two = val_losses(cfg.replace(train={"workers": 2}, out=os.path.join(tmp, "n2")))
            rel = [abs(a - b) / a for a, b in zip(one, two)]
            rows.append({"seed": seed, "exact": exact, "n1": one, "n2": two, "rel": rel, "bitwise": one == two})
            print(
                f"seed {seed}{' exact' if exact else ''}: "
                + ", ".join(f"epoch {e + 1}: {r:.1e}" for e, r in enumerate(rel))
                + (", identical to the last bit" if one == two else ""),
                flush=True,
            )
    for exact in modes:
        for e in range(args.epochs):
            rels = [r["rel"][e] for r in rows if r["exact"] == exact]
            print(
                f"{'exact' if exact else 'default'} mode, epoch {e + 1}: median {statistics.median(rels):.1e}, "
                f"largest {max(rels):.1e}"
            )
    if args.json:
        atomic_write_json(args.json, {"seeds": rows, "epochs": args.epochs, "train_size": 512, "batch": 32})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
