"""``gmmkit reproduce``: the claims logic against hand-made results (each claim holding and failing), and a
tiny grid through the whole protocol (range test, target, cap, claims) that, interrupted, resumes without
redoing what had finished and reaches the same claims."""

import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config

from gmmkit.files import read_jsonl
from gmmkit.study import claims
from gmmkit.study.report import RunResult
from gmmkit.study.reproduce import CAP, PAPER_LR, ReproduceConfig, progress_of
from gmmkit.training import RunDir


def row(strategy, n, status, eff=math.nan, epochs=3):
    return RunResult(strategy, n, "simulated", status, epochs, None, 1.0, f"/x/{strategy}-{n}", efficiency=eff)


def curve(losses):
    return [{"epoch": i + 1, "val_loss": v} for i, v in enumerate(losses)]


def papers_results(changes: dict | None = None):
    """Results as the paper reports them, at n = 2, 4, 8; ``changes`` break one thing at a time."""
    seq = [0.5, 0.3, 0.2, 0.15]
    rows = [
        row("strong", 1, "reached_target", 1.0),
        row("weak", 1, "reached_target", 1.0),
        row("lsr", 1, "reached_target", 1.0),
        row("warmup", 1, "reached_target", 1.0),
    ]
    curves = {("strong", 1): curve(seq)}
    for n, eff in ((2, 0.97), (4, 0.64), (8, 0.42)):
        rows += [
            row("strong", n, "reached_target", 0.9),
            row("weak", n, "reached_target", eff),
            row("lsr", n, "diverged"),
            row("warmup", n, "reached_target" if n < 8 else "max_epochs", 0.8),
        ]
        curves[("strong", n)] = curve(seq)
        curves[("warmup", n)] = curve([0.5, 0.3, 0.2, 0.15] if n < 8 else [0.3, 0.35, 0.4, 0.42, 0.42, 0.421, 0.419])
    for (strategy, n), value in (changes or {}).items():
        rows = [r if (r.strategy, r.workers) != (strategy, n) else value(r, curves) for r in rows]
    return rows, curves


def verdicts(rows, curves, **kw):
    return {c.id: c.holds for c in claims.evaluate(rows, curves, warmup_epochs=4, **kw)}


def test_every_claim_holds_on_the_papers_results():
    rows, curves = papers_results()
    found = claims.evaluate(rows, curves, exact=True, warmup_epochs=4)
    assert {c.id: c.holds for c in found} == {"C1": True, "C2": True, "C3": True, "C4": True, "C5": True}
    assert found[3].evidence["ceiling"] == pytest.approx(0.42) and found[3].evidence["fig3_workers"] == 8
    table = claims.to_markdown(found)
    assert table.count("| yes |") == 5 and "46.25 %" in table  # the paper's own figures beside the claims


def drifted(r, curves):
    curves[("strong", 4)] = curve([0.5, 0.3, 0.2000001, 0.15])
    return r


@pytest.mark.parametrize(
    "claim,change",
    [
        ("C1", {("strong", 4): drifted}),
        ("C2", {("strong", 8): lambda r, c: row("strong", 8, "max_epochs")}),
        ("C3", {("lsr", 2): lambda r, c: row("lsr", 2, "reached_target", 0.5)}),
        ("C4", {("warmup", 8): lambda r, c: row("warmup", 8, "reached_target", 0.3)}),  # converges everywhere
        ("C5", {("weak", 8): lambda r, c: row("weak", 8, "max_epochs")}),  # weak fails to converge
        ("C5", {("weak", 8): lambda r, c: row("weak", 8, "reached_target", 0.99)}),  # efficiency rises
    ],
)
def test_each_claim_fails_when_its_results_say_otherwise(claim, change):
    rows, curves = papers_results(change)
    found = verdicts(rows, curves, exact=True)
    assert found[claim] is False and all(v for k, v in found.items() if k != claim), found


def test_c1_in_default_mode_allows_rounding_but_not_drift():
    rows, curves = papers_results({("strong", 4): drifted})
    assert verdicts(rows, curves, exact=False, rtol=1e-4)["C1"] is True  # 5e-7 of drift: rounding
    assert verdicts(rows, curves, exact=True)["C1"] is False  # not the same bits


def test_c4_needs_the_loss_to_rise_with_the_rate_then_stay():
    flat = {("warmup", 8): lambda r, c: (c.__setitem__(("warmup", 8), curve([0.4] * 7)), r)[1]}
    assert verdicts(*papers_results(flat), exact=True)["C4"] is False  # no rise during warm-up
    wandering = {
        ("warmup", 8): lambda r, c: (c.__setitem__(("warmup", 8), curve([0.3, 0.4, 0.5, 0.6, 0.2, 0.6, 0.3])), r)[1]
    }
    assert verdicts(*papers_results(wandering), exact=True)["C4"] is False  # no ceiling


