"""Plain text for the widgets: parsing the target box, estimating the time left, formatting numbers, and
the small HTML tables and marked logs the widgets show."""

from __future__ import annotations

import html
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
    tail = [
        (r["epoch"], math.log(r["val_loss"]))
        for r in records[-5:]
        if is_finite_number(r.get("val_loss")) and r["val_loss"] > 0
    ]
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


def format_fact(name: str, value) -> str:
    """One per-cube fact for a label: ``12.3 mm``, ``malignancy 4``, a patient id or a category as it is."""
    if isinstance(value, bool):
        return name if value else f"not {name}"
    if isinstance(value, float):
        return f"{value:.1f} mm" if name.endswith("_mm") else f"{name} {value:.3g}"
    return str(value) if name in ("patient_id", "seriesuid", "category") else f"{name} {value}"


def facts_html(facts: dict) -> str:
    """A cube's facts on one line (nothing when the data set has none)."""
    if not facts:
        return ""
    parts = " &middot; ".join(
        f"<b>{html.escape(k)}</b> {html.escape(f'{v:.3g}' if isinstance(v, float) else str(v))}"
        for k, v in facts.items()
    )
    return f'<div class="gmmkit-facts" style="font-size:12px">{parts}</div>'


def components_html(rows: list[dict], spacing_mm: float = 1.0) -> str:
    """The heaviest components as a table: weight, mean (voxels) and standard deviations (mm)."""
    if not rows:
        return ""
    head = "".join(
        f"<th style='padding:0 10px 0 0;text-align:left'>{h}</th>"
        for h in (
            "component",
            "alpha",
            "mu (voxels: axial, coronal, sagittal)",
            f"sigma (mm; 1 voxel = {spacing_mm:g} mm)",
        )
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td style='padding:0 10px 0 0'>{v}</td>"
            for v in (
                r["component"],
                f"{r['alpha']:.3f}",
                ", ".join(f"{m:.1f}" for m in r["mu"]),
                ", ".join(f"{v:.2f}" for v in r["sigma_mm"]),
            )
        )
        + "</tr>"
        for r in rows
    )
    return (
        f'<table class="gmmkit-components-table" style="font-size:12px;border-collapse:collapse">'
        f"<caption style='text-align:left'>the {len(rows)} heaviest components</caption>"
        f"<tr>{head}</tr>{body}</table>"
    )


ERROR_WORDS = ("Traceback", "Error", "error:", "Exception", "FAILED", "failed", "Killed", "Segmentation fault")


def is_error_line(line: str) -> bool:
    """Whether a line of a rank's output reports an error (a traceback, an exception, a failure)."""
    return any(word in line for word in ERROR_WORDS)


def marked_log_html(text: str, max_lines: int = 400) -> str:
    """A rank's output as preformatted HTML, its last ``max_lines`` lines, error lines marked in red."""
    lines = text.splitlines()[-max_lines:]
    out = [
        f"<span class='gmmkit-log-error' style='color:#b00020;font-weight:bold'>{html.escape(line)}</span>"
        if is_error_line(line)
        else html.escape(line)
        for line in lines
    ]
    body = "\n".join(out) if out else "<i>no output yet</i>"
    return f"<pre class='gmmkit-log' style='max-height:240px;overflow:auto;font-size:11px;margin:0'>{body}</pre>"
