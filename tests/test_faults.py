"""Reliability: a rank that dies mid-run, a long sweep that must not leak, and readers fed random input."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import signalled, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmmkit.config import RunConfig
from gmmkit.errors import InputError
from gmmkit.files import read_jsonl
from gmmkit.parallel.failures import HostFailure
from gmmkit.parallel.launch import mpi_env, rank_failure


def test_rank_failure_reads_what_mpirun_prints():
    killed = (
        "--------------------------------------------------------------------------\n"
        "mpirun noticed that process rank 1 with PID 4242 on node ci exited on signal 9 (Killed).\n"
    )
    assert rank_failure(killed) == "rank 1 (pid 4242 on ci) was killed by SIGKILL"
    failed = (
        "mpirun detected that one or more processes exited with non-zero status, thus causing\n"
        "the job to be terminated. The first process to do so was:\n\n"
        "  Process name: [[25703,1],2]\n  Exit code:    3\n"
    )
    assert rank_failure(failed) == "rank 2 exited with status 3"
    assert rank_failure("all good") is None
    # a rank ended before mpirun knew its pid: "pid 0" said nothing true
    early = "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 15 (Terminated).\n"
    assert rank_failure(early) == "rank 1 (vm) was killed by SIGTERM"
    assert rank_failure(early, pids=[4241, 4242]) == "rank 1 (pid 4242 on vm) was killed by SIGTERM"  # engines' own
    # a daemon that could not connect back (OpenMPI 4.1.4's block, word for word): the job never started
    unreached = (
        "------------------------------------------------------------\n"
        "A process or daemon was unable to complete a TCP connection\nto another process:\n"
        "  Local host:    gmk-node1\n  Remote host:   vm\n"
        "This is usually caused by a firewall on the remote host. Please\n"
    )
    assert rank_failure(unreached).startswith("host gmk-node1 could not connect back to mpirun")
    # the host's failures are of their own kind (the job did not start, or lost a host), a rank's are not
    lost = (
        "ORTE has lost communication with a remote daemon.\n\n  HNP daemon   : [[1,0],0] on node vm\n"
        "  Remote daemon: [[1,0],1] on node gmk-node1\n"
    )
    assert rank_failure(lost, hosts=["vm", "gmk-node1"]).startswith("host gmk-node1 (rank 1) was lost")
    assert [isinstance(rank_failure(t), HostFailure) for t in (unreached, lost, killed, failed)] == [1, 1, 0, 0]


def _rank_processes(root: psutil.Process, rank: str) -> list:
    found = []
    for child in root.children(recursive=True):
        try:
            if child.environ().get("OMPI_COMM_WORLD_RANK") == rank:
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.mpi
def test_a_dying_rank_is_named_stops_the_job_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, epochs=40, strategy="strong", workers=2)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    cmd = [sys.executable, "-m", "gmmkit", "train", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env())
    try:
        deadline = time.monotonic() + 300
        while len(read_jsonl(run / "metrics.jsonl")) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
            time.sleep(0.2)
        victims = _rank_processes(psutil.Process(proc.pid), "1")
        assert len(victims) == 1
        victims[0].kill()
        _, stderr = proc.communicate(timeout=30)  # a bounded wait: mpirun ends the job, nothing hangs
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 1" in stderr and "SIGKILL" in stderr and "--resume" in stderr
    assert "-----" not in stderr and "mpirun noticed" not in stderr, stderr  # said in gmmkit's words only
    assert not _rank_processes(psutil.Process(), "0")  # no rank left behind
    finished = read_jsonl(run / "metrics.jsonl")  # every line whole
    assert finished and [r["epoch"] for r in finished] == list(range(1, len(finished) + 1))

    # --resume continues from the last checkpoint to the end
    more = cfg.replace(train={"epochs": len(finished) + 1})
    cfg_file.write_text(more.to_json())
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=mpi_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == list(range(1, len(finished) + 2))
    assert json.loads((run / "summary.json").read_text())["status"] == "max_epochs"


@pytest.mark.mpi
def test_a_dying_rank_in_a_sweep_fails_its_batch_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    cfg_file = tmp_path / "base.json"
    base = tiny_config(tmp_path / "unused", epochs=6).replace(data={"size": 64, "val_size": 16, "train_size": 48})
    cfg_file.write_text(base.to_json())
    cmd = [
        sys.executable,
        "-m",
        "gmmkit",
        "sweep",
        "--config",
        str(cfg_file),
        "--strategies",
        "strong,lsr",
        "--workers",
        "1,2,4",
        "--max-real",
        "2",
        "--simulate",
        "--no-calibrate",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env())
    stderr_lines = []  # (arrival time, line)
    reader = threading.Thread(
        target=lambda: stderr_lines.extend((time.monotonic(), ln) for ln in proc.stderr), daemon=True
    )
    reader.start()
    killed = out / "runs" / "strong-n2"  # the first run of the n = 2 job (strong, then lsr)
    try:
        deadline = time.monotonic() + 300
        while len(read_jsonl(killed / "metrics.jsonl")) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before the real runs"
            time.sleep(0.1)
        job = psutil.Process(proc.pid).children(recursive=True)  # mpirun and both ranks
        (victim,) = _rank_processes(psutil.Process(proc.pid), "1")
        victim.kill()
        deadline = time.monotonic() + 30  # a bounded wait: the dead rank is named while the sweep goes on
        while not any("rank 1" in line and "SIGKILL" in line for _, line in stderr_lines):
            assert time.monotonic() < deadline, "".join(line for _, line in stderr_lines)
            time.sleep(0.1)
        stdout = proc.stdout.read()
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert not [p for p in job if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no rank left behind
    # both runs of the job are failed, with the dead rank named; the killed one keeps its finished epochs
    runs = {(r["strategy"], r["workers"]): r for r in json.loads((out / "results.json").read_text())["runs"]}
    for strategy in ("strong", "lsr"):
        assert runs[(strategy, 2)]["status"] == "failed" and "rank 1" in runs[(strategy, 2)]["error"]
    finished = read_jsonl(killed / "metrics.jsonl")
    assert 1 <= len(finished) < 6 and [r["epoch"] for r in finished] == list(range(1, len(finished) + 1))
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "failed" and "SIGKILL" in summary["error"] and summary["epochs"] == len(finished)
    assert "rank 1" in (out / "logs" / "real-n2.log").read_text()
    # the sequential and simulated runs are intact
    for key in (("strong", 1), ("lsr", 1), ("strong", 4), ("lsr", 4)):
        assert runs[key]["status"] == "max_epochs" and runs[key]["epochs"] == 6, runs[key]
        assert len(read_jsonl(os.path.join(runs[key]["run_dir"], "metrics.jsonl"))) == 6
    assert "| 2 | real | failed |" in stdout and "| 4 | simulated | max_epochs |" in stdout


@pytest.mark.mpi
def test_a_sweep_stopped_in_its_real_runs_leaves_no_stop_behind(tmp_path):
    """Ctrl-C while weak n=2 ran: strong n=2, the batch's finished run, kept a STOP (its next --resume stopped at
    once). A stop belongs to the run that was asked: the one in progress ends stopped, the rest of the batch
    is not started, and no STOP, temporary file or process is left."""
    out = tmp_path / "sweep"
    cfg_file = tmp_path / "base.json"
    cfg_file.write_text(tiny_config(tmp_path / "unused", epochs=3).to_json())
    args = ["sweep", "--config", cfg_file, "--strategies", "strong,weak,lsr", "--workers", "1,2", "--max-real", "2"]
    weak, ranks = out / "runs" / "weak-n2", []

    def weak_begun(proc, _) -> bool:  # the job's second run has begun: its ranks wait while the sweep is stopped
        if not (weak / "config.json").exists():
            return False
        ranks.extend(_rank_processes(psutil.Process(proc.pid), "0") + _rank_processes(psutil.Process(proc.pid), "1"))
        for rank in ranks:
            rank.suspend()
        return True

    def go_on() -> None:  # once the sweep has asked the job to stop
        deadline = time.monotonic() + 60
        while not (out / "logs" / "real-n2.stop").exists():
            assert time.monotonic() < deadline, "the sweep did not ask its job to stop"
            time.sleep(0.05)
        for rank in ranks:
            rank.resume()

    ended = signalled([*args, "--no-calibrate", "--out", out], weak_begun, signal.SIGINT, after=go_on)
    assert ended.code == 1 and not ended.left, (ended.stderr, ended.left)
    runs = {(r["strategy"], r["workers"]): r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs[("strong", 2)]["status"] == "max_epochs" and runs[("weak", 2)]["status"] == "stopped"
    assert runs[("lsr", 2)]["status"] == "stopped" and not (out / "runs" / "lsr-n2").exists()
    assert not list(out.rglob("STOP")) and not list(out.rglob("*.tmp")) and not list(out.rglob("*.stop"))
    print(f"sweep, Ctrl-C in a real run: ended {ended.seconds:.2f} s after it")


def test_a_sweep_of_twenty_one_runs_leaks_no_processes_or_memory(tmp_path):
    from gmmkit.study import sweep as study
    from gmmkit.study.config import StudyConfig
    from gmmkit.training import Trainer

    base = tiny_config(tmp_path / "unused", epochs=1, target_loss=1.0)
    trainer = Trainer(base, simulate=True)
    me = psutil.Process()
    before = set(me.children(recursive=True))  # what earlier tests left is theirs to answer for
    rss = []
    for i in range(2):
        grid = StudyConfig(run=base, workers=(1, 2, 3, 4, 5, 6), max_real=1, simulate=True, out=str(tmp_path / f"s{i}"))
        rows = study.sweep(grid, progress=False, trainer=trainer)
        assert len({(r.strategy, r.workers) for r in rows if r.workers > 1}) == 20
        assert all(r.status == "reached_target" for r in rows)
        rss.append(me.memory_info().rss)
    assert set(me.children(recursive=True)) - before == set()
    assert rss[1] - rss[0] < 64 * 2**20, f"memory grew by {(rss[1] - rss[0]) / 2**20:.0f} MiB over 21 runs"


# --- random input: a clear InputError or a valid result, never anything else ---------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
sections = st.fixed_dictionaries(
    {},
    optional={
        "data": st.dictionaries(
            st.sampled_from(["size", "val_size", "train_size", "cube", "dataset", "seed", "x"]), json_values, max_size=3
        ),
        "model": st.dictionaries(
            st.sampled_from(["components", "filters", "latent", "sigma_min", "sigma_max"]), json_values, max_size=3
        ),
        "train": st.dictionaries(
            st.sampled_from(
                ["strategy", "workers", "batch_size", "lr", "epochs", "target_loss", "warmup_epochs", "threads"]
            ),
            json_values,
            max_size=4,
        ),
        "out": json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(raw=sections | json_values)
def test_the_config_parser_accepts_or_names_the_field(raw):
    try:
        cfg = RunConfig.from_dict(raw)
    except InputError as exc:
        assert str(exc)
    else:
        assert RunConfig.from_json(cfg.to_json()) == cfg


MHD_KEYS = [
    "ObjectType",
    "NDims",
    "DimSize",
    "ElementSpacing",
    "Offset",
    "TransformMatrix",
    "ElementType",
    "ElementDataFile",
    "BinaryData",
    "CompressedData",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.tuples(st.sampled_from(MHD_KEYS), st.text(max_size=20)), max_size=8), raw=st.binary(max_size=64)
)
def test_the_metaimage_reader_reads_or_names_the_file(tmp_path, lines, raw):
    from gmmkit.data.images import read_image as read_mhd

    mhd = tmp_path / "scan.mhd"
    mhd.write_text("".join(f"{k} = {v}\n" for k, v in lines).replace("\x00", ""), encoding="utf-8", errors="replace")
    (tmp_path / "scan.raw").write_bytes(raw)
    try:
        read_mhd(mhd)
    except InputError as exc:
        assert "scan.mhd" in str(exc) or "scan.raw" in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list('seriuidcoordXYZ,.-0123456789e\n "_ab')), max_size=200))
def test_the_annotations_reader_reads_or_names_the_file(tmp_path, text):
    from gmmkit.data.luna import read_annotations

    csv = tmp_path / "annotations.csv"
    csv.write_text(text)
    try:
        read_annotations(csv)
    except InputError as exc:
        assert "annotations.csv" in str(exc)


def test_ctrl_c_ends_a_run_as_stopped_with_its_files(tmp_path):
    import signal

    run = tmp_path / "run"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(tiny_config(run, epochs=40).to_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmmkit", "train", "--config", str(cfg_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(read_jsonl(run / "metrics.jsonl")) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run / "summary.json").read_text())
    assert proc.returncode == 1 and summary["status"] == "stopped" and "status stopped" in stdout
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, summary["epochs"] + 1))
    assert (run / "checkpoint.npz").exists()


@pytest.mark.mpi
def test_ctrl_c_stops_a_multi_rank_run_after_its_step(tmp_path):
    import signal

    run = tmp_path / "run"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(tiny_config(run, epochs=40, workers=2).to_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmmkit", "train", "--config", str(cfg_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=mpi_env(),
    )
    try:
        deadline = time.monotonic() + 300
        while len(read_jsonl(run / "metrics.jsonl")) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to gmmkit (the job has its own session)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["workers"] == 2, stderr
    assert proc.returncode == 1 and "stopping after the current step" in stderr
    assert "-----" not in stderr and "aborted" not in stderr, stderr  # a clean stop: no banner of mpirun's
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, summary["epochs"] + 1))
    assert not _rank_processes(psutil.Process(), "0")


def test_a_sweep_goes_on_past_diverged_runs(tmp_path):
    from gmmkit.study import sweep as study
    from gmmkit.study.config import StudyConfig

    base = tiny_config(tmp_path / "unused", epochs=4, lr=1e4, target_loss=0.001)
    grid = StudyConfig(
        run=base, strategies=("strong", "lsr"), workers=(1, 2), max_real=1, simulate=True, out=str(tmp_path / "sweep")
    )
    rows = study.sweep(grid, progress=False)
    assert [(r.strategy, r.workers, r.status) for r in rows] == [
        ("strong", 1, "diverged"),
        ("strong", 2, "diverged"),
        ("lsr", 1, "diverged"),
        ("lsr", 2, "diverged"),
    ]
    for r in rows:  # each log intact up to its last epoch
        records = read_jsonl(os.path.join(r.run_dir, "metrics.jsonl"))
        assert 1 <= len(records) == r.epochs < 4
    assert "| 2 | simulated | diverged |" in (tmp_path / "sweep" / "tables.md").read_text()
