"""The training loop: one function, the same on one process and on every Horovod rank.

It is a plain TensorFlow custom loop over a plain Keras model. Distribution enters through the context
of :mod:`gmmkit.parallel.distributed` (gradient and metric sums, the initial broadcast) and through the
sample indices each rank takes from :mod:`gmmkit.strategies`.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from .. import checks, strategies
from ..checks import is_finite_number
from ..config import RunConfig
from ..data.cubes import load_split
from ..model.deepdensity import from_config, per_sample_msle
from ..parallel import distributed
from .optimizer import Adam
from .rundir import RunDir

EVAL_BATCH = 256
EpochCallback = Callable[[dict], None]


class StopFlag:
    """A stop request that a signal handler, a thread or a notebook button can raise."""

    def __init__(self):
        self._event = threading.Event()

    def set(self, *_):
        self._event.set()

    def __bool__(self):
        return self._event.is_set()


def optimizer_variables(optimizer) -> list:
    v = optimizer.variables
    return list(v() if callable(v) else v)


class Trainer:
    """Builds the model and optimiser of a :class:`RunConfig` and trains it; see :func:`train`."""

    def __init__(self, cfg: RunConfig, ctx=None, simulate: bool = False):
        cfg = cfg.validate()
        self.ctx = ctx if ctx is not None else distributed.init(cfg.train.threads)
        self._configure(cfg, simulate)
        t = cfg.train
        self.data = load_split(cfg.data)
        self.model = from_config(cfg)
        self.optimizer = Adam(t.lr, beta_1=t.beta_1, beta_2=t.beta_2, epsilon=t.epsilon)
        self.optimizer.build(self.model.trainable_variables)
        self._initial_weights = self.model.get_weights()
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()
        self._warm = False

    def _configure(self, cfg: RunConfig, simulate: bool) -> None:
        t = cfg.train
        if not simulate and self.ctx.size != t.workers:
            raise ValueError(f"--workers {t.workers}: this job has {self.ctx.size} rank(s); launch it with "
                             f"{t.workers} ranks (gmmkit train launches them itself) or pass --simulate")
        # the update plan is computed for the configured worker count even when simulated on one process
        strategies.plan(t.strategy, t.workers, t.batch_size, t.lr)  # validates strategy x workers x batch
        self.cfg, self.simulate = cfg, simulate

    def steps_per_epoch(self) -> int:
        """Whole global batches in the training split; a split smaller than one global batch is refused."""
        t = self.cfg.train
        batch = strategies.global_batch(t.strategy, t.workers, t.batch_size)
        steps = strategies.steps_per_epoch(len(self.data.train), batch)
        if steps == 0:
            checks.fail("data.train_size", f"at least one global batch of {batch} samples (batch size "
                        f"{t.batch_size}, {t.strategy} scaling with {t.workers} workers)", len(self.data.train))
        return steps

    # --- reuse across runs -------------------------------------------------------------------
    @staticmethod
    def _shape_key(cfg: RunConfig) -> tuple:
        """What the data, the model, its initial weights and the compiled steps depend on."""
        t = cfg.train
        return (cfg.data, cfg.model, t.seed, t.beta_1, t.beta_2, t.epsilon, t.threads)

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
            raise ValueError("reset: data, model, seed, Adam moments and threads must match the trainer's; "
                             "build a new Trainer for this config")
        self._configure(cfg, simulate)
        self.model.set_weights(self._initial_weights)
        for var in optimizer_variables(self.optimizer):
            var.assign(tf.zeros_like(var))
        return self

    # --- compiled steps ------------------------------------------------------------------------
    def _make_train_step(self):
        model, optimizer, ctx, s = self.model, self.optimizer, self.ctx, self.cfg.data.cube
        spec = [tf.TensorSpec((None, s, s, s), tf.float32), tf.TensorSpec((), tf.float32),
                tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=spec)
        def train_step(x, global_batch, stop):
            with tf.GradientTape() as tape:
                per_sample = per_sample_msle(x, model(x, training=True))
                loss_sum = tf.reduce_sum(per_sample)
                scaled = loss_sum / global_batch
            # the stop vote rides in the gradients' allreduce: no collective of its own on every step
            *grads, stop = ctx.sum_gradients([*tape.gradient(scaled, model.trainable_variables), stop])
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss_sum, stop

        return train_step

    def step(self, x: np.ndarray, global_batch: int, stop: bool = False) -> tuple[float, bool]:
        """One optimiser step on this rank's samples ``x`` of a ``global_batch``: returns this rank's loss sum
        and whether any rank voted ``stop`` (every rank gets the same answer, after the same step)."""
        loss_sum, votes = self._train_step(x, float(global_batch), float(stop))
        return float(loss_sum), float(votes) > 0

    def _make_eval_step(self):
        model, s = self.model, self.cfg.data.cube

        @tf.function(input_signature=[tf.TensorSpec((None, s, s, s), tf.float32)])
        def eval_step(x):
            return tf.reduce_sum(per_sample_msle(x, model(x, training=False)))

        return eval_step

    def warm_up(self, share: int, global_batch: int) -> None:
        """Trace and optimise both compiled steps once, outside any run's clock, and leave the weights and
        the optimiser exactly as they were. Every rank calls it (the train step holds an allreduce)."""
        if self._warm:
            return
        weights, moments = self.state()
        self.step(self.data.train[:max(share, 1)], global_batch)
        self.validation_loss()  # this rank's own shard shapes: oneDNN builds its kernels per input shape
        self.restore({"weights": weights, "optimizer": moments})
        self._warm = True

    # --- pieces --------------------------------------------------------------------------------
    def validation_loss(self) -> float:
        """Mean per-sample MSLE over the validation set, each rank evaluating its shard."""
        val = self.data.val
        shard = np.array_split(np.arange(len(val)), self.ctx.size)[self.ctx.rank]
        total = 0.0
        for start in range(0, len(shard), EVAL_BATCH):
            total += float(self._eval_step(val[shard[start:start + EVAL_BATCH]]))
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
    def fit(self, run: RunDir, callbacks: Iterable[EpochCallback] = (), stop: Optional[StopFlag] = None,
            resume: bool = False) -> dict:
        t, ctx = self.cfg.train, self.ctx
        callbacks = list(callbacks) if ctx.is_chief else []
        stop = stop if stop is not None else StopFlag()
        start_epoch, time_offset = 0, 0.0
        ckpt = run.load_checkpoint() if (resume and ctx.is_chief) else None
        if resume:
            start_epoch = int(ctx.sum(np.array([ckpt["epoch"] if ckpt else 0]))[0])
            time_offset = float(ctx.sum(np.array([ckpt["time_s"] if ckpt else 0.0]))[0])
            if ckpt:
                self.restore(ckpt)
                run.truncate_metrics(start_epoch)
        ctx.broadcast_variables(self.model.variables + optimizer_variables(self.optimizer))

        n_train = len(self.data.train)
        first = strategies.plan(t.strategy, t.workers, t.batch_size, t.lr, 0.0, t.warmup_epochs)
        steps = self.steps_per_epoch()
        summary = {"status": "running", "strategy": t.strategy, "workers": t.workers, "backend": ctx.backend,
                   "simulated": self.simulate, "time_to_target_s": None, "epochs": start_epoch,
                   "best_val_loss": None, "final_val_loss": None, "target_loss": t.target_loss,
                   "global_batch": first.global_batch, "steps_per_epoch": steps}
        previous = run.metrics() if (resume and ctx.is_chief) else []
        finite = [r["val_loss"] for r in previous if is_finite_number(r.get("val_loss"))]
        summary["best_val_loss"] = min(finite) if finite else None
        summary["final_val_loss"] = previous[-1]["val_loss"] if previous else None

        # time to target counts training, not graph tracing: every run's clock starts on a traced model
        self.warm_up(first.global_batch if self.simulate else first.shares[ctx.rank], first.global_batch)
        began = time.perf_counter() - time_offset
        for epoch in range(start_epoch, t.epochs):
            epoch_began = time.perf_counter()
            perm = strategies.epoch_permutation(t.seed, epoch, n_train)
            loss_sum, stopped = 0.0, False
            for step in range(steps):
                p = strategies.plan(t.strategy, t.workers, t.batch_size, t.lr, epoch + step / steps,
                                    t.warmup_epochs)
                if self.simulate:
                    idx = perm[step * p.global_batch:(step + 1) * p.global_batch]
                else:
                    idx = strategies.worker_indices(perm, p, step, ctx.rank)
                self.optimizer.learning_rate.assign(p.lr)
                asked = ctx.is_chief and (bool(stop) or run.stop_requested())
                loss, stopped = self.step(self.data.train[np.sort(idx)], p.global_batch, stop=asked)
                loss_sum += loss
                if stopped:
                    break
            if stopped:
                summary["status"] = "stopped"
                break
            train_loss = float(ctx.sum(np.array([loss_sum]))[0]) / (steps * p.global_batch)
            val_loss = self.validation_loss()
            now = time.perf_counter()
            record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": p.lr,
                      "time_s": now - began, "epoch_time_s": now - epoch_began,
                      "samples_per_s": steps * p.global_batch / (now - epoch_began),
                      "global_batch": p.global_batch, "steps": steps}
            run.append_metrics(record)
            summary["epochs"] = epoch + 1
            summary["final_val_loss"] = val_loss
            if is_finite_number(val_loss) and (summary["best_val_loss"] is None or val_loss < summary["best_val_loss"]):
                summary["best_val_loss"] = val_loss
            if not (is_finite_number(train_loss) and is_finite_number(val_loss)):
                summary["status"] = "diverged"
            else:
                run.save_checkpoint(*self.state(), epoch=epoch + 1, time_s=record["time_s"])
                if t.target_loss is not None and val_loss <= t.target_loss:
                    summary["status"] = "reached_target"
                    summary["time_to_target_s"] = record["time_s"]
            for callback in callbacks:
                callback(record)
            if summary["status"] != "running":
                break
        if summary["status"] == "running":
            summary["status"] = "max_epochs"
        summary["elapsed_s"] = time.perf_counter() - began
        run.write_summary(summary)
        return summary


def train(cfg: RunConfig, callbacks: Iterable[EpochCallback] = (), resume: bool = False,
          stop: Optional[StopFlag] = None, simulate: bool = False, ctx=None,
          handle_sigint: bool = False, trainer: Optional[Trainer] = None) -> dict:
    """Train ``cfg`` and return its summary; files go to ``cfg.out`` (rank 0 only).

    ``callbacks`` are called on rank 0 with each epoch's metrics record. ``stop`` ends the run after the
    current step with status ``stopped``; so does a ``STOP`` file in the run directory, and Ctrl-C when
    ``handle_sigint`` is set. Any exception writes ``status: failed`` with the error before propagating.
    """
    run = None
    stop = stop if stop is not None else StopFlag()
    previous_handler = None
    if handle_sigint and threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, stop.set)
    try:
        if trainer is not None and trainer.can_run(cfg):
            trainer.reset(cfg, simulate=simulate)
        else:
            trainer = Trainer(cfg, ctx=ctx if ctx is not None else getattr(trainer, "ctx", None),
                              simulate=simulate)
        trainer.steps_per_epoch()  # refuse a training split smaller than one batch before writing anything
        prepared = RunDir(cfg.out, chief=trainer.ctx.is_chief)
        prepared.prepare(cfg, resume=resume)
        run = prepared  # from here on a failure is recorded in the run's summary
        return trainer.fit(run, callbacks=callbacks, stop=stop, resume=resume)
    except Exception as exc:
        if run is not None and run.chief:
            summary = run.summary() or {}
            if summary.get("status") in (None, "running"):
                run.write_summary({**summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                   "epochs": len(run.metrics())})
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)


def train_many(cfgs: Sequence[RunConfig], simulate: bool = False, callbacks: Iterable[EpochCallback] = (),
               trainer: Optional[Trainer] = None, stop: Optional[StopFlag] = None) -> list[dict]:
    """Train ``cfgs`` one after another in this process (or Horovod job), reusing one traced model for all
    runs that :meth:`Trainer.can_run`. A run that raises is recorded as ``failed`` (its summary says why)
    and the next one starts; ``stop`` ends the current run and skips the rest."""
    summaries = []
    stop = stop if stop is not None else StopFlag()
    for cfg in cfgs:
        if stop:
            summaries.append({"status": "stopped", "epochs": 0})
            continue
        try:
            trainer = Trainer.for_config(cfg, simulate, reuse=trainer)
            summaries.append(train(cfg, callbacks=callbacks, simulate=simulate, trainer=trainer, stop=stop))
        except Exception as exc:  # the run's summary.json already says failed, with the error
            summaries.append({"status": "failed", "error": f"{type(exc).__name__}: {exc}", "epochs": 0})
    return summaries
