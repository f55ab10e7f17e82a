"""Learning-rate range test: the paper set eta to the largest rate that still converges.

Starting from the run's initial weights, one training step is taken at each of ``steps`` learning rates
growing geometrically from ``lr_min`` to ``lr_max`` (Smith, 2017). The loss is smoothed with an exponential
moving average. The test stops once the smoothed loss exceeds ``diverge_factor`` times its minimum or becomes
non-finite. Reported:

* ``lr_at_min_loss``: where the smoothed loss is lowest;
* ``lr_diverged``: the first rate at which the loss blew up (None if it never did);
* ``suggested_lr``: the largest rate tried before the smoothed loss climbed back above its starting value,
  i.e. the largest rate at which training still made progress. Confirm it with a short real run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import checks, signals, strategies
from ..config import RunConfig
from ..files import atomic_write_json


def lr_range_test(
    cfg: RunConfig,
    lr_min: float = 1e-5,
    lr_max: float = 1e-1,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
) -> dict:
    from ..training import Trainer  # heavy: TensorFlow

    checks.positive_float("lr_find.lr_min", lr_min)
    checks.positive_float("lr_find.lr_max", lr_max)
    if lr_max <= lr_min:
        checks.fail("lr_find.lr_max", f"greater than lr_min={lr_min}", lr_max)
    checks.integer("lr_find.steps", steps)
    if steps < 2:
        checks.fail("lr_find.steps", "at least 2", steps)
    trainer = Trainer(cfg.replace(train={"workers": 1}), simulate=True)
    t = cfg.train
    lrs = np.geomspace(lr_min, lr_max, steps)
    batch = strategies.global_batch(t.strategy, t.workers, t.batch_size)
    n = len(trainer.data.train)
    history, avg, best, diverged = [], 0.0, math.inf, None
    for i, lr in enumerate(lrs):
        signals.check()  # a stop request abandons the test (nothing of it is kept)
        perm = strategies.epoch_permutation(t.seed, i * batch // max(n, 1), n)
        start = (i * batch) % max(n - batch + 1, 1)
        idx = np.sort(perm[start : start + batch])
        trainer.optimizer.learning_rate.assign(float(lr))
        loss = trainer.step(trainer.batch_of(idx), batch)[0] / len(idx)
        if not math.isfinite(loss):
            diverged = float(lr)
            break
        avg = smoothing * avg + (1 - smoothing) * loss  # from 0: the bias correction below undoes the start
        smoothed = avg / (1 - smoothing ** (i + 1))  # the first one is the first loss itself
        history.append({"lr": float(lr), "loss": loss, "smoothed": smoothed})
        best = min(best, smoothed)
        if smoothed > diverge_factor * best:
            diverged = float(lr)
            break
    if not history:
        raise RuntimeError(f"the loss was not finite even at lr={lr_min}")
    lowest = min(history, key=lambda h: h["smoothed"])
    start_loss = history[0]["smoothed"]
    after_min = [h for h in history if h["lr"] >= lowest["lr"]]
    progressing = [h for h in after_min if h["smoothed"] <= start_loss]
    return {
        "lr_at_min_loss": lowest["lr"],
        "lr_diverged": diverged,
        "suggested_lr": (progressing[-1] if progressing else lowest)["lr"],
        "history": history,
        "batch": batch,
    }


def write_lr_find(result: dict, out: str | Path) -> Path:
    from ..plots import write_html  # heavy: plotly
    from ..plots.lr_find import lr_find_figure

    out = Path(out)
    atomic_write_json(out / "lr_find.json", result)
    write_html(lr_find_figure(result), out / "lr_find.html")
    return out
