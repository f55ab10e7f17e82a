"""Low-level steps for emulated hosts: commands that must not fail silently, namespaces, processes.

Everything here runs as root and touches only objects whose names start with :data:`PREFIX`, so that a
clean-up after a killed run (:func:`remove_stale`) can find them without a record and never touches
anybody else's namespaces or links.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

PREFIX = "gmk"
NETNS_DIR = Path("/run/netns")  # where `ip netns add` binds the namespaces it names


class HostSetupError(RuntimeError):
    """A step of creating or removing emulated hosts failed; the message names the step and its output."""


def which(name: str) -> str | None:
    """A tool's absolute path, also looking in /usr/sbin and /sbin (ip, sysctl, munged, slurmctld and
    slurmd live there, and a PATH need not name them)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def tool(name: str) -> str:
    path = which(name)
    if path is None:
        raise HostSetupError(
            f"'{name}' is not installed; run scripts/setup-env.sh (apt-get install "
            "iproute2 procps util-linux slurm-wlm munge)"
        )
    return path


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one command, capturing its output; on failure raise naming the command and what it printed."""
    try:
        proc = subprocess.run([tool(cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise HostSetupError(f"{' '.join(cmd)} did not finish within {timeout} s") from exc
    if check and proc.returncode != 0:
        raise HostSetupError(
            f"{' '.join(cmd)} failed with status {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def wait_for(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
):
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` seconds pass; then raise
    ``TimeoutError`` saying what was awaited, with ``on_timeout()``'s text (a log's tail, a state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s" + (f"\n{detail}" if detail else ""))
        time.sleep(interval)


def ns_inode(path: str | os.PathLike) -> int | None:
    """The inode that identifies the namespace bound at (or linked from) ``path``; None when gone."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(netns_path: str | os.PathLike) -> list[int]:
    """Every process whose network namespace is the one bound at ``netns_path`` (all of an emulated
    host's processes: nsenter's children, orted, ranks, slurmd and its steps)."""
    target = ns_inode(netns_path)
    if target is None:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and ns_inode(f"/proc/{entry.name}/ns/net") == target:
            pids.append(int(entry.name))
    return pids


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to each pid; returns those that still existed."""
    hit = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            hit.append(pid)
        except ProcessLookupError:
            pass
    return hit


def empty_netns(netns_path: str | os.PathLike, grace: float = 0.0, timeout: float = 10) -> list[int]:
    """Kill every process inside a network namespace (SIGTERM first when ``grace`` > 0, then SIGKILL),
    repeating until none is left, since a dying parent may still fork; returns the pids it killed."""
    killed: list[int] = []
    if grace > 0:
        killed += kill_pids(pids_in_netns(netns_path), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids_in_netns(netns_path) and time.monotonic() < deadline:
            time.sleep(0.05)

    def gone():
        left = pids_in_netns(netns_path)
        killed.extend(kill_pids(left))
        return not left

    wait_for(
        gone,
        timeout,
        f"killing every process of network namespace {netns_path}",
        on_timeout=lambda: f"still alive: {pids_in_netns(netns_path)}",
    )
    return sorted(set(killed))


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid it identifies one process even
    after the pid is reused, which is what the clean-up of a killed run relies on."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (killed, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def our_netns() -> list[str]:
    """Names of the network namespaces with our prefix (ours, possibly left by a killed run)."""
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def our_links() -> list[str]:
    """Names of the root namespace's links with our prefix (the bridge, veth ends)."""
    out = sh("ip", "-o", "link", "show").stdout
    names = []
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            names.append(name)
    return names


def is_mountpoint(path: Path) -> bool:
    return sh("findmnt", "-n", str(path), check=False).returncode == 0


def unbind(path: Path) -> None:
    """Unmount a namespace bound to a file (repeatedly: a file can be bound more than once) and remove it."""
    for _ in range(8):
        if not is_mountpoint(path):
            break
        sh("umount", str(path))
    path.unlink(missing_ok=True)


def enter_prefix(netns_path: Path, uts_path: Path) -> list[str]:
    """The command prefix that runs a command inside one emulated host (its network and UTS namespaces).
    The mount namespace stays the root one: every host sees the same files, as on a shared file system."""
    return ["nsenter", f"--net={netns_path}", f"--uts={uts_path}", "--"]


def run_in(prefix: Sequence[str], *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return sh(*prefix, *cmd, timeout=timeout)


def reaches(enter: list, address: str) -> bool:
    """Whether a process started with ``enter`` (a host's namespaces) gets an answer from ``address``: a TCP
    connection to port 9 is refused (no port listens there) rather than lost. A link just brought up is
    activated a moment later and drops its first packets meanwhile (measured here: a job started at once took
    1.0 s, 0.15 s otherwise); under load that moment grows, and a daemon started in it fails to connect."""
    probe = f"import socket\ntry: socket.create_connection(({address!r}, 9), 2)\nexcept ConnectionRefusedError: pass"
    return subprocess.run([*enter, sys.executable, "-c", probe], capture_output=True).returncode == 0


def install_sigterm_handler():
    """pytest runs fixture teardown on KeyboardInterrupt but not on SIGTERM (the default action kills the
    process outright and would leave the namespaces). Turn SIGTERM into KeyboardInterrupt while hosts
    exist; returns the previous handler for :func:`restore_sigterm_handler`."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, handler)
            return previous
    except ValueError:  # not the main thread
        pass
    return None


def restore_sigterm_handler(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
