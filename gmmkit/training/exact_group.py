"""How exact mode groups a rank's micro-shards into calls, and what a group's terms look like.

Groups (measured: ``benchmarks/exact_kernels.py``, ``exact-kernels.json``)
    A call computes ``group`` micro-shards, ``group * micro_batch`` samples, with one batched forward and
    backward pass. A sample's results keep their bits whatever its companions and its place only if
    every kernel of that pass computes a sample alone with arithmetic that does not change with the batch
    size; on this machine's oneDNN (one intra-op thread) the Dense layers' input gradient, ``dz W^T``,
    takes other arithmetic below 16 rows, and the mixture heads' forward product below 8 (at 2 rows it
    even depends on the row's place). From 16 samples up, every size measured (16, 20, 24, 32, 48, 64)
    gives each sample the same bits in every tensor. So a call holds a multiple of ``GROUP_QUANTUM`` = 16
    samples (padded with copies of the rank's last micro-shard where it holds fewer), at most
    ``MAX_GROUP`` = 64, and within that a rank takes as large a group as it needs (fewer calls: two calls
    of 16 cost about 6 % of a step more than one of 32 at M = 32); ranks with different micro-shard
    counts then use different sizes, which the measurement above allows. A rank of a job with more
    ranks than 32 / 16 pads: at M = 32 and 4 ranks each computes 16 samples for its 8.

Memory
    :func:`bytes_per_sample` estimates a call's memory from the traced graph (every tensor it makes, as
    if all were alive at once: 5.8 MB a sample for the paper's model, whose peak resident memory grows by
    about 3 MB a sample), and a call takes at most ``MEMORY_BUDGET`` (1 GiB) by that estimate. Phase 1
    keeps each micro-shard's terms until the grid is agreed: for the paper's model 0.67 MB a one-sample
    micro-shard (the Conv3D kernels' gradients; the Dense kernels' outer products are kept as their
    factors, 10 kB), 3.3 MB a micro-shard of more than ``OUTER_SAMPLES`` samples.
"""

from __future__ import annotations

import math
from typing import Optional

import tensorflow as tf

from ..model.per_example import Outer
from .exact_sum import magnitude_bounds, outer_maxima

GROUP_QUANTUM = 16  # a call's samples: a multiple of this
MAX_GROUP = 64  # samples per call at most: the sizes measured to keep a sample's bits
MEMORY_BUDGET = 1 << 30  # bytes a call of the group's forward and backward pass may take (estimated)
_ALIASES = {"Reshape", "Identity", "ReadVariableOp", "Squeeze", "ExpandDims", "Const", "Placeholder", "Shape"}


def least_group(micro_batch: int) -> int:
    """The fewest micro-shards whose samples are a multiple of ``GROUP_QUANTUM``."""
    return GROUP_QUANTUM // math.gcd(GROUP_QUANTUM, micro_batch)


def group_size(micro_batch: int, group: int) -> int:
    """``group`` micro-shards per call, checked: its ``group * micro_batch`` samples must be a multiple of
    ``GROUP_QUANTUM``."""
    least = least_group(micro_batch)
    if int(group) != group or group < 1 or group % least:
        raise ValueError(
            f"group: expected a positive number of micro-shards of {micro_batch} sample(s) "
            f"holding a multiple of {GROUP_QUANTUM} samples (a multiple of {least}), "
            f"received {group!r}"
        )
    return int(group)


def choose_group(
    m_local: int,
    micro_batch: int,
    parallel: int = 1,
    sample_bytes: int = 0,
    budget: int = MEMORY_BUDGET,
    fixed: Optional[int] = None,
) -> int:
    """Micro-shards per call for a rank holding ``m_local``: ``fixed`` if given, else its share of
    ``m_local`` for each of the ``parallel`` side-by-side lanes, rounded up to a multiple of
    ``GROUP_QUANTUM`` samples, at most ``MAX_GROUP`` samples and ``budget`` bytes at ``sample_bytes`` a
    sample (never under one quantum)."""
    if fixed is not None:
        return group_size(micro_batch, fixed)
    least = least_group(micro_batch)
    fits = min(budget // max(1, sample_bytes), MAX_GROUP) // micro_batch // least * least
    share = -(-max(m_local, 1) // parallel)
    return min(-(-share // least) * least, max(least, fits))


def term_rows(term) -> int:
    """A group's rows of one tensor's terms: a row per micro-shard, or per sample."""
    return len(term) if isinstance(term, list) else int((term.a if isinstance(term, Outer) else term).shape[0])


def term_bounds(terms: list, jit: bool = True) -> tf.Tensor:
    """The magnitude bound of each tensor's terms in a group (int32: the bit pattern of ``max |x|``, NaN's
    above Inf's, as :func:`gmmkit.training.exact_sum.magnitude_bound`), the terms held stacked, as a list
    of rows or as an :class:`Outer`'s factors (whose largest products :func:`outer_maxima` gives). A rank's
    last group may hold copies of one micro-shard: their terms are the copied one's, bit for bit, so they
    leave the bounds as they are.

    ``jit``: through XLA, as the largest of the elements' bit patterns with the sign cleared (integers,
    element-wise across rows in XLA, then along one row: 2.7 against 4.0 ms for the paper's model at M = 32);
    else TensorFlow's float max and min of each piece. A NaN's pattern may differ between the two (both
    above Inf's: the tensor comes out NaN either way); every other bound is the same."""
    pieces = [[outer_maxima(t.a, t.d)] if isinstance(t, Outer) else t if isinstance(t, list) else [t] for t in terms]
    if jit:  # the last reduction in TensorFlow: XLA's CPU reductions are slow
        return tf.stack([tf.reduce_max(largest) for largest in _largest_bits(pieces)])
    flat = [piece for group in pieces for piece in group]
    owner = [j for j, group in enumerate(pieces) for _ in group]
    return tf.math.unsorted_segment_max(magnitude_bounds(flat), tf.constant(owner), num_segments=len(terms))


@tf.function(jit_compile=True)
def _largest_bits(pieces: list) -> list:
    """For each list of rows, the element-wise largest bit pattern with the sign cleared (int32)."""
    out = []
    for rows in pieces:
        largest = None
        for row in rows:
            bits = tf.bitwise.bitwise_and(tf.bitcast(row, tf.int32), 0x7FFFFFFF)
            largest = bits if largest is None else tf.maximum(largest, bits)
        out.append(largest)
    return out


def bytes_per_sample(graph, samples: int) -> int:
    """A call's memory per sample, estimated from above: the bytes of every tensor ``graph`` (a group's
    traced terms) makes, reshapes and other views left out, over its ``samples``."""
    total = 0
    for op in graph.get_operations():
        if op.type not in _ALIASES:
            total += sum(
                t.shape.num_elements() * t.dtype.size
                for t in op.outputs
                if t.shape.is_fully_defined() and t.dtype.is_numpy_compatible
            )
    return max(1, total // samples)
