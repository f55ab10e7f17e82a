"""gmmkit bench: the analytic FLOP count (gmmkit.model.flops) against the built Keras model, and the 2-rank probes.
The benchmark's figures themselves are measurements; no test asserts a timing."""

import numpy as np
import pytest

from gmmkit.config import RunConfig
from gmmkit.model import flops as model_flops
from gmmkit.study import bench
from gmmkit.study.perfmodel import measure_allreduce
from gmmkit.timing import take_turns


@pytest.mark.parametrize("cube,filters,latent,k", [(16, 32, 256, 50), (24, 8, 64, 7)])
def test_forward_flops_match_the_layers_of_the_built_model(cube, filters, latent, k):
    from gmmkit.model import from_config

    cfg = RunConfig().replace(data={"cube": cube}, model={"filters": filters, "latent": latent, "components": k})
    model = from_config(cfg)
    expected, first_conv = 0.0, None
    for layer in model.layers:
        if layer.name.startswith("conv"):
            out = np.prod(layer.output_shape[1:4])
            flops = 2.0 * out * np.prod(layer.kernel_size) * layer.input_shape[-1] * layer.filters
            first_conv = flops if first_conv is None else first_conv
            expected += flops
        elif layer.name == "latent":
            expected += 2.0 * layer.input_shape[-1] * layer.units
    mixture = model.get_layer("mixture")
    expected += sum(
        2.0 * d.kernel.shape[0] * d.kernel.shape[1] for d in (mixture.alpha, mixture.mu, mixture.sigma, mixture.corr)
    )
    expected += 2.0 * k * 10 * cube**3 + 2.0 * k * cube**3  # renderer: features x coefficients, exp, sum
    assert model_flops.forward_flops(cfg.model, cube) == pytest.approx(expected)
    # backward: gradients of weights and inputs, but none for the data entering the first convolution
    assert model_flops.train_flops(cfg.model, cube) == pytest.approx(3 * expected - first_conv)


@pytest.mark.mpi
def test_allreduce_probe_times_horovod_and_mpi4py_in_one_world():
    # eight rounds: Horovod joins and shuts down eight times while MPI, initialised by mpi4py, stays up
    result = measure_allreduce(1 << 20, ranks=2, repeats=6)
    assert result["ranks"] == 2 and result["bytes"] == 1 << 20
    assert result["horovod_s"] > 0 and result["mpi_s"] > 0 and result["mpi_beside_horovod_s"] > 0
    assert result["mpi4py_s"] > 0  # the MPI backend's allreduce, as its training step runs it


@pytest.mark.mpi
def test_scaling_probe_times_one_worker_and_two_in_turns_in_one_job(tmp_path):
    from conftest import tiny_config

    cfg = tiny_config(tmp_path / "unused", epochs=5)
    result = bench.run_probe(2, "scaling", "--config", cfg.to_json(), "--rounds", "2")
    assert result["ranks"] == 2
    assert set(result["epochs_s"]) == {"1", "2"}
    assert all(len(t) == 2 and all(s > 0 for s in t) for t in result["epochs_s"].values())
    steps = result["steps_s"]
    assert set(steps) == {"alone_batch", "alone_share", "side_by_side_share", "collective_share"}
    assert all(s > 0 for s in steps.values())


def test_efficiency_factors_multiply_to_the_efficiency():
    steps = {"alone_batch": 0.180, "alone_share": 0.100, "side_by_side_share": 0.104, "collective_share": 0.110}
    factors = bench.efficiency_factors(steps, efficiency=0.75, n=2)
    assert factors["batch_split"] == pytest.approx(0.9)
    assert factors["shared_host"] == pytest.approx(0.100 / 0.104)
    assert factors["collective"] == pytest.approx(0.104 / 0.110)
    assert np.prod(list(factors.values())) == pytest.approx(0.75)


