"""pytest fixtures for emulated hosts and SLURM, registered from tests/conftest.py (``pytest_plugins``).

* ``emulated_hosts`` (function scope, shared set): an :class:`~.hosts.EmulatedHosts` of 2 hosts, or n
  with ``@pytest.mark.hosts(n)`` or ``@pytest.mark.parametrize("emulated_hosts", [n], indirect=True)``.
* ``slurm_cluster`` (function scope, shared cluster): a :class:`~.slurm.SlurmCluster` on those hosts,
  idle, with every slurmd alive (restarted if a test killed its host).

Both come from one session-wide :class:`HostsPool`, because making hosts takes a fraction of a second
but only one set may exist on the machine at a time (the hosts lock): the pool keeps the current set
between tests and rebuilds it only when a test asks for another n (stopping SLURM first). After every
test the pool tidies up: links that a test cut are up again, and every process a test left on a host
(orted, ranks, job steps) is killed, except the slurmds. The pool closes at the end of the session,
also on Ctrl-C or SIGTERM (turned into KeyboardInterrupt so that pytest still tears down).

Tests are skipped, with the reason, only when namespaces cannot be made (not root, ``ip netns add``
refused) or SLURM is not installed. Set-up and tear-down seconds are printed at the end of the session.
"""
from __future__ import annotations

import functools
import subprocess

import pytest

from .hosts import EmulatedHosts, can_make_namespaces, install_sigterm_handler, restore_sigterm_handler
from .netns import kill_pids, pids_in_netns, sh, wait_for
from .slurm import SlurmCluster, slurm_available

DEFAULT_HOSTS = 2
# probing makes and removes a namespace: once per session is enough
why_no_hosts = functools.cache(can_make_namespaces)
why_no_slurm = functools.cache(slurm_available)


class HostsPool:
    """The one set of emulated hosts (and SLURM on it) of this test session."""

    def __init__(self):
        self.current: EmulatedHosts | None = None
        self.slurm_cluster: SlurmCluster | None = None
        self.timings: list[str] = []
        self._sigterm = None

    def hosts(self, n: int) -> EmulatedHosts:
        if self.current is not None and self.current.n == n:
            return self.current
        self.close()
        self._sigterm = install_sigterm_handler()
        hosts = EmulatedHosts(n)
        try:
            hosts.__enter__()
        except BaseException:
            restore_sigterm_handler(self._sigterm)
            raise
        self.current = hosts
        extra = f" (removed leftovers: {', '.join(hosts.stale_removed)})" if hosts.stale_removed else ""
        self.timings.append(f"emulated hosts ({n}): set up in {hosts.setup_s:.2f} s{extra}")
        return hosts

    def slurm(self, n: int) -> SlurmCluster:
        hosts = self.hosts(n)
        if self.slurm_cluster is None:
            cluster = SlurmCluster(hosts)
            cluster.__enter__()
            self.slurm_cluster = cluster
            self.timings.append(f"SLURM on {n} hosts: set up in {cluster.setup_s:.2f} s")
        restarted = self.slurm_cluster.heal()
        if restarted:
            self.timings.append(f"SLURM: restarted slurmd on {', '.join(restarted)}")
        return self.slurm_cluster

    def tidy(self) -> None:
        """After a test: cancel its SLURM jobs, bring cut links up, kill what it left on the hosts."""
        hosts = self.current
        if hosts is None:
            return
        keep = set()
        if self.slurm_cluster is not None:
            env = self.slurm_cluster.env()
            subprocess.run(["scancel", "--quiet", "--partition", SlurmCluster.partition], env=env,
                           capture_output=True, timeout=10)

            def no_jobs():
                out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True,
                                     text=True, timeout=10).stdout
                return not out.strip()

            wait_for(no_jobs, 15, "cancelled SLURM jobs leaving the queue", interval=0.2)
            keep = {p.pid for k, p in self.slurm_cluster.procs.items() if k.startswith("slurmd-")}
        for h in hosts.hosts:
            sh("ip", "link", "set", h.link, "up")
            kill_pids([pid for pid in pids_in_netns(h.netns) if pid not in keep])

    def close(self) -> None:
        try:
            if self.slurm_cluster is not None:
                cluster, self.slurm_cluster = self.slurm_cluster, None
                cluster.__exit__(None, None, None)
                self.timings.append(f"SLURM: torn down in {cluster.teardown_s:.2f} s")
        finally:
            if self.current is not None:
                hosts, self.current = self.current, None
                try:
                    hosts.__exit__(None, None, None)
                finally:
                    restore_sigterm_handler(self._sigterm)
                    self._sigterm = None
                self.timings.append(f"emulated hosts ({hosts.n}): torn down in {hosts.teardown_s:.2f} s")


def pytest_configure(config):
    config.addinivalue_line("markers", "hosts(n): the number of emulated hosts the test needs (default 2)")


@pytest.fixture(scope="session")
def hosts_pool(request):
    pool = HostsPool()
    yield pool
    try:
        pool.close()
    finally:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and pool.timings:
            reporter.write_line("")
            for line in pool.timings:
                reporter.write_line(f"[emulated hosts] {line}")


def _wanted_hosts(request) -> int:
    marker = request.node.get_closest_marker("hosts")
    if marker is not None:
        return int(marker.args[0])
    return int(getattr(request, "param", DEFAULT_HOSTS))


@pytest.fixture
def emulated_hosts(hosts_pool, request) -> EmulatedHosts:
    why = why_no_hosts()
    if why:
        pytest.skip(why)
    hosts = hosts_pool.hosts(_wanted_hosts(request))
    yield hosts
    hosts_pool.tidy()


@pytest.fixture
def slurm_cluster(hosts_pool, request) -> SlurmCluster:
    why = why_no_hosts() or why_no_slurm()
    if why:
        pytest.skip(why)
    cluster = hosts_pool.slurm(_wanted_hosts(request))
    yield cluster
    hosts_pool.tidy()

