"""An ipyparallel cluster whose engines are the ranks of one MPI job, driven from a notebook.

The package :mod:`gmmkit.cluster` is the only one that imports ipyparallel. ``MPICluster(n=4).start()`` does
from Python what

    ipcluster start --engines=MPI -n 4

does from a shell: one controller, and n engines started by a single ``mpiexec -n 4``, so the engines are
ranks 0..3 of one MPI world and Horovod can run across them. ``MPICluster.connect(cluster_id=...)`` attaches
to a cluster someone already started that way. Both are context managers::

    with MPICluster(n=2) as cluster:
        print(cluster.rank_map())        # {engine id: Rank(0, host='node1', local_rank=0), ...}
        run = cluster.train(cfg)         # returns at once; rank 0 streams each epoch
        ...                              # the notebook stays free: look at run.metrics
        summary = run.wait()             # or run.stop() to end it after the current step

What it takes care of:

* **Ranks.** Engine ids are whatever the controller handed out; :meth:`MPICluster.rank_map` asks each
  engine for its MPI rank and host, so "rank 0" (the chief, which writes the run directory and streams
  metrics) is found explicitly, never assumed to be engine 0.
* **Hosts.** ``hosts="a:2,b:2"``, ``hostfile=...`` or a SLURM allocation the notebook runs in place the
  engines exactly as ``gmmkit train`` places its ranks (:mod:`gmmkit.parallel.placement`); ``slots`` is
  how many engines fit. :meth:`MPICluster.slurm` starts the engines as a SLURM job instead. Engines on
  other hosts connect back to the controller, so it must listen where they reach it: ``controller_ip``.
* **World size.** An MPI world is fixed when mpiexec starts it: :meth:`MPICluster.resize` restarts the engines.
* **Launch environment.** The engines' mpiexec gets the same placement flags, forwarded variables and
  OpenMPI settings as ``gmmkit train``, set in the cluster's configuration, so ipyparallel's own
  ``restart_engines`` keeps them (:mod:`gmmkit.cluster.engines`). Each rank runs TensorFlow with its
  host's ``cores / local ranks`` threads unless ``train.threads`` says otherwise.
* **Exposure.** The controller listens on 127.0.0.1 only unless ``controller_ip`` says otherwise, and the
  connection files, which hold the key without which nothing runs on the engines, are mode 600.
* **Runs.** :meth:`MPICluster.train` returns a :class:`~gmmkit.cluster.training_run.TrainingRun` at once, rank 0
  streaming each epoch to the notebook. When the engines' MPI job ends under it (a rank died, a host was lost),
  ``wait()`` raises naming the rank or the host and :meth:`MPICluster.restart` starts a fresh world; an elastic
  run (``train.elastic``) does that itself on the hosts that answer and goes on (:mod:`gmmkit.cluster.elastic`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import ipyparallel as ipp
from traitlets.config import Config

from ..config import RunConfig
from ..errors import InputError, LaunchError
from ..parallel import placement as placing
from ..parallel.placement import Placement
from . import engines, identity
from .elastic import ElasticRun
from .identity import Rank
from .training_run import TrainingRun, engine_train

DEFAULT_ENGINE_TIMEOUT = 120.0


class MPICluster:
    """A controller and n MPI-rank engines, here or on other hosts; see the module docstring.

    Keyword arguments:

    ``n``               number of engines = MPI ranks = workers (one per GPU on a GPU machine)
    ``profile``, ``profile_dir``  the IPython profile holding the connection files (default: ipyparallel's)
    ``cluster_id``      a name for the cluster (default: a fresh one); ``connect`` finds clusters by it
    ``controller_ip``   interface the controller listens on: ``"127.0.0.1"`` (default, this machine only);
                        anything else exposes it to the network, so pass it only when engines run elsewhere
    ``engine_timeout``  seconds to wait for the engines to register
    ``mpi_args``        extra arguments for the engines' mpiexec
    ``env``             extra environment variables for the engines
    ``hosts``, ``hostfile``, ``placement``
                        where the engines run, as ``gmmkit train --hosts/--hostfile`` (default: the SLURM
                        allocation this runs in, else this machine); the profile folder must then be on a
                        file system those hosts see
    """

    def __init__(
        self,
        n: int = 2,
        *,
        profile: Optional[str] = None,
        profile_dir: Optional[str] = None,
        cluster_id: Optional[str] = None,
        controller_ip: str = "127.0.0.1",
        engine_timeout: float = DEFAULT_ENGINE_TIMEOUT,
        mpi_args: Sequence[str] = (),
        env: Optional[dict] = None,
        hosts: Optional[str] = None,
        hostfile: Optional[str] = None,
        placement: Optional[Placement] = None,
    ):
        _check_n(n)
        if not isinstance(controller_ip, str) or not controller_ip:
            raise InputError(
                f"controller_ip: expected an interface address such as '127.0.0.1', received {controller_ip!r}"
            )
        self.placement = placement.validate() if placement is not None else placing.resolve(hosts, hostfile)
        self.placement.check_workers(n, "n")
        if not engines.reaches(controller_ip, self.placement):
            raise InputError(
                f"controller_ip: the engines on {self.placement.describe()} cannot reach a controller "
                f"on {controller_ip}; pass the address of this machine that they reach"
            )
        self.engine_kind = "mpi"
        self.sbatch_options: list[str] = []
        self.n = n
        self.profile, self.profile_dir, self.cluster_id = profile, profile_dir, cluster_id
        self.controller_ip = controller_ip
        self.engine_timeout = float(engine_timeout)
        self.mpi_args = [str(a) for a in mpi_args]
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.owned = True  # started here: stopping the context stops the cluster
        self._cluster: Optional[ipp.Cluster] = None
        self._client: Optional[ipp.Client] = None
        self._ranks: Optional[dict[int, Rank]] = None
        self._active: Optional[TrainingRun | ElasticRun] = None

    @classmethod
    def slurm(cls, n: int = 2, *, controller_ip: str, sbatch_options: Sequence[str] = (), **kwargs) -> "MPICluster":
        """A cluster whose n engines are one SLURM job (``sbatch``, ipyparallel's ``SlurmEngineSetLauncher``)
        running ``mpiexec`` over its allocation: from a notebook on a login node, engines on compute nodes.
        ``controller_ip``: this machine's address on the network the compute nodes reach;
        ``sbatch_options``: e.g. ``["--partition=gpu", "--nodes=2", "--gres=gpu:4", "--time=2:00:00"]``.
        The job's tasks are its slots; :meth:`resize` submits a new job."""
        self = cls(n, controller_ip=controller_ip, placement=placing.LOCAL, **kwargs)
        self.engine_kind = "slurm"
        self.sbatch_options = [str(o) for o in sbatch_options]
        return self

    @property
    def slots(self) -> int:
        """How many engines this cluster can run: the slots of its hosts (or of the SLURM allocation), this
        machine's cores, or for :meth:`slurm`, the engines its job asked for (a larger job can be asked for)."""
        return self.n if self.engine_kind == "slurm" else self.placement.slots

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        cid = self._cluster.cluster_id if self._cluster is not None else self.cluster_id
        return f"MPICluster(n={self.n}, cluster_id={cid!r}, {state})"

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "MPICluster":
        """Start the controller and n engines under one mpiexec, connect, and wait for them to register."""
        if self.running:
            return self
        if shutil.which("mpiexec") is None:
            raise LaunchError(
                "mpiexec is not on PATH: install OpenMPI (apt-get install openmpi-bin "
                "libopenmpi-dev) or run scripts/setup-env.sh"
            )
        kwargs = {"engines": self.engine_kind, "n": self.n, "controller_ip": self.controller_ip}
        kwargs.update(engine_timeout=int(self.engine_timeout), controller_args=engines.CONTROLLER_ARGS)
        kwargs["config"] = self._engine_config()
        for name in ("profile", "profile_dir", "cluster_id"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        self._cluster = ipp.Cluster(**kwargs)
        self.cluster_id = self._cluster.cluster_id
        try:
            self._cluster.start_controller_sync(connection_info_timeout=self.engine_timeout)
            self.secure()
            self._start_engines(self.n)
            self._client = self._cluster.connect_client_sync()
            self._wait_for_engines(self.n)
        except BaseException:
            self.stop()
            raise
        self.secure()
        return self

    @classmethod
    def connect(
        cls,
        cluster_id: str = "",
        profile: Optional[str] = None,
        profile_dir: Optional[str] = None,
        timeout: float = 60.0,
        **kwargs,
    ) -> "MPICluster":
        """Attach to a cluster started with ``ipcluster start --engines=MPI -n N [--cluster-id=ID]``.

        Waits up to ``timeout`` seconds for its engines. Leaving the context (or :meth:`close`) only
        disconnects; :meth:`stop` stops it, as ``ipcluster stop`` would.
        """
        found = {k: v for k, v in (("profile", profile), ("profile_dir", profile_dir)) if v is not None}
        try:
            cluster = ipp.Cluster.from_file(cluster_id=cluster_id, **found)
        except FileNotFoundError:
            where = profile_dir or f"profile {profile or 'default'}"
            raise LaunchError(
                f"cluster_id {cluster_id!r}: no running cluster in {where} (expected the file "
                f"security/cluster-{cluster_id}.json that 'ipcluster start' writes)"
            ) from None
        if not engines.wait_until_started(cluster.cluster_file, timeout):  # ipcluster may still be starting them
            cluster = ipp.Cluster.from_file(cluster_id=cluster_id, **found)
        n = sum(int(getattr(es, "n", 0) or 0) for es in cluster.engines.values())
        given = (kwargs.pop("hosts", None), kwargs.pop("hostfile", None))
        where = kwargs.pop("placement", None) or placing.resolve(*given)
        self = cls(
            max(n, 1),
            profile=profile,
            profile_dir=cluster.profile_dir,
            cluster_id=cluster.cluster_id,
            placement=placing.LOCAL,
            **kwargs,
        )
        self.placement = where  # its slots; the engines already run wherever their starter put them
        self.owned = False
        self._cluster = cluster
        self._client = cluster.connect_client_sync()
        self._wait_for_engines(n or 1, timeout=timeout)
        self.n = len(self._client.ids)
        self.secure()
        return self

    def stop(self) -> None:
        """Stop the engines and the controller (also of a cluster this object only connected to)."""
        if self._active is not None and not self._active.done():
            try:
                self._active.stop(wait=True, timeout=15)
            except (RuntimeError, TimeoutError):  # its engines died or hang: stopping them is what is left
                pass
        self.close()
        if self._cluster is not None:
            self._cluster.stop_cluster_sync()
            self._cluster = None
        self._ranks = None

    def close(self) -> None:
        """Disconnect from the cluster, leaving it running."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "MPICluster":
        return self.start() if self.owned else self

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.stop()
        else:
            self.close()

    @property
    def running(self) -> bool:
        return self._client is not None and self._cluster is not None

    @property
    def client(self) -> ipp.Client:
        """The ipyparallel Client (for your own ``client[:].apply(...)`` calls)."""
        if self._client is None:
            raise LaunchError("the cluster is not running: call start() (or use it in a with-block)")
        return self._client

    # --- engines ---------------------------------------------------------------------------
    def engine_env(self) -> dict:
        """Environment the engines get on top of this process's: OpenMPI settings, quiet TF, ``env``."""
        return engines.engine_env(self.env, self.placement if self.engine_kind == "mpi" else None)

    def engine_mpi_args(self, n: int) -> list[str]:
        """mpiexec arguments of an n-rank engine set (the same placement as ``gmmkit train --workers n``)."""
        return engines.mpi_args(n, self.placement, self.mpi_args, self.engine_env())

    def _engine_config(self, n: Optional[int] = None, placement: Optional[Placement] = None) -> Config:
        n = self.n if n is None else n
        if self.engine_kind == "slurm":
            return engines.slurm_engine_config(n, self.engine_env(), self.sbatch_options, self.mpi_args)
        return engines.mpi_engine_config(n, placement or self.placement, self.mpi_args, self.engine_env())

    def _start_engines(self, n: int, placement: Optional[Placement] = None) -> None:
        engines.apply(self._cluster, self._engine_config(n, placement))
        self._cluster.start_engines_sync(n)
        self._ranks = None

    def stop_engines(self) -> None:
        """Stop the engines (their MPI job: what is left of a world that lost a rank), keeping the controller."""
        self._cluster.stop_engines_sync()
        self._ranks = None

    def start_engines(self, n: int, placement: Optional[Placement] = None, replacing: frozenset = frozenset()):
        """After :meth:`stop_engines`: n engines, one MPI world on ``placement``'s hosts (default: the cluster's,
        which stays its placement), once they answer (none of ``replacing``); an elastic run's restart."""
        self._start_engines(n, placement)
        self._wait_for_engines(n, replacing=replacing)
        self.n = n
        self.secure()
        return self

    def _wait_for_engines(self, n: int, timeout: Optional[float] = None, replacing: frozenset = frozenset()) -> None:
        """Wait until exactly ``n`` engines answer, none of them one of ``replacing`` (:func:`.identity.wait_for`)."""
        timeout = self.engine_timeout if timeout is None else timeout
        identity.wait_or_raise(self._client, n, timeout, replacing, self._cluster.engines or {})

    def resize(self, n: int) -> "MPICluster":
        """Run exactly n engines: restart them as one new n-rank MPI world (starts the cluster if stopped)."""
        _check_n(n)
        self.placement.check_workers(n, "n")
        if not self.running:
            self.n = n
            return self.start()
        if self._active is not None and not self._active.done():
            raise InputError("resize: a training run is in progress on the engines; stop it first")
        if n == self.n and len(self._client.ids) == n:
            return self
        return self._restart(n)

    def restart(self, n: Optional[int] = None) -> "MPICluster":
        """Restart the engines (as n ranks, default the current n), also in the middle of a stuck run."""
        n = self.n if n is None else n
        _check_n(n)
        self.placement.check_workers(n, "n")
        if not self.running:
            self.n = n
            return self.start()
        self._active = None
        return self._restart(n)

    def _restart(self, n: int) -> "MPICluster":
        replacing = frozenset((a["host"], a["pid"]) for a in identity.answering(self._client, 2.0).values())
        if n != self.n:  # a new engine set of another size
            self.stop_engines()
            return self.start_engines(n, replacing=replacing)
        engines.apply(self._cluster, self._engine_config(n))
        self._cluster.restart_engines_sync()  # ipyparallel's own: stop the MPI job, start it again
        self._ranks = None
        self._wait_for_engines(n, replacing=replacing)
        self.secure()
        return self

    def rank_map(self, refresh: bool = False) -> dict[int, Rank]:
        """``{engine id: Rank}``, each an int (the MPI rank) that also says its ``host`` and ``local_rank``;
        checked to be exactly ranks 0..n-1 of one world of size n."""
        if self._ranks is None or refresh or sorted(self._ranks) != sorted(self.client.ids):
            self._ranks = identity.rank_map(self.client)
        return dict(self._ranks)

    def hosts(self) -> list[str]:
        """The host of each rank, in rank order."""
        return [r.host for r in sorted(self.rank_map().values())]

    def engine_failure(self) -> Optional[str]:
        """Why the engines' MPI job ended, once it has (a rank died, a host was lost), from what mpiexec
        printed; None while it runs (or when it cannot be told: engines this object did not start)."""
        ranks = sorted(self._ranks.values()) if self._ranks else []  # hosts and pids: mpiexec says pid 0
        return engines.job_failure(self._cluster.engines if self._cluster is not None else {}, ranks)

    def engine_of_rank(self, rank: int) -> int:
        for engine, r in self.rank_map().items():
            if r == rank:
                return engine
        raise InputError(f"rank: expected 0..{self.n - 1}, received {rank!r}")

    # --- security --------------------------------------------------------------------------
    def connection_files(self) -> list[Path]:
        """The cluster's files in the profile's ``security/`` directory (connection keys, cluster state)."""
        if self._cluster is None:
            return []
        return engines.connection_files(self._cluster.profile_dir, self._cluster.cluster_id, self._cluster.cluster_file)

    def secure(self) -> list[Path]:
        """Make the connection files owner-only (600) and the security directory 700; returns the files."""
        if self._cluster is None:
            return []
        return engines.secure(self._cluster.profile_dir, self.connection_files())

    # --- training ----------------------------------------------------------------------------
    def train(self, cfg: RunConfig) -> "TrainingRun | ElasticRun":
        """Start ``cfg`` on every engine under Horovod and return at once with a :class:`TrainingRun` (an
        :class:`~gmmkit.cluster.elastic.ElasticRun` when ``cfg.train.elastic``: restarted when it loses a rank).

        ``cfg.train.workers`` must equal the number of engines (:meth:`resize` first to change it); a
        relative ``cfg.out`` is made absolute here, so notebook and engines agree on the run directory.
        """
        cfg = cfg.validate()
        if cfg.train.workers != self.n:
            raise InputError(
                f"train.workers: expected {self.n} (this cluster's MPI world), received "
                f"{cfg.train.workers}; call cluster.resize({cfg.train.workers}) first"
            )
        if self._active is not None and not self._active.done():
            raise InputError("train: a run is in progress on the engines; stop it or wait for it first")
        cfg = cfg.resolved()  # absolute paths: the engines' working directory may differ from the notebook's
        self._active = ElasticRun(self, cfg) if cfg.train.elastic else self.start_run(cfg)
        return self._active

    def start_run(self, cfg: RunConfig, resume: bool = False) -> TrainingRun:
        """``cfg`` (resolved, as many workers as engines) on every engine: a new run, or with ``resume`` the run
        its folder holds, continued from its last committed state; the run is not the cluster's to stop."""
        ranks = self.rank_map()
        results = {int(r): self.client[e].apply_async(engine_train, cfg.to_json(), resume) for e, r in ranks.items()}
        hosts = {int(r): r.host for r in ranks.values()}
        return TrainingRun(cfg, results, hosts=hosts, engine_failure=self.engine_failure)


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n: expected a positive number of engines (MPI ranks), received {n!r}")
