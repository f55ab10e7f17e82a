"""What an exact training step costs against a default one, paper's model, batch 32, in turns.

    python benchmarks/exact_cost.py --micro-shards 2,8,32 --rounds 15 --json exact-cost.json

TensorFlow's thread counts are fixed per process, so each thread set-up is a worker process of its own
and the steps take turns across them (one step at a time, the other workers waiting on a pipe):

* ``one thread``: a default step and an exact step at each M, one intra-op and one inter-op thread;
* ``two threads``: the default step as a 2-thread run has it (2 intra-op, 2 inter-op threads) against
  the exact step computing two micro-shards side by side (1 intra-op, 2 inter-op threads), plus the
  default step on that exact set-up for reference.

Each ratio is the median exact step over the median default step of the same rounds; on one thread also
the median of each round's own ratio (``paired``) and the fastest exact step over the fastest default
step (``min``), which a shared host's load moves less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
WORKERS = {  # name: (intra-op threads, inter-op threads, side by side, steps)
    "one": (1, 1, 1, "default,exact"),
    "two-default": (2, 2, 1, "default"),
    "two-exact": (1, 2, 2, "default,exact"),
}


def worker(name: str, micro_shards: list[int], batch: int, native_kernel_gradient: bool) -> None:
    """Build the steps of one thread set-up, then time one step per ``run NAME`` line on stdin."""
    sys.path.insert(0, ROOT)
    import tensorflow as tf

    import gmmkit  # noqa: F401  (oneDNN on before TensorFlow loads)

    intra, inter, parallel, kinds = WORKERS[name]
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from gmmkit.data import generate_phantoms
    from gmmkit.model import build_deepdensity, per_sample_msle
    from gmmkit.training.exact import ExactStep
    from gmmkit.training.optimizer import Adam

    x = generate_phantoms(batch, seed=0).cubes
    model = build_deepdensity(cube=16, components=50, filters=32, latent=256, seed=0)
    optimizer = Adam(1e-6)  # small steps: the weights stay near their start over all rounds
    optimizer.build(model.trainable_variables)

    @tf.function(input_signature=[tf.TensorSpec((None, *x.shape[1:])), tf.TensorSpec(()), tf.TensorSpec(())])
    def default_step(xb, global_batch, stop):  # the Trainer's step, less its allreduce
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_sample_msle(xb, model(xb, training=True)))
            scaled = loss / global_batch
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, stop

    steps = {}
    if "default" in kinds:
        steps["default"] = lambda: default_step(x, tf.constant(float(batch)), tf.constant(0.0))[0].numpy()
    if "exact" in kinds:
        for m in micro_shards:
            exact = ExactStep(model, optimizer, per_sample_msle, batch // m, parallel=parallel)
            xm = x.reshape(m, batch // m, *x.shape[1:])
            steps[f"exact-M{m}"] = (lambda e, xm: lambda: e.train_step(xm, batch)[0].numpy())(exact, xm)
    from gmmkit.model import conv

    rule = conv.kernel_gradient_as_forward
    for key, step in steps.items():  # trace, and let oneDNN build its kernels
        if native_kernel_gradient and key != "default":  # an experiment: the rule is read when tracing
            conv.kernel_gradient_as_forward = lambda *shapes: False
        step(), step()
        conv.kernel_gradient_as_forward = rule
    print(json.dumps({"ready": sorted(steps)}), flush=True)
    for line in sys.stdin:
        began = time.perf_counter()
        steps[line.strip()]()
        print(json.dumps({"seconds": time.perf_counter() - began}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro-shards", default="2,8,32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json")
    p.add_argument(
        "--native-kernel-gradient",
        action="store_true",
        help="experiment: exact steps take oneDNN's own Conv3D kernel gradient (gmmkit.model.conv "
        "runs conv2's as a forward convolution, chosen at batch 32)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    micro_shards = [int(m) for m in args.micro_shards.split(",")]
    if args.worker:
        worker(args.worker, micro_shards, args.batch, args.native_kernel_gradient)
        return 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs, plan = {}, []
    for name in WORKERS:
        procs[name] = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--micro-shards",
                args.micro_shards,
                "--batch",
                str(args.batch),
                *(["--native-kernel-gradient"] if args.native_kernel_gradient else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = json.loads(procs[name].stdout.readline())["ready"]  # one worker traces at a time
        plan += [(name, step) for step in ready]
    times = {key: [] for key in plan}
    for _ in range(args.rounds):
        for name, step in plan:
            procs[name].stdin.write(step + "\n")
            procs[name].stdin.flush()
            times[(name, step)].append(json.loads(procs[name].stdout.readline())["seconds"])
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    ms = {f"{name}/{step}": 1e3 * float(np.median(t)) for (name, step), t in times.items()}
    one = {step: np.array(t) for (name, step), t in times.items() if name == "one"}
    result = {
        "median_ms": ms,
        "rounds": args.rounds,
        "batch": args.batch,
        "times_ms": {f"{name}/{step}": [round(1e3 * v, 2) for v in t] for (name, step), t in times.items()},
        "native_kernel_gradient": args.native_kernel_gradient,
        "ratio_one_thread": {f"M{m}": ms[f"one/exact-M{m}"] / ms["one/default"] for m in micro_shards},
        # a shared host's load moves whole rounds: the ratio within each round, and of the fastest rounds
        "ratio_one_thread_paired": {
            f"M{m}": float(np.median(one[f"exact-M{m}"] / one["default"])) for m in micro_shards
        },
        "ratio_one_thread_min": {f"M{m}": float(one[f"exact-M{m}"].min() / one["default"].min()) for m in micro_shards},
        "ratio_two_threads": {f"M{m}": ms[f"two-exact/exact-M{m}"] / ms["two-default/default"] for m in micro_shards},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        from gmmkit.files import atomic_write_json  # here: a worker takes gmmkit from ROOT, not the install

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
