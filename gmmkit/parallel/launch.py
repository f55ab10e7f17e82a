"""Starting n ranks with mpirun (or horovodrun): the only place gmmkit starts a parallel job.

``gmmkit train --workers 4`` run from a shell re-executes itself under ``mpirun -np 4``; each rank then sees
the launcher's environment (:func:`launched_in_parallel`) and joins the Horovod job. Started by hand
(``horovodrun -np 4 gmmkit train ...`` or ``mpirun -np 4 gmmkit train ...``) it joins directly. The sweep's
batches and the benchmark's probes run ``python -m gmmkit.ranks`` the same way
(:func:`ranks_argv`). ipyparallel's MPI engines take their placement flags and environment from here too
(:func:`placement_args`, :func:`mpi_settings`).

Where the ranks run is a :class:`~gmmkit.parallel.placement.Placement` (this machine, ``--hosts``,
``--hostfile`` or a SLURM allocation). On other hosts a rank starts with the clean environment of an ssh
login, so the variables gmmkit and its libraries read travel with ``-x`` (:data:`FORWARDED`).

OpenMPI's own settings win: gmmkit's defaults (:data:`MCA_DEFAULTS`) are set only for the parameters the
user has not set, in ``OMPI_MCA_*`` variables or in OpenMPI's parameter files (:func:`user_mca`), and as
environment variables rather than command-line flags, which would override both. So a site's launch agent
(``plm_rsh_agent``), networks (``btl_tcp_if_include``) or binding policy apply unchanged.

Nothing here imports TensorFlow, Horovod or MPI: a launcher process stays light.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import psutil

from ..errors import LaunchError
from ..signals import StopFlag, check, stop_on_signals
from . import network
from .failures import rank_failure
from .placement import LOCAL, Placement

LAUNCHERS = ("mpirun", "horovodrun")

# What launchers tell their ranks: (size variable, rank variable) pairs, the first one set wins. A process
# is a rank of a parallel job exactly when one of the size variables is set.
_LAUNCHER_ENV = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # OpenMPI's mpirun and ipyparallel's engines
    ("HOROVOD_SIZE", "HOROVOD_RANK"),  # horovodrun with Gloo
    ("PMI_SIZE", "PMI_RANK"),  # MPICH, Intel MPI, srun --mpi=pmi2
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),
)  # MVAPICH


def _launcher_pair() -> Optional[tuple[str, str]]:
    return next(((size, rank) for size, rank in _LAUNCHER_ENV if size in os.environ), None)


def launched_in_parallel() -> bool:
    """True when this process is one rank of a job started by mpirun, horovodrun or ipyparallel's MPI launcher."""
    return _launcher_pair() is not None


def launcher_size() -> int:
    """The job's rank count as the launcher announced it (1 outside a parallel job)."""
    pair = _launcher_pair()
    return int(os.environ[pair[0]]) if pair else 1


def launcher_rank() -> int:
    """This process's rank as the launcher announced it (0 outside a parallel job)."""
    pair = _launcher_pair()
    return int(os.environ.get(pair[1], 0)) if pair else 0


def launcher_local_rank() -> Optional[int]:
    """This process's place among the ranks on its host, when the launcher says (OpenMPI does)."""
    value = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK")
    return int(value) if value is not None and value.isdigit() else None


# gmmkit's OpenMPI settings, each applied only where the user has not set the parameter (user_mca):
MCA_DEFAULTS = {
    # Each rank keeps two threads busy, TensorFlow's and Horovod's background loop, which waits inside MPI.
    # OpenMPI busy-polls by default, so with one core per rank the waiting thread starves the computing one
    # (benchmarks/RESULTS.md has the measurement).
    "mpi_yield_when_idle": "1",
    # TensorFlow runs its own thread pools over the cores of a host: binding a rank to one core would
    # squeeze them onto it (and every host's first rank would get core 0).
    "hwloc_base_binding_policy": "none",
    # ranks fill the slots host by host, so rank r's host is known before the job starts
    "rmaps_base_mapping_policy": "slot",
    # A host whose link is cut closes no connection: mpirun notices only through TCP keepalive on its daemon
    # connections, whose defaults wait minutes before the first probe. With these, such a job ends (naming
    # the host) within the time issue 17 allows a lost host; benchmarks/RESULTS.md has what was measured.
    "oob_tcp_keepalive_time": "5",
    "oob_tcp_keepalive_intvl": "2",
    "oob_tcp_keepalive_probes": "3",
    # A daemon whose connection back to mpirun fails at once (an answer that the host is unreachable: its link
    # has just come up, a switch port still learning) gives up and the job never starts; with this it tries
    # again every second, up to oob_tcp_max_recon_attempts (10) times.
    "oob_tcp_retry_delay": "1",
}
# What a rank on another host must see of the launcher's environment (mpirun -x NAME): Python's and gmmkit's
# paths and settings, TensorFlow's, Horovod's and NCCL's switches, thread counts and library paths. Not
# CUDA_VISIBLE_DEVICES: each host has its own GPUs, and each rank picks its local one.
FORWARDED = re.compile(
    r"^(PATH|LD_LIBRARY_PATH|PYTHONPATH|PYTHONHASHSEED|VIRTUAL_ENV|GMMKIT_\w+|TF_\w+"
    r"|HOROVOD_\w+|NCCL_\w+|OMP_NUM_THREADS|OPENBLAS_NUM_THREADS|MKL_NUM_THREADS)$"
)


