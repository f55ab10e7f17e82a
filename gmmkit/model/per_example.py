"""Each micro-shard's weight gradients from one batched forward and backward pass (exact mode).

Why
    Exact mode (:mod:`gmmkit.training.exact`) needs every micro-shard's gradient as float32 terms whose
    bits depend on that micro-shard alone. Computing each micro-shard on its own pays the step's fixed cost
    once per micro-shard (2.5 times a batch-32 step at one sample each). Here a group of micro-shards
    shares one forward pass and one backward pass for the *activations* with ordinary batched kernels, and
    only the *weight* gradients are taken per micro-shard, from what each trainable layer saw: ``a``, its
    input, and ``dz``, the loss gradient at its pre-activation output ``z = a W + b`` (Dense) or
    ``z = conv(a, W) + b`` (Conv3D), for every sample of the group.

    * Dense kernels, micro-shards of up to ``OUTER_SAMPLES`` samples: one term per sample,
      ``a_n ⊗ dz_n`` (products, no sum: a batch-1 gradient's bits), kept as its two factors
      (:class:`Outer`); the fixed-point conversion forms the products itself
      (:func:`gmmkit.training.exact_sum.accumulate_group`), so the B outer products (2 MB each for the
      latent layer) never exist in memory. Larger micro-shards: one ``a_k^T dz_k`` product each.
    * Conv3D kernels (valid, unit strides): per micro-shard, oneDNN's kernel-gradient kernel on its samples
      alone (one op each; from ``FORWARD_SAMPLES`` samples the forward-convolution form of
      :func:`gmmkit.model.conv.kernel_gradient` where the default step uses it), or, where a micro-shard's
      patch matrix is small (``GATHER_FLOATS``; conv3 of the paper's model at one sample a micro-shard),
      each micro-shard's patches gathered for the whole group and multiplied with its output gradient in
      one batched product (3.4 against 6.8 ms for 32 one-sample micro-shards).
    * Biases: one term per sample, ``dz_n`` summed over the voxels (small: put on the grid sample by
      sample, which leaves no sum over a micro-shard's samples to a kernel; written as a chain of
      additions, Grappler made it one AddN whose bits changed with the group's size).

Which kernels keep a sample's bits (``benchmarks/exact_kernels.py``, ``exact-kernels.json``: the paper's
model, one thread, oneDNN on this Xeon; each kernel alone on groups of G = 1 to 64 samples, the tracked
sample at six places among random companions)

    =========================================================  =====================  ==================
    kernel                                                     alone (companions,     bits as in G = 32
                                                               places)
    =========================================================  =====================  ==================
    conv1 forward (depth windows as a Conv2D), conv2, conv3     every G                every G
    renderer forward and gradient, loss, softmax gradient       every G                every G
    Conv3D input gradients (conv2, conv3)                       every G                every G
    latent forward (MatMul, bias, ReLU)                         every G                G >= 2
    mixture heads forward (4 MatMuls, activations)              G != 2                 G >= 8
    Dense input gradient ``dz W^T`` (heads, latent)             every G                G >= 16
    per-sample conv bias gradient (sum over voxels)             every G                every G
    kernel gradient, one Conv3DBackpropFilterV2 per sample      every G                every G
    kernel gradient, gathered patches + BatchMatMul             every G                every G
    the whole group's terms, 1 or 4 samples per micro-shard     G != 2                 G >= 16
    a plain batched gradient, loss masked to one sample         G = 16, 32             G = 16, 32
    =========================================================  =====================  ==================

    So a call holds a multiple of 16 samples (:mod:`gmmkit.training.exact_group`): below 16 rows the
    Dense layers' input gradient runs other arithmetic, and every later ``dz`` inherits it. A plain
    batched gradient with every loss but one micro-shard's masked out keeps that micro-shard's bits too
    (oneDNN adds the others' exact zeros without moving a bit), but costs a backward pass per micro-shard.
    Tried and dropped (2026-12-02): the Dense products padded to a multiple of 16 rows with zeros, so that
    a call could hold any number of samples. Traced alone, the layers' ``dz`` of a sample then kept their
    bits at 2 to 16 samples a call (not at 1); but in the exact step's own path every micro-shard's terms
    changed in every tensor at groups of 1, 2, 3 and 5 samples, and of 24 (3 micro-shards of 8), against
    a group of 32. Not understood, so the quantum of 16 samples a call stays.

Layers
    Trainable layers show exact mode their ``a`` and ``z`` through :func:`record` while :func:`recording`
    is active: :class:`gmmkit.model.layers.Dense` and :class:`gmmkit.model.conv.Conv3D` do. A model with a
    trainable layer that does not record (any other Keras layer with weights), or records twice (shared
    weights), is refused by :func:`layer_terms` with the layer's name: its per-micro-shard gradient is
    unknown.
"""

