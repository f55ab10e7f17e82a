"""What a failure costs an elastic run (``gmmkit bench --hostfile``, ``failure_cost``; issue 27).

An elastic strong-scaling run of 2 workers, one rank on each of two hosts, commits a state after every step
(``--checkpoint-every 1``: the steps are seen in its run directory). Once its second epoch is under way, its
rank 1 is killed (SIGKILL, by a one-rank job on that rank's host: what a crashed process or an out-of-memory
kill does); the launcher notices, probes the hosts, and starts the run again from its last state on both.
Measured, from the kill:

==================  =====================================================================================
``detect_s``        to the end of the job (mpirun sees its rank die and ends the other)
``probe_s``         the liveness probe of the hosts (the restart's entry in summary.json)
``restart_s``       from the restart decided to the first step after it, committed: mpirun, Python,
                    TensorFlow and Horovod started, the data set built, the model traced, one step
``to_first_step_s`` the sum: from the kill to the first step after the restart
``redone_s``        the training lost and done again: from the last state committed before the kill to the
                    kill (with ``--checkpoint-every N``, up to N - 1 steps more; ``step_s``: an epoch's
                    time over its steps, validation and commits included, the run's median)
==================  =====================================================================================

Times are wall-clock (``time.time``) on the launcher's host and, for the kill, on rank 1's host: on real
hosts they agree as far as their clocks do (NTP: milliseconds), on emulated hosts they are one clock.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from typing import Callable, Optional

from ..config import RunConfig
from ..files import read_jsonl
from ..parallel import launch
from ..parallel.placement import Placement
from ..training.launcher import run_on_ranks
from ..training.rundir import LOCK_HELD_BY_PARENT, RunDir

KILL_AFTER = (1, 2)  # the kill comes once the state of epoch 2's step 2 is committed (epochs, step)
# run on rank 1's host: SIGKILL to the run's rank 1 (its environment names the run and the rank), the time of it
_KILL = f"""
import json, os, signal, sys, time
import psutil
found = []
for p in psutil.process_iter():
    try:
        env = p.environ()
    except psutil.Error:
        continue
    if env.get("{LOCK_HELD_BY_PARENT}") == sys.argv[1] and env.get("OMPI_COMM_WORLD_RANK") == "1":
        found.append(p.pid)
at = time.time()
for pid in found:
    os.kill(pid, signal.SIGKILL)
print(json.dumps({{"killed": found, "at": at}}))
"""


def _position(summary: dict) -> tuple[int, int]:
    """(epochs finished, steps of the next one) of a state's summary."""
    return summary.get("epochs", 0), (summary.get("checkpoint_at") or {}).get("step", 0)


class _Watch:
    """A thread that follows the run's states, kills rank 1 once :data:`KILL_AFTER` is committed, and notes
    the states seen (their position and when each was committed)."""

    def __init__(self, run: RunDir, host: str):
        self.run, self.host = run, host
        self.states: list[tuple[tuple[int, int], float]] = []
        self.kill: Optional[dict] = None
        self.restarted_at: Optional[float] = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def _follow(self) -> None:
        seen = None
        while not self.done.wait(0.005):
            try:
                mark, committed = os.readlink(self.run.state.link), os.lstat(self.run.state.link).st_mtime
            except OSError:
                continue
            if mark == seen:
                continue
            seen, summary = mark, self.run.summary() or {}
            self.states.append((_position(summary), committed))
            if self.kill is None and _position(summary) >= KILL_AFTER and summary.get("status") == "running":
                one = Placement(((self.host, 1),), "hosts", f"{self.host}:1")
                self.kill = launch.run_json(1, [sys.executable, "-c", _KILL, str(self.run.path.resolve())], 60, one)

    def heard(self, line: str) -> None:
        """The launcher's line about a restart: noted when it was said."""
        if line.startswith("restart ") and self.restarted_at is None:
            self.restarted_at = time.time()


def measure(cfg: RunConfig, placement: Placement, out: str, progress: Callable[[str], None] = print) -> dict:
    """Run ``cfg`` (its data and model; 3 epochs) as an elastic 2-worker run on the first two hosts of
    ``placement``, one rank each, in the new folder ``out``; kill rank 1 in its second epoch; return the
    figures of the module docstring (``error`` instead when the run did not go as planned)."""
    where = placement.one_per_host(2)
    cfg = cfg.replace(
        train={"workers": 2, "strategy": "strong", "elastic": True, "checkpoint_every": 1, "epochs": 3},
        out=out,
    ).resolved()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    config = f"{os.path.abspath(out)}.json"
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(cfg.to_json())
    run = RunDir(out)
    watch = _Watch(run, where.names[1])
    watch.thread.start()
    try:
        ended = run_on_ranks(cfg, launch.gmmkit_argv("train", "--config", config), placement=where, say=watch.heard)
    finally:
        watch.done.set()
        watch.thread.join(timeout=120)
    summary = ended.summary or {}
    restarts = summary.get("restarts") or []
    if watch.kill is None or not watch.kill.get("killed") or not restarts or watch.restarted_at is None:
        return {"error": f"rank 1 was not killed and the run restarted as planned (status {summary.get('status')})"}
    killed_at, entry = watch.kill["at"], restarts[0]
    resumed = summary["resumes"][-1]
    from_position = (resumed["from_epoch"], resumed.get("from_step", 0))
    after = [at for position, at in watch.states if position > from_position and at > watch.restarted_at]
    before = [at for _, at in watch.states if at <= killed_at]
    if not after or not before:
        return {"error": "no step after the restart, or no state before the kill, was seen"}
    records = read_jsonl(os.path.join(out, "metrics.jsonl"))
    step_s = statistics.median(r["epoch_time_s"] / r["steps"] for r in records) if records else None
    ended_at = watch.restarted_at - entry["probe_s"]
    found = {
        "hosts": where.names,
        "cause": entry["cause"],
        "status": summary.get("status"),
        "checkpoint_every": 1,
        "killed_at_position": list(max(p for p, at in watch.states if at <= killed_at)),
        "resumed_from": list(from_position),
        "detect_s": ended_at - killed_at,
        "probe_s": entry["probe_s"],
        "restart_s": after[0] - watch.restarted_at,
        "to_first_step_s": after[0] - killed_at,
        "redone_s": max(0.0, killed_at - before[-1]),
        "step_s": step_s,
    }
    progress(format_line(found))
    return found


def format_line(found: dict) -> str:
    """One line of the figures (bench's table)."""
    if "error" in found:
        return f"a failure's cost: not measured ({found['error']})"
    return (
        f"a failure's cost ({', '.join(found['hosts'])}, rank 1 killed): {found['to_first_step_s']:.1f} s from the "
        f"kill to the first step after the restart (detected {found['detect_s']:.1f} s, probe {found['probe_s']:.1f}"
        f" s, restart to a step {found['restart_s']:.1f} s); work done again {found['redone_s']:.2f} s "
        f"(a state every step; {found['step_s']:.2f} s an epoch's step)"
    )
