"""pytest fixtures for emulated hosts and SLURM, registered from tests/conftest.py (``pytest_plugins``).

* ``emulated_hosts`` (session scope): an :class:`~.hosts.EmulatedHosts` of 2 hosts, or of n with
  ``@pytest.mark.parametrize("emulated_hosts", [n], indirect=True)``. Session scope, so that module- or
  session-scoped fixtures (an ipyparallel cluster on the hosts, a reference run) can build on it.
* ``slurm_cluster`` (session scope): a :class:`~.slurm.SlurmCluster` on those hosts, idle.
* ``hosts_pool`` (session scope): the :class:`HostsPool` behind both, for tests of the fixtures.

Only one set of hosts may exist on the machine at a time (the hosts lock), so both come from one
session-wide pool that keeps the set between tests and rebuilds it only when a test asks for another n
(stopping SLURM first). After every test that used them, the pool tidies up (:meth:`HostsPool.tidy`):
links a test cut are up again, SLURM jobs a test left are cancelled, slurmds that died with their host
are restarted. It does not kill processes a test left on a host: a test that loses a host cleans up
after itself (``emulated_hosts.kill(name)``), and module-scoped fixtures may keep processes there. The
pool closes at the end of the session, also on Ctrl-C or SIGTERM (turned into KeyboardInterrupt so that
pytest still tears down); a pool closed by a test comes back, in the same objects, for the next test
that uses the fixtures.

Tests are skipped, with the reason, only when namespaces cannot be made (not root, ``ip netns add``
refused) or SLURM is not installed. Set-up and tear-down seconds are printed at the end of the session.
"""

from __future__ import annotations

import functools
import subprocess

import pytest

from .hosts import EmulatedHosts, can_make_namespaces
from .netns import install_sigterm_handler, restore_sigterm_handler, sh, wait_for
from .slurm import SlurmCluster, slurm_available

DEFAULT_HOSTS = 2
# probing makes and removes a namespace: once per session is enough
why_no_hosts = functools.cache(can_make_namespaces)
why_no_slurm = functools.cache(slurm_available)


class HostsPool:
    """The one set of emulated hosts (and SLURM on it) of this test session. The objects stay the same
    while the set is closed and reopened (what the session-scoped fixtures hand out stays valid)."""

    def __init__(self):
        self.current: EmulatedHosts | None = None
        self.slurm_cluster: SlurmCluster | None = None
        self.hosts_up = self.slurm_up = False
        self.timings: list[str] = []
        self._sigterm = None

    def hosts(self, n: int) -> EmulatedHosts:
        """The set of n hosts, made (or remade) when needed."""
        if self.current is not None and self.current.n != n:
            self.close()
            self.current = self.slurm_cluster = None
        if self.current is None:
            self.current = EmulatedHosts(n)
        if not self.hosts_up:
            self._sigterm = install_sigterm_handler()
            try:
                self.current.__enter__()
            except BaseException:
                restore_sigterm_handler(self._sigterm)
                raise
            self.hosts_up = True
            h = self.current
            extra = f" (removed leftovers: {', '.join(h.stale_removed)})" if h.stale_removed else ""
            self.timings.append(f"emulated hosts ({n}): set up in {h.setup_s:.2f} s{extra}")
        return self.current

    def slurm(self, n: int) -> SlurmCluster:
        """SLURM on the set of n hosts, started when needed."""
        hosts = self.hosts(n)
        if self.slurm_cluster is None:
            self.slurm_cluster = SlurmCluster(hosts)
        if not self.slurm_up:
            self.slurm_cluster.__enter__()
            self.slurm_up = True
            self.timings.append(f"SLURM on {n} hosts: set up in {self.slurm_cluster.setup_s:.2f} s")
        return self.slurm_cluster

    def reopen(self, slurm: bool) -> None:
        """Bring back a set (and SLURM) that a test closed, before a test that uses them."""
        if self.current is None:
            return
        if slurm and self.slurm_cluster is not None:
            self.slurm(self.current.n)
        else:
            self.hosts(self.current.n)

    def tidy(self) -> None:
        """After a test: cut links up again, leftover SLURM jobs cancelled, dead slurmds restarted."""
        if not self.hosts_up:
            return
        for h in self.current.hosts:
            sh("ip", "link", "set", h.link, "up")
        if self.slurm_up:
            env = self.slurm_cluster.env()

            def no_jobs():
                return not subprocess.run(
                    ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=10
                ).stdout.strip()

            if not no_jobs():
                subprocess.run(
                    ["scancel", "--quiet", "--partition", SlurmCluster.partition],
                    env=env,
                    capture_output=True,
                    timeout=10,
                )
                wait_for(no_jobs, 60, "cancelled SLURM jobs leaving the queue", interval=0.2)
            restarted = self.slurm_cluster.heal()
            if restarted:
                self.timings.append(f"SLURM: restarted the slurmd of {', '.join(restarted)}")

    def close(self) -> None:
        """Stop SLURM and remove the hosts (the objects stay, ready to be reopened)."""
        try:
            if self.slurm_up:
                self.slurm_up = False
                self.slurm_cluster.__exit__(None, None, None)
                self.timings.append(f"SLURM: torn down in {self.slurm_cluster.teardown_s:.2f} s")
        finally:
            if self.hosts_up:
                self.hosts_up = False
                try:
                    self.current.__exit__(None, None, None)
                finally:
                    restore_sigterm_handler(self._sigterm)
                    self._sigterm = None
                self.timings.append(f"emulated hosts ({self.current.n}): torn down in {self.current.teardown_s:.2f} s")


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


@pytest.fixture(scope="session")
def emulated_hosts(hosts_pool, request) -> EmulatedHosts:
    why = why_no_hosts()
    if why:
        pytest.skip(why)
    return hosts_pool.hosts(int(getattr(request, "param", DEFAULT_HOSTS)))


@pytest.fixture(scope="session")
def slurm_cluster(hosts_pool, emulated_hosts) -> SlurmCluster:
    why = why_no_slurm()
    if why:
        pytest.skip(why)
    return hosts_pool.slurm(emulated_hosts.n)


@pytest.fixture(autouse=True)
def _emulated_hosts_checkup(request, hosts_pool):
    """Around every test that uses the fixtures: reopen a set a test closed, then tidy up."""
    used = {"emulated_hosts", "slurm_cluster"} & set(request.fixturenames)
    if used:
        hosts_pool.reopen(slurm="slurm_cluster" in used)
    yield
    if used:
        hosts_pool.tidy()
