"""The failure cost of ``gmmkit bench --hostfile`` (``failure_cost``) on two emulated hosts of this one machine.

    sudo .venv/bin/python benchmarks/failure_cost.py --json benchmarks/failure-cost.json

Makes two emulated hosts (the tests' ``tests/support/hosts.py``: network and UTS namespaces on a bridge, an
rsh agent; needs root) and measures what an elastic run loses when a rank dies
(:func:`gmmkit.study.failure_cost.measure`): rank 1, on the second host, is killed in the second epoch of a
2-worker strong run of the bench's model; the time from the kill to the first step after the restart, in its
parts, and the training done again. The emulated hosts share this machine's cores: a restart's start-up
(Python, TensorFlow, Horovod, the data set, tracing) runs on the same 2 cores as everything else here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from gmmkit.files import atomic_write_json
from gmmkit.parallel.placement import parse_hostfile
from gmmkit.study.bench import bench_config, machine_facts
from gmmkit.study.failure_cost import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.hosts import EmulatedHosts  # noqa: E402  (the tests' fixtures, used as a library)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=1, help="measure this many runs, one after the other")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = {"machine": machine_facts(), "train_size": args.train_size, "runs": []}
    with EmulatedHosts(2) as hosts, tempfile.TemporaryDirectory(prefix="gmmkit-failure-") as tmp:
        os.environ.update(hosts.mpi_env())  # the site's launch agent: what a cluster configures once
        where = parse_hostfile(hosts.hostfile)
        for k in range(args.rounds):
            cfg = bench_config(50, train_size=args.train_size)
            result["runs"].append(measure(cfg, where, os.path.join(tmp, f"run{k}")))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
