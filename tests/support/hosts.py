"""Emulated hosts on this one machine: one network + UTS namespace per host, joined by a bridge.

Layout (n hosts, n >= 1)::

    root namespace (tests, mpirun, slurmctld)   gmkbr0  10.213.0.1/24  "gmk-head"
      ├─ veth gmkv0 ── eth0 in netns gmk-node0  10.213.0.10/24  hostname gmk-node0
      ├─ veth gmkv1 ── eth0 in netns gmk-node1  10.213.0.11/24  hostname gmk-node1
      └─ ...

Why this shape:

* A bridge in the root namespace joins every host's veth: the hosts reach each other (rank to rank,
  slurmd to slurmd) and the root namespace (mpirun's daemons and ipyparallel engines connect back to it)
  on one /24, with no routing or forwarding switched on.
* Hosts get no default route. Whatever they try outside 10.213.0.0/24 (mpirun also advertises the root
  namespace's eth0 address, 192.0.2.2 here) fails at once with ENETUNREACH instead of leaving the
  machine; OpenMPI then uses the next address, so no ``*_if_include`` setting is needed.
* IPv6 is off on the bridge, the veths and inside the hosts: OpenMPI is built with IPv6 and would
  otherwise also try link-local fe80:: addresses.
* Each host's hostname lives in a UTS namespace bound to a file (``unshare --uts=FILE hostname NAME``),
  so it persists without a process and any process can enter it (``nsenter --uts=FILE``).
* Names resolve from one marked block in /etc/hosts (:mod:`.etc_hosts` says why not /etc/netns).
* The mount namespace is shared: every host sees the same files, like a cluster's shared file system.

Only one set of emulated hosts exists on the machine at a time: it holds ``/run/gmk-hosts.lock`` (an
flock, released by the kernel when the holder dies) for its whole life. Under that lock a new set first
removes whatever a killed earlier run left (namespaces and links named ``gmk*``, bound UTS files, the
/etc/hosts block, and root-namespace daemons that it registered with their start times), then builds.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import etc_hosts
from .netns import (
    NETNS_DIR,
    HostSetupError,
    empty_netns,
    enter_prefix,
    kill_pids,
    our_links,
    our_netns,
    pids_in_netns,
    process_start_time,
    reaches,
    sh,
    tool,
    unbind,
    wait_for,
    which,
)

STATE_DIR = Path(os.environ.get("GMK_HOSTS_STATE", "/run/gmk-hosts"))
LOCK_FILE = Path(str(STATE_DIR) + ".lock")
RSH_AGENT = Path(__file__).with_name("gmk-rsh")
SUBNET = "10.213.0"  # /24; the head is .1, host i is .(10 + i)
BRIDGE = "gmkbr0"
HEAD_NAME = "gmk-head"
LOCK_WAIT_S = 300.0  # another session's hosts: wait this long for them to go


@dataclass(frozen=True)
class Host:
    """One emulated host: its name (hostname, network namespace and /etc/hosts name), its address, the
    files its namespaces are bound to, and the root-side veth that is its link to everything else."""

    name: str
    address: str
    netns: Path
    uts: Path
    link: str

    @property
    def enter(self) -> list[str]:
        """Command prefix that runs a command on this host."""
        return enter_prefix(self.netns, self.uts)


def can_make_namespaces() -> str | None:
    """None when this process can create emulated hosts, else why not (the tests' skip reason)."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces, veth links, /etc/hosts)"
    for name in ("ip", "sysctl", "unshare", "nsenter", "findmnt", "hostname"):
        if which(name) is None:
            return f"emulated hosts need '{name}' (apt-get install iproute2 procps util-linux hostname)"
    probe = f"gmk-probe{os.getpid()}"
    proc = subprocess.run([which("ip"), "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot create a network namespace here: ip netns add: {proc.stderr.strip()}"
    subprocess.run([which("ip"), "netns", "del", probe], capture_output=True)
    return None


class HostsLock:
    """The machine-wide lock that one set of emulated hosts holds for its whole life."""

    def __init__(self, path: Path = LOCK_FILE, wait_s: float = LOCK_WAIT_S):
        self.path, self.wait_s, self.fd = path, wait_s, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

        def take():
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            wait_for(
                take,
                self.wait_s,
                f"taking {self.path} (another set of emulated hosts exists)",
                interval=0.5,
                on_timeout=lambda: f"held by: {self._holder()}",
            )
        except BaseException:
            os.close(self.fd)
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def _holder(self) -> str:
        pid = self.path.read_text().strip()
        try:
            return f"pid {pid}: " + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
        except (OSError, ValueError):
            return f"pid {pid or '?'}"

    def __exit__(self, *exc):
        os.close(self.fd)  # closing the descriptor releases the flock


def register_daemon(pid: int) -> None:
    """Record a process started in the root namespace for these hosts (munged, slurmctld), so the
    clean-up of a killed run can stop it; processes inside hosts die with their namespaces anyway."""
    start = process_start_time(pid)
    if start is not None:
        (STATE_DIR / "daemons").mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "daemons" / str(pid)).write_text(start)


def kill_registered_daemons() -> list[int]:
    """SIGKILL every registered process that is still the same process (pid and start time)."""
    killed = []
    folder = STATE_DIR / "daemons"
    for entry in folder.glob("*") if folder.is_dir() else []:
        pid = int(entry.name)
        if process_start_time(pid) == entry.read_text().strip():
            killed += kill_pids([pid])
        entry.unlink()
    return killed


def remove_stale() -> list[str]:
    """Remove everything a killed earlier run may have left (call with the lock held); returns what."""
    removed = [f"daemon {pid}" for pid in kill_registered_daemons()]
    for name in our_netns():
        empty_netns(NETNS_DIR / name)
        sh("ip", "netns", "del", name)
        removed.append(f"netns {name}")
    for link in our_links():
        if sh("ip", "link", "del", link, check=False).returncode == 0:  # a veth may go with its peer
            removed.append(f"link {link}")
    uts_dir = STATE_DIR / "uts"
    for path in uts_dir.glob("*") if uts_dir.is_dir() else []:
        unbind(path)
        removed.append(f"uts {path.name}")
    if etc_hosts.remove():
        removed.append("/etc/hosts block")
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return removed


class EmulatedHosts:
    """``with EmulatedHosts(2) as hosts:`` creates hosts ``gmk-node0..`` and always removes them.

    Yields itself: ``hosts.hosts`` (list of :class:`Host`), ``hosts.names``, ``hosts.head_address`` (the
    root namespace's address on the bridge, what services in the root namespace listen on for the hosts),
    ``hosts.hostfile`` (OpenMPI format, one slot per host), ``hosts.rsh_agent``, ``hosts.mpi_env()``,
    :meth:`write_hostfile`, :meth:`kill`, :meth:`cut` / :meth:`restore`, and ``setup_s`` / ``teardown_s``.
    """

    def __init__(self, n: int = 2):
        if not 1 <= n <= 200:
            raise ValueError(f"EmulatedHosts: n must be 1..200, received {n}")
        self.n = n
        self.head_name, self.head_address = HEAD_NAME, f"{SUBNET}.1"
        self.hosts = [
            Host(
                name=f"gmk-node{i}",
                address=f"{SUBNET}.{10 + i}",
                netns=NETNS_DIR / f"gmk-node{i}",
                uts=STATE_DIR / "uts" / f"gmk-node{i}",
                link=f"gmkv{i}",
            )
            for i in range(n)
        ]
        self.state_dir, self.rsh_agent = STATE_DIR, RSH_AGENT
        self.hostfile = STATE_DIR / "hostfile"
        self.stale_removed: list[str] = []
        self.setup_s = self.teardown_s = None
        self._lock = HostsLock()

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name_or_index) -> Host:
        if isinstance(name_or_index, int):
            return self.hosts[name_or_index]
        for h in self.hosts:
            if name_or_index in (h.name, h.address):
                return h
        raise KeyError(f"{name_or_index!r} is not an emulated host ({', '.join(self.names)})")

    # --- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> "EmulatedHosts":
        why = can_make_namespaces()
        if why:
            raise HostSetupError(why)
        t0 = time.monotonic()
        self._lock.__enter__()
        try:
            self.stale_removed = remove_stale()
            self._create()
        except BaseException as exc:
            try:
                self._teardown()
            except Exception as cleanup:  # keep the first failure as the error, this one as a note
                exc.add_note(f"removing what had been made failed too: {cleanup}")
            finally:
                self._lock.__exit__(None, None, None)
            raise
        self.setup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc):
        t0 = time.monotonic()
        try:
            self._teardown()
        finally:
            self._lock.__exit__(None, None, None)
            self.teardown_s = time.monotonic() - t0

    def _create(self) -> None:
        (STATE_DIR / "uts").mkdir(parents=True, exist_ok=True)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("sysctl", "-qw", f"net.ipv6.conf.{BRIDGE}.disable_ipv6=1")
        sh("ip", "addr", "add", f"{self.head_address}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for h in self.hosts:
            sh("ip", "netns", "add", h.name)
            sh("ip", "link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.name)
            sh("sysctl", "-qw", f"net.ipv6.conf.{h.link}.disable_ipv6=1")
            sh("ip", "link", "set", h.link, "master", BRIDGE, "up")
            sh(
                "ip",
                "netns",
                "exec",
                h.name,
                tool("sysctl"),
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            )
            sh("ip", "-n", h.name, "addr", "add", f"{h.address}/24", "dev", "eth0")
            sh("ip", "-n", h.name, "link", "set", "lo", "up")
            sh("ip", "-n", h.name, "link", "set", "eth0", "up")
            h.uts.touch()
            sh("unshare", f"--uts={h.uts}", tool("hostname"), h.name)
        etc_hosts.add([(self.head_address, self.head_name)] + [(h.address, h.name) for h in self.hosts])
        # the rsh agent's table: it may run inside a host (OpenMPI's tree spawn), with an ssh-like clean
        # environment, so it finds the table at a fixed path rather than through a variable
        (STATE_DIR / "hosts").write_text("".join(f"{h.name}\t{h.address}\t{h.netns}\t{h.uts}\n" for h in self.hosts))
        self.write_hostfile(self.hostfile, slots=1)
        for h in self.hosts:  # the link is up and the name is set: each host answers as itself
            out = sh(*h.enter, "hostname").stdout.strip()
            if out != h.name:
                raise HostSetupError(f"{h.name}: hostname inside its namespaces is {out!r}")

    def _teardown(self) -> None:
        errors = []

        def remove_state_dir():
            shutil.rmtree(STATE_DIR, ignore_errors=True)

        for step in (kill_registered_daemons, self._remove_hosts, etc_hosts.remove, remove_state_dir):
            try:
                step()
            except Exception as exc:  # keep removing the rest, then report every failure
                errors.append(f"{step.__name__}: {exc}")
        if errors:
            raise HostSetupError("removing the emulated hosts: " + "; ".join(errors))

    def _remove_hosts(self) -> None:
        for h in self.hosts:
            if h.netns.exists():
                empty_netns(h.netns, grace=1.0)
            # Delete the veth explicitly: `ip netns del` only drops the name, and the kernel frees the
            # namespace (and with it the veth pair) only when nothing references it any more; an orphaned
            # TCP socket still retransmitting to a host whose link was cut keeps it alive for minutes.
            if h.link in our_links():
                sh("ip", "link", "del", h.link)
            if h.netns.exists():
                sh("ip", "netns", "del", h.name)
            unbind(h.uts)
        if BRIDGE in our_links():
            sh("ip", "link", "del", BRIDGE)
        left = our_links() + [n for n in our_netns() if n in self.names]
        if left:
            raise HostSetupError(f"still present after removing the hosts: {', '.join(left)}")

    # --- using them ------------------------------------------------------------------------------
    def write_hostfile(self, path: Path, slots: int = 1, hosts=None) -> Path:
        """An OpenMPI hostfile (``NAME slots=N`` per line) for ``hosts`` (default: all)."""
        chosen = [self.host(h) for h in hosts] if hosts is not None else self.hosts
        Path(path).write_text("".join(f"{h.name} slots={slots}\n" for h in chosen))
        return Path(path)

    def mpi_env(self, base: dict | None = None) -> dict:
        """The environment for ``mpirun --hostfile`` over these hosts: the rsh agent, OpenMPI's
        run-as-root switches (the tests run as root) and no binding (:func:`emulation_mpi_env`)."""
        env = emulation_mpi_env(base)
        env["OMPI_MCA_plm_rsh_agent"] = str(self.rsh_agent)
        return env

    def run(self, host, *cmd: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run a command on one host and wait for it (output captured as text)."""
        return subprocess.run([*self.host(host).enter, *cmd], capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, host, *cmd: str, **kw) -> subprocess.Popen:
        """Start a command on one host."""
        return subprocess.Popen([*self.host(host).enter, *cmd], **kw)

    def pids(self, host) -> list[int]:
        """The pids of every process running on one host."""
        return pids_in_netns(self.host(host).netns)

    def kill(self, host) -> list[int]:
        """Kill every process of one host at once (SIGKILL), as if it lost power; returns their pids.
        The host stays (an empty namespace), like a machine that rebooted."""
        return empty_netns(self.host(host).netns)

    def cut(self, host) -> None:
        """Cut one host's link (its veth's root end down): its processes live on, unreachable."""
        sh("ip", "link", "set", self.host(host).link, "down")

    def restore(self, host, bound_s: float = 30.0) -> None:
        """Bring one host's link up again, and wait until it carries traffic (:func:`.netns.reaches` says why)."""
        sh("ip", "link", "set", self.host(host).link, "up")
        wait_for(lambda: reaches(self.host(host).enter, self.head_address), bound_s, f"{host} to reach the head")


def emulation_mpi_env(base: dict | None = None) -> dict:
    """OpenMPI settings every job on emulated hosts needs (values already in ``base`` win):

    * ``OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)``: the tests run as root;
    * ``OMPI_MCA_hwloc_base_binding_policy=none``: every emulated host is the same machine, but each
      orted thinks its host is its own, so OpenMPI's default (bind to core for up to 2 ranks) pins
      the first rank of every host to core 0: two "hosts" then share one core (seen with
      ``--report-bindings``: both ranks ``[B/.]``). The same holds for mpirun inside SLURM jobs.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_hwloc_base_binding_policy", "none")
    return env
