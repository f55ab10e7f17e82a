"""A real SLURM on emulated hosts: munged and slurmctld in the root namespace, one slurmd per host.

Debian's ``slurm-wlm`` 22.05 and ``munge``, started as root from files in a temporary folder (under the
hosts' state folder, so the clean-up of a killed run removes it too). What is needed, and why:

* **munge** with its own key (``mungekey``), socket, pid, log and seed files, started ``-F`` as a child
  we can stop, with ``--force`` (it refuses to run as root otherwise). Its socket is a file: processes
  in every network namespace reach it. ``AuthInfo=socket=...`` points slurm's auth/munge and
  cred/munge at it.
* **slurmctld** runs in the root namespace but in a UTS namespace of its own with hostname ``gmk-head``:
  slurmctld only starts on a host whose hostname is the one in ``SlurmctldHost``, and
  ``SlurmctldHost=gmk-head(10.213.0.1)`` gives the bridge address the hosts reach it on (no name lookup).
* **slurmd** runs inside each host's network and UTS namespaces (``slurmd -D -N gmk-nodeI``): ``-N``
  names the node, ``NodeAddr`` is the host's address, so slurmctld reaches each slurmd without DNS, and
  every slurmd can use the same ``SlurmdPort`` since each has its own network namespace. Job steps
  inherit those namespaces: ``hostname`` in a task prints the emulated host's name.
* Ports 26817/26818 rather than 6817/6818, so a SLURM installed on the machine itself does not collide.
* ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, no cgroup plugin anywhere: nested
  cgroups are not available (or wanted) on a shared test machine; linuxproc tracks a job's processes
  through their parent pids.
* ``SlurmUser=root`` (we run as root; no ``slurm`` account needed), ``SlurmdSpoolDir``,
  ``StateSaveLocation``, pid and log files per node (``%n``) in the temporary folder,
  ``PlugStackConfig`` an empty file (Debian's /etc/slurm/plugstack.conf must not apply), accounting
  and job completion ``none`` (no slurmdbd), ``ReturnToService=2`` (a restarted slurmd's node comes back
  by itself), ``KillWait=2`` (job ends wait 2 s between SIGTERM and SIGKILL, not 30),
  ``MailProg=/bin/true`` (Debian's default mailer is absent; slurmctld logs an error otherwise).
* ``MinJobAge=4``: ``sbatch --wait`` polls the job every 2 s, but multiplies the pause by 4 while it
  is under half of MinJobAge (default 300 s), so a 3-second job was seen finished only after 10 s. The
  price: a finished job stays in ``squeue``/``scontrol show job`` for only 4 s (there is no accounting
  database either); use ``sbatch --wait``'s exit status and the job's output file.
* ``MpiDefault=none``: OpenMPI's mpirun starts its own daemons through ``srun`` (its plm/slurm) and needs
  no PMI from SLURM; Debian's build also has pmix/pmi2 (``srun --mpi=list``) for direct ``srun`` launch.
* ``SelectType=select/cons_tres`` with ``CR_CPU`` and each node's real CPU count: ``-N2`` gets one task
  per node unless asked otherwise, and nothing exceeds the machine.

The clients (``srun``, ``sbatch``, ``salloc``, ``sinfo``) need only ``SLURM_CONF`` (:meth:`SlurmCluster.env`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .hosts import EmulatedHosts, emulation_mpi_env, register_daemon
from .netns import HostSetupError, empty_netns, tool, wait_for, which

CTLD_PORT, SLURMD_PORT = 26817, 26818
START_TIMEOUT_S = 30.0


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return f"--- last lines of {path} ---\n" + "\n".join(text)


def slurm_available() -> str | None:
    """None when Debian's SLURM and munge are installed, else the skip reason."""
    for name in ("munged", "mungekey", "munge", "slurmctld", "slurmd", "srun", "sbatch", "salloc", "sinfo"):
        if which(name) is None:
            return f"SLURM tests need '{name}' (apt-get install slurm-wlm munge; scripts/setup-env.sh)"
    return None


