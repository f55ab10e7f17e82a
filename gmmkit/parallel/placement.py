"""Where the ranks of a job run: hosts and their slots, from flags, a hostfile or a SLURM allocation.

One :class:`Placement` describes it for everything that starts ranks: ``gmmkit train --workers N``, the
sweep's real runs, the benchmark's probes (:func:`gmmkit.parallel.launch.mpirun_command`) and the
notebook's MPI engines (:class:`gmmkit.cluster.MPICluster`). Where it comes from, first match wins:

=================  =====================================================================================
``--hosts``        ``a:2,b:2`` (OpenMPI's ``--host`` syntax; a host without ``:N`` has one slot)
``--hostfile``     OpenMPI's format: one ``HOST slots=N [max_slots=M]`` per line, ``#`` comments; a host
                   named twice adds its slots
discovery script   ``--host-discovery-script PATH``, as horovodrun takes it: a program that prints the hosts
                   available now, one ``HOST[:SLOTS]`` a line (:mod:`gmmkit.parallel.discovery`); an elastic
                   run runs it again to find hosts that came back
SLURM              inside an allocation (``SLURM_JOB_ID``): the allocated nodes
                   (``SLURM_JOB_NODELIST`` expanded as ``scontrol show hostnames`` does) with their tasks
                   (``SLURM_TASKS_PER_NODE``, e.g. ``2(x3),1``) as slots; mpirun then reads the
                   allocation itself and starts its daemons through SLURM
local              this machine alone: as many slots as cores this process may use, and more ranks than
                   that are allowed (oversubscribed), as before there were hosts
=================  =====================================================================================

A worker count is checked against the slots (except locally). Ranks fill the slots in order, host by host
(OpenMPI's ``--map-by slot``), so rank r's host is known before the job starts (:meth:`Placement.host_of_ranks`);
that is how a lost host, which mpirun names without its ranks, is reported with them.

Nothing here imports MPI: it is plain text and numbers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from .. import checks
from ..errors import ConfigError
from ..machine import available_cores

SOURCES = ("local", "hosts", "hostfile", "discovery", "slurm")
# a host name or IPv4 address as OpenMPI and DNS accept them
HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def _bad(field: str, detail: str) -> ConfigError:
    return ConfigError(f"{field}: {detail}", field=field, detail=detail)


@dataclass(frozen=True)
class Placement:
    """Hosts and their slots (``hosts``: ``((name, slots), ...)``, empty for ``local``), where they came
    from (``source``: one of :data:`SOURCES`) and from what (``origin``: the flag's value, the hostfile's
    path, the SLURM job id)."""

    hosts: tuple = ()
    source: str = "local"
    origin: str = ""

    def validate(self) -> "Placement":
        checks.one_of("placement.source", self.source, SOURCES)
        if not isinstance(self.hosts, tuple):
            checks.fail("placement.hosts", "a tuple of (host, slots) pairs", self.hosts)
        if (self.source == "local") != (not self.hosts):
            checks.fail(
                "placement.hosts", "no hosts for a local placement and at least one otherwise", list(self.hosts)
            )
        for pair in self.hosts:
            if not (
                isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and HOST_NAME.match(pair[0])
            ):
                checks.fail("placement.hosts", "(host name, slots) pairs", pair)
            checks.positive_int("placement.hosts", pair[1])
        if len({name for name, _ in self.hosts}) != len(self.hosts):
            checks.fail("placement.hosts", "each host once", list(self.hosts))
        if not isinstance(self.origin, str):
            checks.fail("placement.origin", "a string", self.origin)
        return self

    # --- what it says ------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.source == "local"

    @property
    def slots(self) -> int:
        """Ranks that fit: the hosts' slots, or this machine's cores when local."""
        if self.is_local:
            return available_cores()
        return sum(slots for _, slots in self.hosts)

    @property
    def by_name(self) -> bool:
        """The hosts are named to mpirun (``--host``): all but a local placement and a SLURM allocation."""
        return self.source in ("hosts", "hostfile", "discovery")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.hosts]

    def host_of_ranks(self, n: int) -> list[str]:
        """The host of each of ``n`` ranks as OpenMPI's ``--map-by slot`` places them (local: this machine's
        hostname for all)."""
        if self.is_local:
            return [os.uname().nodename] * n
        order = [name for name, slots in self.hosts for _ in range(slots)]
        return order[:n]

    def check_workers(self, n: int, field: str = "train.workers") -> None:
        """Refuse more ranks than slots (a local placement oversubscribes instead)."""
        if not self.is_local and n > self.slots:
            checks.fail(field, f"at most the {self.slots} slots of {self.describe()}", n)

    def one_per_host(self, n: int = 2) -> "Placement":
        """``n`` ranks on ``n`` different hosts, one slot each (the cross-host measurements); refused when
        there are fewer hosts."""
        if self.is_local or len(self.hosts) < n:
            checks.fail("placement.hosts", f"at least {n} hosts for one rank per host", self.names)
        # named host by host, also inside a SLURM allocation (where mpirun takes --host as a subset of it)
        chosen = tuple((name, 1) for name in self.names[:n])
        return Placement(chosen, "hosts", ",".join(f"{name}:1" for name, _ in chosen))

    def describe(self) -> str:
        if self.is_local:
            return f"this machine ({self.slots} cores)"
        hosts = ",".join(f"{name}:{slots}" for name, slots in self.hosts)
        where = {
            "hosts": "--hosts",
            "hostfile": f"hostfile {self.origin}",
            "discovery": f"host discovery script {self.origin}",
            "slurm": f"SLURM job {self.origin}",
        }[self.source]
        return f"{hosts} ({where})"

    def host_list(self) -> str:
        """OpenMPI's ``--host`` value: ``a:2,b:2``."""
        return ",".join(f"{name}:{slots}" for name, slots in self.hosts)

    # --- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"hosts": [[name, slots] for name, slots in self.hosts], "source": self.source, "origin": self.origin}

    @classmethod
    def from_dict(cls, raw) -> "Placement":
        if not isinstance(raw, dict) or set(raw) - {"hosts", "source", "origin"}:
            checks.fail("placement", "an object with hosts, source and origin", raw)
        hosts = raw.get("hosts", [])
        if not isinstance(hosts, (list, tuple)):
            checks.fail("placement.hosts", "a list of [host, slots] pairs", hosts)
        pairs = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in hosts)
        return cls(pairs, raw.get("source", "local"), raw.get("origin", "")).validate()


