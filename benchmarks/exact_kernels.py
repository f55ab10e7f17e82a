"""Which kernels keep a sample's bits whatever its companions, and what the grouped exact step costs.

    python benchmarks/exact_kernels.py [--json benchmarks/exact-kernels.json] [--rounds 15] [--no-timing]

One process, one intra-op and one inter-op thread (exact mode's set-up), the paper's model (K = 50,
32 filters, latent 256, 16^3 cubes, seed-0 weights) on 64 phantoms (``generate_phantoms(64, seed=0)``).

Bits. Every kernel of the grouped exact step's forward and backward pass runs alone (a ``tf.function``
each, so Grappler rewrites it as in the step) on groups of G samples, G in 1, 2, 4, 8, 16, 32, 48, 64,
with its real inputs (each sample's tensors recorded from the model). Sample 3 sits at places 0, 1,
G / 2, G - 1 and two random ones among other random companions. Per kernel and G: ``alone`` (the sample's
output has the same bits at every place and with every companion set) and ``as_in_32`` (the same bits
as in a group of 32). The same for the whole step's terms (each micro-shard's weight gradients and
per-sample bias gradients and losses, :meth:`ExactStep.micro_shard_gradients`'s group function) at one
and four samples per micro-shard, and for a plain batched gradient (one tape over the group, the loss of
the tracked micro-shard's samples only), which the exact step's terms replace.

Timing (in turns, medians of ``--rounds``): the default batch-32 step (tape gradient + Adam) against the
exact step at M = 2, 8, 32 (groups as the Trainer picks them, and of 16 samples), and candidate
implementations of its parts on a group of 32 one-sample micro-shards.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gmmkit.files import atomic_write_json  # noqa: E402

GROUPS = (1, 2, 4, 8, 16, 32, 48, 64)
TRACKED = 3
POOL = 64


def setup():
    import tensorflow as tf

    import gmmkit  # noqa: F401  (oneDNN on before TensorFlow loads)

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from gmmkit.data import generate_phantoms
    from gmmkit.model import build_deepdensity

    x = generate_phantoms(POOL, seed=0).cubes
    model = build_deepdensity(cube=16, components=50, filters=32, latent=256, seed=0)
    return tf, model, x


def record_pool(tf, model, x):
    """Each sample's tensors at every kernel's input, from one pass over the pool."""
    from gmmkit.model import per_sample_msle
    from gmmkit.model.mixture import component_coefficients
    from gmmkit.model.per_example import recording

    features = model.get_layer("density").features
    with tf.GradientTape(persistent=True) as tape, recording() as records:
        y = model(x, training=True)
        loss = tf.reduce_sum(per_sample_msle(x, y)) / 32.0
    zs = {r.layer.name: r for r in records}
    dz = dict(zip(zs, tape.gradient(loss, [r.z for r in records])))
    coef = component_coefficients(*model.get_layer("mixture")(zs["alpha"].a))
    rng = np.random.default_rng(1)
    pool = {
        "x": x,
        "coef": coef.numpy(),
        "upstream": rng.normal(size=(POOL, features.shape[0])).astype(np.float32),
        "y": y.numpy(),
        "features": features,
    }
    for name, r in zs.items():
        pool[f"a_{name}"], pool[f"z_{name}"], pool[f"dz_{name}"] = r.a.numpy(), r.z.numpy(), dz[name].numpy()
    return pool


def kernels(tf, model, pool):
    """name: (function of per-sample-leading tensors, the pool keys of its inputs)."""
    from gmmkit.model import per_sample_msle
    from gmmkit.model.mixture import component_coefficients, sum_of_exponentials

    layer = model.get_layer
    features = pool["features"]
    strides = [1] * 5

    def vjp(fn, inputs, upstream):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = fn(inputs)
        return tape.gradient(out, inputs, output_gradients=upstream)

    def input_gradient(conv, shape_of):
        return lambda dz: tf.raw_ops.Conv3DBackpropInputV2(
            input_sizes=[dz.shape[0], *shape_of], filter=conv.kernel, out_backprop=dz, strides=strides, padding="VALID"
        )

    def softmax_grad(z, up):
        return vjp(tf.nn.softmax, z, up)

    def heads(latent):
        return component_coefficients(*layer("mixture")(latent))

    def one_per_sample(x, dy, k):
        sizes = [k, k, k, x.shape[-1], dy.shape[-1]]
        return tf.stack(
            [
                tf.raw_ops.Conv3DBackpropFilterV2(
                    input=x[i : i + 1], filter_sizes=sizes, out_backprop=dy[i : i + 1], strides=strides, padding="VALID"
                )
                for i in range(x.shape[0])
            ]
        )

    return {
        "conv1 forward (depth windows as a Conv2D, bias, ReLU)": (lambda x: layer("conv1")(x[..., None]), ["x"]),
        "conv2 forward (Conv3D, bias, ReLU)": (lambda a: layer("conv2")(a), ["a_conv2"]),
        "conv3 forward (Conv3D, bias, ReLU)": (lambda a: layer("conv3")(a), ["a_conv3"]),
        "latent forward (MatMul 2048 -> 256, bias, ReLU)": (lambda a: layer("latent")(a), ["a_latent"]),
        "mixture heads forward (4 MatMuls, activations, coefficients)": (heads, ["a_alpha"]),
        "renderer forward (logits MatMul, exp, sum over K as a batched MatMul)": (
            lambda c: sum_of_exponentials(c, features),
            ["coef"],
        ),
        "loss (per-sample MSLE, row means)": (lambda x, y: per_sample_msle(x, y), ["x", "y"]),
        "renderer gradient (batched MatMul of the kept exponentials)": (
            lambda c, up: vjp(lambda t: sum_of_exponentials(t, features), c, up),
            ["coef", "upstream"],
        ),
        "softmax gradient (alpha head)": (softmax_grad, ["z_alpha", "dz_alpha"]),
        "head input gradient (MatMul dz W^T, 150 -> 256)": (
            lambda dz: tf.matmul(dz, layer("mixture").mu.kernel, transpose_b=True),
            ["dz_mu"],
        ),
        "latent input gradient (MatMul dz W^T, 256 -> 2048)": (
            lambda dz: tf.matmul(dz, layer("latent").kernel, transpose_b=True),
            ["dz_latent"],
        ),
        "conv3 input gradient (Conv3DBackpropInputV2)": (input_gradient(layer("conv3"), (6, 6, 6, 32)), ["dz_conv3"]),
        "conv2 input gradient (Conv3DBackpropInputV2)": (
            input_gradient(layer("conv2"), (10, 10, 10, 32)),
            ["dz_conv2"],
        ),
        "conv bias gradient per sample (reduce_sum over voxels)": (
            lambda dz: tf.reduce_sum(tf.reshape(dz, (dz.shape[0], -1, 32)), axis=1),
            ["dz_conv1"],
        ),
        "conv2 kernel gradient, one Conv3DBackpropFilterV2 per sample": (
            lambda a, dz: one_per_sample(a, dz, 5),
            ["a_conv2", "dz_conv2"],
        ),
        "conv3 kernel gradient, gathered patches + BatchMatMul": (
            lambda a, dz: gathered_kernel_gradient(tf, a, dz, 3),
            ["a_conv3", "dz_conv3"],
        ),
        "conv2 kernel gradient, gathered patches + BatchMatMul": (
            lambda a, dz: gathered_kernel_gradient(tf, a, dz, 5),
            ["a_conv2", "dz_conv2"],
        ),
    }


def gathered_kernel_gradient(tf, a, dz, k):
    """Per-sample kernel gradients of a valid, unit-stride Conv3D as one batched product of each sample's
    patches (gathered) with its output gradient."""
    g, d, ci, co = a.shape[0], a.shape[1], a.shape[-1], dz.shape[-1]
    o = d - k + 1
    index = np.array(
        [
            [((p0 + i) * d + p1 + j) * d + p2 + c for i, j, c in itertools.product(range(k), repeat=3)]
            for p0, p1, p2 in itertools.product(range(o), repeat=3)
        ],
        np.int32,
    )
    patches = tf.gather(tf.reshape(a, (g, d**3, ci)), index, axis=1)  # (g, o^3, k^3, ci)
    dw = tf.matmul(tf.reshape(patches, (g, o**3, k**3 * ci)), tf.reshape(dz, (g, o**3, co)), transpose_a=True)
    return tf.reshape(dw, (g, k, k, k, ci, co))


def places(g, rng):
    fixed = sorted({0, min(1, g - 1), g // 2, g - 1})
    return fixed + [int(p) for p in rng.integers(0, g, 2)]


def probe(tf, fn, inputs, groups=GROUPS, eager=False, unit=1):
    """{G: {"alone": bool, "as_in_32": bool}} for ``fn`` on groups of G samples of ``inputs`` (per-sample
    arrays), tracking ``unit`` consecutive samples (a micro-shard) from sample ``TRACKED`` on, placed at
    whole units; ``fn`` returns a list of outputs (or one tensor) with the same rows per unit each;
    ``eager``: ``fn`` traces its own."""
    rng = np.random.default_rng(0)
    traced, seen = {}, {}
    tracked = np.arange(TRACKED, TRACKED + unit)
    others = np.setdiff1d(np.arange(POOL), tracked)
    for g in groups:
        traced[g] = fn if eager else tf.function(fn)
        units, got = g // unit, []
        for place in places(units, rng):
            companions = rng.choice(others, g - unit, replace=False)
            index = np.concatenate([companions[: place * unit], tracked, companions[place * unit :]])
            outs = traced[g](*[tf.constant(t[index]) for t in inputs])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            got.append([_slice(o, place, units) for o in outs])
        seen[g] = got
    ref = seen.get(32, seen[max(seen)])[0]
    return {
        str(g): {"alone": all(_same(a, got[0]) for a in got), "as_in_32": _same(got[0], ref)} for g, got in seen.items()
    }


def _slice(out, place, units):
    """The tracked unit's rows of one output: ``rows / units`` consecutive rows."""
    out = out.numpy()
    per = out.shape[0] // units
    return out[place * per : (place + 1) * per]


