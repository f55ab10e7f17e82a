"""An exact, order- and grouping-independent sum of float32 tensors across micro-shards and ranks.

Why
    A float32 sum rounds after every addition, so its result depends on the order and grouping of the
    terms: one process summing M micro-shard gradients and n ranks each summing their own and then
    allreducing get different last bits, which Adam turns into different paths. Integers add exactly in
    any order, so each term is first rounded, on its own, onto a grid that every rank agrees on, and the
    grid points are summed as int64.

The algorithm (per tensor; M = ``total``, the number of terms over all ranks)
    1. *Bound.* Each rank takes ``max |x|`` over its terms (``max(|max x|, |min x|)``, two read-only
       passes; TensorFlow's min and max return NaN when any element is NaN, tested) as the float's bit
       pattern with the sign cleared: non-negative floats order like their bit patterns, NaN above Inf
       above every finite value, so the ranks agree on the largest through ``max_fn`` as an int32 max,
       exact and free of NaN comparisons. From it, ``E`` with ``max |x| < 2^E``: the bound's biased
       exponent minus 126, the smallest such integer for normal values, and -126 for zeros and
       subnormals.
    2. *Grid.* ``S = 63 - ceil(log2 M)`` fraction bits and the quantum ``q = 2^Q``,
       ``Q = max(E - S, -125)``. Every term becomes ``round(x / q)`` (round half to even) as an int64.
    3. *Sum.* The int64 terms are summed on each rank and across ranks through ``sum_fn``.
    4. *Back.* ``float32(sum) * q``.

What is exact, what is rounded
    * ``x / q`` is computed as ``x * 2^-Q``, exact (a power-of-two scaling whose result is either a
      normal float or below ``2^-126``, where it rounds to 0 anyway). Rounding it to an integer is the
      only rounding of a term: each term moves by at most ``q / 2`` to the nearest multiple of ``q``,
      deterministically (it depends on the term and on ``E`` and ``M`` alone, never on where the term is
      summed). A term is kept exactly when it is a multiple of ``q``: every float32 with
      ``|x| >= 2^(Q + 23)``, which for an unclamped ``Q`` means within a factor ``2^(S - 23)``
      (``2^35`` for M = 32) of ``2^E``.
    * The int64 sum is exact: ``|round(x / q)| < 2^S`` (``|x| < 2^E``, ``q >= 2^(E - S)``, and a value
      under ``2^S`` that is not already an integer is below ``2^24 < 2^S``), so the absolute value of
      any partial sum, in any order and grouping, is at most ``M (2^S - 1) < 2^ceil(log2 M) 2^S = 2^63``:
      no overflow can happen. This is why the result is bit-identical for any split of the same M terms
      over any number of ranks, in any order.
    * Error before the last step: at most ``M q / 2``; for an unclamped ``Q`` that is at most
      ``2^(2 ceil(log2 M) - 64)`` times ``2^E`` (``2^-54`` for M = 32, ``2^-44`` for M = 1024), where
      float32's own half-ulp at the largest element is ``2^-25`` of ``2^E``. An element of the result
      smaller than ``2^E`` by more than ``2^(S - 23) / M`` keeps fewer than float32's 24 significant
      bits (a float32 sum would keep more, though not in a fixed order). For Adam these elements lie
      below its epsilon (1e-8) while the tensor's largest term stays below ``1e-8 2^(S - 23) / M``
      (about 10 for M = 32, 0.01 for M = 1024); beyond that they are still summed deterministically,
      only less accurately.
    * Back to float32: the int64 sum ``N`` converts to float32 with one correctly rounded step (round to
      nearest even; TensorFlow's cast), and the product with ``q = 2^Q >= 2^-125`` is exact since any
      non-zero ``|N| >= 1`` gives a normal float (no subnormal result, no second rounding). The result is
      therefore ``fl32(sum_i q round(x_i / q))``: the exact sum of the gridded terms, rounded once. Sums
      beyond float32's range give +-Inf, as a float32 sum would.
    * Zeros are exact, but the sign of a zero sum is not kept (always +0.0).
    * Subnormals (below ``2^-126``) count as zero: ``q >= 2^-125`` makes every one of them round to 0,
      whether or not the CPU flushes denormals (TensorFlow's CPU kernels run with flush-to-zero and
      denormals-are-zero, so gradients never hold them). The floor ``Q >= -125`` is what makes the result
      independent of that mode.
    * NaN and Inf: a tensor whose bound is Inf or NaN on any rank (bit pattern >= ``0x7F800000``) comes
      out as NaN in every element on every rank, so a diverged run is still seen to diverge; its terms
      are not converted (int64 conversion of NaN is undefined) and contribute 0 to the allreduce.

Collectives
    ``max_fn`` and ``sum_fn`` take and return a list of tensors (the shape of
    ``hvd.grouped_allreduce(tensors, op=...)``); one process passes ``None`` (identity). All bounds go in
    one int32 vector (one ``max_fn`` call per sum) and all int64 sums in one grouped ``sum_fn`` call.
    Both are exact whatever algorithm the allreduce uses (integer max and sum, no overflow).

Threads and XLA
    Every operation here is exact or a single deterministic rounding of one value (max, power-of-two
    scaling, rounding to an integer, integer sums, the final conversion), so neither the thread count nor
    XLA can change a bit of the result (tested: XLA against TensorFlow's kernels). The conversion runs
    through XLA by default (``jit=True``): adding one term of every tensor to the int64 sums is one call,
    one fused loop per tensor that reads the term and the sum and writes the sum, where TensorFlow's own
    kernels write four intermediate arrays (product, rounded, int64, sum) per term.

A group's terms in float64 (exact mode's groups, :func:`accumulate_group`)
    With ``headroom=FLOAT64_BITS`` the grid has ``S = 53 - ceil(log2 M)`` fraction bits, so any partial sum
    of the M terms is an integer below ``2^53``: float64 adds them exactly, in any order, and XLA's float64
    additions run faster here than its int64 conversions (which clamp). A group's terms are added in
    float64, then converted to int64 once per group. Everything above holds with 53 for 63: the error
    bound becomes ``2^(2 ceil(log2 M) - 54 + 10)`` of ``2^E`` (``2^-44`` for M = 32), still far below
    float32's ``2^-25``. An outer product's terms ``a_i d_j`` are formed there in float64, where the
    product of two float32 numbers is exact, and rounded once onto the grid.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import tensorflow as tf

Reduce = Callable[[list], list]
Terms = Union[tf.Tensor, Sequence[tf.Tensor]]

MAX_TERMS = 2**24  # the headroom is computed in float32, exact for integers up to 2^24
INT64_BITS = 63  # terms below 2^S, S = 63 - ceil(log2 M): M of them add up in int64 without overflow
FLOAT64_BITS = 53  # S = 53 - ceil(log2 M): M of them add up exactly in float64 (integers below 2^53)
MIN_QUANTUM_EXPONENT = -125  # q >= 2^-125: subnormals round to 0 and results are never subnormal
_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
NO_TERMS = -(2**31)  # the bound of an empty set of terms: below every float's bit pattern


def fraction_bits(total, headroom: int = INT64_BITS) -> tf.Tensor:
    """``S = headroom - ceil(log2 total)`` (int32): the grid's bits below ``2^E``, leaving ``ceil(log2 total)``
    bits of headroom so that ``total`` terms below ``2^S`` cannot overflow int64 (``headroom`` 63) or leave
    float64's exact integers (``headroom`` 53, :func:`accumulate_group`)."""
    total = tf.convert_to_tensor(total, tf.int32)
    tf.debugging.assert_greater_equal(total, 1, message="exact sum: expected at least 1 term in all")
    tf.debugging.assert_less_equal(total, MAX_TERMS, message=f"exact sum: expected at most {MAX_TERMS} terms")
    # ceil(log2 n) is the bit length of n - 1, read from the exponent of float32(n - 1) (exact below 2^24)
    exponent = tf.bitwise.right_shift(tf.bitcast(tf.cast(total - 1, tf.float32), tf.int32), 23)
    return headroom - tf.maximum(exponent - 126, 0)