LOCAL = Placement()


# --- where a placement comes from ---------------------------------------------------------------


def parse_hosts(text: str) -> Placement:
    """``--hosts a:2,b:2`` (``a`` alone: one slot)."""
    field = "placement.hosts"
    if not isinstance(text, str) or not text.strip():
        raise _bad(field, f"expected HOST[:SLOTS],... such as 'node1:2,node2:2', received {text!r}")
    pairs = []
    for item in text.split(","):
        name, _, count = item.strip().partition(":")
        if not HOST_NAME.match(name) or (count and not count.isdigit()) or count == "0":
            raise _bad(
                field, f"expected HOST[:SLOTS],... such as 'node1:2,node2:2', received {item.strip()!r} in {text!r}"
            )
        pairs.append((name, int(count) if count else 1))
    return Placement(_merge(pairs), "hosts", text).validate()


def parse_hostfile(path: str | os.PathLike) -> Placement:
    """OpenMPI's hostfile: ``HOST slots=N [max_slots=M]`` per line; errors name the file and the line."""
    field = "placement.hostfile"
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(field, f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}, line {number}"
        name, options = words[0], dict(w.partition("=")[::2] for w in words[1:])
        if "@" in name:
            raise _bad(
                field,
                f"{where}: expected HOST slots=N, received {line.strip()!r} (a user@ login goes in ~/.ssh/config)",
            )
        if not HOST_NAME.match(name):
            raise _bad(field, f"{where}: expected a host name or address, received {name!r}")
        unknown = sorted(set(options) - {"slots", "max_slots", "max-slots"})
        if unknown or "slots" not in options:
            raise _bad(field, f"{where}: expected HOST slots=N [max_slots=M], received {line.strip()!r}")
        values = {}
        for key, value in options.items():
            if not value.isdigit() or int(value) < 1:
                raise _bad(field, f"{where}: {key} must be a positive integer, received {value!r}")
            values[key] = int(value)
        limit = values.get("max_slots", values.get("max-slots"))
        if limit is not None and limit < values["slots"]:
            raise _bad(field, f"{where}: max_slots={limit} is below slots={values['slots']}")
        pairs.append((name, values["slots"]))
    if not pairs:
        raise _bad(field, f"{path}: no hosts (expected lines 'HOST slots=N')")
    return Placement(_merge(pairs), "hostfile", os.path.abspath(path)).validate()