def _same(a, b):
    return all(x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8)) for x, y in zip(a, b))


def step_terms(tf, model, micro_batch):
    """The exact step's terms of one group of any size (below the quantum too), as the step computes them
    (its traced terms function: the group in a while-loop body); a row per micro-shard or per sample."""
    from gmmkit.model import per_sample_msle
    from gmmkit.training.exact import ExactStep

    step = ExactStep(model, tf.keras.optimizers.SGD(), per_sample_msle, micro_batch)

    def fn(x):  # eager: the step's own traced function does the work
        shards = tf.reshape(x, (-1, micro_batch, *x.shape[1:]))
        grads, loss = step._group(shards.shape[0]).terms(shards, tf.constant(32.0))
        return [*grads, loss]

    return fn


def plain_gradient(tf, model, micro_batch):
    """A tape over the whole group; ``mask`` keeps the tracked sample's loss alone."""
    from gmmkit.model import per_sample_msle

    def fn(x, mask):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_sample_msle(x, model(x, training=True)) * mask) / 32.0
        return [g[None] for g in tape.gradient(loss, model.trainable_variables)]

    return fn


def probe_plain(tf, model, x, groups=(16, 32)):
    """The tracked sample's gradient (the loss of the others masked out) through one batched tape."""
    fn = tf.function(plain_gradient(tf, model, 1))
    rng = np.random.default_rng(0)
    others = np.setdiff1d(np.arange(POOL), [TRACKED])
    seen = {}
    for g in groups:
        got = []
        for place in places(g, rng):
            index = np.insert(rng.choice(others, g - 1, replace=False), place, TRACKED)
            mask = np.zeros(g, np.float32)
            mask[place] = 1.0
            got.append([t.numpy() for t in fn(tf.constant(x[index]), tf.constant(mask))])
        seen[g] = got
    return {
        str(g): {"alone": all(_same(a, got[0]) for a in got), "as_in_32": _same(got[0], seen[32][0])}
        for g, got in seen.items()
    }


