"""An ipyparallel cluster whose engines are the ranks of one MPI job, driven from a notebook.

This is the only module that imports ipyparallel. ``MPICluster(n=4).start()`` does from Python what

    ipcluster start --engines=MPI -n 4

does from a shell: one controller, and n engines started by a single ``mpiexec -n 4``, so the engines are
ranks 0..3 of one MPI world and Horovod can run across them. ``MPICluster.connect(cluster_id=...)`` attaches
to a cluster someone already started that way. Both are context managers::

    with MPICluster(n=2) as cluster:
        print(cluster.rank_map())        # {engine id: MPI rank}
        run = cluster.train(cfg)         # returns at once; rank 0 streams each epoch
        ...                              # the notebook stays free: look at run.metrics
        summary = run.wait()             # or run.stop() to end it after the current step

What it takes care of:

* **Ranks.** Engine ids are whatever the controller handed out; :meth:`MPICluster.rank_map` asks each
  engine for its MPI rank, so "rank 0" (the chief, which writes the run directory and streams metrics)
  is found explicitly, never assumed to be engine 0.
* **World size.** An MPI world is fixed when mpiexec starts it, so changing the number of workers restarts
  the engines: :meth:`MPICluster.resize`.
* **Launch environment.** The engines' mpiexec gets ``--bind-to none --map-by slot`` (and
  ``--oversubscribe`` when n exceeds this machine's cores), and OpenMPI's run-as-root switches when the
  user is root (:func:`gmmkit.launch.mpi_env`). Each rank runs TensorFlow with ``cores / ranks`` threads
  unless ``train.threads`` says otherwise (:mod:`gmmkit.distributed`).
* **Exposure.** The controller listens on 127.0.0.1 only, unless you pass ``controller_ip`` (e.g. ``"*"``
  for engines on other hosts), and the connection files, which hold the keys that let anyone who reads
  them run code on the engines, are made readable by their owner only (mode 600).
* **Streaming.** On every engine :func:`engine_train` calls :func:`gmmkit.training.train`; rank 0 publishes
  each epoch's record with ``ipyparallel.datapub.publish_data``, which arrives in the notebook's
  ``AsyncResult.data`` without the notebook waiting. Stop writes the run directory's ``STOP`` file; the
  training loop checks it at every step and all ranks agree through an allreduce, so the run ends cleanly
  with status ``stopped`` and the engines are free for the next run.
"""
from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Optional, Sequence

import ipyparallel as ipp

from . import launch
from .config import RunConfig
from .errors import InputError, LaunchError

METRIC_KEY = "epoch-{:06d}"
DEFAULT_ENGINE_TIMEOUT = 120.0


# --- functions that run on the engines (imports inside: they run in the engines' processes) -----------

def engine_rank() -> tuple[int, int]:
    """On an engine: ``(rank, size)`` of its MPI world."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


def engine_train(cfg_json: str) -> dict:
    """On every engine: train the run ``cfg_json`` describes under Horovod; returns the run summary.

    Rank 0 (the only rank that calls epoch callbacks) publishes each epoch's metrics record under the key
    ``epoch-NNNNNN``; the notebook reads them from ``AsyncResult.data`` while the run goes on.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ipyparallel.datapub import publish_data

    from gmmkit.config import RunConfig as Config
    from gmmkit.training import train

    cfg = Config.from_json(cfg_json)

    def publish(record: dict) -> None:
        publish_data({METRIC_KEY.format(int(record["epoch"])): dict(record)})

    return train(cfg, callbacks=[publish])


# --- the cluster ----------------------------------------------------------------------------

