"""Timing small pieces of work on a shared, drifting host: the one place "time N repeats" is written."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .signals import check


def mean_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Mean seconds of one call of ``fn`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        check()  # a stop request abandons the measurement (gmmkit.signals)
        fn()
    check()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def take_turns(timers: dict, repeats: int = 10) -> dict:
    """Median seconds of each zero-argument timer in ``{key: timer}`` (each returns the seconds of one
    measurement), the timers taking turns: one untimed round (tracing, oneDNN's kernel set-up), then
    ``repeats`` rounds. On a shared host whose speed drifts during a measurement the drift then moves every
    timer alike and leaves their ratios alone."""
    for timer in timers.values():
        check()  # a stop request abandons the measurement (gmmkit.signals)
        timer()
    times = {key: [] for key in timers}
    for _ in range(repeats):
        check()
        for key, timer in timers.items():
            times[key].append(timer())
    return {key: float(np.median(t)) for key, t in times.items()}
