"""From Start on the dashboard to the first streamed epoch: what a notebook user waits for.

    .venv/bin/python benchmarks/notebook_latency.py [--workers 2] [--starts 2] [--json benchmarks/notebook-latency.json]

Starts an :class:`~gmmkit.cluster.MPICluster` of ``--workers`` engines first (as a notebook's earlier cell
does), then presses Start on a :class:`~gmmkit.ui.Dashboard` ``--starts`` times, stopping each run after its
first epoch. The first Start pays the engines' imports and tracing; later ones find them warm.
``epoch_time_s``: each first epoch's own training time, for comparison.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from gmmkit.cluster import MPICluster
from gmmkit.files import atomic_write_json
from gmmkit.study.bench import bench_config
from gmmkit.ui import Dashboard


def notebook_latency(cfg, workers: int = 2, starts: int = 2, timeout: float = 300) -> dict:
    latencies, epochs, statuses = [], [], []
    with MPICluster(n=workers) as cluster, tempfile.TemporaryDirectory(prefix="gmmkit-latency-") as tmp:
        dash = Dashboard(
            cluster,
            base=cfg.replace(train={"workers": workers, "target_loss": None}),
            out=tmp,
            viewer=False,
            poll_interval=0.02,
        )
        for _ in range(starts):
            run = dash.start()
            deadline = time.monotonic() + timeout
            while run.first_epoch_s is None and not run.finished.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            if run.first_epoch_s is None:
                dash.stop()
                raise RuntimeError(
                    f"notebook latency: no epoch streamed within {timeout} s ({run.error or 'still running'})"
                )
            latencies.append(run.first_epoch_s)
            epochs.append(run.records[0]["epoch_time_s"])
            dash.stop()
            dash.wait(timeout=timeout)
            statuses.append(run.status)
    return {
        "first_start_s": latencies[0],
        "later_starts_s": latencies[1:],
        "epoch_time_s": epochs,
        "status": statuses,
        "workers": workers,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--starts", type=int, default=2)
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cfg = bench_config(50, train_size=args.train_size).replace(train={"epochs": 3})
    result = notebook_latency(cfg, args.workers, args.starts)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