class MPICluster:
    """A controller and n MPI-rank engines on this machine; see the module docstring.

    Keyword arguments:

    ``n``               number of engines = MPI ranks = workers (one per GPU on a GPU machine)
    ``profile``, ``profile_dir``
                        the IPython profile whose ``security/`` directory holds the connection files
                        (default: ipyparallel's default profile)
    ``cluster_id``      a name for the cluster (default: a fresh one); ``connect`` finds clusters by it
    ``controller_ip``   interface the controller listens on: ``"127.0.0.1"`` (default, this machine only);
                        anything else exposes it to the network, so pass it only when engines run elsewhere
    ``engine_timeout``  seconds to wait for the engines to register
    ``mpi_args``        extra arguments for the engines' mpiexec
    ``env``             extra environment variables for the engines
    """

    def __init__(self, n: int = 2, *, profile: Optional[str] = None, profile_dir: Optional[str] = None,
                 cluster_id: Optional[str] = None, controller_ip: str = "127.0.0.1",
                 engine_timeout: float = DEFAULT_ENGINE_TIMEOUT, mpi_args: Sequence[str] = (),
                 env: Optional[dict] = None):
        _check_n(n)
        if not isinstance(controller_ip, str) or not controller_ip:
            raise InputError(f"controller_ip: expected an interface address such as '127.0.0.1', "
                             f"received {controller_ip!r}")
        self.n = n
        self.profile, self.profile_dir, self.cluster_id = profile, profile_dir, cluster_id
        self.controller_ip = controller_ip
        self.engine_timeout = float(engine_timeout)
        self.mpi_args = [str(a) for a in mpi_args]
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.owned = True  # started here: stopping the context stops the cluster
        self._cluster: Optional[ipp.Cluster] = None
        self._client: Optional[ipp.Client] = None
        self._ranks: Optional[dict[int, int]] = None
        self._active: Optional[TrainingRun] = None

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
            raise LaunchError("mpiexec is not on PATH: install OpenMPI (apt-get install openmpi-bin "
                              "libopenmpi-dev) or run scripts/setup-env.sh")
        kwargs = {"engines": "mpi", "n": self.n, "controller_ip": self.controller_ip,
                  "engine_timeout": int(self.engine_timeout)}
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
    def connect(cls, cluster_id: str = "", profile: Optional[str] = None, profile_dir: Optional[str] = None,
                timeout: float = 60.0, **kwargs) -> "MPICluster":
        """Attach to a cluster started with ``ipcluster start --engines=MPI -n N [--cluster-id=ID]``.

        Waits up to ``timeout`` seconds for its engines. Leaving the context (or :meth:`close`) only
        disconnects; :meth:`stop` stops it, as ``ipcluster stop`` would.
        """
        found = {k: v for k, v in (("profile", profile), ("profile_dir", profile_dir)) if v is not None}
        try:
            cluster = ipp.Cluster.from_file(cluster_id=cluster_id, **found)
        except FileNotFoundError:
            where = profile_dir or f"profile {profile or 'default'}"
            raise LaunchError(f"cluster_id {cluster_id!r}: no running cluster in {where} (expected the file "
                              f"security/cluster-{cluster_id}.json that 'ipcluster start' writes)") from None
        n = sum(int(getattr(es, "n", 0) or 0) for es in cluster.engines.values())
        self = cls(max(n, 1), profile=profile, profile_dir=cluster.profile_dir, cluster_id=cluster.cluster_id,
                   **kwargs)
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
            self._active.stop(wait=True, timeout=15)
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
        """Environment the engines get on top of this process's: run-as-root switches, quiet TF, ``env``."""
        extra = launch.mpi_env({})  # only OpenMPI's run-as-root switches, and only for root
        extra.setdefault("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        extra.update(self.env)
        return extra

    def engine_mpi_args(self, n: int) -> list[str]:
        """mpiexec arguments of an n-rank engine set (the same placement as ``gmmkit train --workers n``)."""
        args = ["--bind-to", "none", "--map-by", "slot"]
        if n > launch.available_cores():
            args.append("--oversubscribe")
        return args + self.mpi_args

    def _start_engines(self, n: int) -> None:
        self._cluster.start_engines_sync(n, mpi_args=self.engine_mpi_args(n), environment=self.engine_env())
        self._ranks = None

    def _wait_for_engines(self, n: int, timeout: Optional[float] = None) -> None:
        timeout = self.engine_timeout if timeout is None else timeout
        try:
            self._client.wait_for_engines(n, timeout=timeout)
        except TimeoutError:
            output = ""
            for engine_set in (self._cluster.engines or {}).values():
                output += engine_set.get_output(remove=False)[-3000:]
            raise LaunchError(f"expected {n} engines to register within {timeout:.0f} s, "
                              f"{len(self._client.ids)} did. Engine output:\n{output}") from None

    def resize(self, n: int) -> "MPICluster":
        """Run exactly n engines: restart them as one new n-rank MPI world (starts the cluster if stopped)."""
        _check_n(n)
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
        if not self.running:
            self.n = n
            return self.start()
        self._active = None
        return self._restart(n)

    def _restart(self, n: int) -> "MPICluster":
        self._cluster.stop_engines_sync()
        deadline = time.monotonic() + 30
        while self._client.ids and time.monotonic() < deadline:
            time.sleep(0.1)
        self._start_engines(n)
        self._wait_for_engines(n)
        self.n = n
        self.secure()
        return self

    def rank_map(self, refresh: bool = False) -> dict[int, int]:
        """``{engine id: MPI rank}``, checked to be exactly ranks 0..n-1 of one world of size n."""
        if self._ranks is not None and not refresh and sorted(self._ranks) == sorted(self.client.ids):
            return dict(self._ranks)
        ids = sorted(self.client.ids)
        answers = self.client[ids].apply_async(engine_rank).get(timeout=30)
        sizes = {size for _rank, size in answers}
        ranks = [rank for rank, _size in answers]
        if sizes != {len(ids)} or sorted(ranks) != list(range(len(ids))):
            raise LaunchError(f"engines {ids}: expected the ranks 0..{len(ids) - 1} of one MPI world, found ranks "
                              f"{ranks} of world sizes {sorted(sizes)}; start them with "
                              "'ipcluster start --engines=MPI' (or MPICluster)")
        self._ranks = dict(zip(ids, ranks))
        return dict(self._ranks)

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
        security = Path(self._cluster.profile_dir) / "security"
        cid = self._cluster.cluster_id
        stem = f"ipcontroller-{cid}-" if cid else "ipcontroller-"
        found = [p for p in security.glob("*.json")
                 if p.name.startswith(stem) and p.name[len(stem):] in ("client.json", "engine.json")]
        cluster_file = Path(self._cluster.cluster_file)
        if cluster_file.exists():
            found.append(cluster_file)
        return sorted(found)

    def secure(self) -> list[Path]:
        """Make the connection files owner-only (600) and the security directory 700; returns the files."""
        files = self.connection_files()
        if self._cluster is not None:
            security = Path(self._cluster.profile_dir) / "security"
            if security.is_dir():
                security.chmod(stat.S_IRWXU)
        for path in files:
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        return files

    # --- training ----------------------------------------------------------------------------
    def train(self, cfg: RunConfig) -> "TrainingRun":
        """Start ``cfg`` on every engine under Horovod and return at once with a :class:`TrainingRun`.

        ``cfg.train.workers`` must equal the number of engines (:meth:`resize` first to change it); a
        relative ``cfg.out`` is made absolute here, so notebook and engines agree on the run directory.
        """
        cfg = cfg.validate()
        if cfg.train.workers != self.n:
            raise InputError(f"train.workers: expected {self.n} (this cluster's MPI world), received "
                             f"{cfg.train.workers}; call cluster.resize({cfg.train.workers}) first")
        if self._active is not None and not self._active.done():
            raise InputError("train: a run is in progress on the engines; stop it or wait for it first")
        cfg = cfg.replace(out=os.path.abspath(cfg.out))
        ranks = self.rank_map()
        cfg_json = cfg.to_json()
        results = {rank: self.client[engine].apply_async(engine_train, cfg_json) for engine, rank in ranks.items()}
        self._active = TrainingRun(cfg, results)
        return self._active


class TrainingRun:
    """A run in progress on the engines.

    ``metrics``: the epoch records rank 0 has streamed so far; ``done()``; ``wait()`` returns the summary;
    ``stop()`` ends the run after its current step (status ``stopped``), leaving the engines usable.
    """

    def __init__(self, cfg: RunConfig, results: dict):
        from .training.rundir import RunDir

        if 0 not in results:
            raise InputError(f"results: expected one AsyncResult per rank including rank 0, received ranks "
                             f"{sorted(results)}")
        self.cfg = cfg
        self.run_dir = RunDir(cfg.out)
        self.results = results
        self.started = time.perf_counter()
        self.stop_requested_at: Optional[float] = None
        self.ended_at: Optional[float] = None

    def __repr__(self) -> str:
        return (f"TrainingRun({self.cfg.train.strategy}, workers={self.cfg.train.workers}, "
                f"epochs so far={len(self.metrics)}, {'done' if self.done() else 'running'})")

    @property
    def metrics(self) -> list[dict]:
        """Epoch records streamed by rank 0 so far, in epoch order."""
        self._keep_stop_request()
        data = self.results[0].data or {}
        return [dict(data[k]) for k in sorted(data) if k.startswith("epoch-")]

    def done(self) -> bool:
        finished = all(ar.done() for ar in self.results.values())
        if finished and self.ended_at is None:
            self.ended_at = time.perf_counter()
        elif not finished:
            self._keep_stop_request()
        return finished

    def wait(self, timeout: Optional[float] = None) -> dict:
        """Wait for every rank; returns rank 0's summary. A failure on any rank raises, naming the rank."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                failed = self._failures()
                hint = f" (rank {failed[0][0]} failed: {failed[0][1]})" if failed else ""
                raise TimeoutError(f"run {self.cfg.out}: still running after {timeout} s{hint}; if ranks are "
                                   "stuck, restart the engines with cluster.restart(n)")
            failed = self._failures()
            if failed:  # one rank died: the others wait in a collective forever
                rank, error = failed[0]
                raise RuntimeError(f"run {self.cfg.out}: rank {rank} failed: {error}; the other ranks may "
                                   "be blocked, restart the engines with cluster.restart(n)")
            time.sleep(0.05)
        failed = self._failures()
        if failed:
            rank, error = failed[0]
            raise RuntimeError(f"run {self.cfg.out}: rank {rank} failed: {error}")
        return self.results[0].get()

    def stop(self, wait: bool = True, timeout: float = 30.0) -> Optional[dict]:
        """Ask the run to stop after its current step; with ``wait``, return its summary once it has."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.perf_counter()
        if not self.done():
            self.run_dir.request_stop()
        return self.wait(timeout=timeout) if wait else None

    @property
    def summary(self) -> Optional[dict]:
        """Rank 0's summary once the run has ended, else None."""
        if not self.done() or self._failures():
            return None
        return self.results[0].get()

    @property
    def stop_seconds(self) -> Optional[float]:
        """Seconds from the stop request to the end of the run (None if not stopped or not ended)."""
        if self.stop_requested_at is None or not self.done():
            return None
        return self.ended_at - self.stop_requested_at

    def output(self, rank: int = 0) -> str:
        """What rank ``rank`` printed (stdout and stderr) so far."""
        ar = self.results[rank]
        return (ar.stdout or "") + (ar.stderr or "")

    def _failures(self) -> list[tuple[int, str]]:
        failed = []
        for rank, ar in sorted(self.results.items()):
            if ar.done():
                try:
                    ar.get(0)
                except Exception as exc:
                    failed.append((rank, _error_text(exc)))
        return failed

    def _keep_stop_request(self) -> None:
        # The run deletes a stale STOP file when it prepares its directory; a stop requested before that
        # moment is repeated here until the run has ended.
        if self.stop_requested_at is not None and not self.run_dir.stop_requested() \
                and not all(ar.done() for ar in self.results.values()):
            self.run_dir.request_stop()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ipp.error.RemoteError):
        return f"{exc.ename}: {exc.evalue}"
    return f"{type(exc).__name__}: {exc}"


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n: expected a positive number of engines (MPI ranks), received {n!r}")
