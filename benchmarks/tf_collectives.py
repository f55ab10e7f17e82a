"""TensorFlow's own collectives beside mpi4py's, for issue 29 (the current lane: ``.venv-current``).

    .venv-current/bin/python benchmarks/tf_collectives.py --json benchmarks/tf-collectives.json

Two worker processes on this machine, one thread each, run ``tf.distribute.MultiWorkerMirroredStrategy`` (its
cluster from ``TF_CONFIG``, ring collectives over gRPC: what a CPU cluster gets; NCCL on GPUs) and sum the
paper's model's gradient bytes (3.28 MB of float32) inside a ``tf.function``, as a training step would, 80 times
in 8 rounds; then an int64 sum and a max, the two reductions exact mode needs. Beside them, the same sum through
mpi4py under mpirun, inside a ``tf.function`` as gmmkit's mpi backend runs it and on plain numpy buffers.
Nothing of gmmkit is used: this measures the engines, not gmmkit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

NBYTES = 3279056  # the paper's model's gradients (K = 50, 32 filters, latent 256), float32

WORKER = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
impl = tf.distribute.experimental.CommunicationImplementation.RING
strategy = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(implementation=impl))
n = int(sys.argv[1]) // 4
x = tf.ones((n,), tf.float32)

def reduce_of(value, op):
    @tf.function
    def run():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(op, value))
    return run

summed = reduce_of(x, tf.distribute.ReduceOp.SUM)
times = []
for r in range(9):
    summed()
    t = time.perf_counter()
    for _ in range(10):
        out = summed()
    np.asarray(out)
    if r:
        times.append((time.perf_counter() - t) / 10)
found = {"sum_float32_s": float(np.median(times)), "sum_ok": bool(np.all(np.asarray(out) == 2.0))}
try:
    ints = reduce_of(tf.ones((1024,), tf.int64) * (2 ** 40), tf.distribute.ReduceOp.SUM)()
    found["sum_int64"] = bool(np.all(np.asarray(ints) == 2 ** 41))
except Exception as exc:
    found["sum_int64"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
found["max"] = "ReduceOp has " + ", ".join(op.name for op in tf.distribute.ReduceOp)
if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0:
    print(json.dumps({"tensorflow": tf.__version__, **found}), flush=True)
"""

MPI_PROBE = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
from mpi4py import MPI
comm = MPI.COMM_WORLD
n = int(sys.argv[1]) // 4
send, recv = np.ones(n, np.float32), np.empty(n, np.float32)
def reduce_array(a):
    out = np.empty_like(a)
    comm.Allreduce(a, out, op=MPI.SUM)
    return out
x = tf.ones((n,), tf.float32)
in_step = tf.function(lambda v: tf.numpy_function(reduce_array, [v], tf.float32, stateful=True))
found = {"mpi4py_in_step_s": [], "mpi4py_plain_s": []}
for r in range(9):
    for key, call in (("mpi4py_in_step_s", lambda: in_step(x).numpy()),
                      ("mpi4py_plain_s", lambda: comm.Allreduce(send, recv, op=MPI.SUM))):
        comm.Barrier()
        call()
        t = time.perf_counter()
        for _ in range(10):
            call()
        if r:
            found[key].append((time.perf_counter() - t) / 10)
if comm.rank == 0:
    print(json.dumps({k: float(np.median(v)) for k, v in found.items()}), flush=True)
"""


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def quiet_env(**extra) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def tf_collectives(nbytes: int) -> dict:
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for i in range(2):
        config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(nbytes)],
                env=quiet_env(TF_CONFIG=config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"a MultiWorkerMirroredStrategy worker exited {p.returncode}: {err[-2000:]}")
    return json.loads([line for line in outs[0][0].splitlines() if line.startswith("{")][-1])


def mpi4py_collectives(nbytes: int) -> dict:
    root = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if os.geteuid() == 0 else {}
    cmd = ["mpirun", "-np", "2", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]
    cmd += ["-x", "TF_CPP_MIN_LOG_LEVEL", "-x", "OMP_NUM_THREADS", sys.executable, "-c", MPI_PROBE, str(nbytes)]
    done = subprocess.run(cmd, env=quiet_env(**root), capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"mpirun exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    began = time.perf_counter()
    found = {"bytes": NBYTES, "ranks": 2, **tf_collectives(NBYTES), **mpi4py_collectives(NBYTES)}
    found["seconds"] = time.perf_counter() - began
    print(json.dumps(found, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(found, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