def mca_param_files(env: dict) -> list[str]:
    """OpenMPI's parameter files in the order it reads them (``mca_base_param_files``, else its default:
    the user's, then the installation's)."""
    listed = env.get("OMPI_MCA_mca_base_param_files") or env.get("OMPI_MCA_mca_param_files")
    if listed:
        return [p for p in listed.split(",") if p]
    home = env.get("HOME") or os.path.expanduser("~")
    files = [os.path.join(home, ".openmpi", "mca-params.conf")]
    mpirun = shutil.which("mpirun", path=env.get("PATH"))
    if mpirun:
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(mpirun)))
        files.append(os.path.join(prefix, "etc", "openmpi-mca-params.conf"))
    files.append("/etc/openmpi/openmpi-mca-params.conf")  # Debian's sysconfdir
    return files


def user_mca(env: dict | None = None) -> dict[str, str]:
    """The MCA parameters the user (or the site) set, with their values: ``OMPI_MCA_NAME`` variables, then
    ``NAME = value`` lines of OpenMPI's parameter files (the first one that sets a name wins, as in OpenMPI)."""
    env = dict(os.environ if env is None else env)
    found = {key[len("OMPI_MCA_") :]: value for key, value in env.items() if key.startswith("OMPI_MCA_")}
    for path in mca_param_files(env):
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    name, eq, value = line.split("#", 1)[0].partition("=")
                    if eq and name.strip():
                        found.setdefault(name.strip(), value.strip())
        except OSError:
            pass
    return found


