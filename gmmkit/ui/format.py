"""Plain text for the widgets: parsing the target box, estimating the time left, formatting numbers."""
from __future__ import annotations

import math
from typing import Optional

from ..checks import is_finite_number
from ..errors import InputError


def parse_target(text: str) -> Optional[float]:
    """The target-loss box: a positive number, or 'none' / empty for 'run every epoch'."""
    text = str(text).strip()
    if text.lower() in ("", "none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"target loss: expected a positive number or 'none', received {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"target loss: expected a positive number or 'none', received {text!r}")
    return value


def estimate_remaining(records: list[dict], epochs: int, target: Optional[float] = None) -> Optional[float]:
    """Seconds left: epochs still to run times the recent epoch time.

    Without a target (or while the loss is not falling) the run goes to ``epochs``; with one, a straight
    line through the last five log validation losses says when it will cross the target, if sooner.
    """
    if not records:
        return None
    last = records[-1]
    recent = [r.get("epoch_time_s") for r in records[-3:] if is_finite_number(r.get("epoch_time_s"))]
    per_epoch = sum(recent) / len(recent) if recent else last["time_s"] / max(last["epoch"], 1)
    left = max(epochs - int(last["epoch"]), 0)
    tail = [(r["epoch"], math.log(r["val_loss"])) for r in records[-5:]
            if is_finite_number(r.get("val_loss")) and r["val_loss"] > 0]
    if target is not None and len(tail) >= 3:
        n = len(tail)
        mx, my = sum(e for e, _ in tail) / n, sum(v for _, v in tail) / n
        sxx = sum((e - mx) ** 2 for e, _ in tail)
        slope = sum((e - mx) * (v - my) for e, v in tail) / sxx if sxx else 0.0
        if slope < 0:
            to_target = max(math.ceil((math.log(target) - tail[-1][1]) / slope - 1e-9), 0)
            left = min(left, to_target)
    return left * per_epoch


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None or not is_finite_number(seconds):
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_number(x, spec: str = ".4g") -> str:
    """``x`` formatted, or "-" when it is missing or not finite."""
    return format(x, spec) if is_finite_number(x) else "-"