def _abs_bits(value: tf.Tensor) -> tf.Tensor:
    return tf.bitwise.bitwise_and(tf.bitcast(value, tf.int32), _ABS_MASK)


def magnitude_bound(terms: tf.Tensor) -> tf.Tensor:
    """The bit pattern of ``max |x|`` over all elements of ``terms`` (int32 scalar): NaN's pattern, above
    Inf's, when any element is NaN; ``NO_TERMS``, below every pattern, when ``terms`` is empty."""
    bound = tf.maximum(_abs_bits(tf.reduce_max(terms)), _abs_bits(tf.reduce_min(terms)))
    return tf.where(tf.size(terms) > 0, bound, NO_TERMS)


def magnitude_bounds(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """:func:`magnitude_bound` of each of ``tensors`` (none empty) as one int32 vector: a max and a min per
    tensor, then one short chain of vector ops instead of one per tensor (they are scalars: each op's
    dispatch costs more than its work, and a step takes the bounds of every micro-shard)."""
    if any(t.shape.num_elements() == 0 for t in tensors):
        raise ValueError("magnitude_bounds: expected non-empty tensors")
    highs = tf.stack([tf.reduce_max(t) for t in tensors])
    lows = tf.stack([tf.reduce_min(t) for t in tensors])
    return tf.maximum(_abs_bits(highs), _abs_bits(lows))


def _pow2(exponent: tf.Tensor) -> tf.Tensor:
    """``2^exponent`` as float32, built from its bits (exact for ``exponent`` in [-126, 127])."""
    return tf.bitcast(tf.bitwise.left_shift(exponent + 127, 23), tf.float32)


class Grid(NamedTuple):
    """The agreed fixed-point grid of T tensors: ``scales`` = ``2^-Q`` (float32, T), ``quanta`` = ``2^Q``
    (float32, T) and ``finite`` (bool, T: False where some term is Inf or NaN)."""

    scales: tf.Tensor
    quanta: tf.Tensor
    finite: tf.Tensor


def agree(
    bounds: tf.Tensor,
    total,
    max_fn: Optional[Reduce] = None,
    vote: Optional[tf.Tensor] = None,
    headroom: int = INT64_BITS,
):
    """The grid of tensors whose local magnitude bounds are ``bounds`` (int32, T), agreed by all ranks in
    one ``max_fn`` call; ``vote`` (int32 scalar) rides along. Returns ``(grid, vote_max or None)``.
    ``headroom``: :func:`fraction_bits`'s."""
    local = tf.convert_to_tensor(bounds, tf.int32)
    count = local.shape[0]
    if vote is not None:
        local = tf.concat([local, tf.reshape(tf.cast(vote, tf.int32), (1,))], 0)
    (agreed,) = (max_fn or _identity)([local])
    bound = agreed[:count]
    # Q = max(E - S, -125) with E = the bound's biased exponent - 126
    exponents = tf.maximum(
        tf.bitwise.right_shift(bound, 23) - 126 - fraction_bits(total, headroom), MIN_QUANTUM_EXPONENT
    )
    grid = Grid(_pow2(-exponents), _pow2(exponents), bound < _INF_BITS)
    return grid, (agreed[count] if vote is not None else None)


def _fixed(terms: tf.Tensor, scale: tf.Tensor, finite: tf.Tensor) -> tf.Tensor:
    """``round(terms * scale)`` as int64; 0 when not ``finite`` (NaN has no int64 value)."""
    return tf.cast(tf.where(finite, tf.round(terms * scale), 0.0), tf.int64)


def accumulate(sums: Sequence[tf.Tensor], terms: Sequence[tf.Tensor], grid: Grid, valid=True) -> list:
    """``sums[j] + round(terms[j] * 2^-Q_j)``: one more term of each tensor added to its int64 sum (none
    when ``valid``, a bool scalar, is False: a loop's padding)."""
    return [
        s + _fixed(t, grid.scales[j], tf.logical_and(grid.finite[j], valid))
        for j, (s, t) in enumerate(zip(sums, terms))
    ]


def accumulate_stacked(sums: Sequence[tf.Tensor], stacked: Sequence[tf.Tensor], grid: Grid) -> list:
    """:func:`accumulate` of all the terms of each tensor, stacked on axis 0."""
    return [
        s + tf.reduce_sum(_fixed(t, grid.scales[j], grid.finite[j]), axis=0)
        for j, (s, t) in enumerate(zip(sums, stacked))
    ]


# one fused loop per tensor: each term read once, the int64 sum written once (bit-identical to the above)
accumulate_xla = tf.function(accumulate, jit_compile=True)
accumulate_stacked_xla = tf.function(accumulate_stacked, jit_compile=True)


def outer_maxima(a: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
    """The largest magnitude of each outer product ``a[k] ⊗ d[k]`` (a (g, I), d (g, J)) without forming
    them, as float32: ``fl(max |a[k]| max |d[k]|)`` (g,), at least the largest exact product's ``2^E`` since
    float32 rounding is monotone and ``2^E`` a float; NaN or Inf in either factor gives NaN or Inf."""
    return tf.reduce_max(tf.abs(a), axis=1) * tf.reduce_max(tf.abs(d), axis=1)


def accumulate_group(sums: Sequence[tf.Tensor], terms: Sequence, grid: Grid, valid: tf.Tensor) -> list:
    """``sums[j]`` plus the gridded terms of a group of g micro-shards, those with ``valid`` (bool, g)
    (``sums[j]`` None: the gridded terms alone).

    ``terms[j]``: the terms stacked, (r, *shape_j), or as a list of r tensors, or an ``Outer``
    (a (r, I), d (r, J)), whose term k is ``a[k] ⊗ d[k]``; r is g (a term per micro-shard) or a multiple
    of it (a term per sample of each micro-shard, in order). Each term becomes ``round(x 2^-Q)`` (half to
    even), as on :func:`accumulate`'s grid; the r of them are added in float64, then to the int64 sums.
    With a grid of ``S = 53 - ceil(log2 N)`` fraction bits for N terms in all
    (``agree(..., headroom=FLOAT64_BITS)``) every partial sum is an integer below ``2^53``, so float64
    adds them exactly (XLA's float64 additions run several times faster here than its int64
    conversions, which clamp).

    An outer product's elements are formed here, in float64, where the product of two float32 numbers
    is exact: ``round(a_i (d_j 2^-Q))``, the exact product rounded once onto the grid (not first to
    float32), so the products never exist in memory: the latent layer's 32 x 2048 x 256 cost about 4 ms
    on one thread. Its bound comes from :func:`outer_maxima`.
    """
    out = []
    for j, (s, t) in enumerate(zip(sums, terms)):
        rows = len(t) if isinstance(t, list) else (t[0] if isinstance(t, tuple) else t).shape[0]
        valid_rows = tf.repeat(valid, rows // valid.shape[0]) if rows != valid.shape[0] else valid
        if isinstance(t, tuple):  # an Outer
            a = tf.where(valid_rows[:, None], tf.cast(t[0], tf.float64), 0.0)
            d = tf.cast(t[1], tf.float64) * tf.cast(grid.scales[j], tf.float64)
            terms_j = [tf.round(a[k][:, None] * d[k][None, :]) for k in range(rows)]
        else:
            scales = tf.where(valid_rows, grid.scales[j], 0.0)  # a left-out row adds 0 (NaN only where not finite)
            terms_j = [tf.cast(tf.round(t[k] * scales[k]), tf.float64) for k in range(rows)]
        total = terms_j[0]
        for term in terms_j[1:]:
            total = total + term
        total = tf.cast(tf.where(grid.finite[j], total, 0.0), tf.int64)
        out.append(total if s is None else s + total)
    return out


accumulate_group_xla = tf.function(accumulate_group, jit_compile=True)


def finish(sums: Sequence[tf.Tensor], grid: Grid, sum_fn: Optional[Reduce] = None, jit: bool = False) -> list:
    """Sum the int64 sums over ranks (one grouped ``sum_fn`` call) and convert them to float32:
    ``float32(N) * 2^Q``, or NaN everywhere for a tensor with an Inf or NaN term on any rank. ``jit``: the
    conversion of every tensor in one XLA call (the same bits)."""
    total = (sum_fn or _identity)(list(sums))
    if jit:
        return _to_float32(total, grid)
    out = []
    for j, fixed in enumerate(total):

        def convert(f=fixed, j=j):
            return tf.cast(f, tf.float32) * grid.quanta[j]

        out.append(tf.cond(grid.finite[j], convert, lambda f=fixed: tf.fill(tf.shape(f), float("nan"))))
    return out


@tf.function(jit_compile=True)
def _to_float32(total: list, grid: Grid) -> list:
    return [
        tf.where(grid.finite[j], tf.cast(f, tf.float32) * grid.quanta[j], float("nan")) for j, f in enumerate(total)
    ]


def exact_sum(
    terms: Sequence[Terms],
    total,
    max_fn: Optional[Reduce] = None,
    sum_fn: Optional[Reduce] = None,
    vote: Optional[tf.Tensor] = None,
    jit: bool = True,
):
    """Sum each float32 tensor of ``terms`` over its terms and over ranks, exactly (module docstring).

    ``terms[j]``: this rank's terms of tensor j, stacked on axis 0 as (m_local, *shape_j), m_local >= 0,
    or as a non-empty list of tensors of shape_j; the same shape_j on every rank. ``total``: the number of
    terms of each tensor over all ranks (int or int32 scalar, 1 to ``MAX_TERMS``), the same on every rank.
    ``vote``: an optional int32 scalar whose maximum over ranks rides in the same ``max_fn`` call (a stop
    request). Returns ``(sums, vote_max)``: the float32 sums, identical on every rank, and the voted
    maximum (None without a vote).
    """
    stacked = []
    for j, group in enumerate(terms):
        group = (
            tf.stack([tf.convert_to_tensor(t) for t in group])
            if isinstance(group, (list, tuple))
            else tf.convert_to_tensor(group)
        )
        if group.dtype != tf.float32 or group.shape.rank is None or group.shape.rank < 1:
            raise TypeError(
                f"exact_sum: terms[{j}]: expected float32 terms stacked on axis 0, received "
                f"{group.dtype.name} of shape {group.shape}"
            )
        stacked.append(group)
    grid, vote = agree(tf.stack([magnitude_bound(t) for t in stacked]), total, max_fn, vote)
    zeros = [tf.zeros(tf.shape(t)[1:], tf.int64) for t in stacked]
    sums = (accumulate_stacked_xla if jit else accumulate_stacked)(zeros, stacked, grid)
    return finish(sums, grid, sum_fn), vote


def _identity(tensors: list) -> list:
    return list(tensors)