from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

_state = threading.local()
OUTER_SAMPLES = 4  # Dense kernels: a term per sample (an Outer) up to micro-shards of this many samples
# Conv3D kernels: the forward-convolution form (gmmkit.model.conv) per micro-shard from this many samples where
# the layer's shapes call for it (conv2 at 16 samples: 7.2 against 8.3 ms, at 8: 4.9 against 5.3; at 4 and 1
# oneDNN's kernel-gradient kernel is faster: 3.0 against 3.8 ms)
FORWARD_SAMPLES = 8
GATHER_FLOATS = 1 << 16  # Conv3D kernels: gathered patches, one batched product, up to this micro-shard patch size


class Record(NamedTuple):
    """What a trainable layer saw in one call: the layer, its input ``a`` and its pre-activation ``z``."""

    layer: object
    a: tf.Tensor
    z: tf.Tensor


class Outer(NamedTuple):
    """Terms of a Dense kernel, micro-shards of one sample: term k is ``a[k] ⊗ d[k]`` (never formed)."""

    a: tf.Tensor  # (g, I)
    d: tf.Tensor  # (g, J)


@contextlib.contextmanager
def recording():
    """Collect the :class:`Record` of every recording layer called inside the block (in call order)."""
    records, previous = [], getattr(_state, "records", None)
    _state.records = records
    try:
        yield records
    finally:
        _state.records = previous


def record(layer, a: tf.Tensor, z: tf.Tensor) -> None:
    """Called by recording layers with their input and pre-activation output; a no-op outside
    :func:`recording`."""
    records = getattr(_state, "records", None)
    if records is not None:
        records.append(Record(layer, a, z))


def layer_terms(model, records: Sequence[Record], dzs: Sequence[tf.Tensor], micro_batch: int) -> list:
    """Each trainable variable's terms over a group, in ``model.trainable_variables`` order.

    ``records``: what :func:`recording` collected over a group of g micro-shards of ``micro_batch``
    samples each (sample-major: micro-shard k holds samples k b to k b + b - 1); ``dzs``: the loss
    gradient at each record's ``z``. A kernel's terms are its per-micro-shard gradients, stacked
    (g, *shape) or as a list of g tensors (one op's output each: stacking them would copy them all), or
    an :class:`Outer`, one term per sample, for micro-shards of up to ``OUTER_SAMPLES`` samples; a bias's
    terms are its per-sample gradients, (g b, *shape): small enough to put on the grid one sample at a
    time, which leaves no sum over a micro-shard's samples to an optimised kernel (a chain of element-wise
    additions over them came out with bits that changed with the group's size: Grappler makes it one
    AddN).
    """
    by_variable = {}
    for rec, dz in zip(records, dzs):
        if dz is None:
            raise ValueError(f"exact mode: layer {rec.layer.name!r} does not reach the loss")
        kernel, bias = _terms_of(rec, dz, micro_batch)
        for variable, term in ((rec.layer.kernel, kernel), (getattr(rec.layer, "bias", None), bias)):
            if variable is None or not variable.trainable:
                continue
            if variable.ref() in by_variable:
                raise ValueError(
                    f"exact mode: layer {rec.layer.name!r} is called more than once (shared "
                    f"weights): its per-micro-shard gradient is not written"
                )
            by_variable[variable.ref()] = term
    missing = [v for v in model.trainable_variables if v.ref() not in by_variable]
    if missing:
        raise ValueError(
            f"exact mode: layer {_owner(model, missing[0])!r} has trainable weights but no "
            f"per-micro-shard gradient (exact mode knows gmmkit's Dense and Conv3D)"
        )
    return [by_variable[v.ref()] for v in model.trainable_variables]


