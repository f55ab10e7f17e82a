"""The sweep (paper Section VII): grid, real 2-rank batch, simulation, target rule, tables and figures."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from gmmkit.cli import main
from gmmkit.files import read_jsonl
from gmmkit.study.perfmodel import PerfModel, fit_step_times
from gmmkit.study.report import RunResult, add_efficiency
from gmmkit.study.sweep import TARGET_RTOL


def test_fit_and_formula_of_the_wall_time_model():
    t_fixed, t_sample = fit_step_times([8, 32], [0.010 + 8 * 0.002, 0.010 + 32 * 0.002])
    assert t_fixed == pytest.approx(0.010) and t_sample == pytest.approx(0.002)
    perf = PerfModel(t_fixed=0.01, t_sample=0.002, t_eval_sample=0.001, allreduce_s=0.005, gradient_bytes=4)
    # strong scaling: Tp / n per step, plus c log2 n; uneven shares cost the larger share
    assert perf.step_time("strong", 4, 32) == pytest.approx(0.01 + 0.002 * 8 + 0.005 * 2)
    assert perf.step_time("strong", 3, 32) == pytest.approx(0.01 + 0.002 * 11 + 0.005 * math.log2(3))
    # weak: n B samples per step, each worker B, and n times fewer steps per epoch
    assert perf.epoch_time("weak", 2, 32, 640, 0) == pytest.approx(
        10 * (0.01 + 0.002 * 32 + 0.005) + 0.005
    )  # + the validation allreduce
    # exact mode: a step costs the base batch's exact step times the slowest rank's fraction of the base
    # batch (16 of 32 on 2 workers; weak: a whole base batch each), its samples rounded up to calls of 16
    exact = PerfModel(
        t_fixed=0.01, t_sample=0.002, t_eval_sample=0.001, allreduce_s=0.005, gradient_bytes=4, exact_factor=2.5
    )
    assert exact.step_time("strong", 1, 32, exact=True) == pytest.approx(2.5 * (0.01 + 0.002 * 32))
    assert exact.step_time("strong", 2, 32, exact=True) == pytest.approx(2.5 * (0.01 + 0.002 * 32) / 2 + 0.005)
    assert exact.step_time("weak", 4, 32, exact=True) == pytest.approx(2.5 * (0.01 + 0.002 * 32) + 0.005 * 2)
    # a rank computes its micro-shards in calls of a multiple of 16 samples: 8 or 11 samples cost 16
    for n in (3, 4):
        assert exact.step_time("strong", n, 32, exact=True) == pytest.approx(
            2.5 * (0.01 + 0.002 * 32) / 2 + 0.005 * math.log2(n)
        )
    assert exact.step_time("strong", 2, 32) == perf.step_time("strong", 2, 32)  # default mode: as before
    # calibrated since 2026-12-02: the exact step's own fit over its calls' samples (16 or 32 here)
    fitted = PerfModel(**{**exact.to_dict(), "exact_fixed": 0.02, "exact_sample": 0.003})
    assert fitted.step_time("strong", 1, 32, exact=True) == pytest.approx(0.02 + 0.003 * 32)
    for n in (2, 4, 32):
        assert fitted.step_time("strong", n, 32, exact=True) == pytest.approx(0.02 + 0.003 * 16 + 0.005 * math.log2(n))
    assert PerfModel.from_dict(fitted.to_dict()) == fitted
    # ranks sharing a host: their steps slower by shared_host, and a real step's measured overhead for c
    shared = PerfModel(**{**perf.to_dict(), "shared_host": 1.1, "step_overhead_s": 0.008})
    assert shared.step_time("strong", 1, 32) == perf.step_time("strong", 1, 32)  # one rank shares nothing
    assert shared.step_time("strong", 2, 32) == pytest.approx((0.01 + 0.002 * 16) * 1.1 + 0.008)
    assert shared.step_time("strong", 4, 32) == pytest.approx((0.01 + 0.002 * 8) * 1.1 + 0.008 * 2)


CALIBRATE = """
import json, sys
from conftest import tiny_config
from gmmkit.study.perfmodel import from_measurements, measure_compute
cfg = tiny_config(sys.argv[1], batch_size=32, exact=True)
compute = measure_compute(cfg, repeats=2, exact=True)
print(json.dumps(from_measurements(compute, 0.001).to_dict()))
"""


def test_the_calibration_fits_the_exact_steps_own_cost_over_its_calls():
    """Exact mode's step is timed at 16 and at 32 samples a call (a rank of a wider split computes 16): the model
    carries its own fixed and per-sample cost, and charges a rank of 4 workers a call of 16 at that cost."""
    proc = subprocess.run(
        [sys.executable, "-c", CALIBRATE, "unused"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    perf = PerfModel.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert perf.exact_fixed >= 0 and perf.exact_sample > 0 and perf.exact_factor > 0
    small = perf.step_time("strong", 4, 32, exact=True) - perf.allreduce_s * 2
    assert small == pytest.approx(perf.exact_fixed + 16 * perf.exact_sample)


def test_efficiency_is_t1_over_n_tn_and_nan_when_not_reached():
    # the sequential run took 100 s; the model, which predicts every simulated run, says 80 s
    rows = [
        RunResult("strong", 1, "real", "reached_target", 5, 100.0, 80.0, "a"),
        RunResult("strong", 2, "real", "reached_target", 5, 60.0, 45.0, "b"),
        RunResult("strong", 4, "simulated", "reached_target", 5, None, 25.0, "c"),
        RunResult("strong", 8, "simulated", "diverged", 2, None, None, "d"),
    ]
    add_efficiency(rows)
    # measured over measured, predicted over predicted: never measured T1 over a predicted Tn (100 / 100)
    assert [r.efficiency for r in rows[:3]] == pytest.approx([1.0, 100 / 120, 80 / 100])
    assert math.isnan(rows[3].efficiency)


@pytest.mark.mpi
def test_sweep_runs_the_grid_and_writes_tables_and_figures(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "unused", epochs=3, lr=2e-3)
    cfg_file = tmp_path / "base.json"
    cfg_file.write_text(cfg.to_json())
    out = tmp_path / "sweep"
    code = main(
        [
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
            "--target-epoch",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "### strong" in printed and "### lsr" in printed
    results = json.loads((out / "results.json").read_text())
    runs = {(r["strategy"], r["workers"]): r for r in results["runs"]}
    assert {k: r["mode"] for k, r in runs.items()} == {
        ("strong", 1): "real",
        ("strong", 2): "real",
        ("strong", 4): "simulated",
        ("lsr", 1): "real",
        ("lsr", 2): "real",
        ("lsr", 4): "simulated",
    }
    # the paper's target rule: the sequential validation loss after --target-epoch epochs
    seq = read_jsonl(out / "runs" / "sequential-n1" / "metrics.jsonl")
    assert len(seq) == 2 and results["config"]["train"]["target_loss"] == pytest.approx(
        seq[-1]["val_loss"] * (1 + TARGET_RTOL)
    )
    # strong scaling follows the sequential path: it reaches the target at the same epoch, real or simulated
    for n in (2, 4):
        assert runs[("strong", n)]["status"] == "reached_target" and runs[("strong", n)]["epochs"] == 2
    assert runs[("strong", 2)]["time_to_target_s"] > 0 and runs[("strong", 4)]["predicted_s"] > 0
    real = json.loads((out / "runs" / "strong-n2" / "summary.json").read_text())
    assert real["backend"].startswith("horovod-") and real["workers"] == 2
    lsr4 = read_jsonl(out / "runs" / "lsr-n4" / "metrics.jsonl")
    assert lsr4[0]["lr"] == pytest.approx(4 * cfg.train.lr) and lsr4[0]["global_batch"] == 32
    assert results["perf_model"]["allreduce_s"] > 0 and results["perf_model"]["t_sample"] > 0
    tables = (out / "tables.md").read_text()
    assert "efficiency" in tables and "| 4 | simulated |" in tables
    for name in ("fig2_time_to_target.html", "fig4_strong_losses.html"):
        html = (out / name).read_text(encoding="utf-8")
        assert "plotly" in html.lower() and len(html) > 100_000  # self-contained: plotly.js inlined


def test_lr_find_brackets_the_largest_rate_that_still_converges(tmp_path, capsys):
    cfg_file = tmp_path / "base.json"
    cfg_file.write_text(tiny_config(tmp_path / "lr").to_json())
    assert main(["lr-find", "--config", str(cfg_file), "--lr-min", "1e-5", "--lr-max", "1e3", "--steps", "40"]) == 0
    result = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    lrs = [h["lr"] for h in result["history"]]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert result["lr_diverged"] is not None and result["lr_diverged"] > result["suggested_lr"] >= 1e-5
    assert min(h["smoothed"] for h in result["history"]) < result["history"][0]["smoothed"]  # it learnt first
    # the moving average is bias-corrected: it starts at the first loss (it once started at ten times that,
    # so the loss never climbed back above its "start" and the suggestion ran to the range's top)
    assert result["history"][0]["smoothed"] == pytest.approx(result["history"][0]["loss"])
    assert "plotly" in (tmp_path / "lr" / "lr_find.html").read_text(encoding="utf-8").lower()
    assert "suggested lr" in capsys.readouterr().out
    assert main(["lr-find", "--config", str(cfg_file), "--lr-min", "1", "--lr-max", "0.1"]) == 2


def test_a_loss_figure_draws_the_sequential_run_once_beside_its_strategys_runs():
    from gmmkit.plots.sweep import loss_curves_figure

    record = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.25}]
    curves = {
        ("strong", 1): record,
        ("weak", 1): record,
        ("lsr", 1): record,
        ("strong", 2): record,
        ("weak", 2): [{"epoch": 1, "val_loss": float("nan")}],
    }
    fig = loss_curves_figure(curves, "weak", 0.3, "weak")
    assert [t.name for t in fig.data] == ["n = 1", "n = 2: diverged in epoch 1"]
    assert list(fig.data[1].y) == [None]  # a diverged epoch is a gap, not a point