def mpi_settings(env: dict | None = None, placement: Optional[Placement] = None) -> dict:
    """What gmmkit adds to ``env`` (default: this process's) for mpirun: :data:`MCA_DEFAULTS` and, for a job
    placed by ``placement``, the network it talks over (:func:`gmmkit.parallel.network.mca_network`: the
    loopback when every rank is here), each where the user set nothing; and OpenMPI's run-as-root switches
    when the user is root."""
    env = dict(os.environ if env is None else env)
    taken = user_mca(env)
    extra = {f"OMPI_MCA_{name}": value for name, value in MCA_DEFAULTS.items() if name not in taken}
    chosen = {key[len("OMPI_MCA_") :] for key in env if key.startswith("OMPI_MCA_")}
    extra.update({f"OMPI_MCA_{name}": value for name, value in network.mca_network(placement, taken, chosen).items()})
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        extra.update({k: "1" for k in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") if k not in env})
    return extra


def mpi_env(base: dict | None = None, placement: Optional[Placement] = None) -> dict:
    """The environment for mpirun: ``base`` (default: this process's) with :func:`mpi_settings` added (for a
    job placed by ``placement``, when given)."""
    env = dict(os.environ if base is None else base)
    env.update(mpi_settings(env, placement))
    return env


def forward_args(env: dict | None = None, also: Sequence[str] = ()) -> list[str]:
    """``-x NAME`` for every variable of ``env`` that ranks on other hosts need (:data:`FORWARDED`), and for
    the names in ``also``."""
    env = os.environ if env is None else env
    names = sorted({name for name in env if FORWARDED.match(name)} | set(also))
    return [arg for name in names for arg in ("-x", name)]


def placement_args(
    n: int, placement: Placement = LOCAL, env: dict | None = None, also: Sequence[str] = ()
) -> list[str]:
    """mpirun's flags for n ranks placed by ``placement``: the hosts and their slots (``--host``; none inside a
    SLURM allocation, which mpirun reads itself), ``--oversubscribe`` when a local job has more ranks than
    cores, and :func:`forward_args` (``env``, ``also``)."""
    args = []
    if placement.by_name:
        args += ["--host", placement.host_list()]
    elif placement.is_local and n > placement.slots:
        args.append("--oversubscribe")
    return args + forward_args(env, also)


def mpirun_command(
    n: int, argv: Sequence[str], launcher: str = "mpirun", placement: Placement = LOCAL, env: dict | None = None
) -> list[str]:
    """The command line that runs ``argv`` (a program and its arguments) on ``n`` ranks placed by
    ``placement``; ``env``: the environment it will run with (what ``-x`` forwards)."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher: expected one of {', '.join(LAUNCHERS)}, received {launcher!r}")
    placement.check_workers(n)
    exe = shutil.which(launcher) or shutil.which(launcher, path=os.path.dirname(sys.executable))
    if exe is None:
        hint = "apt-get install openmpi-bin libopenmpi-dev" if launcher == "mpirun" else "make setup"
        raise LaunchError(f"--launcher {launcher}: '{launcher}' is not on PATH ({hint})")
    if launcher == "horovodrun":  # it forwards the whole environment itself
        hosts = ["-H", placement.host_list()] if placement.by_name else []
        return [exe, "-np", str(n), *hosts, "--mpi", *argv]
    return [exe, "-np", str(n), *placement_args(n, placement, env), *argv]


def gmmkit_argv(*args: str) -> list[str]:
    """``python -m gmmkit ARGS`` with this interpreter, for the ranks."""
    return [sys.executable, "-m", "gmmkit", *args]


def ranks_argv(*args: str) -> list[str]:
    """``python -m gmmkit.ranks ARGS``: the program of every other job (sweep batches, probes)."""
    return [sys.executable, "-m", "gmmkit.ranks", *args]


# mpirun's own messages (blocks between rules of dashes, "[host:pid] ..." notes): shown in gmmkit's words instead
_RULE = re.compile(r"^-{20,}\s*$")
_MPIRUN_NOTE = re.compile(r"^\[[\w.-]+:\d+\] |^mpirun: ")


def run_ranks(
    n: int,
    argv: Sequence[str],
    launcher: str = "mpirun",
    env: dict | None = None,
    on_interrupt: Optional[Callable[[], None]] = None,
    grace_s: float = 120.0,
    log: str | os.PathLike | None = None,
    stop: Optional[StopFlag] = None,
    placement: Placement = LOCAL,
    rank_hosts: Optional[Callable[[], Optional[Sequence[str]]]] = None,
) -> tuple[int, Optional[str]]:
    """Run ``argv`` on ``n`` ranks placed by ``placement`` and wait; returns the launcher's exit code and,
    when a rank died or failed or a host was lost, which (:func:`rank_failure`, with the ranks' hosts from
    ``rank_hosts()`` when it says, else as the placement puts them). The ranks' output passes through
    unchanged, or goes to ``log`` (stdout and stderr together, mpirun's own messages included) when given;
    mpirun's own messages (its banners) are not shown: the caller says what happened, in gmmkit's words.

    mpirun ends the whole job as soon as one rank dies or a host is lost, so the others never hang in an
    allreduce. It runs in a session of its own, so a terminal's Ctrl-C reaches only this process, and it
    dies with this process (``PR_SET_PDEATHSIG``): no job is ever left running without its launcher.

    SIGINT and SIGTERM (or ``stop``, a flag they set): the first calls ``on_interrupt`` (``gmmkit train``
    asks the run to stop after its current step) and waits up to ``grace_s`` for the job to end; a second
    signal, or the end of the grace, ends the job (SIGTERM to mpirun, which ends its ranks)."""
    network.check_hosts(placement)
    env = mpi_env(env, placement)
    cmd = mpirun_command(n, argv, launcher, placement, env)
    tail: collections.deque = collections.deque(maxlen=400)  # both streams' last lines, for rank_failure
    sink, lock = (open(log, "w") if log is not None else None), threading.Lock()

    def relay(stream, out, banners: bool):  # the ranks' output; mpirun's own messages (stderr) only to the log
        banner = False
        for line in stream:
            tail.append(line)
            ours = banners and (_RULE.match(line) or banner or _MPIRUN_NOTE.match(line))
            banner = banners and banner != bool(_RULE.match(line))
            if sink is not None or not ours:
                with lock:
                    (sink or out).write(line)
                    (sink or out).flush()

    try:
        with stop_on_signals(stop) as interrupted:
            proc = _job(cmd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
            streams = ((proc.stdout, sys.stdout, False), (proc.stderr, sys.stderr, True))
            readers = [threading.Thread(target=relay, args=args, daemon=True) for args in streams]
            for reader in readers:
                reader.start()
            code = _wait(proc, interrupted, on_interrupt, grace_s)
            # a cut-off host's daemon may hold mpirun's output open after mpirun ended: wait a little only
            deadline = time.monotonic() + 5
            for reader in readers:
                reader.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        if sink is not None:
            sink.close()
    if not code:
        return code, None
    hosts = (rank_hosts() if rank_hosts is not None else None) or placement.host_of_ranks(n)
    return code, rank_failure("".join(tail), hosts)


def _wait(proc: subprocess.Popen, interrupted: StopFlag, on_interrupt, grace_s: float) -> int:
    """Wait for ``proc``, handling stop requests as :func:`run_ranks` describes."""
    deadline = None
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if interrupted and deadline is None:
            deadline = time.monotonic() + grace_s
            if on_interrupt is not None:
                on_interrupt()
                print(
                    f"stopping after the current step (up to {grace_s:.0f} s; Ctrl-C again to end the job now)",
                    file=sys.stderr,
                    flush=True,
                )
        if deadline is not None and (interrupted.count > 1 or time.monotonic() > deadline or on_interrupt is None):
            return _end(proc)


def _end(proc: subprocess.Popen) -> int:
    """End mpirun (it ends its ranks), killing it if it has not ended 15 s later; its exit code."""
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _job(cmd: Sequence[str], env: dict, **streams) -> subprocess.Popen:
    """An mpirun job in a session of its own (a terminal's Ctrl-C reaches gmmkit, which ends it), no stdin,
    killed with this process."""
    return subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent, **streams
    )


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (even of SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def alive_hosts(
    placement: Placement, timeout_s: float = 15.0, stop: Optional[StopFlag] = None, env: dict | None = None, code="pass"
) -> list[str]:
    """The hosts of ``placement`` that answer a liveness probe within ``timeout_s``: one rank of
    ``python -c CODE`` on each, all at once, started the way a job starts there (mpirun, the site's launch
    agent, this interpreter on the shared file system). A host that does not resolve, does not start it, or
    does not answer in time (a cut link leaves mpirun waiting) is dead; a probe still running then is killed
    with its launch agent. This machine (a local placement) is alive; ``stop`` abandons the probes; ``env``:
    the environment to start them with (default: this process's); ``code``: the probe (it answers by exiting 0)."""
    if placement.is_local:
        return [os.uname().nodename]
    probes = {}
    for name in placement.names:
        if not network.addresses(name):
            continue
        one = Placement(((name, 1),), "hosts", f"{name}:1")
        with_mpi = mpi_env(env, one)
        cmd = mpirun_command(1, [sys.executable, "-c", code], placement=one, env=with_mpi)
        probes[name] = _job(cmd, with_mpi, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in probes.values()) and time.monotonic() < deadline and not stop:
        time.sleep(0.05)
    for proc in probes.values():
        if proc.poll() is None:  # mpirun, and what it started: the launch agent, a daemon it reached
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            proc.kill()
            proc.wait()
    return [name for name, proc in probes.items() if proc.returncode == 0]


def run_program(argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run a short program (a host discovery script) here, no stdin, its output captured as text; raises
    ``TimeoutError`` (it was killed) or ``OSError``."""
    streams = {"stdin": subprocess.DEVNULL, "capture_output": True, "text": True, "errors": "replace"}
    try:
        return subprocess.run(argv, timeout=timeout_s, **streams)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{argv[0]} ran past {timeout_s} s") from None


def run_json(n: int, argv: Sequence[str], timeout: float = 600, placement: Placement = LOCAL) -> dict:
    """Run a probe (``argv``) on ``n`` ranks placed by ``placement`` and return the JSON object its rank 0
    printed on a line. A stop request (:func:`gmmkit.signals.check`) ends the job and abandons the probe."""
    network.check_hosts(placement)
    env = mpi_env(placement=placement)
    cmd = mpirun_command(n, argv, placement=placement, env=env)
    proc = _job(cmd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                stdout, stderr = proc.communicate(timeout=0.1)
                break
            check()
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout)
    finally:
        if proc.poll() is None:  # abandoned
            _end(proc)
    for line in stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stderr[-2000:]}")
