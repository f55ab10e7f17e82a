"""Shared test helpers: quiet TensorFlow, a private phantom cache, one tiny-config builder, one Horovod
marker, one notebook executor, ``gmmkit train`` as a user runs it."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import psutil  # noqa: E402
import pytest  # noqa: E402

from gmmkit.config import RunConfig  # noqa: E402
from gmmkit.files import read_jsonl  # noqa: E402
from gmmkit.parallel.launch import mpi_env, mpirun_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="Horovod is not installed (make setup builds it)"
)

# emulated hosts and a real SLURM (issue 17): fixtures emulated_hosts, slurm_cluster
pytest_plugins = ["support.fixtures"]


# `make test` runs the suite on two pytest-xdist workers. Each file's tests go to one worker, so its
# module-scoped fixtures (a cluster, a reference run) are made once, and the files that use the emulated hosts
# or SLURM all go to the same one: only one set of hosts can exist on the machine at a time. (xdist's own
# `--dist loadgroup` no longer groups under pytest 9.2: pytest-xdist issue #1386.)
HOSTS_FILES = {
    "test_elastic_hosts.py",
    "test_emulated_hosts.py",
    "test_hosts_cli.py",
    "test_hosts_notebook.py",
    "test_slurm_jobs.py",
}
HOSTS_FIXTURES = {"emulated_hosts", "slurm_cluster"}  # not hosts_pool: every test asks for it (autouse checkup)


# The longest units first, longest to shortest (measured with two workers on 2 cores: about 5.5 minutes for the
# hosts, 2.5 each for test_runs and test_exact_runs, 1.5 to 1 for the next ones), so that no long one is left for
# the end while the other worker idles; the rest, each under a minute, follow in file order.
FIRST = [
    "hosts",
    "tests/test_lanes.py",  # the current lane's longest unit (make test-current); skipped at once in the main suite
    "tests/test_runs.py",
    "tests/test_exact_runs.py",
    "tests/test_mid_epoch.py",
    "tests/test_horovod.py",
    "tests/test_backends.py",
    "tests/test_faults.py",
    "tests/test_browser.py",
    "tests/test_cluster.py",
    "tests/test_notebooks.py",
    "tests/test_bench.py",
]


def work_unit(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or "hosts" for every file that uses the emulated hosts."""
    path = nodeid.split("::", 1)[0]
    return "hosts" if Path(path).name in HOSTS_FILES else path


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's; without xdist (-p no:xdist) never called
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # the collection's order (below), not the largest count of tests first
    return ByFile(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(
        key=lambda item: FIRST.index(work_unit(item.nodeid)) if work_unit(item.nodeid) in FIRST else len(FIRST)
    )  # stable: the rest keep their order
    strays = sorted(
        {item.path.name for item in items if HOSTS_FIXTURES & set(getattr(item, "fixturenames", ()))} - HOSTS_FILES
    )
    if strays:
        raise pytest.UsageError(
            f"{', '.join(strays)} use the emulated hosts: add them to HOSTS_FILES in "
            "tests/conftest.py (one worker holds the hosts)"
        )


@pytest.fixture(scope="session", autouse=True)
def _phantom_cache(tmp_path_factory):
    """The session's own data cache (never the user's), one for all xdist workers: a data set is built once
    (about 50 s for the LIDC-shaped phantoms) while the others wait on the cache's lock."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's popen-gwN
    (root / "gmmkit-cache").mkdir(exist_ok=True)
    os.environ["GMMKIT_CACHE"] = str(root / "gmmkit-cache")


def tiny_config(out, data: dict | None = None, model: dict | None = None, **train) -> RunConfig:
    """A run that trains in seconds: 96 phantom cubes (24 for validation), K = 4, batch 8, one thread, two
    epochs; ``data``, ``model`` and keyword arguments (``train`` fields) change any of it."""
    return RunConfig().replace(
        data={"dataset": "phantoms", "size": 120, "val_size": 24, "train_size": 96, **(data or {})},
        model={"components": 4, "latent": 32, "filters": 8, **(model or {})},
        train={"epochs": 2, "batch_size": 8, "target_loss": None, "threads": 1, **train},
        out=str(out),
    )


@pytest.fixture
def tiny(tmp_path):
    return tiny_config(tmp_path / "run")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One sequential 3-epoch run shared by every test that compares against the sequential path:
    ``(config, run directory, summary)``."""
    from gmmkit.training import train

    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = tiny_config(out, epochs=3, lr=2e-3)
    return cfg, out, train(cfg)


def execute_notebook(name: str, cwd: Path, parameters: dict, timeout: int = 600):
    """Run ``notebooks/NAME`` top to bottom with papermill in ``cwd`` (the cell tagged ``parameters``
    replaced); returns the executed notebook."""
    import nbformat
    import papermill

    out = cwd / name
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(out),
        parameters=parameters,
        cwd=str(cwd),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=timeout,
    )
    return nbformat.read(out, as_version=4)


