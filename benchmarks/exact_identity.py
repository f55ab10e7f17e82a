"""Weights after a few steps of the paper's model, exact or default, on one process or as a Horovod rank.

    python benchmarks/exact_identity.py --mode exact --micro-batch 1 --out one.npz
    mpirun -np 3 python benchmarks/exact_identity.py --mode exact --micro-batch 1 --out three.npz
    python benchmarks/exact_identity.py --compare one.npz three.npz

Rank 0 writes the weights, Adam's state and the losses of every step. Each process runs with one
intra-op thread (``--parallel`` inter-op threads, micro-shards side by side on one process). The global
batch of each step is the next ``--batch`` phantoms in index order; the default mode splits it as strong
scaling does (contiguous shares, the first ranks one sample more) and sums float32 gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import gmmkit  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
from gmmkit import strategies  # noqa: E402
from gmmkit.parallel import distributed  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("exact", "default"), default="exact")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--compare", nargs="+", metavar="NPZ")
    return p.parse_args(argv)


def compare(paths: list[str]) -> dict:
    """Whether every file holds the same arrays as the first, bit for bit, and the largest difference."""
    first = np.load(paths[0])
    report = {}
    for path in paths[1:]:
        other = np.load(path)
        differ = [
            k
            for k in first.files
            if not np.array_equal(np.atleast_1d(first[k]).view(np.uint8), np.atleast_1d(other[k]).view(np.uint8))
        ]
        worst = max(
            (float(np.max(np.abs(first[k] - other[k])) / max(float(np.max(np.abs(first[k]))), 1e-30)) for k in differ),
            default=0.0,
        )
        report[path] = {
            "identical": not differ,
            "arrays_differing": len(differ),
            "of": len(first.files),
            "max_diff_relative_to_largest": worst,
        }
    return report


def main(argv=None) -> int:
    args = parse(argv)
    if args.compare:
        print(json.dumps(compare(args.compare), indent=1))
        return 0
    import tensorflow as tf

    from gmmkit.data import generate_phantoms
    from gmmkit.model import build_deepdensity, per_sample_msle
    from gmmkit.training.exact import ExactStep, local_micro_shards
    from gmmkit.training.optimizer import Adam

    # exact mode's threads (1 intra-op, args.parallel inter-op) and its two reductions across the ranks
    ctx = distributed.init(threads=args.parallel, exact=True)
    rank, size = ctx.rank, ctx.size
    max_fn, sum_fn = ctx.exact_reductions()
    data = generate_phantoms(args.batch * args.steps, seed=0).cubes
    model = build_deepdensity(cube=16, components=50, filters=32, latent=256, seed=0)
    optimizer = Adam(1.05e-3)
    optimizer.build(model.trainable_variables)
    variables = model.trainable_variables

    if args.mode == "exact":
        exact = ExactStep(model, optimizer, per_sample_msle, args.micro_batch, max_fn, sum_fn, parallel=args.parallel)

        def step(batch):
            x = data[local_micro_shards(batch, args.micro_batch, size, rank)]
            return float(exact.train_step(x, len(batch))[0])
    else:

        @tf.function
        def default_step(x, global_batch):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(per_sample_msle(x, model(x, training=True)))
                scaled = loss / global_batch
            grads = tape.gradient(scaled, variables)
            *grads, loss = ctx.sum_gradients([*grads, loss])  # one grouped Horovod allreduce (sum)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        def step(batch):
            plan = strategies.plan("strong", size, len(batch), 1.05e-3)
            share = batch[plan.offset(rank) : plan.offset(rank) + plan.shares[rank]]
            return float(default_step(tf.constant(data[share]), tf.constant(float(len(batch)))))

    losses = [step(np.arange(s * args.batch, (s + 1) * args.batch)) for s in range(args.steps)]
    if rank == 0 and args.out:
        arrays = {f"weight_{i}": v.numpy() for i, v in enumerate(variables)}
        state = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
        arrays.update({f"adam_{i}": np.asarray(v.numpy()) for i, v in enumerate(state)})
        arrays["losses"] = np.asarray(losses, np.float32)
        np.savez(args.out, **arrays)
        print(
            json.dumps(
                {"mode": args.mode, "ranks": size, "micro_batch": args.micro_batch, "losses": losses, "out": args.out}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
