"""How the notebook's MPI engines are started, and the files that let anyone who holds them use the engines.

:class:`gmmkit.cluster.MPICluster` starts its engines with one of ipyparallel's launchers, set up
here as traitlets configuration (this module does not import ipyparallel):

* **mpiexec** (``MPIEngineSetLauncher``): ``mpiexec -n N`` with the placement of ``gmmkit train`` (the
  same ``--host`` list and ``-x`` forwarding from :func:`gmmkit.parallel.launch.placement_args`) and the same
  OpenMPI settings (:func:`gmmkit.parallel.launch.mpi_settings`). Engines on other hosts start with the
  clean environment of an ssh login, so ipyparallel's own variables travel too (:data:`IPP_VARIABLES`:
  the cluster's id, profile folder and connection information).
* **SLURM** (``SlurmEngineSetLauncher``): an ``sbatch`` job of N tasks whose script runs the same
  ``mpiexec`` inside the allocation (mpirun reads the allocation itself), so the engines are the ranks of
  one MPI world there too; :data:`SLURM_ENGINES` is the script.

**Who may use the engines.** Every message to the controller and the engines is signed with the key in
the connection files (HMAC): a client without the key is ignored. So the files are made readable by their
owner only, and their folder (the profile's ``security/``) only by its owner (:func:`secure`). Engines on
other hosts need the same files, so the profile folder must be on a file system every host sees (the home
folder, on most clusters).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import stat
import time
from pathlib import Path
from typing import Optional, Sequence

import psutil
from traitlets.config import Config

from ..parallel import launch
from ..parallel.placement import Placement

# The controller drops an engine after 10 missed heartbeats. A restarted MPI engine asks for its old id and
# waits until the dead one holding it is dropped, so this period sets how long cluster.restart() waits after
# a rank or host was lost; ipyparallel's default period is three times this one.
CONTROLLER_ARGS = ["--HeartMonitor.period=1000"]
# set by ipyparallel's launcher for the engines it starts; remote engines need them as much as local ones
IPP_VARIABLES = ("IPP_CLUSTER_ID", "IPP_PROFILE_DIR", "IPP_CONNECTION_INFO")

# ipyparallel fills {n}, {cluster_id}, {output_file}, {program_and_args}; {options} and {mpi} come from
# :func:`slurm_engine_config`. Doubled braces are literal.
SLURM_ENGINES = """#!/bin/sh
#SBATCH --export=ALL
#SBATCH --job-name=ipengine-{cluster_id}
#SBATCH --ntasks={n}
#SBATCH --output={output_file}
{options}
# one MPI world over the allocation: mpirun starts its daemons through SLURM and places n ranks in it
exec {mpi} -n {n} {program_and_args} --mpi
"""


def engine_env(extra: Optional[dict] = None, placement: Optional[Placement] = None) -> dict:
    """What the engines get on top of the notebook's environment: gmmkit's OpenMPI settings (those the user
    has not set; with ``placement``, where the engines run, the network they talk over), a quiet TensorFlow,
    and ``extra``."""
    env = launch.mpi_settings(placement=placement)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env.update(extra or {})
    return env


def mpi_args(n: int, placement: Placement, extra_args: Sequence[str] = (), env: Optional[dict] = None) -> list[str]:
    """mpiexec's arguments for n engines: the placement's (as ``gmmkit train --workers n`` gets them), with
    ipyparallel's variables forwarded, then ``extra_args``."""
    env = {**os.environ, **(env or {})}
    return launch.placement_args(n, placement, env, also=IPP_VARIABLES) + [str(a) for a in extra_args]


def mpi_engine_config(n: int, placement: Placement, extra_args: Sequence[str], env: dict) -> Config:
    """ipyparallel's configuration of n mpiexec engines. In the cluster's config, not in one call's arguments,
    so that ipyparallel's own ``restart_engines`` starts them the same way."""
    config = Config()
    config.MPIEngineSetLauncher.mpi_args = mpi_args(n, placement, extra_args, env)
    config.MPIEngineSetLauncher.environment = dict(env)
    return config