def notebook_outputs(nb, kind: str | None = None) -> list:
    """Every output of an executed notebook (those holding ``kind``, e.g. a MIME type, when given)."""
    found = [o for c in nb.cells for o in c.get("outputs", [])]
    return [o for o in found if kind in o.get("data", {})] if kind else found


def notebook_text(nb) -> str:
    """All text an executed notebook printed or displayed."""
    parts = []
    for output in notebook_outputs(nb):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def wait_for(condition, proc=None, timeout=300, what="the condition"):
    """Wait until ``condition()`` holds: the event itself, however fast or slow the machine (``proc``: a process
    that must not end first)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the process ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def gmmkit_train(cfg, *flags, mpirun=None, timeout=900, python=sys.executable):
    """``gmmkit train --config cfg.json FLAGS`` as a user types it (optionally under ``mpirun -np N``), with
    ``python`` (another lane's venv: tests/test_lanes.py)."""
    out = cfg.out
    os.makedirs(out, exist_ok=True)
    cfg_file = os.path.join(out, "input-config.json")
    with open(cfg_file, "w") as fh:
        fh.write(cfg.to_json())
    cmd = [str(python), "-m", "gmmkit", "train", "--config", cfg_file, *flags]
    if mpirun:
        cmd = mpirun_command(mpirun, cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env())
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout, json.loads((open(os.path.join(out, "summary.json")).read()))


# ``python -c KILLED_AT_RENAME TEXT ARGS``: gmmkit ARGS in a process that kills itself (SIGKILL) at the rename that
# would publish a file whose path holds TEXT: a real kill at the one moment a temporary file is complete and
# not yet in place.
KILLED_AT_RENAME = (
    "import os, signal, sys\n"
    "replace = os.replace\n"
    "def replace_or_die(src, dst, *args, **kwargs):\n"
    "    if sys.argv[1] in os.fspath(dst):\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return replace(src, dst, *args, **kwargs)\n"
    "os.replace = replace_or_die\n"
    "from gmmkit.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def killed_at_rename(text: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``gmmkit ARGS`` until it renames a file whose path holds ``text``, where it is killed."""
    cmd = [sys.executable, "-c", KILLED_AT_RENAME, text, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == -9, f"not killed at the rename of {text}: {proc.returncode}\n{proc.stderr}"
    return proc


@dataclass
class Signalled:
    """How a command that was sent a signal ended: its exit ``code``, what it printed, the ``seconds`` from the
    signal to its end, and the processes it had started that were still there ``left`` (bounded wait)."""

    code: int
    stdout: str
    stderr: str
    seconds: float
    left: list


def signalled(
    args, ready, sig=signal.SIGTERM, group: bool = False, env=None, timeout: float = 300, after=None
) -> Signalled:
    """Run ``gmmkit ARGS`` (in a session of its own) and send it ``sig`` once ``ready(proc, stdout so far)``
    says so (a point of its own progress: its files, its output, its processes); ``group``: to its whole
    process group, as a terminal's Ctrl-C; ``after()`` is called once it is sent. Every process it started
    meanwhile must end with it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmmkit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or mpi_env(),
        start_new_session=True,
    )
    out, err = [], []
    readers = [
        threading.Thread(target=lambda s=stream, into=into: into.extend(iter(s.readline, "")), daemon=True)
        for stream, into in ((proc.stdout, out), (proc.stderr, err))
    ]
    for reader in readers:
        reader.start()
    seen: set = set()
    try:
        deadline = time.monotonic() + timeout
        while not ready(proc, "".join(out)):
            with contextlib.suppress(psutil.NoSuchProcess):
                seen |= set(psutil.Process(proc.pid).children(recursive=True))
            assert proc.poll() is None, f"it ended before the moment to signal it: {''.join(out)}{''.join(err)}"
            assert time.monotonic() < deadline, f"the moment to signal it did not come within {timeout} s"
            time.sleep(0.05)
        with contextlib.suppress(psutil.NoSuchProcess):
            seen |= set(psutil.Process(proc.pid).children(recursive=True))
        sent = time.monotonic()
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        if after is not None:
            after()
        proc.wait(timeout=timeout)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for reader in readers:
        reader.join(timeout=30)
    deadline = time.monotonic() + 30
    while True:  # helpers (a pool's forkserver) end with it, not necessarily before it
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    names = []
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(" ".join(p.cmdline()[:4]))
            p.kill()
    return Signalled(proc.returncode, "".join(out), "".join(err), seconds, names)


def descendants(proc) -> int:
    """How many processes ``proc`` has started that are running."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return len(psutil.Process(proc.pid).children(recursive=True))
    return 0


def losses(run_dir, key="val_loss"):
    return [r[key] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]
