"""Who the engines are: each engine's MPI rank, host, local rank and pid, asked of the engines themselves.

Engine ids are whatever the controller handed out, and ipyparallel gives a restarted MPI engine its old id, so
neither the id nor the order of registration says which rank an engine is: :func:`rank_map` asks them.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional

from ..errors import LaunchError


class Rank(int):
    """An engine's MPI rank (an ``int``: compares, sorts and indexes as one), with where it runs: ``host``,
    ``local_rank`` (its place among the ranks of that host) and ``pid``."""

    host: str
    local_rank: Optional[int]
    pid: Optional[int]

    def __new__(cls, rank: int, host: str = "", local_rank: Optional[int] = None, pid: Optional[int] = None):
        self = super().__new__(cls, rank)
        self.host, self.local_rank, self.pid = host, local_rank, pid
        return self

    def __repr__(self) -> str:
        return f"Rank({int(self)}, host={self.host!r}, local_rank={self.local_rank})"

    def __reduce__(self):
        return Rank, (int(self), self.host, self.local_rank, self.pid)


def engine_identity() -> dict:
    """On an engine: its MPI ``rank``, ``local_rank`` and world ``size`` (as the launcher announced them), its
    ``host`` and its ``pid``."""
    import socket

    from gmmkit.parallel.launch import launcher_local_rank, launcher_rank, launcher_size

    return {
        "rank": launcher_rank(),
        "size": launcher_size(),
        "local_rank": launcher_local_rank(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def answering(client, timeout: float = 5.0) -> dict[int, dict]:
    """``{engine id: engine_identity()}`` of the engines of ``client`` (an ipyparallel Client) that answer within
    ``timeout``; dead or hanging ones are left out."""
    pending = {}
    for eid in list(client.ids):
        with contextlib.suppress(IndexError):  # unregistered since the listing: an engine being replaced
            pending[eid] = client[eid].apply_async(engine_identity)
    deadline = time.monotonic() + timeout
    found = {}
    for eid, result in pending.items():
        try:
            found[eid] = result.get(timeout=max(deadline - time.monotonic(), 0.01))
        except Exception:  # an engine that died or hangs: not one of the live ones
            pass
    return found


def wait_for(client, n: int, timeout: float, replacing: frozenset = frozenset()) -> bool:
    """Wait until exactly ``n`` engines answer, none of them one of ``replacing`` (the ``(host, pid)`` of engines
    just stopped); False when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(client.ids) >= n:
            found = answering(client, timeout=min(5.0, max(deadline - time.monotonic(), 0.1)))
            fresh = [a for a in found.values() if (a["host"], a["pid"]) not in replacing]
            if len(fresh) == len(found) == len(client.ids) == n:
                return True
        time.sleep(0.1)
    return False


def wait_or_raise(client, n: int, timeout: float, replacing: frozenset, engine_sets: dict) -> None:
    """:func:`wait_for`, or a :class:`LaunchError` with what ipyparallel's ``engine_sets`` (their mpiexec) printed."""
    if not wait_for(client, n, timeout, replacing):
        output = "".join(es.get_output(remove=False)[-3000:] for es in engine_sets.values())
        raise LaunchError(
            f"expected {n} engines to register within {timeout:.0f} s, "
            f"{len(answering(client))} answered. Engine output:\n{output}"
        )


def rank_map(client) -> dict[int, Rank]:
    """``{engine id: Rank}`` of every engine of ``client``, checked to be exactly ranks 0..n-1 of one world of
    size n."""
    ids = sorted(client.ids)
    answers = client[ids].apply_async(engine_identity).get(timeout=30)
    sizes = {a["size"] for a in answers}
    ranks = [a["rank"] for a in answers]
    if sizes != {len(ids)} or sorted(ranks) != list(range(len(ids))):
        raise LaunchError(
            f"engines {ids}: expected the ranks 0..{len(ids) - 1} of one MPI world, found ranks "
            f"{ranks} of world sizes {sorted(sizes)}; start them with "
            "'ipcluster start --engines=MPI' (or MPICluster)"
        )
    return {e: Rank(a["rank"], a["host"], a.get("local_rank"), a["pid"]) for e, a in zip(ids, answers)}
