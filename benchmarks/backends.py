"""The two collective backends side by side on this machine (issue 29): Horovod's and mpi4py's.

    python benchmarks/backends.py --json benchmarks/backends.json

* the gradients' allreduce of the paper's model (K = 50, 32 filters, latent 256: 3.28 MB of float32) on 2
  ranks, through each backend as its training step runs it (inside a ``tf.function``; mpi4py's through
  ``tf.numpy_function``) and through plain mpi4py on numpy buffers, taking turns in one job
  (:func:`gmmkit.parallel.distributed.allreduce_probe`, 80 repeats in 8 rounds);
* each backend's 2-rank strong efficiency T1 / (2 T2) of one epoch (256 samples, batch 32, one thread per
  rank): one scaling job per backend, the backends taking turns twice, each job timing its 1 and 2 workers
  in turns (:func:`gmmkit.study.bench.backends_side_by_side`, what ``gmmkit bench`` reports).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gmmkit.model.deepdensity import from_config
from gmmkit.study import bench
from gmmkit.study.perfmodel import measure_allreduce


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--repeats", type=int, default=80)
    args = p.parse_args(argv)
    cfg = bench.bench_config(50, train_size=256)
    nbytes = int(sum(np.prod(v.shape) * 4 for v in from_config(cfg).trainable_variables))
    began = time.perf_counter()
    allreduce = measure_allreduce(nbytes, 2, args.repeats)
    found = {
        "allreduce": allreduce,
        "backends": bench.backends_side_by_side(cfg, allreduce, quick=False),
        "seconds": time.perf_counter() - began,
        "machine": bench.machine_facts(),
    }
    print(json.dumps(found, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps(found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