class SlurmCluster:
    """``with SlurmCluster(hosts) as slurm:`` starts munged, slurmctld and a slurmd per host, waits until
    every node is idle, and always stops them all and removes its files.

    ``slurm.env()`` is the environment for srun/sbatch/salloc, ``slurm.dir`` the temporary folder (also
    a good place for job scripts and output: every host sees it), ``slurm.nodes`` the node names,
    ``slurm.partition``, :meth:`heal` restarts slurmds that died (a test killed their host),
    ``setup_s`` / ``teardown_s`` the seconds taken."""

    partition = "gmk"

    def __init__(self, hosts: EmulatedHosts, cpus: int | None = None):
        self.hosts, self.cpus = hosts, cpus or os.cpu_count() or 1
        self.nodes = hosts.names
        self.dir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.setup_s = self.teardown_s = None

    # --- files ---------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def log(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.log"

    def _write_conf(self) -> None:
        d, h = self.dir, self.hosts
        nodes = "\n".join(f"NodeName={x.name} NodeAddr={x.address} CPUs={self.cpus} State=UNKNOWN" for x in h.hosts)
        (d / "plugstack.conf").write_text("")
        self.conf.write_text(f"""\
# written by tests/support/slurm.py; see its docstring for why each setting
ClusterName=gmk
SlurmctldHost={h.head_name}({h.head_address})
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={self.log("slurmctld")}
SlurmdLogFile={d}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={d}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MinJobAge=4
MailProg=/bin/true
InactiveLimit=0
{nodes}
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def env(self, base: dict | None = None) -> dict:
        """Environment for the SLURM clients: ``SLURM_CONF``, and for mpirun inside jobs (sbatch and
        srun pass the environment on) what every job on emulated hosts needs (``emulation_mpi_env``:
        run as root, no binding)."""
        env = emulation_mpi_env(base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    # --- daemons -------------------------------------------------------------------------------
    def _start(self, key: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.dir / f"{key}.out", "ab")
        proc = subprocess.Popen(
            cmd,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )
        out.close()
        register_daemon(proc.pid)
        self.procs[key] = proc
        return proc

    def _check_alive(self, key: str, log: Path) -> None:
        proc = self.procs[key]
        if proc.poll() is not None:
            raise HostSetupError(
                f"{key} exited with status {proc.returncode} while starting\n"
                f"{tail(log)}\n{tail(self.dir / f'{key}.out', 10)}"
            )

    def _start_munged(self) -> None:
        m = self.dir / "munge"
        m.mkdir(mode=0o700)
        subprocess.run([tool("mungekey"), "--create", f"--keyfile={m / 'munge.key'}"], check=True, capture_output=True)
        sock = m / "munge.socket"
        self._start(
            "munged",
            [
                tool("munged"),
                "--foreground",
                "--force",
                f"--socket={sock}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={self.log('munged')}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )

        def ready():
            self._check_alive("munged", self.log("munged"))
            return (
                sock.exists()
                and subprocess.run(
                    f"munge -n -S {sock} | unmunge -S {sock}", shell=True, capture_output=True
                ).returncode
                == 0
            )

        wait_for(ready, START_TIMEOUT_S, "munged answering on its socket", on_timeout=lambda: tail(self.log("munged")))

    def _start_slurmctld(self) -> None:
        # its own UTS namespace, hostname gmk-head: slurmctld only runs on the host SlurmctldHost names
        start = f"{tool('hostname')} {self.hosts.head_name} && exec {tool('slurmctld')} -D -i"
        self._start("slurmctld", [tool("unshare"), "--uts", "--", "sh", "-c", start])

        def ready():
            self._check_alive("slurmctld", self.log("slurmctld"))
            ping = subprocess.run(["scontrol", "ping"], env=self.env(), capture_output=True, text=True)
            return "is UP" in ping.stdout

        wait_for(
            ready,
            START_TIMEOUT_S,
            "slurmctld answering 'scontrol ping'",
            interval=0.2,
            on_timeout=lambda: tail(self.log("slurmctld")),
        )

    def _start_slurmd(self, name: str) -> None:
        host = self.hosts.host(name)
        self._start(f"slurmd-{name}", [*host.enter, tool("slurmd"), "-D", "-N", name])

    def node_states(self) -> dict[str, str]:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env(), capture_output=True, text=True
        ).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def _wait_idle(self, names) -> None:
        def ready():
            for n in names:
                self._check_alive(f"slurmd-{n}", self.dir / f"slurmd-{n}.log")
            states = self.node_states()
            return all(states.get(n, "").rstrip("*") == "idle" for n in names)

        wait_for(
            ready,
            START_TIMEOUT_S,
            f"nodes {', '.join(names)} idle",
            interval=0.2,
            on_timeout=lambda: (
                f"states: {self.node_states()}\n"
                + "\n".join(tail(self.dir / f"slurmd-{n}.log", 12) for n in names)
                + "\n"
                + tail(self.log("slurmctld"), 12)
            ),
        )

    def heal(self) -> list[str]:
        """Restart the slurmd of every host whose slurmd died (a lost-host test killed it) and wait until
        its node is idle again; returns the restarted nodes."""
        dead = [n for n in self.nodes if self.procs[f"slurmd-{n}"].poll() is not None]
        for n in dead:
            self._start_slurmd(n)
        if dead:
            self._wait_idle(dead)
        return dead

    # --- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-", dir=self.hosts.state_dir))
        self.dir.chmod(0o755)  # job output written here by any host, read by the tests
        try:
            (self.dir / "state").mkdir()
            for n in self.nodes:  # slurmd's socket and its cached hwloc topology go here
                (self.dir / "spool" / n).mkdir(parents=True)
            self._write_conf()
            self._start_munged()
            self._start_slurmctld()
            for n in self.nodes:
                self._start_slurmd(n)
            self._wait_idle(self.nodes)
        except BaseException:
            self._stop()
            raise
        self.setup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc):
        t0 = time.monotonic()
        self._stop()
        self.teardown_s = time.monotonic() - t0

    def _stop(self) -> None:
        """Cancel jobs, stop every slurmd, kill what their jobs left on the hosts, then slurmctld and
        munged, and remove the folder. Every step runs even when an earlier one failed."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--quiet", f"--partition={self.partition}"], env=self.env(), capture_output=True, timeout=10
            )
        order = [k for k in self.procs if k.startswith("slurmd-")] + ["slurmctld", "munged"]
        for key in order:
            proc = self.procs.get(key)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if key.startswith("slurmd-"):  # slurmstepd and job processes outlive their slurmd
                empty_netns(self.hosts.host(key[len("slurmd-") :]).netns)
        self.procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
