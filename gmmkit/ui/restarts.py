"""An elastic run's restarts as the dashboard shows them: how many, for the runs table's ``restarts`` column, and
one line each (:func:`gmmkit.training.summary.restart_line`) in the run's details.

They are ``summary.json``'s ``restarts`` (:mod:`gmmkit.training.elastic` commits each before the next job
starts): from the run's summary once it has ended, and from its directory while it runs, so a restart shows
as soon as it is decided. A run that is not elastic has none to show (None, a "-" in the table).
"""

from __future__ import annotations

import html
from typing import Any, Optional

from ..training.rundir import RunDir
from ..training.summary import restart_line


def restarts_of(run: Any) -> Optional[list[dict]]:
    """The restarts of ``run`` (a :class:`~gmmkit.ui.runs.DashboardRun`: ``cfg``, ``summary``) so far; None
    when it is not elastic."""
    if not getattr(run.cfg.train, "elastic", False):
        return None
    summary = getattr(run, "summary", None)
    if not summary:  # running: what its directory says now
        try:
            summary = RunDir(run.cfg.out).summary()
        except (OSError, ValueError):  # not begun yet
            summary = None
    listed = (summary or {}).get("restarts")
    return list(listed) if isinstance(listed, list) else []


def restarts_html(run: Any) -> str:
    """The run's restarts in its details, one line each; nothing for a run that is not elastic."""
    listed = restarts_of(run)
    if listed is None:
        return ""
    limit = run.cfg.train.max_restarts
    if not listed:
        return f"<div class='gmmkit-restarts'><i>elastic: no restart (at most {limit})</i></div>"
    lines = "".join(f"<li>{html.escape(restart_line(entry, limit))}</li>" for entry in listed)
    return f"<div class='gmmkit-restarts'><b>restarts</b><ul style='margin:2px 0'>{lines}</ul></div>"
