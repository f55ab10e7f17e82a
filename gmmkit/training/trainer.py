"""The :class:`Trainer`: a plain TensorFlow custom loop over a plain Keras model, the same on one process and on
every Horovod rank.

Distribution enters through the context of :mod:`gmmkit.parallel.distributed` (gradient and metric sums, the
initial broadcast) and through the sample indices each rank takes from :mod:`gmmkit.strategies`. In exact
mode (``train.exact``) the steps are :class:`gmmkit.training.exact.ExactStep`'s: fixed micro-shards and exact
sums, the same bits on any number of ranks. :mod:`gmmkit.training.loop` runs trainers on run directories.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from .. import checks, strategies
from ..checks import is_finite_number
from ..config import RunConfig
from ..data.sources import load_split
from ..model.deepdensity import from_config, per_sample_msle
from ..parallel import distributed
from ..signals import Interrupted, StopFlag, deferred, raise_on_signals
from . import epochs
from .exact import ExactStep, evaluation_chunks, local_micro_shards, shard_range
from .optimizer import Adam
from .rundir import RunDir
from .summary import tensorflow_of_epochs

EVAL_BATCH = 256
EVAL_CHUNK = 16  # exact mode: the validation set in chunks of this many, the same on any number of ranks
EpochCallback = Callable[[dict], None]


def optimizer_variables(optimizer) -> list:
    v = optimizer.variables
    return list(v() if callable(v) else v)


class Trainer:
    """Builds the model and optimiser of a :class:`RunConfig` and trains it; see :func:`train`."""

    tensorflow = tf.__version__  # in each epoch's record: which lane made it (README "Two lanes")

    def __init__(self, cfg: RunConfig, ctx=None, simulate: bool = False):
        cfg = cfg.validate()
        t = cfg.train
        self.ctx = ctx if ctx is not None else distributed.init(t.threads, exact=t.exact, backend=t.backend)
        self._configure(cfg, simulate)
        self.data = load_split(cfg.data)
        self.model = from_config(cfg)
        self.optimizer = Adam(t.lr, beta_1=t.beta_1, beta_2=t.beta_2, epsilon=t.epsilon)
        self.optimizer.build(self.model.trainable_variables)
        self._initial_weights = self.model.get_weights()
        self.exact = None
        if t.exact:
            max_fn, sum_fn = (None, None) if simulate else self.ctx.exact_reductions()
            self.exact = ExactStep(
                self.model,
                self.optimizer,
                per_sample_msle,
                t.micro_batch,
                max_fn,
                sum_fn,
                parallel=max(1, self.ctx.threads),
            )
            self._chunks, _ = evaluation_chunks(self.data.val, EVAL_CHUNK)
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()
        self._warm = False
        self.eval_s_per_sample = 0.0  # this rank's last validation pass (gmmkit.training.progress)

    def _configure(self, cfg: RunConfig, simulate: bool) -> None:
        t = cfg.train
        if not simulate and self.ctx.size != t.workers:
            raise ValueError(
                f"--workers {t.workers}: this job has {self.ctx.size} rank(s); launch it with "
                f"{t.workers} ranks (gmmkit train launches them itself) or pass --simulate"
            )
        # the update plan is computed for the configured worker count even when simulated on one process
        strategies.plan(t.strategy, t.workers, t.batch_size, t.lr)  # validates strategy x workers x batch
        self.cfg, self.simulate = cfg, simulate

    def steps_per_epoch(self) -> int:
        """Whole global batches in the training split; a split smaller than one global batch is refused."""
        t = self.cfg.train
        batch = strategies.global_batch(t.strategy, t.workers, t.batch_size)
        steps = strategies.steps_per_epoch(len(self.data.train), batch)
        if steps == 0:
            checks.fail(
                "data.train_size",
                f"at least one global batch of {batch} samples (batch size "
                f"{t.batch_size}, {t.strategy} scaling with {t.workers} workers)",
                len(self.data.train),
            )
        return steps

    # --- reuse across runs -------------------------------------------------------------------
    @staticmethod
    def _shape_key(cfg: RunConfig) -> tuple:
        """What the data, the model, its initial weights and the compiled steps depend on."""
        t = cfg.train
        return (cfg.data, cfg.model, t.seed, t.beta_1, t.beta_2, t.epsilon, t.threads, t.exact, t.micro_batch)

    @classmethod
    def for_config(cls, cfg: RunConfig, simulate: bool = False, reuse: Optional["Trainer"] = None) -> "Trainer":
        """``reuse`` when it :meth:`can_run` ``cfg`` (:func:`train` resets it), else a new trainer on the same
        Horovod context."""
        if reuse is not None and reuse.can_run(cfg):
            return reuse
        return cls(cfg, ctx=getattr(reuse, "ctx", None), simulate=simulate)

    def can_run(self, cfg: RunConfig) -> bool:
        """True when ``cfg`` differs from this trainer's run only in settings :meth:`reset` can change
        (strategy, workers, batch, learning rate, epochs, target, warm-up, output)."""
        return self._shape_key(cfg) == self._shape_key(self.cfg)

    def reset(self, cfg: RunConfig, simulate: bool = False) -> "Trainer":
        """Make this trainer start ``cfg`` from scratch: the same initial weights a new trainer would have,
        zeroed optimiser state, and ``cfg``'s schedule. It keeps the loaded data and the traced steps, which
        on a small CPU cost far more than an epoch of a small run (a sweep runs dozens of them)."""
        cfg = cfg.validate()
        if not self.can_run(cfg):
            raise ValueError(
                "reset: data, model, seed, Adam moments and threads must match the trainer's; "
                "build a new Trainer for this config"
            )
        self._configure(cfg, simulate)
        self.model.set_weights(self._initial_weights)
        for var in optimizer_variables(self.optimizer):
            var.assign(tf.zeros_like(var))
        return self

    # --- compiled steps ------------------------------------------------------------------------
    def _make_train_step(self):
        model, optimizer, ctx, s = self.model, self.optimizer, self.ctx, self.cfg.data.cube
        spec = [
            tf.TensorSpec((None, s, s, s), tf.float32),
            tf.TensorSpec((), tf.float32),
            tf.TensorSpec((), tf.float32),
        ]

        @tf.function(input_signature=spec)
        def train_step(x, global_batch, stop):
            with tf.GradientTape() as tape:
                per_sample = per_sample_msle(x, model(x, training=True))
                loss_sum = tf.reduce_sum(per_sample)
                scaled = loss_sum / global_batch
            # the stop vote and the loss ride in the gradients' allreduce: no collective of their own
            *grads, loss_sum, stop = ctx.sum_gradients(
                [*tape.gradient(scaled, model.trainable_variables), loss_sum, stop]
            )
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss_sum, stop

        return train_step

    def step(self, x: np.ndarray, global_batch: int, stop: bool = False) -> tuple[float, bool]:
        """One optimiser step on this rank's part ``x`` of a ``global_batch`` (:meth:`batch`): returns the
        loss sum of the whole global batch and whether any rank voted ``stop`` (every rank gets the same
        answers, after the same step)."""
        if self.exact is not None:
            loss_sum, votes = self.exact.train_step(x, global_batch, stop)
        else:
            loss_sum, votes = self._train_step(x, float(global_batch), float(stop))
        return float(loss_sum), float(votes) > 0

    def batch(self, perm: np.ndarray, plan: strategies.StepPlan, step: int) -> np.ndarray:
        """This rank's part of global batch ``step`` of the epoch with sample order ``perm``: its share of
        samples, or in exact mode its whole micro-shards; all of it when simulating."""
        if self.exact is None and not self.simulate:
            return self.data.train[np.sort(strategies.worker_indices(perm, plan, step, self.ctx.rank))]
        return self.batch_of(np.sort(perm[step * plan.global_batch : (step + 1) * plan.global_batch]))

    def batch_of(self, indices: np.ndarray) -> np.ndarray:
        """The input of :meth:`step` for the global batch of the training samples ``indices`` (sorted): all of
        them, or in exact mode this rank's micro-shards of them (m_local, micro_batch, S, S, S)."""
        if self.exact is None:
            return self.data.train[indices]
        return self.data.train[local_micro_shards(indices, self.cfg.train.micro_batch, *self._exact_place())]

    def _exact_place(self) -> tuple[int, int]:
        """(ranks, this rank) for cutting exact mode's micro-shards and chunks: one process holds all of them
        when simulating."""
        return (1, 0) if self.simulate else (self.ctx.size, self.ctx.rank)

    def _make_eval_step(self):
        model, s = self.model, self.cfg.data.cube

        @tf.function(input_signature=[tf.TensorSpec((None, s, s, s), tf.float32)])
        def eval_step(x):
            return tf.reduce_sum(per_sample_msle(x, model(x, training=False)))

        return eval_step

    def warm_up(self, plan: strategies.StepPlan) -> None:
        """Trace and optimise both compiled steps once, outside any run's clock, and leave the weights and
        the optimiser exactly as they were. Every rank calls it (the train step holds an allreduce)."""
        if self._warm:
            return
        weights, moments = self.state()
        try:
            self.step(self.batch(np.arange(len(self.data.train)), plan, 0), plan.global_batch)
            self.validation_loss()  # this rank's own shard shapes: oneDNN builds its kernels per input shape
            self._warm = True
        finally:
            with deferred():  # a signal that abandons the warm-up (below) waits until the weights are back
                self.restore({"weights": weights, "optimizer": moments})

    def warm_up_or_stop(self, plan: strategies.StepPlan, stop: StopFlag) -> bool:
        """:meth:`warm_up`, unless a stop request comes first: then False. Tracing takes seconds (more in exact
        mode) and reads no flag, so one process alone abandons it at the signal itself; ranks (whose steps
        hold collectives) finish it and stop at their first step."""
        if self.ctx.size > 1:
            self.warm_up(plan)
            return True
        try:
            with raise_on_signals():
                if not stop:
                    self.warm_up(plan)
        except Interrupted as exc:
            stop.set(exc.signum)
        return not stop

    # --- pieces --------------------------------------------------------------------------------
    def validation_loss(self) -> float:
        """Mean per-sample MSLE over the validation set, each rank evaluating its shard (in exact mode, whole
        chunks of the set summed exactly)."""
        if self.exact is not None:
            start, stop = shard_range(len(self._chunks), *self._exact_place())
            n, began = len(self.data.val), time.perf_counter()
            count = min(max(n - start * EVAL_CHUNK, 0), (stop - start) * EVAL_CHUNK)
            # a rank without a chunk (more ranks than chunks) still takes part in the sums, adding nothing
            chunks = self._chunks[start:stop] if stop > start else np.zeros_like(self._chunks[:1])
            loss_sum = float(self.exact.eval_step(chunks, count, n))
            self.eval_s_per_sample = (time.perf_counter() - began) / max(count, 1)
            return loss_sum / n
        val = self.data.val
        shard = np.array_split(np.arange(len(val)), self.ctx.size)[self.ctx.rank]
        total, began = 0.0, time.perf_counter()
        for start in range(0, len(shard), EVAL_BATCH):
            total += float(self._eval_step(val[shard[start : start + EVAL_BATCH]]))
        self.eval_s_per_sample = (time.perf_counter() - began) / max(len(shard), 1)
        loss_sum, count = self.ctx.sum(np.array([total, len(shard)]))
        return float(loss_sum / count)

    def restore(self, ckpt: dict) -> None:
        self.model.set_weights(ckpt["weights"])
        for var, value in zip(optimizer_variables(self.optimizer), ckpt["optimizer"]):
            var.assign(value)

    def gradient_bytes(self) -> int:
        """Bytes of one gradient of every trainable weight (float32): what each step's allreduce moves."""
        return int(sum(np.prod(v.shape) * 4 for v in self.model.trainable_variables))

    def state(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return self.model.get_weights(), [v.numpy() for v in optimizer_variables(self.optimizer)]

    # --- the loop --------------------------------------------------------------------------
    def fit(
        self,
        run: RunDir,
        callbacks: Iterable[EpochCallback] = (),
        stop: Optional[StopFlag] = None,
        resume: bool = False,
    ) -> dict:
        """Train the claimed run ``run`` (:meth:`RunDir.claim`) to its end; returns the summary.

        Every epoch commits one state of the run directory (records, summary, checkpoint) at once, and with
        ``train.checkpoint_every`` so do points inside epochs (:mod:`gmmkit.training.epochs`). Every rank votes
        on stopping at every step (its ``stop`` flag; the chief also reads the ``STOP`` file), and the votes
        ride in the gradients' allreduce, so all ranks leave after the same step."""
        return epochs.fit(self, run, callbacks, stop, resume)

    def plan(self, progress: float) -> strategies.StepPlan:
        """The update plan at ``progress`` epochs into the run (the warm-up's learning rate moves within one)."""
        t = self.cfg.train
        return strategies.plan(t.strategy, t.workers, t.batch_size, t.lr, progress, t.warmup_epochs)

    def broadcast_state(self) -> None:
        """Rank 0's weights and optimiser state on every rank."""
        self.ctx.broadcast_variables(self.model.variables + optimizer_variables(self.optimizer))

    def summary_of(self, records: list[dict], finished: int, global_batch: int, steps: int) -> dict:
        """A running run's summary after ``finished`` epochs whose ``records`` are given."""
        t = self.cfg.train
        finite = [r["val_loss"] for r in records if is_finite_number(r.get("val_loss"))]
        return {
            "status": "running",
            "strategy": t.strategy,
            "workers": t.workers,
            "backend": self.ctx.backend,
            "tensorflow": tensorflow_of_epochs([], records),
            "simulated": self.simulate,
            "exact": t.exact,
            "time_to_target_s": None,
            "epochs": finished,
            "best_val_loss": min(finite) if finite else None,
            "final_val_loss": records[-1]["val_loss"] if records else None,
            "target_loss": t.target_loss,
            "global_batch": global_batch,
            "steps_per_epoch": steps,
            **self.ctx.layout,
        }  # hosts, local_ranks, threads: one entry per rank