# --- the whole protocol on a tiny grid -------------------------------------------------------


def tiny_protocol(out, lr=None) -> ReproduceConfig:
    run = tiny_config(out / "unused", data={"size": 72, "val_size": 8, "train_size": 64}, warmup_epochs=2, epochs=1)
    return ReproduceConfig(
        out=str(out), run=run, target_epoch=2, workers=(1, 2, 4), max_real=1, lr_range=(1e-4, 1e-1, 20), lr=lr
    )


def outcome(out):
    """Each claim's verdict and the runs' statuses behind it (C5's verdict also weighs the efficiencies of
    simulated runs, whose times come from each reproduction's own calibration: its statuses are compared)."""
    found = json.loads((out / "claims.json").read_text())
    return {c["id"]: (c["holds"] if c["id"] != "C5" else None, c["evidence"].get("status")) for c in found}


# One reproduction in a process of its own (TensorFlow's threads, and with them oneDNN's bits, are set once per
# process): ``python -c REPRODUCE what.json``.
REPRODUCE = (
    "import json, sys\nfrom gmmkit.config import RunConfig\nfrom gmmkit.study.reproduce import ReproduceConfig,"
    " reproduce\nraw = json.load(open(sys.argv[1]))\nraw['run'] = RunConfig.from_dict(raw['run'])\n"
    "raw['workers'], raw['strategies'], raw['lr_range'] = map(tuple, (raw['workers'], raw['strategies'], "
    "raw['lr_range']))\nreproduce(ReproduceConfig(**raw), progress=False, say=lambda line: print(line, flush=True))\n"
)