def slurm_engine_config(
    n: int, env: dict, sbatch_options: Sequence[str] = (), extra_args: Sequence[str] = ()
) -> Config:
    """ipyparallel's configuration of n engines started as one SLURM job (:data:`SLURM_ENGINES`);
    ``sbatch_options``: further ``#SBATCH`` options such as ``--partition=gpu`` or ``--nodes=2``."""
    forward = launch.forward_args({**os.environ, **env}, also=IPP_VARIABLES)
    mpiexec = shlex.join(["mpiexec", *forward, *map(str, extra_args)])
    options = "\n".join(f"#SBATCH {option}" for option in sbatch_options)
    config = Config()
    template = SLURM_ENGINES.replace("{options}", _literal(options)).replace("{mpi}", _literal(mpiexec))
    config.SlurmEngineSetLauncher.batch_template = template
    config.SlurmEngineSetLauncher.environment = dict(env)
    return config


def _literal(text: str) -> str:
    """``text`` as it must appear in an ipyparallel template to come out unchanged."""
    return text.replace("{", "{{").replace("}", "}}")


def apply(cluster, config: Config) -> None:
    """Put ``config`` (:func:`mpi_engine_config` or :func:`slurm_engine_config`) into the ipyparallel ``cluster``'s
    own configuration, so that its ``restart_engines`` keeps it; a SLURM job's batch script goes to the cluster's
    log folder."""
    if "SlurmEngineSetLauncher" in config:
        config.SlurmEngineSetLauncher.batch_file_name = str(batch_file(cluster.profile_dir, cluster.cluster_id))
    for name, section in config.items():
        getattr(cluster.config, name).update(section)


def connection_files(profile_dir: str, cluster_id: str, cluster_file: str) -> list[Path]:
    """The cluster's files in the profile's ``security/`` directory: connection keys and cluster state."""
    security = Path(profile_dir) / "security"
    stem = f"ipcontroller-{cluster_id}-" if cluster_id else "ipcontroller-"
    found = [
        p
        for p in security.glob("*.json")
        if p.name.startswith(stem) and p.name[len(stem) :] in ("client.json", "engine.json")
    ]
    if Path(cluster_file).exists():
        found.append(Path(cluster_file))
    return sorted(found)


def secure(profile_dir: str, files: list[Path]) -> list[Path]:
    """Make ``files`` owner-only (600) and the profile's security directory 700; returns the files."""
    security = Path(profile_dir) / "security"
    if security.is_dir():
        security.chmod(stat.S_IRWXU)
    for path in files:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return files


def reaches(controller_ip: str, placement: Placement) -> bool:
    """Whether engines placed by ``placement`` can reach a controller listening on ``controller_ip``: not on
    a loopback address, unless every host is this machine."""
    try:
        loopback = ipaddress.ip_address(controller_ip).is_loopback
    except ValueError:
        loopback = controller_ip == "localhost"
    me = {"localhost", "127.0.0.1", os.uname().nodename, os.uname().nodename.split(".")[0]}
    return not loopback or placement.is_local or set(placement.names) <= me


def ended_output(engine_set) -> Optional[str]:
    """What an ipyparallel engine set's process (mpiexec) printed, once it has ended; None while it runs or
    when the set has no process here (a batch job, engines someone else started)."""
    process = getattr(engine_set, "process", None)
    if process is None:
        return None
    try:
        running = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        running = False
    return None if running else engine_set.get_output(remove=False)


def job_failure(engine_sets: dict, ranks: Sequence) -> Optional[str]:
    """Why the MPI job of one of ipyparallel's ``engine_sets`` ended, once it has, from what mpiexec printed (its
    ``ranks``, :class:`~gmmkit.cluster.identity.Rank` in rank order, name the host and pid of each); None while
    they run."""
    for engine_set in list(engine_sets.values()):
        output = ended_output(engine_set)
        if output is not None:
            said = launch.rank_failure(output, [r.host for r in ranks] or None, [r.pid for r in ranks])
            return said or f"the engines' mpiexec ended: {output[-500:].strip()}"
    return None


def wait_until_started(cluster_file: str, timeout: float) -> bool:
    """Wait (up to ``timeout``) until the cluster file lists engine sets that have all been started (their
    count is final then); True when they had been at the first look."""
    deadline = time.monotonic() + timeout
    first = True
    while True:
        try:
            sets = (json.loads(Path(cluster_file).read_text()).get("engines") or {}).get("sets") or {}
        except (OSError, ValueError):
            sets = {}
        if (sets and all(es.get("state") != "before" for es in sets.values())) or time.monotonic() > deadline:
            return first
        first = False
        time.sleep(0.2)


def batch_file(profile_dir: str, cluster_id: str) -> Path:
    """Where the engines' SLURM batch script is written (ipyparallel's default: the working folder)."""
    folder = Path(profile_dir) / "log"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"slurm_engine-{cluster_id}.sbatch"
