"""The cross-host part of ``gmmkit bench --hostfile`` on two emulated hosts of this one machine.

    sudo .venv/bin/python benchmarks/cross_host.py --json benchmarks/cross-host.json

Makes two emulated hosts (the tests' ``tests/support/hosts.py``: network and UTS namespaces on a bridge,
an rsh agent; needs root), then measures what ``gmmkit bench --hostfile`` adds, beside the same figures
with both ranks on this host: the gradients' allreduce (Horovod and mpi4py) and the 2-worker strong-scaling
efficiency with its factors (:func:`gmmkit.study.bench.two_workers`), and the wall-time model T(n) with its
c from each. The emulated hosts share this machine's cores and memory bus, and their "network" is a veth
pair through a bridge in one kernel: the figures say what the TCP path costs, not what a real network
between real machines does. Each placement's calibrated model (:func:`gmmkit.study.perfmodel.calibrate`) gives
its n = 2 efficiency beside the one measured in turns (``--exact``: in exact mode, the reproduction's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gmmkit.files import atomic_write_json
from gmmkit.parallel.placement import LOCAL, parse_hostfile
from gmmkit.study.bench import bench_config, machine_facts, two_workers
from gmmkit.study.perfmodel import calibrate, measure_compute

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.hosts import EmulatedHosts  # noqa: E402  (the tests' fixtures, used as a library)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="two rounds of epochs instead of three")
    p.add_argument("--exact", action="store_true", help="exact mode's steps (the reproduction's), default mode's else")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    began = time.perf_counter()
    cfg = bench_config(50, train_size=args.train_size).replace(train={"exact": args.exact})
    compute = measure_compute(cfg)
    nbytes = compute["gradient_bytes"]
    result = {"machine": machine_facts(), "train_size": args.train_size, "exact": args.exact, "compute": compute}
    with EmulatedHosts(2) as hosts:
        os.environ.update(hosts.mpi_env())  # the site's launch agent: what a cluster configures once
        where = parse_hostfile(hosts.hostfile)
        print(f"same host ({os.uname().nodename}) ...", flush=True)
        result["same_host"] = two_workers(nbytes, cfg, args.repeats, args.quick, LOCAL)
        print(f"across hosts ({where.describe()}) ...", flush=True)
        result["cross_host"] = {"hosts": where.names, **two_workers(nbytes, cfg, args.repeats, args.quick, where)}
        # the model as gmmkit calibrates it for each placement (issue 28: the terms of ranks sharing a host
        # where they do), its n = 2 prediction beside what was measured
        for key, placement in (("same_host", LOCAL), ("cross_host", where)):
            perf = calibrate(cfg, 2, placement=placement, exact=args.exact)
            predicted = {
                n: perf.epoch_time("strong", n, 32, args.train_size, 64, exact=args.exact) for n in (1, 2, 4, 8, 16, 32)
            }
            result[key]["model"] = perf.to_dict()
            result[key]["epoch_s_predicted_by_workers"] = {str(n): t for n, t in predicted.items()}
            result[key]["strong_efficiency_n2_predicted"] = predicted[1] / (2 * predicted[2])
    for key in ("same_host", "cross_host"):
        r = result[key]
        print(
            f"{key}: allreduce of {nbytes / 1e6:.2f} MB: Horovod {r['allreduce']['horovod_s'] * 1e3:.2f} ms, "
            f"mpi4py {r['allreduce']['mpi_s'] * 1e3:.2f} ms; strong efficiency n=2 {r['strong_efficiency_n2']:.3f} "
            f"(predicted {r['strong_efficiency_n2_predicted']:.3f}) = "
            + " x ".join(f"{k} {v:.3f}" for k, v in r["strong_efficiency_factors"].items())
            + "; T(n) predicted (s): "
            + ", ".join(f"{n}: {t:.2f}" for n, t in r["epoch_s_predicted_by_workers"].items()),
            flush=True,
        )
    result["seconds"] = time.perf_counter() - began
    if args.json:
        atomic_write_json(args.json, result)
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