def _terms_of(rec: Record, dz: tf.Tensor, b: int):
    """(kernel terms per micro-shard, bias terms per sample) of one recorded layer call."""
    a, layer = rec.a, rec.layer
    if a.shape.rank == 2:  # Dense
        if b <= OUTER_SAMPLES:
            return Outer(a, dz), dz
        a3, dz3 = _micro_shards(a, b), _micro_shards(dz, b)
        return [tf.matmul(a3[k], dz3[k], transpose_a=True) for k in range(a3.shape[0])], dz
    bias = tf.reduce_sum(tf.reshape(dz, (dz.shape[0], -1, dz.shape[-1])), axis=1)
    if b * _patch_floats(a.shape, layer.kernel.shape) <= GATHER_FLOATS:
        return _gathered_kernel_gradient(a, dz, layer.kernel.shape, b), bias
    a5, dz5 = _micro_shards(a, b), _micro_shards(dz, b)
    sizes = list(layer.kernel.shape)
    from . import conv  # conv imports this module (record)

    if b >= FORWARD_SAMPLES and conv.kernel_gradient_as_forward(a.shape, sizes):  # as the default step has it
        return [conv.kernel_gradient(a5[k], dz5[k]) for k in range(a5.shape[0])], bias
    kernel = [
        tf.raw_ops.Conv3DBackpropFilterV2(
            input=a5[k], filter_sizes=sizes, out_backprop=dz5[k], strides=[1] * 5, padding="VALID"
        )
        for k in range(a5.shape[0])
    ]
    return kernel, bias


def _patch_floats(input_shape, kernel_shape) -> int:
    """Floats of one sample's patch matrix for a valid, unit-stride Conv3D: output voxels x kernel volume
    x input channels."""
    out = [input_shape[d] - kernel_shape[d - 1] + 1 for d in (1, 2, 3)]
    return out[0] * out[1] * out[2] * kernel_shape[0] * kernel_shape[1] * kernel_shape[2] * kernel_shape[3]


def _gathered_kernel_gradient(a: tf.Tensor, dz: tf.Tensor, kernel_shape, b: int) -> tf.Tensor:
    """Each micro-shard's kernel gradient as one batched product: its samples' patches (one gather for the
    group) against their output gradients, (g, b o^3, k^3 Ci)^T (g, b o^3, Co)."""
    kd, kh, kw, ci, co = kernel_shape
    d, h, w = a.shape[1:4]
    od, oh, ow = d - kd + 1, h - kh + 1, w - kw + 1
    index = np.array(
        [
            [((p + i) * h + q + j) * w + r + k for i, j, k in np.ndindex(kd, kh, kw)]
            for p, q, r in np.ndindex(od, oh, ow)
        ],
        np.int32,
    )  # (output voxel, kernel offset)
    patches = tf.gather(tf.reshape(a, (a.shape[0], d * h * w, ci)), index, axis=1)
    patches = tf.reshape(patches, (-1, b * od * oh * ow, kd * kh * kw * ci))
    grads = tf.matmul(patches, tf.reshape(dz, (-1, b * od * oh * ow, co)), transpose_a=True)
    return tf.reshape(grads, (-1, kd, kh, kw, ci, co))


def _micro_shards(t: tf.Tensor, b: int) -> tf.Tensor:
    """(g b, ...) -> (g, b, ...)."""
    return tf.reshape(t, (-1, b, *t.shape[1:]))


def _owner(model, variable) -> str:
    """The name of the layer that holds ``variable`` itself (not through a sublayer)."""
    for layer in model.submodules:
        own = getattr(layer, "_trainable_weights", [])
        if any(w is variable for w in own):
            return layer.name
    return variable.name
