"""Exact data parallelism: the same weights, bit for bit, on one process and on any number of ranks.

Why it is needed
    The default step sums each rank's gradient in float32 and allreduces the sums: the grouping of the
    additions changes with the rank count, so the last bits do, and Adam turns last bits into different
    steps at once. Exactness needs two things, both provided here:

    * **Fixed units of work.** The global batch is cut into M micro-shards of ``micro_batch`` samples, the
      same cut whatever the rank count; a rank holds a contiguous run of whole micro-shards
      (:func:`shard_range`). Each micro-shard's gradient terms of ``sum of its per-sample losses / global
      batch`` have bits that depend on that micro-shard alone, so they are the same on every rank and in
      the one-process run.
    * **A sum that ignores grouping.** The terms are combined by the exact sum of
      :mod:`gmmkit.training.exact_sum` (fixed point on a grid agreed through a max, added exactly),
      locally and across ranks through the injected ``max_fn`` / ``sum_fn`` reductions.

A rank's micro-shards computed together (issue 25)
    A rank computes its micro-shards in groups (:mod:`gmmkit.training.exact_group`: a multiple of 16
    samples a call, as many as it holds up to 64): one batched forward and backward pass through ordinary
    kernels gives every layer's input and pre-activation gradient, and from those each micro-shard's own
    weight gradients are taken (:mod:`gmmkit.model.per_example`: outer products for Dense kernels, a
    kernel-gradient op or a batched product per micro-shard for Conv3D kernels, per-sample bias
    gradients and losses). Which batched kernels keep a sample's bits whatever its companions, its place
    and the group's size was measured kernel by kernel (``benchmarks/exact_kernels.py``; the table is in
    :mod:`gmmkit.model.per_example`): all do from 16 samples a call. A micro-shard's terms are the same
    bits in any group (tested), so the one-process run and any number of ranks add the same terms.

    Terms per tensor: a Dense kernel's and a bias's are per sample (B of them), a Conv3D kernel's per
    micro-shard (M), so the grid counts B terms; the terms of a group are added in float64 inside one XLA
    call (:func:`gmmkit.training.exact_sum.accumulate_group`), exact with a grid of
    ``S = 53 - ceil(log2 B)`` fraction bits (48 at B = 32: every term is still kept to ``2^-48`` of the
    tensor's largest one, where float32 keeps ``2^-24`` of each), then as int64 across groups and ranks.

    Cost (``benchmarks/exact-kernels.json``, ``exact-cost.json``; one rank, one thread, in turns against
    the default batch-32 step): see ``benchmarks/RESULTS.md`` ("Exact mode's micro-shards computed
    together"). The conversion of a step's terms onto the grid, with their bounds, is about a tenth of a
    default step at M = 32 (32 x 0.82 M terms, half of them outer products formed in the conversion).

Threads
    oneDNN's kernels change their last bits between 1 and 2 intra-op threads
    (``benchmarks/exact_threads.py``), so the step runs with **one intra-op thread**: :class:`ExactStep`
    refuses to start otherwise. The inter-op thread count changes no bit (same script), so one process
    uses both cores by computing ``parallel`` groups side by side (``inter_op_parallelism_threads >=
    parallel``). Adam's fused update is bitwise the same on 1 and 2 intra-op threads given the same
    gradients (same script), and the fixed-point conversion and sums are exact.

GPUs
    Each group is one set of kernels of fixed shapes under TensorFlow's deterministic ops
    (:func:`gmmkit.parallel.distributed.configure_devices`); which of them keep a sample's bits whatever
    its companions has not been measured on a GPU (no GPU here): run ``benchmarks/exact_kernels.py`` there
    and fix ``group`` to one size if the sizes disagree.

Evaluation
    :meth:`ExactStep.eval_step` sums per-sample losses exactly. The evaluation set is cut once into
    chunks of one size (:func:`evaluation_chunks`, the last one padded) and each rank takes a
    :func:`shard_range` of them, so every sample is evaluated at the same place of a same-shaped input.

No state of its own
    The grid is agreed afresh at every step from the step's own gradients, so nothing beyond the weights
    and Adam's state needs checkpointing: a resumed run repeats the uninterrupted one.

What the caller provides
    * one intra-op thread, and as many inter-op threads as ``parallel``;
    * each rank's micro-shards as one array (m_local, micro_batch, *sample_shape), cut from the global
      batch in one fixed sample order (:func:`local_micro_shards`); ``m_local`` may differ between ranks;
    * ``max_fn`` and ``sum_fn``: identities on one process (``None``), on a Horovod rank
      ``lambda t: hvd.grouped_allreduce(t, op=hvd.Max)`` and ``... op=hvd.Sum``; every rank calls the
      step the same number of times (each call runs one max and one grouped sum);
    * a model that computes each sample alone (no batch statistics, no random dropout) whose trainable
      layers are gmmkit's Dense and Conv3D (others are refused by name).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from ..model.per_example import Outer, layer_terms, recording
from .exact_group import MEMORY_BUDGET, bytes_per_sample, choose_group, group_size, least_group, term_bounds, term_rows
from .exact_sum import FLOAT64_BITS, Reduce, accumulate_group, accumulate_group_xla, agree, exact_sum, finish


def shard_range(parts: int, size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)``: the contiguous run of whole parts (micro-shards, evaluation chunks) that rank
    ``rank`` of ``size`` takes out of ``parts``, the first ``parts % size`` ranks taking one more (the
    split of :func:`gmmkit.strategies.shares`)."""
    if parts < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(
            f"shard_range: expected parts >= 0 and 0 <= rank < size, received parts={parts}, size={size}, rank={rank}"
        )
    q, r = divmod(parts, size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def local_micro_shards(batch_indices: np.ndarray, micro_batch: int, size: int = 1, rank: int = 0) -> np.ndarray:
    """This rank's micro-shards of a global batch as sample indices, shape (m_local, micro_batch).

    ``batch_indices``: the global batch's samples in the one order every rank and the one-process run use
    (for instance sorted); micro-shard k is ``batch_indices[k b:(k + 1) b]``.
    """
    batch_indices = np.asarray(batch_indices)
    if micro_batch < 1 or len(batch_indices) % micro_batch:
        raise ValueError(
            f"micro_batch: expected a divisor of the global batch of {len(batch_indices)} "
            f"samples, received {micro_batch}"
        )
    start, stop = shard_range(len(batch_indices) // micro_batch, size, rank)
    return batch_indices[start * micro_batch : stop * micro_batch].reshape(stop - start, micro_batch)


def evaluation_chunks(x: np.ndarray, chunk: int) -> tuple[np.ndarray, int]:
    """``x`` (n, *sample_shape) as (ceil(n / chunk), chunk, *sample_shape), the last chunk padded with
    zeros, and ``n``: what :meth:`ExactStep.eval_step` takes. Cut the whole evaluation set into chunks
    once and give each rank a :func:`shard_range` of them, so that every sample sits at the same place of
    a chunk of the same shape on any number of ranks."""
    x = np.asarray(x, dtype=np.float32)
    if chunk < 1:
        raise ValueError(f"chunk: expected a positive number of samples, received {chunk}")
    padded = np.zeros((-(-len(x) // chunk) * chunk, *x.shape[1:]), np.float32)
    padded[: len(x)] = x
    return padded.reshape(-1, chunk, *x.shape[1:]), len(x)


class _Group(NamedTuple):
    """The traced steps for groups of ``size`` micro-shards, and their terms' structure."""

    size: int
    structure: list
    specs: list
    graph: object  # the traced graph of one group's terms
    train: Callable
    gradients: Callable
    terms: Callable


class ExactStep:
    """The exact train and evaluation steps of a plain Keras ``model`` (see the module docstring).

    ``loss_fn(y_true, y_pred)`` returns one loss per sample (:func:`gmmkit.model.per_sample_msle`).
    ``micro_batch``: samples per micro-shard. ``group``: micro-shards per call, or None (the default): as
    many as the rank holds, rounded up to a multiple of ``GROUP_QUANTUM`` samples, within
    ``memory_budget`` bytes (:meth:`group_for`). ``parallel``: groups computed side by side. ``jit``:
    run the fixed-point conversion through XLA (the same bits, fewer passes over memory).

    A step runs in two phases. Phase 1 computes the rank's micro-shards a group at a time: one batched
    forward and backward pass, then each micro-shard's weight gradient and loss sum
    (:mod:`gmmkit.model.per_example`), kept with their magnitude bounds; the ranks agree on the grid (one
    ``max_fn`` call, which also carries the stop vote). Phase 2 converts the kept terms onto the grid and
    adds them up (:func:`gmmkit.training.exact_sum.accumulate_group`; ``parallel`` running int64 sums,
    added at the end: integers, so exact), then one grouped ``sum_fn`` call and the conversion back to
    float32. Phase 1 keeps every local micro-shard's terms (module docstring, "Memory").
    """

    def __init__(
        self,
        model,
        optimizer,
        loss_fn: Callable,
        micro_batch: int,
        max_fn: Optional[Reduce] = None,
        sum_fn: Optional[Reduce] = None,
        parallel: int = 1,
        jit: bool = True,
        group: Optional[int] = None,
        memory_budget: int = MEMORY_BUDGET,
    ):
        if int(micro_batch) != micro_batch or micro_batch < 1:
            raise ValueError(f"micro_batch: expected a positive integer, received {micro_batch!r}")
        if int(parallel) != parallel or parallel < 1:
            raise ValueError(f"parallel: expected a positive integer, received {parallel!r}")
        threads = tf.config.threading.get_intra_op_parallelism_threads()
        if threads != 1:
            raise RuntimeError(
                f"exact mode: expected 1 intra-op thread (oneDNN's gradients change with the "
                f"thread count), received {threads} (0: TensorFlow's default, one per core); "
                f"call tf.config.threading.set_intra_op_parallelism_threads(1) before TensorFlow "
                f"starts"
            )
        wrong = [v.name for v in model.trainable_variables if v.dtype != tf.float32]
        if wrong:
            raise TypeError(f"exact mode: expected float32 trainable variables, received others: {wrong}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.micro_batch, self.parallel, self.jit = int(micro_batch), int(parallel), jit
        self.max_fn, self.sum_fn = max_fn, sum_fn
        self.sample_shape = tuple(model.input_shape[1:])
        self.least = least_group(self.micro_batch)
        self.group = None if group is None else group_size(self.micro_batch, group)
        self.memory_budget = int(memory_budget)
        self._groups: dict[int, _Group] = {}
        # the first trace fixes the terms' structure, refuses a model with a trainable layer per_example does
        # not know, and measures a call's memory per sample
        self.sample_bytes = bytes_per_sample(self._group(self.least).graph, self.least * self.micro_batch)
        self.eval_function = tf.function(
            self._eval_step,
            input_signature=[
                tf.TensorSpec((None, None, *self.sample_shape), tf.float32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.int32),
            ],
        )

    def group_for(self, m_local: int) -> int:
        """Micro-shards per call for a rank holding ``m_local`` (:func:`choose_group`)."""
        return choose_group(m_local, self.micro_batch, self.parallel, self.sample_bytes, self.memory_budget, self.group)

    # --- what the Trainer calls --------------------------------------------------------------
    def train_step(self, x, global_batch: int, stop: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """One optimiser step on this rank's micro-shards ``x`` (m_local, micro_batch, *sample_shape) of a
        ``global_batch``. Returns the loss sum of the whole global batch and the stop vote (1.0 when any
        rank voted), both identical on every rank."""
        x = self._check(x)
        return self._group(self.group_for(x.shape[0])).train(
            x, tf.constant(float(global_batch)), tf.constant(float(bool(stop)))
        )

    def eval_step(self, chunks, count: int, total: int) -> tf.Tensor:
        """The exact sum over all ranks of the per-sample losses (``training=False``) of the first
        ``count`` samples of this rank's ``chunks`` (c_local, chunk, *sample_shape); ``total``: the
        samples evaluated on all ranks together. Chunks must have one size on every rank."""
        chunks = np.asarray(chunks, np.float32)
        if (
            chunks.ndim != 2 + len(self.sample_shape)
            or chunks.shape[2:] != self.sample_shape
            or not 0 <= count <= chunks.shape[0] * chunks.shape[1]
        ):
            raise ValueError(
                f"chunks: expected (c, chunk, {', '.join(map(str, self.sample_shape))}) holding at "
                f"least count={count} samples, received shape {chunks.shape}"
            )
        return self.eval_function(tf.constant(chunks), tf.constant(count, tf.int32), tf.constant(total, tf.int32))

    # --- for tests and tools -----------------------------------------------------------------
    def gradients(self, x, global_batch: int) -> tuple[list, tf.Tensor]:
        """The exact gradient of ``sum of per-sample losses / global_batch`` and the loss sum, without
        updating anything."""
        x = self._check(x)
        return self._group(self.group_for(x.shape[0])).gradients(x, tf.constant(float(global_batch)))

    def micro_shard_gradients(self, x, global_batch: int, group: Optional[int] = None) -> tuple[list, tf.Tensor]:
        """Each micro-shard's own gradient (one (m_local, *shape) tensor per variable) and loss sum
        (m_local,): the terms the exact sum combines (Dense kernels' outer products formed here), computed
        in groups of ``group`` micro-shards (default :meth:`group_for`)."""
        x = self._check(x)
        group = self.group_for(x.shape[0]) if group is None else group_size(self.micro_batch, group)
        return self._group(group).terms(x, tf.constant(float(global_batch)))

    # --- traced ------------------------------------------------------------------------------
    def _group(self, size: int) -> _Group:
        """The traced steps for groups of ``size`` micro-shards (made on first use)."""
        if size not in self._groups:
            spec = tf.TensorSpec((size, self.micro_batch, *self.sample_shape), tf.float32)
            scalar = tf.TensorSpec((), tf.float32)
            traced = tf.function(functools.partial(self._group_terms, size)).get_concrete_function(spec, scalar)
            structure = traced.structured_outputs
            specs = [tf.TensorSpec(t.shape, t.dtype) for t in tf.nest.flatten(structure)]
            plan = _Group(size, structure, specs, traced.graph, None, None, None)
            # traced once per micro-shard count (constant through a run): the groups are known when tracing
            self._groups[size] = plan._replace(
                train=tf.function(functools.partial(self._train_step, plan)),
                gradients=tf.function(functools.partial(self._gradients, plan)),
                terms=tf.function(functools.partial(self._terms, plan)),
            )
        return self._groups[size]

    def _train_step(self, plan, x, global_batch, stop):
        (*grads, loss), vote = self._combined(plan, x, global_batch, vote=tf.cast(stop > 0, tf.int32))
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss, tf.cast(vote, tf.float32)

    def _gradients(self, plan, x, global_batch):
        (*grads, loss), _ = self._combined(plan, x, global_batch)
        return grads, loss

    def _terms(self, plan, x, global_batch):
        arrays, _ = self._all_terms(plan, x, global_batch)
        m, out = x.shape[0], []
        kept = [
            tf.nest.pack_sequence_as(plan.structure, [a.read(i) for a in arrays]) for i in range(-(-m // plan.size))
        ]
        for j, traced in enumerate(plan.structure):
            parts = []
            for terms in kept:
                term = terms[j]
                if isinstance(term, Outer):
                    term = tf.einsum("ki,kj->kij", term.a, term.d)
                parts.append(tf.stack(term) if isinstance(term, list) else term)
            out.append(tf.concat(parts, 0)[: m * (term_rows(traced) // plan.size)])  # a row per micro-shard or sample
        *grads, loss = out
        return grads, loss

    def _combined(self, plan, x, global_batch, vote=None):
        arrays, bounds = self._all_terms(plan, x, global_batch)
        grid, vote = agree(bounds, self._samples(global_batch), self.max_fn, vote, headroom=FLOAT64_BITS)
        return finish(self._fixed_sums(plan, arrays, x.shape[0], grid), grid, self.sum_fn, self.jit), vote

    def _samples(self, global_batch):
        """The global batch's samples: at least as many as any tensor's terms over all ranks (a term per
        micro-shard or per sample), which is what the grid's headroom counts."""
        samples = tf.cast(tf.round(global_batch), tf.int32)
        tf.debugging.assert_equal(
            samples % self.micro_batch,
            0,
            message=(f"global_batch: expected a multiple of micro_batch={self.micro_batch}"),
        )
        return samples

    def _group_terms(self, size, xg, global_batch):
        """One group's terms: each variable's per-micro-shard gradient (stacked, or the :class:`Outer`
        factors of a Dense kernel at one sample per micro-shard) and each micro-shard's loss sum, from one
        batched forward and backward pass over its ``size * micro_batch`` samples."""
        xs = tf.reshape(xg, (-1, *self.sample_shape))
        with tf.GradientTape() as tape, recording() as records:
            per_sample = self.loss_fn(xs, self.model(xs, training=True))
            scaled = tf.reduce_sum(per_sample) / global_batch
        dzs = tape.gradient(scaled, [r.z for r in records])
        return [*layer_terms(self.model, records, dzs, self.micro_batch), per_sample]

    def _all_terms(self, plan, x, global_batch):
        """Phase 1: the terms of every group of this rank's ``m`` micro-shards, in one TensorArray per flat
        tensor (element i: group i), and the bounds of each tensor over them (int32, T). A rank's last
        group is filled up with copies of its last micro-shard: their terms are those of the copied one,
        bit for bit (the kernels' property this mode rests on), so they leave the bounds as they are, and
        phase 2 leaves them out of the sums.

        Even one group runs as the body of a ``tf.while_loop``: a function of its own, which Grappler
        optimises alone, so every group of every run gets the same rewrites. Written out several times
        in one graph, the groups did not: Grappler's arithmetic optimiser rewrote the third of four copies
        differently, and its renderer output lost a sample's bits (measured; none with it off)."""
        m, g = x.shape[0], plan.size
        groups = -(-m // g)
        arrays = [
            tf.TensorArray(s.dtype, size=groups, element_shape=s.shape, clear_after_read=False) for s in plan.specs
        ]

        def body(i, arrays, bounds):
            terms = self._group_terms(g, tf.gather(x, tf.minimum(i * g + tf.range(g), m - 1)), global_batch)
            bounds = tf.maximum(bounds, term_bounds(terms, self.jit))
            return i + 1, [a.write(i, t) for a, t in zip(arrays, tf.nest.flatten(terms))], bounds

        start = (tf.constant(0), arrays, tf.fill([len(plan.structure)], tf.int32.min))
        _, arrays, bounds = tf.while_loop(lambda i, *_: i < groups, body, start, parallel_iterations=self.parallel)
        return arrays, bounds

    def _fixed_sums(self, plan, arrays, m, grid):
        """Phase 2: the int64 sums of the terms on the agreed grid, ``parallel`` running sums side by side
        (lane k takes groups k, k + parallel, ...; integers, so the lanes add up exactly). Each lane's
        first group starts its sums (no zeros to read); any further groups run in a loop."""
        lanes, g = self.parallel, plan.size
        groups = -(-m // g)
        add = accumulate_group_xla if self.jit else accumulate_group

        def group(k):
            return tf.nest.pack_sequence_as(plan.structure, [a.read(tf.minimum(k, groups - 1)) for a in arrays])

        def valid(k):  # past the last group: read it again, add nothing
            return tf.logical_and(k * g + tf.range(g) < m, k < groups)

        sums = [add([None] * len(plan.structure), group(k), grid, valid(k)) for k in range(min(lanes, groups))]
        if groups > lanes:

            def body(i, sums):
                return i + 1, [
                    add(sums[lane], group(i * lanes + lane), grid, valid(i * lanes + lane)) for lane in range(len(sums))
                ]

            _, sums = tf.while_loop(
                lambda i, *_: i * lanes < groups, body, (tf.constant(1), sums), parallel_iterations=lanes
            )
        return [tf.add_n([lane[j] for lane in sums]) for j in range(len(plan.structure))]

    def _eval_step(self, chunks, count, total):
        c, size = tf.shape(chunks)[0], tf.shape(chunks)[1]
        losses = tf.TensorArray(tf.float32, size=c, element_shape=(None,))

        def body(i, losses):
            xi = chunks[i]
            return i + 1, losses.write(i, self.loss_fn(xi, self.model(xi, training=False)))

        _, losses = tf.while_loop(
            lambda i, *_: i < c, body, (tf.constant(0), losses), parallel_iterations=self.parallel
        )
        per_sample = tf.reshape(losses.stack(), (-1,))
        per_sample = tf.where(tf.range(c * size) < count, per_sample, 0.0)  # padding adds nothing
        (loss,), _ = exact_sum([per_sample], total, self.max_fn, self.sum_fn, jit=False)
        return loss

    def _check(self, x):
        shape = tuple(x.shape)
        expected = (self.micro_batch, *self.sample_shape)
        if len(shape) != 2 + len(self.sample_shape) or shape[1:] != expected:
            raise ValueError(
                f"x: expected micro-shards of shape (m_local, {', '.join(map(str, expected))}), received {shape}"
            )
        return tf.convert_to_tensor(x, tf.float32)
