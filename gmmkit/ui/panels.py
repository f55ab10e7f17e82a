"""The dashboard's two detail panels for one run: each rank's progress, and each rank's own output.

**Ranks.** Every epoch record carries each rank's mean step time and its own seconds per validation sample
(:mod:`gmmkit.training.progress`): steps end together (an allreduce), so the second number is what tells a
slow rank, and the slowest is named, with its host when the run's summary lists them.

**Output.** What each engine printed (stdout and stderr: ``TrainingRun.output(rank)``), one collapsible
section per rank, lines that report errors marked; a rank with errors says so in its section's title.
"""

from __future__ import annotations

import html
from typing import Any, Optional

import ipywidgets as W

from ..training.progress import slowest_rank
from .format import is_error_line, marked_log_html


def rank_hosts(summary: Optional[dict]) -> list[str]:
    """The host of each rank when the summary lists one per rank (``hosts``: a list or {rank: host})."""
    hosts = (summary or {}).get("hosts")
    if isinstance(hosts, dict):
        return [str(hosts[k]) for k in sorted(hosts, key=lambda k: int(k))]
    return [str(h) for h in hosts] if isinstance(hosts, (list, tuple)) else []


def ranks_html(record: Optional[dict], hosts: Optional[list[str]] = None, label: str = "") -> str:
    """Each rank's step time and own time per sample as bars, the slowest rank named."""
    step, own = (record or {}).get("rank_step_s"), (record or {}).get("rank_eval_s")
    if not step and not own:
        return (
            f"<div class='gmmkit-ranks'><i>{html.escape(label)}: no per-rank times yet (they come with "
            "each epoch)</i></div>"
        )
    n = len(step or own)
    hosts = hosts or []
    slow = slowest_rank(record)
    top = max(own or step) or 1.0
    lines = []
    for r in range(n):
        where = f" ({html.escape(hosts[r])})" if r < len(hosts) else ""
        value = (own or step)[r]
        bar = (
            f"<span style='display:inline-block;background:{'#d62728' if r == slow and n > 1 else '#1f77b4'};"
            f"height:9px;width:{max(2, int(160 * value / top))}px'></span>"
        )
        step_text = f"step {1e3 * step[r]:.1f} ms" if step else ""
        own_text = f"own {1e3 * own[r]:.2f} ms/sample" if own else ""
        cells = "".join(
            f"<td style='padding:0 14px 0 0'>{v}</td>" for v in (f"rank {r}{where}", step_text, own_text, bar)
        )
        lines.append(f"<tr>{cells}</tr>")
    fastest = min(own or step)
    verdict = ""
    if n > 1 and slow is not None:
        ratio = (own or step)[slow] / fastest if fastest > 0 else float("inf")
        where = f" on {html.escape(hosts[slow])}" if slow < len(hosts) else ""
        verdict = f"slowest: <b>rank {slow}</b>{where}, {ratio:.2f}x the fastest"
    return (
        f"<div class='gmmkit-ranks' style='font-size:12px'><b>{html.escape(label)}</b> epoch "
        f"{record.get('epoch', '?')}: {verdict}<table style='border-collapse:collapse'>{''.join(lines)}"
        "</table><i>steps end together (every step ends in an allreduce); the own time per validation "
        "sample involves no other rank and tells a slow one</i></div>"
    )


class RankLogs:
    """One collapsible section per rank with what it printed (``update(handle, ranks)``)."""

    def __init__(self):
        self.widget = W.Accordion(children=[])
        self.widget.add_class("gmmkit-logs")
        self._texts: list[str] = []

    def update(self, handle: Any, ranks: int, label: str = "") -> None:
        """Show ``handle.output(rank)`` for every rank (a handle without output: say where it went)."""
        output = getattr(handle, "output", None)
        texts = []
        for rank in range(ranks):
            try:
                texts.append(output(rank) if output is not None else None)
            except Exception as exc:  # an engine gone: its output with it
                texts.append(f"(output not available: {exc})")
        if texts == self._texts and len(self.widget.children) == ranks:
            return
        self._texts = texts
        if len(self.widget.children) != ranks:
            self.widget.children = [W.HTML() for _ in range(ranks)]
        for rank, (child, text) in enumerate(zip(self.widget.children, texts)):
            if text is None:
                child.value = (
                    "<i>this run was not started by this dashboard: its ranks' output went to the "
                    "process that started it (the shell, the batch system's log)</i>"
                )
                self.widget.set_title(rank, f"rank {rank} output")
                continue
            errors = sum(1 for line in text.splitlines() if is_error_line(line))
            child.value = marked_log_html(text)
            mark = f" ⚠ {errors} error line{'s' if errors != 1 else ''}" if errors else ""
            self.widget.set_title(rank, f"{label} rank {rank} output{mark}".strip())

    def titles(self) -> list[str]:
        return [self.widget.get_title(i) for i in range(len(self.widget.children))]
