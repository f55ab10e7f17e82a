"""Exact data parallelism: the same weights, bit for bit, on one process and on any number of ranks.

Why it is needed
    The default step sums each rank's gradient in float32 and allreduces the sums: the grouping of the
    additions changes with the rank count, so the last bits do, and Adam turns last bits into different
    steps at once. Exactness needs two things, both provided here:

    * **Fixed units of work.** The global batch is cut into M micro-shards of ``micro_batch`` samples, the
      same cut whatever the rank count; a rank holds a contiguous run of whole micro-shards
      (:func:`shard_range`). Each micro-shard's gradient of ``sum of its per-sample losses / global batch``
      is computed alone, on an input of the same shape everywhere, so with the same kernels it is the same
      float32 tensor on every rank and in the one-process run.
    * **A sum that ignores grouping.** The M micro-shard gradients are combined by the exact sum of
      :mod:`gmmkit.training.exact_sum` (int64 fixed point on a grid agreed through a max), locally and
      across ranks through the injected ``max_fn`` / ``sum_fn`` reductions.

Threads
    oneDNN's gradient of one micro-shard differs in its last bits between 1 and 2 intra-op threads (for
    the paper's model every tensor of a 1-sample micro-shard, one or two tensors at 4 to 32 samples;
    ``benchmarks/exact_threads.py``), so the micro-shard computation must run with **one intra-op
    thread**: :class:`ExactStep` refuses to start otherwise. The inter-op thread count changes no bit
    (same script), so one process uses both cores by computing ``parallel`` micro-shards side by side:
    the micro-shard loop runs that many iterations at once, each op on one thread
    (``inter_op_parallelism_threads >= parallel``). Adam's fused update is bitwise the same on 1 and 2
    intra-op threads given the same gradients (same script), and the fixed-point conversion and sums are
    exact.

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
    * a model that computes each sample alone (no batch statistics, no random dropout).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from .exact_sum import Reduce, accumulate, accumulate_xla, agree, exact_sum, finish, magnitude_bounds


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


class ExactStep:
    """The exact train and evaluation steps of a plain Keras ``model`` (see the module docstring).

    ``loss_fn(y_true, y_pred)`` returns one loss per sample (:func:`gmmkit.model.per_sample_msle`).
    ``micro_batch``: samples per micro-shard. ``parallel``: micro-shards computed side by side.
    ``jit``: run the fixed-point conversion through XLA (the same bits, fewer passes over memory).

    A step runs in two phases. Phase 1 computes each micro-shard's gradient and loss sum alone and keeps
    them, with their magnitude bounds taken while each is still in cache; the ranks agree on the grid
    (one ``max_fn`` call, which also carries the stop vote). Phase 2 converts the kept terms onto the grid
    and adds them up as int64 (``parallel`` running sums, added at the end: integers, so exact), then one
    grouped ``sum_fn`` call and the conversion back to float32. Phase 1 keeps every local micro-shard's
    gradient: memory grows as m_local times the model's size.
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
        self._shapes = [v.shape for v in model.trainable_variables] + [tf.TensorShape(())]
        shards = tf.TensorSpec((None, self.micro_batch, *self.sample_shape), tf.float32)
        scalar = tf.TensorSpec((), tf.float32)
        self.train_function = tf.function(self._train_step, input_signature=[shards, scalar, scalar])
        self.gradient_function = tf.function(self._gradients, input_signature=[shards, scalar])
        self.terms_function = tf.function(self._terms, input_signature=[shards, scalar])
        self.eval_function = tf.function(
            self._eval_step,
            input_signature=[
                tf.TensorSpec((None, None, *self.sample_shape), tf.float32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.int32),
            ],
        )

    # --- what the Trainer calls --------------------------------------------------------------
    def train_step(self, x, global_batch: int, stop: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """One optimiser step on this rank's micro-shards ``x`` (m_local, micro_batch, *sample_shape) of a
        ``global_batch``. Returns the loss sum of the whole global batch and the stop vote (1.0 when any
        rank voted), both identical on every rank."""
        return self.train_function(self._check(x), tf.constant(float(global_batch)), tf.constant(float(bool(stop))))

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
        return self.gradient_function(self._check(x), tf.constant(float(global_batch)))

    def micro_shard_gradients(self, x, global_batch: int) -> tuple[list, tf.Tensor]:
        """Each micro-shard's own gradient (one (m_local, *shape) tensor per variable) and loss sum
        (m_local,): the terms the exact sum combines."""
        return self.terms_function(self._check(x), tf.constant(float(global_batch)))

    # --- traced ------------------------------------------------------------------------------
    def _train_step(self, x, global_batch, stop):
        (*grads, loss), vote = self._combined(x, global_batch, vote=tf.cast(stop > 0, tf.int32))
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss, tf.cast(vote, tf.float32)

    def _gradients(self, x, global_batch):
        (*grads, loss), _ = self._combined(x, global_batch)
        return grads, loss

    def _terms(self, x, global_batch):
        arrays, _ = self._micro_shard_terms(x, global_batch)
        *grads, loss = [a.stack() for a in arrays]
        return grads, loss

    def _combined(self, x, global_batch, vote=None):
        arrays, bounds = self._micro_shard_terms(x, global_batch)
        grid, vote = agree(bounds, self._micro_shard_count(global_batch), self.max_fn, vote)
        return finish(self._fixed_sums(arrays, tf.shape(x)[0], grid), grid, self.sum_fn), vote

    def _micro_shard_count(self, global_batch):
        samples = tf.cast(tf.round(global_batch), tf.int32)
        tf.debugging.assert_equal(
            samples % self.micro_batch,
            0,
            message=(f"global_batch: expected a multiple of micro_batch={self.micro_batch}"),
        )
        return samples // self.micro_batch

    def _micro_shard_terms(self, x, global_batch):
        """Phase 1: each micro-shard's gradient and loss sum, computed alone, in one TensorArray per
        tensor, and the bounds of each tensor over the local micro-shards (int32, T)."""
        variables = self.model.trainable_variables
        m = tf.shape(x)[0]
        arrays = [tf.TensorArray(tf.float32, size=m, element_shape=s, clear_after_read=False) for s in self._shapes]

        def body(i, arrays, bounds):
            xi = x[i]
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(self.loss_fn(xi, self.model(xi, training=True)))
                scaled = loss / global_batch
            grads = tape.gradient(scaled, variables)
            missing = [v.name for v, g in zip(variables, grads) if g is None]
            if missing:
                raise ValueError(f"exact mode: expected a gradient for every trainable variable, none for {missing}")
            terms = [tf.convert_to_tensor(g) for g in grads] + [loss]
            bounds = tf.maximum(bounds, magnitude_bounds(terms))
            return i + 1, [a.write(i, t) for a, t in zip(arrays, terms)], bounds

        start = (tf.constant(0), arrays, tf.fill([len(arrays)], tf.int32.min))
        _, arrays, bounds = tf.while_loop(lambda i, *_: i < m, body, start, parallel_iterations=self.parallel)
        return arrays, bounds

    def _fixed_sums(self, arrays, m, grid):
        """Phase 2: the int64 sums of the terms on the agreed grid, ``parallel`` running sums side by side
        (lane k takes micro-shards k, k + parallel, ...)."""
        lanes = self.parallel
        add = accumulate_xla if self.jit else accumulate

        def body(i, sums):
            new = []
            for lane in range(lanes):
                k = i * lanes + lane
                terms = [a.read(tf.minimum(k, m - 1)) for a in arrays]  # past the end: read again, add nothing
                new.append(add(sums[lane], terms, grid, k < m))
            return i + 1, new

        zeros = [[tf.zeros(s, tf.int64) for s in self._shapes] for _ in range(lanes)]
        _, sums = tf.while_loop(lambda i, *_: i * lanes < m, body, (tf.constant(0), zeros), parallel_iterations=lanes)
        return [tf.add_n([sums[k][j] for k in range(lanes)]) for j in range(len(self._shapes))]

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