def bits(tf, model, x):
    pool = record_pool(tf, model, x)
    report = {}
    for name, (fn, keys) in kernels(tf, model, pool).items():
        report[name] = probe(tf, fn, [pool[k] for k in keys])
        print(name, _summary(report[name]), flush=True)
    for b in (1, 4):
        name = f"exact step's terms, micro-shards of {b} sample(s) (every weight, bias and loss term; G samples)"
        groups = [g for g in GROUPS if g % b == 0]
        report[name] = probe(tf, step_terms(tf, model, b), [x], groups, eager=True, unit=b)
        print(name, _summary(report[name]), flush=True)
    name = "plain batched gradient (one tape over the group, the tracked sample's loss only)"
    report[name] = probe_plain(tf, model, x)
    print(name, _summary(report[name]), flush=True)
    return report


def _summary(row):
    return " ".join(f"G{g}:{'A' if r['alone'] else '-'}{'=' if r['as_in_32'] else 'x'}" for g, r in row.items())


def timing(tf, model, x, rounds):
    """Medians in turns (ms) and ratios to the default batch-32 step."""
    from gmmkit.model import per_example, per_sample_msle
    from gmmkit.model.conv import _kernel_gradient
    from gmmkit.timing import take_turns
    from gmmkit.training import exact_sum as xs
    from gmmkit.training.exact import ExactStep
    from gmmkit.training.exact_group import term_bounds
    from gmmkit.training.optimizer import Adam

    batch = 32
    xb = x[:batch]
    optimizer = Adam(1e-6)  # small steps: the weights stay near their start over all rounds
    optimizer.build(model.trainable_variables)

    @tf.function(input_signature=[tf.TensorSpec((None, *xb.shape[1:]))])
    def default_step(xs_):  # the Trainer's step, less its allreduce
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_sample_msle(xs_, model(xs_, training=True)))
            scaled = loss / batch
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def timer(fn):
        def run():
            began = time.perf_counter()
            out = fn()
            tf.nest.flatten(out)[0].numpy()
            return time.perf_counter() - began

        return run

    timers = {"default step (batch 32, tape + Adam)": timer(lambda: default_step(xb))}
    for m, group, outer in ((2, None, 4), (8, None, 4), (8, None, 0), (32, None, 4), (32, 16, 4)):
        per_example.OUTER_SAMPLES = outer  # read when a group is traced
        step = ExactStep(model, optimizer, per_sample_msle, batch // m, group=group)
        xm = xb.reshape(m, batch // m, *xb.shape[1:])
        run = timer(lambda step=step, xm=xm: step.train_step(xm, batch))
        run()
        name = f"exact step M = {m}, groups of {step.group_for(m) * batch // m} samples"
        timers[name + ("" if outer else ", Dense kernels per micro-shard (a product each)")] = run
    per_example.OUTER_SAMPLES = 4

    # the parts of an exact step at M = 32, one group of 32
    step = ExactStep(model, optimizer, per_sample_msle, 1)
    xg = tf.constant(xb.reshape(batch, 1, *xb.shape[1:]))
    terms_fn = tf.function(lambda: step._group_terms(batch, xg, tf.constant(float(batch))))
    terms = terms_fn()
    bounds_fn = tf.function(lambda: term_bounds(terms))
    grid, _ = xs.agree(bounds_fn(), batch, headroom=xs.FLOAT64_BITS)
    zeros = [tf.zeros(v.shape, tf.int64) for v in model.trainable_variables] + [tf.zeros((), tf.int64)]
    valid = tf.ones((batch,), tf.bool)
    timers["M = 32 phase 1: forward, backward, per-micro-shard terms"] = timer(terms_fn)
    timers["M = 32 bounds of the terms"] = timer(bounds_fn)
    timers["M = 32 phase 2: conversion and sums (XLA)"] = timer(
        lambda: xs.accumulate_group_xla(zeros, terms, grid, valid)
    )

    # candidates on a group of 32 one-sample micro-shards (recorded inputs)
    pool = record_pool(tf, model, x)
    strides = [1] * 5
    for layer, k in (("conv1", 7), ("conv2", 5), ("conv3", 3)):
        a = tf.constant(pool[f"a_{layer}"][:batch])
        dz = tf.constant(pool[f"dz_{layer}"][:batch])
        sizes = [k, k, k, a.shape[-1], dz.shape[-1]]

        def native(a=a, dz=dz, sizes=sizes):
            return tf.stack(
                [
                    tf.raw_ops.Conv3DBackpropFilterV2(
                        input=a[i : i + 1],
                        filter_sizes=sizes,
                        out_backprop=dz[i : i + 1],
                        strides=strides,
                        padding="VALID",
                    )
                    for i in range(batch)
                ]
            )

        candidates = {
            "one Conv3DBackpropFilterV2 per sample": native,
            "one forward-convolution form per sample": lambda a=a, dz=dz: tf.stack(
                [_kernel_gradient(a[i : i + 1], dz[i : i + 1]) for i in range(batch)]
            ),
            "gathered patches + one BatchMatMul": lambda a=a, dz=dz, k=k: gathered_kernel_gradient(tf, a, dz, k),
            "batch-32 kernel gradient (not per sample; the default step's)": lambda a=a, dz=dz, sizes=sizes: (
                tf.raw_ops.Conv3DBackpropFilterV2(
                    input=a, filter_sizes=sizes, out_backprop=dz, strides=strides, padding="VALID"
                )
            ),
        }
        for name, fn in candidates.items():
            timers[f"{layer} kernel gradient: {name}"] = timer(tf.function(fn))
    a, dz = tf.constant(pool["a_latent"][:batch]), tf.constant(pool["dz_latent"][:batch] * 2.0**40)
    sums = tf.zeros((a.shape[1], dz.shape[1]), tf.int64)

    def int64_sum(s, a, d):
        for n in range(batch):
            s = s + tf.cast(tf.round(a[n][:, None] * d[n][None, :]), tf.int64)
        return s

    def float64_sum(s, a, d):
        total = tf.zeros(s.shape, tf.float64)
        for n in range(batch):
            total = total + tf.cast(tf.round(a[n][:, None] * d[n][None, :]), tf.float64)
        return s + tf.cast(total, tf.int64)

    materialised = tf.function(
        lambda s, a, d: s + tf.reduce_sum(tf.cast(tf.round(a[:, :, None] * d[:, None, :]), tf.int64), axis=0)
    )
    for name, fn in (
        ("XLA, float64 sums (used)", tf.function(float64_sum, jit_compile=True)),
        ("XLA, int64 sums", tf.function(int64_sum, jit_compile=True)),
        ("TensorFlow's kernels, products formed", materialised),
    ):
        timers[f"latent 32 outer products onto the grid: {name}"] = timer(lambda fn=fn: fn(sums, a, dz))
    timers["latent weight gradient, batch 32 (one MatMul; the default step's)"] = timer(
        tf.function(lambda: tf.matmul(a, dz, transpose_a=True))
    )
    medians = take_turns(timers, rounds)
    base = medians["default step (batch 32, tape + Adam)"]
    return {
        "rounds": rounds,
        "median_ms": {k: 1e3 * v for k, v in medians.items()},
        "ratio_to_default": {k: v / base for k, v in medians.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--no-timing", action="store_true")
    args = p.parse_args(argv)
    tf, model, x = setup()
    result = {
        "bits": bits(tf, model, x),
        "legend": "alone: the tracked sample's bits at every place and with every companion set; "
        "as_in_32: its bits equal those in a group of 32",
    }
    if not args.no_timing:
        result["timing"] = timing(tf, model, x, args.rounds)
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
