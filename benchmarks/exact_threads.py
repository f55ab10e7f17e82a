"""Which results change with TensorFlow's thread counts: micro-shard gradients and Adam's update.

    python benchmarks/exact_threads.py [--json FILE]

Each thread set-up (intra-op, inter-op) is a process of its own (the counts are fixed when TensorFlow
starts). Every process computes, for the paper's model with its seed-0 weights, the gradient of
``sum of per-sample losses / 32`` on the first 1, 4, 16 and 32 phantoms, and three fused Adam updates
from one fixed set of random gradients; the driver compares every array with the (1, 1) process's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from gmmkit.files import atomic_write_json

SETUPS = [(1, 1), (1, 2), (2, 1), (2, 2)]
MICRO_BATCHES = (1, 4, 16, 32)


def compute(intra: int, inter: int, out: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import tensorflow as tf

    import gmmkit  # noqa: F401  (oneDNN on before TensorFlow loads)

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from gmmkit.data import generate_phantoms
    from gmmkit.model import build_deepdensity, per_sample_msle
    from gmmkit.training.optimizer import Adam

    x = generate_phantoms(32, seed=0).cubes
    model = build_deepdensity(cube=16, components=50, filters=32, latent=256, seed=0)
    variables = model.trainable_variables

    @tf.function
    def gradient(xb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_sample_msle(xb, model(xb, training=True))) / 32.0
        return tape.gradient(loss, variables)

    arrays = {}
    for b in MICRO_BATCHES:
        for i, g in enumerate(gradient(tf.constant(x[:b]))):
            arrays[f"gradient_b{b}_{i}"] = g.numpy()
    rng = np.random.default_rng(0)
    fixed = [tf.constant(rng.standard_normal(v.shape).astype(np.float32) * 1e-3) for v in variables]
    optimizer = Adam(1e-3)
    optimizer.build(variables)
    update = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    for _ in range(3):
        update(fixed)
    for i, v in enumerate(variables):
        arrays[f"adam_{i}"] = v.numpy()
    np.savez(out, **arrays)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        compute(int(args.worker[0]), int(args.worker[1]), args.worker[2])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for intra, inter in SETUPS:
            files[(intra, inter)] = os.path.join(tmp, f"{intra}-{inter}.npz")
            subprocess.run(
                [sys.executable, __file__, "--worker", str(intra), str(inter), files[(intra, inter)]],
                check=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
        base = np.load(files[SETUPS[0]])
        report = {}
        for setup in SETUPS[1:]:
            other = np.load(files[setup])
            row = {}
            for b in MICRO_BATCHES:
                keys = [k for k in base.files if k.startswith(f"gradient_b{b}_")]
                row[f"gradient_tensors_differing_b{b}"] = sum(not np.array_equal(base[k], other[k]) for k in keys)
            keys = [k for k in base.files if k.startswith("adam_")]
            row["adam_tensors_differing"] = sum(not np.array_equal(base[k], other[k]) for k in keys)
            row["tensors"] = len(keys)
            report[f"intra {setup[0]}, inter {setup[1]} vs intra 1, inter 1"] = row
    print(json.dumps(report, indent=1))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
