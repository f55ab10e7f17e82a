"""What ended an mpirun job, in gmmkit's words: which rank and how, or which host was lost (and its ranks), read
from what mpirun printed. Plain text: nothing here starts or imports anything heavy."""

from __future__ import annotations

import re
import signal
from typing import Optional, Sequence

# What OpenMPI's mpirun prints when a rank dies (signal) or fails (non-zero exit) and it ends the job, and
# when it loses a host's daemon (the host died or its link was cut): it names the host, never its ranks.
_SIGNALLED = re.compile(r"process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+)")
_EXITED = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(\d+)")
_LOST_DAEMON = re.compile(
    r"ORTE has lost communication with a remote daemon\.\s*"
    r"HNP daemon\s*:.*?Remote daemon:\s*\S+ on node (\S+)",
    re.S,
)
# what a daemon prints when it cannot connect back to mpirun (the job then never starts)
_NO_CONNECTION = re.compile(r"unable to complete a TCP connection\s*to another process:\s*Local host:\s*(\S+)")


class HostFailure(str):
    """The words for a failure of a host rather than of a rank: it was lost, or its daemon never reached mpirun
    (then the ranks could not say anything themselves)."""


def rank_failure(
    launcher_output: str, hosts: Optional[Sequence[str]] = None, pids: Optional[Sequence[int]] = None
) -> Optional[str]:
    """Which rank (or host) ended an mpirun job and how, from what mpirun printed (None when it does not say).
    ``hosts``: the host of each rank, to name the ranks of a lost host; ``pids``: each rank's pid, for the
    rank mpirun names with pid 0 (it does for engines, and for a rank it had not seen start)."""
    m = _LOST_DAEMON.search(launcher_output)
    if m:
        return lost_host(m.group(1), hosts)
    m = _NO_CONNECTION.search(launcher_output)
    if m:
        return HostFailure(
            f"host {m.group(1)} could not connect back to mpirun (its network, or a firewall between the hosts)"
        )
    m = _SIGNALLED.search(launcher_output)
    if m:
        rank, pid, node, sig = m.groups()
        try:
            name = signal.Signals(int(sig)).name
        except ValueError:
            name = f"signal {sig}"
        if pid == "0":  # mpirun did not know it: the rank's own, when known
            known = list(pids or [])
            pid = str(known[int(rank)]) if int(rank) < len(known) and known[int(rank)] else ""
        return f"rank {rank} ({f'pid {pid} on {node}' if pid else node}) was killed by {name}"
    m = _EXITED.search(launcher_output)
    if m:
        return f"rank {m.group(1)} exited with status {m.group(2)}"
    return None


def lost_host(host: str, hosts: Optional[Sequence[str]] = None) -> HostFailure:
    """ "host H (rank 1) was lost", its ranks found in ``hosts`` (the host of each rank) by name or by the
    name's first label (mpirun may print a short or a full name)."""
    short = host.split(".")[0]
    ranks = [r for r, h in enumerate(hosts or []) if h == host or h.split(".")[0] == short]
    which = f" (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})" if ranks else ""
    return HostFailure(
        f"host {host}{which} was lost: mpirun lost contact with it (the host died or its network failed)"
    )