def _merge(pairs: list) -> tuple:
    """A host named twice adds its slots, in first-seen order (as OpenMPI reads a hostfile)."""
    slots: dict[str, int] = {}
    for name, count in pairs:
        slots[name] = slots.get(name, 0) + count
    return tuple(slots.items())


def in_slurm(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID") and env.get("SLURM_JOB_NODELIST"))


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed counts, ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise _bad("placement.slurm", f"SLURM_TASKS_PER_NODE: expected counts such as '2(x3),1', received {text!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list as ``scontrol show hostnames`` expands it: ``node[1-3,07],gpu`` ->
    ``node1 node2 node3 node07 gpu``; brackets may repeat (``r[1-2]n[01-02]``), numbers keep the width of
    their range's first bound. Read here rather than by running scontrol: :mod:`gmmkit.parallel.launch` is the
    one module that starts programs (tests/test_placement.py holds this to scontrol's own expansion)."""
    names = [name for item in _top_level_items(nodelist) for name in _expand_item(item, nodelist)]
    if not names:
        raise _bad("placement.slurm", f"SLURM_JOB_NODELIST: expected host names, received {nodelist!r}")
    return names


def _top_level_items(nodelist: str) -> list[str]:
    """The comma-separated items of a host list, commas inside brackets kept."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    items.append(nodelist[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_item(item: str, nodelist: str) -> list[str]:
    m = re.fullmatch(r"([^\[\]]*)\[([^\[\]]*)\](.*)", item)
    if m is None:
        if "[" in item or "]" in item:
            raise _bad("placement.slurm", f"SLURM_JOB_NODELIST: unbalanced brackets in {nodelist!r}")
        return [item]
    prefix, ranges, rest = m.groups()
    tails, names = _expand_item(rest, nodelist), []
    for part in ranges.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and (not high.isdigit() or int(high) < int(low))):
            raise _bad(
                "placement.slurm",
                f"SLURM_JOB_NODELIST: expected ranges such as 1-3,07, received [{ranges}] in {nodelist!r}",
            )
        for number in range(int(low), int(high if dash else low) + 1):
            names += [f"{prefix}{number:0{len(low)}d}{tail}" for tail in tails]
    return names


def from_slurm(env: Mapping[str, str] | None = None) -> Placement:
    """The allocation this process runs in: its nodes, with its tasks per node as slots."""
    env = os.environ if env is None else env
    names = expand_nodelist(env["SLURM_JOB_NODELIST"])
    per_node = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_JOB_CPUS_PER_NODE")
    counts = expand_tasks_per_node(per_node) if per_node else [1] * len(names)
    if len(counts) != len(names):
        raise _bad(
            "placement.slurm",
            f"SLURM_TASKS_PER_NODE={per_node!r} gives {len(counts)} counts for the "
            f"{len(names)} nodes of SLURM_JOB_NODELIST",
        )
    ntasks = env.get("SLURM_NTASKS")
    pairs = list(zip(names, counts))
    if ntasks and ntasks.isdigit() and int(ntasks) < sum(counts):  # keep the job's own task count
        left, trimmed = int(ntasks), []
        for name, count in pairs:
            if left > 0:
                trimmed.append((name, min(count, left)))
                left -= count
        pairs = trimmed
    return Placement(tuple(pairs), "slurm", env["SLURM_JOB_ID"]).validate()


def resolve(
    hosts: Optional[str] = None, hostfile: Optional[str] = None, env: Mapping[str, str] | None = None
) -> Placement:
    """The placement of ``--hosts`` or ``--hostfile`` when given, else of the SLURM allocation this process
    runs in, else local."""
    if hosts is not None and hostfile is not None:
        raise _bad("placement.hosts", "--hosts and --hostfile name the hosts twice; give one of them")
    if hosts is not None:
        return parse_hosts(hosts)
    if hostfile is not None:
        return parse_hostfile(hostfile)
    if in_slurm(env):
        return from_slurm(env)
    return LOCAL