@pytest.mark.parametrize("setting,expected", [(None, True), ("0", False)])
def test_gmmkit_turns_on_onednn_unless_the_user_turned_it_off(setting, expected):
    # Without oneDNN, TensorFlow 2.15's CPU Conv3D backward is Eigen's, several times slower (see
    # gmmkit/__init__.py); gmmkit must set it before TensorFlow loads, and leave a user's choice alone.
    # TensorFlow's own start-up log says whether its oneDNN operations are on: the reference.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = "import gmmkit.machine as m; import tensorflow; print(m.onednn_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(expected)
    assert ("oneDNN custom operations are on" in out.stderr) == expected, out.stderr


def test_the_growth_figure_draws_each_curve_from_the_json(tmp_path):
    from gmmkit.plots.bench import growth_figure, write_growth_figure

    result = {
        "machine": {"cpu": "test cpu", "cores": 2},
        "epoch_s": {"1": 1.3, "2": 0.8},
        "growth": {
            "step_s_by_components": {"1": 0.115, "50": 0.139, "10": 0.118},
            "step_s_by_cube": {"16": 0.139, "24": 1.321},
            "epoch_s_by_train_size": {"128": 0.7, "256": 1.2},
            "epoch_s_predicted_by_workers": {"1": 1.24, "2": 0.67, "32": 0.21},
        },
    }
    fig = growth_figure(result)
    by_k, by_cube, by_size, predicted, measured = fig.data
    assert list(by_k.x) == [1, 10, 50] and list(by_k.y) == pytest.approx([115, 118, 139])  # sorted, in ms
    assert list(by_cube.y) == pytest.approx([139, 1321])
    assert list(by_size.x) == [128, 256] and list(by_size.y) == pytest.approx([0.7, 1.2])
    assert list(predicted.x) == [1, 2, 32] and list(measured.y) == pytest.approx([1.3, 0.8])
    path = write_growth_figure(result, tmp_path / "growth.html")
    html = path.read_text(encoding="utf-8")
    assert "plotly" in html and "test cpu" in html


def test_the_table_shows_the_cross_host_figures_beside_the_same_host_ones():
    """What ``gmmkit bench --hostfile`` prints: the figures of benchmarks/results.json with the cross-host
    ones of benchmarks/cross-host.json (measured on two emulated hosts) beside them."""
    import json
    from pathlib import Path

    here = Path(__file__).resolve().parents[1] / "benchmarks"
    result = json.loads((here / "results.json").read_text())
    cross = json.loads((here / "cross-host.json").read_text())["cross_host"]
    table = bench.format_table({**result, "cross_host": cross})
    line = next(row for row in table.splitlines() if row.startswith("across hosts"))
    assert "gmk-node0, gmk-node1" in line and f"{cross['allreduce']['horovod_s'] * 1e3:.2f} ms (same host" in line
    assert f"strong_efficiency_n2 {cross['strong_efficiency_n2']:.3f} = batch_split" in line
    assert "across hosts" not in bench.format_table(result)


def test_timers_take_turns_and_each_keeps_its_own_times(monkeypatch):
    from types import SimpleNamespace

    from gmmkit.study import perfmodel
    from gmmkit.study.bench import step_timer

    # a clock that only the fake steps move: each step takes exactly its seconds, however loaded the machine
    clock = [0.0]
    monkeypatch.setattr(perfmodel, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    log = []

    class Fake:
        def __init__(self, key, seconds):
            self.key, self.seconds = key, seconds
            self.data = SimpleNamespace(train=np.zeros((4, 2, 2, 2), np.float32))

        def batch_of(self, indices):
            return self.data.train[indices]

        def step(self, x, batch):
            assert x.shape == (8, 2, 2, 2) and batch == 8  # the batch is tiled up from a smaller split
            log.append(self.key)
            clock[0] += self.seconds

    def matmul():
        log.append("matmul")
        return 42.0

    times = take_turns(
        {"fast": step_timer(Fake("fast", 0.001), 8), "slow": step_timer(Fake("slow", 0.03), 8), "matmul": matmul},
        repeats=3,
    )
    assert log == ["fast", "slow", "matmul"] * 4  # one untimed round (tracing), then three in turns
    assert times == {"fast": pytest.approx(0.001), "slow": pytest.approx(0.03), "matmul": 42.0}