def reproduction(out, tmp_path, lr=None) -> subprocess.Popen:
    cfg_file = tmp_path / f"{out.name}.json"
    cfg_file.write_text(json.dumps(tiny_protocol(out, lr).to_dict()))
    return subprocess.Popen(
        [sys.executable, "-c", REPRODUCE, str(cfg_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_the_protocol_end_to_end_and_resumed_after_an_interruption(tmp_path):
    straight = tmp_path / "straight"
    proc = reproduction(straight, tmp_path)
    assert proc.wait(timeout=600) == 0, proc.communicate()
    state = json.loads((straight / "protocol.json").read_text())
    # eta: the range test's suggestion, halved while the sequential run diverged (the tiny model's range test
    # climbs to its last rate, 0.1, at which the sequential run diverges)
    assert state["halvings"] >= 1 and state["lr"] == state["lr_found"] / 2 ** state["halvings"]
    seq = RunDir(straight / "runs" / "sequential-n1")
    assert seq.summary()["status"] == "max_epochs" and seq.summary()["epochs"] == 2
    assert seq.config().train.lr == state["lr"] and state["target"] > 0
    assert state["target"] == pytest.approx(seq.metrics()[-1]["val_loss"] * (1 + 1e-4))
    lsr = RunDir(straight / "runs" / "lsr-n4").config().train
    assert lsr.epochs == CAP * 2 and lsr.target_loss == pytest.approx(state["target"]) and lsr.lr == state["lr"]
    assert (straight / "lr_find" / "lr_find.json").exists() and (straight / "tables.md").exists()
    assert [c["id"] for c in json.loads((straight / "claims.json").read_text())] == ["C1", "C2", "C3", "C4", "C5"]

    # the same protocol, killed once a grid point has ended, then continued
    out = tmp_path / "resumed"
    proc = reproduction(out, tmp_path)
    deadline = time.monotonic() + 300
    while not [
        s
        for name, s in progress_of(out)["runs"].items()
        if name != "sequential-n1" and s in ("reached_target", "diverged", "max_epochs")
    ]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert_nothing_unmeasured(out)  # the grid was interrupted: no claim, and the tables say which runs stopped
    ended = {
        name: (out / "runs" / name / "state").resolve()
        for name, s in progress_of(out)["runs"].items()
        if s in ("reached_target", "diverged", "max_epochs")
    }
    assert ended
    proc = reproduction(out, tmp_path)  # continued
    assert proc.wait(timeout=600) == 0, proc.communicate()
    for name, state_dir in ended.items():  # runs that had ended were not run again
        assert (out / "runs" / name / "state").resolve() == state_dir
    assert outcome(out) == outcome(straight)
    assert all(s in ("reached_target", "diverged", "max_epochs") for s in progress_of(out)["runs"].values())


def test_at_the_papers_eta_no_range_test_runs_and_every_file_says_which_eta(tmp_path):
    """Issue 28: ``--lr paper`` fixes eta at 0.00105 for the sequential run and every strategy (no range test,
    no halving), and protocol.json, tables.md and claims.md say which eta and how it was chosen."""
    out = tmp_path / "paper"
    proc = reproduction(out, tmp_path, lr=PAPER_LR)
    assert proc.wait(timeout=600) == 0, proc.communicate()
    state = json.loads((out / "protocol.json").read_text())
    assert state["lr"] == PAPER_LR and state["halvings"] == 0 and "lr_found" not in state
    assert state["lr_choice"] == "the paper's (--lr paper)"
    assert not (out / "lr_find").exists()  # no range test ran
    for name in progress_of(out)["runs"]:
        assert RunDir(out / "runs" / name).config().train.lr == PAPER_LR, name
    for written in ("tables.md", "claims.md"):
        assert "eta = 0.00105: the paper's (--lr paper)" in (out / written).read_text(), written
    assert [c["id"] for c in json.loads((out / "claims.json").read_text())] == ["C1", "C2", "C3", "C4", "C5"]


def assert_nothing_unmeasured(out):
    """An interrupted reproduction's files: no claim evaluated, no target but a measured one, no temporary file."""
    assert not (out / "claims.json").exists() and not (out / "claims.md").exists()
    state = json.loads((out / "protocol.json").read_text()) if (out / "protocol.json").exists() else {}
    assert "target" not in state, state
    if (out / "results.json").exists():  # the sweep's tables: a target only if the sequential run set one
        target = json.loads((out / "results.json").read_text())["config"]["train"]["target_loss"]
        sequential = RunDir(out / "runs" / "sequential-n1").metrics()
        assert target is None or len(sequential) == 2, (target, sequential)
    assert not list(out.rglob("*.tmp"))


def test_a_reproduction_stopped_in_its_range_test_evaluates_nothing(tmp_path):
    """Ctrl-C during the range test: the test and the calibration ran to their end (72 s), then claims.json said
    every claim failed ("inf over 0 epochs") and protocol.json recorded the flag's default target."""
    out = tmp_path / "stopped"
    proc = reproduction(out, tmp_path)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any(b"learning-rate range test" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert_nothing_unmeasured(out)
    assert not (out / "lr_find").exists() and not (out / "runs").exists()


RECORDINGS = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduction"


@pytest.mark.parametrize("name", ["protocol-lr", "paper-lr"])
def test_a_recorded_reproduction_is_complete_and_its_c1_is_in_its_files(name):
    """benchmarks/reproduction/NAME (REPRODUCTION.md): every grid point ended, the five claims were written,
    the eta line says how eta was chosen, and C1 ("identical") agrees with the runs' own metrics: each strong
    run's losses equal the sequential run's."""
    recorded = RECORDINGS / name
    state = progress_of(recorded)
    assert state["claims"] and len(state["runs"]) == 21
    assert set(state["runs"].values()) <= {"reached_target", "diverged", "max_epochs"}
    assert state["protocol"]["lr_choice"] in (recorded / "claims.md").read_text()
    found = {c["id"]: c for c in json.loads((recorded / "claims.json").read_text())}
    assert sorted(found) == ["C1", "C2", "C3", "C4", "C5"]
    sequential = read_jsonl(recorded / "runs" / "sequential-n1" / "metrics.jsonl")
    for n in (2, 4, 8, 16, 32):
        strong = read_jsonl(recorded / "runs" / f"strong-n{n}" / "metrics.jsonl")
        same = [
            (a["train_loss"], a["val_loss"]) == (b["train_loss"], b["val_loss"]) for a, b in zip(strong, sequential)
        ]
        assert same and all(same) == found["C1"]["evidence"][str(n)]["identical"]


def test_a_reproduction_recorded_before_a_setting_existed_is_the_same_reproduction():
    """A reproduction's folder is resumed only with the same settings; one recorded before a run setting was added
    to gmmkit (``train.backend``, issue 29) lacks it, and its default is what the recording used: the same."""
    from gmmkit.study import reproduce

    now = json.loads(json.dumps(ReproduceConfig(lr=PAPER_LR).to_dict()))
    before = json.loads(json.dumps(now))
    del before["run"]["train"]["backend"]
    assert reproduce._protocol(before) == reproduce._protocol(now)
    before["run"]["train"]["lr"] = 0.5  # a setting that differs still does
    assert reproduce._protocol(before) != reproduce._protocol(now)
