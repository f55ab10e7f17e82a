"""Dashboard, SliceViewer and their figures, without a cluster or a browser.

The dashboard drives a fake cluster whose runs the test feeds epoch records by hand; buttons are clicked
with ``Button.click()``, which calls the same handlers a browser click does.
"""
import math
import shutil
import threading
import time

import numpy as np
import pytest

from gmmkit.errors import InputError
from gmmkit.parallel.training_run import RunHandle, TrainingRun
from gmmkit.plots import live, slices
from gmmkit.study.perfmodel import efficiency
from gmmkit.training import RunDir
from gmmkit.ui import Dashboard, SliceViewer
from gmmkit.ui import inspector as gi
from gmmkit.ui.format import estimate_remaining, parse_target

from conftest import tiny_config

SMALL = {"data": {"size": 40, "val_size": 6, "train_size": 32}, "model": {"filters": 4, "latent": 16}}


def tiny(tmp_path, **train):
    return tiny_config(tmp_path / "run", **SMALL, **{"epochs": 3, **train})


# --- a fake cluster --------------------------------------------------------------------------

class FakeRun:
    """A run handle with the protocol of the real :class:`TrainingRun`, fed by hand."""

    def __init__(self, cfg):
        self.cfg, self.records, self.result, self.stop_calls = cfg, [], None, 0

    @property
    def metrics(self):
        return list(self.records)

    def done(self):
        return self.result is not None

    def wait(self, timeout=None):
        return self.result

    def stop(self, wait=True, timeout=30.0):
        self.stop_calls += 1
        self.finish("stopped")

    def epoch(self, val, t=None):
        e = len(self.records) + 1
        self.records.append({"epoch": e, "train_loss": val * 1.1, "val_loss": val, "time_s": t or float(e),
                             "epoch_time_s": 1.0, "lr": 1e-3})

    def finish(self, status, ttt=None):
        self.result = {"status": status, "epochs": len(self.records), "time_to_target_s": ttt,
                       "best_val_loss": min((r["val_loss"] for r in self.records), default=None)}


class FakeCluster:
    def __init__(self, n=1):
        self.n, self.running, self.resized, self.runs = n, True, [], []

    def resize(self, n):
        self.resized.append(n)
        self.n = n

    def train(self, cfg):
        assert cfg.train.workers == self.n
        self.runs.append(FakeRun(cfg))
        return self.runs[-1]


class SlowCluster(FakeCluster):
    """Engines that take their time to start a run: ``train`` returns only once ``release`` is set."""

    def __init__(self, n=1):
        super().__init__(n)
        self.entered, self.release = threading.Event(), threading.Event()

    def train(self, cfg):
        self.entered.set()
        assert self.release.wait(10), "the test never released the engines"
        return super().train(cfg)


def test_the_fake_run_has_the_protocol_of_the_real_one(tmp_path):
    class Result:  # what a TrainingRun reads of ipyparallel's AsyncResult before the run ends
        data = {}

        def done(self):
            return False

    assert isinstance(TrainingRun(tiny(tmp_path), {0: Result()}), RunHandle)
    assert isinstance(FakeRun(tiny(tmp_path)), RunHandle)


def dashboard(tmp_path, cluster=None, **kw):
    return Dashboard(cluster or FakeCluster(), base=tiny(tmp_path), out=str(tmp_path / "dash"), viewer=False,
                     poll_interval=None, **kw)


# --- dashboard ----------------------------------------------------------------------------------

def test_start_click_starts_a_run_and_adds_its_curves(tmp_path):
    cluster = FakeCluster()
    dash = dashboard(tmp_path, cluster)
    dash.strategy.value, dash.lr.value, dash.batch.value, dash.epochs.value = "weak", 0.002, 4, 5
    dash.start_button.click()
    assert len(cluster.runs) == 1
    cfg = cluster.runs[0].cfg
    assert (cfg.train.strategy, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == ("weak", 0.002, 4, 5)
    assert cfg.out.endswith("dash/01-weak-n1")
    assert live.run_count(dash.figure) == 1 and live.point_count(dash.figure) == 0
    assert dash.start_button.disabled and not dash.stop_button.disabled
    dash.start_button.click()  # a second click while running: refused on the status line
    assert len(cluster.runs) == 1 and "in progress" in dash.status.value


def test_epochs_stream_into_the_plot_and_status(tmp_path):
    cluster = FakeCluster()
    dash = dashboard(tmp_path, cluster)
    dash.start()
    run = cluster.runs[0]
    run.epoch(0.5)
    run.epoch(0.25)
    assert dash.poll() == 2
    traces = live.run_traces(dash.figure, 0)
    assert traces["val_loss"].y == (0.5, 0.25) and traces["val_loss"].x == (1.0, 2.0)
    assert traces["train_loss"].y == pytest.approx((0.55, 0.275))
    assert "epoch 2/3" in dash.status.value and "left" in dash.status.value
    assert dash.current.first_epoch_s is not None
    run.epoch(0.2)
    run.finish("max_epochs")
    dash.poll()
    assert not dash.running and "max_epochs" in dash.status.value and "max_epochs" in dash.table.value
    assert not dash.start_button.disabled and dash.stop_button.disabled


def test_stop_click_stops_the_run_and_keeps_its_curve(tmp_path):
    cluster = FakeCluster()
    dash = dashboard(tmp_path, cluster)
    dash.start_button.click()
    cluster.runs[0].epoch(0.5)
    dash.poll()
    dash.stop_button.click()
    assert cluster.runs[0].stop_calls == 1
    dash.poll()
    assert dash.current.status == "stopped" and dash.current.stop_s is not None
    assert "stopped" in dash.table.value
    dash.start_button.click()  # the next run gets a new pair of traces; the old one stays
    assert live.run_count(dash.figure) == 2 and live.point_count(dash.figure, run=0) == 1


def test_changing_workers_resizes_the_cluster(tmp_path):
    cluster = FakeCluster(n=1)
    dash = dashboard(tmp_path, cluster)
    dash.workers.value, dash.strategy.value = 2, "lsr"
    dash.start_button.click()
    assert cluster.resized == [2] and cluster.runs[0].cfg.train.workers == 2
    assert dash.current.label == "#1 lsr n=2"


def test_a_factory_builds_the_cluster_with_the_chosen_n(tmp_path):
    built = []

    def factory(n):
        built.append(FakeCluster(n))
        return built[-1]

    dash = dashboard(tmp_path, factory)
    dash.workers.value = 3
    dash.batch.value = 6
    dash.start()
    assert [c.n for c in built] == [3] and built[0].runs[0].cfg.train.workers == 3


def test_bad_settings_show_on_the_status_line(tmp_path):
    cluster = FakeCluster()
    dash = dashboard(tmp_path, cluster)
    dash.target.value = "soon"
    dash.start_button.click()
    assert not cluster.runs and "target loss: expected a positive number" in dash.status.value
    dash.target.value = "none"
    dash.workers.value, dash.batch.value = 4, 2  # strong scaling: 4 workers cannot split a batch of 2
    dash.start_button.click()
    assert not cluster.runs and "train.workers" in dash.status.value


def test_runs_table_reports_time_to_target_and_efficiency(tmp_path):
    cluster = FakeCluster()
    dash = dashboard(tmp_path, cluster)
    dash.target.value = "0.1"
    dash.start()
    cluster.runs[0].epoch(0.05, t=10.0)
    cluster.runs[0].finish("reached_target", ttt=10.0)
    dash.poll()
    dash.workers.value = 2
    dash.start()
    cluster.runs[1].epoch(0.05, t=6.0)
    cluster.runs[1].finish("reached_target", ttt=6.0)
    dash.poll()
    rows = dash.rows()
    assert [r["efficiency"] for r in rows] == [pytest.approx(1.0), pytest.approx(10 / 12)]
    assert "83.3 %" in dash.table.value and "10.0 s" in dash.table.value
    assert live.run_traces(dash.figure, 1)["val_loss"].line.color != live.run_traces(dash.figure, 0)["val_loss"].line.color


def test_background_thread_follows_the_run_and_wait_returns_the_summary(tmp_path):
    cluster = FakeCluster()
    dash = Dashboard(cluster, base=tiny(tmp_path), out=str(tmp_path / "d"), viewer=False, poll_interval=0.02)
    dash.start()
    deadline = time.monotonic() + 5
    while not cluster.runs and time.monotonic() < deadline:
        time.sleep(0.01)
    cluster.runs[0].epoch(0.4)
    cluster.runs[0].finish("max_epochs")
    assert dash.wait(timeout=5)["status"] == "max_epochs"
    assert live.point_count(dash.figure) == 1


def test_stop_pressed_while_the_engines_start_the_run_still_stops_it(tmp_path):
    # the race the dashboard handles: Stop arrives before cluster.train has returned a handle to stop
    cluster = SlowCluster()
    dash = Dashboard(cluster, base=tiny(tmp_path), out=str(tmp_path / "d"), viewer=False, poll_interval=0.02)
    run = dash.start()
    assert cluster.entered.wait(5)
    dash.stop_button.click()  # the handle does not exist yet
    assert run.handle is None and run.stop_clicked is not None
    cluster.release.set()
    assert dash.wait(timeout=5)["status"] == "stopped"
    assert cluster.runs[0].stop_calls == 1


def test_a_failing_submission_is_reported(tmp_path):
    class Broken(FakeCluster):
        def train(self, cfg):
            raise RuntimeError("engines gone")

    dash = dashboard(tmp_path, Broken())
    dash.start_button.click()
    assert "engines gone" in dash.status.value and not dash.running
    with pytest.raises(RuntimeError, match="engines gone"):
        dash.wait()


# --- pure helpers ---------------------------------------------------------------------------

def test_parse_target():
    assert parse_target("none") is None and parse_target(" ") is None and parse_target("1e-3") == 1e-3
    for bad in ("-1", "nan", "x"):
        with pytest.raises(InputError, match="target loss"):
            parse_target(bad)


def test_estimate_remaining_uses_the_trend_towards_the_target():
    records = [{"epoch": e, "val_loss": 0.1 * 0.5 ** e, "time_s": 2.0 * e, "epoch_time_s": 2.0} for e in (1, 2, 3, 4)]
    assert estimate_remaining(records, epochs=100) == pytest.approx(96 * 2.0)
    # loss halves per epoch: from 0.1/16 to 0.1/128 takes 3 more epochs
    assert estimate_remaining(records, epochs=100, target=0.1 / 128) == pytest.approx(3 * 2.0)
    assert estimate_remaining([], epochs=10) is None
    assert efficiency(10.0, 2, 6.0) == pytest.approx(10 / 12) and efficiency(None, 2, 6.0) is None


def test_live_figure_draws_gaps_for_diverged_epochs_and_stretches_the_target():
    fig = live.loss_figure(target=0.01, widget=False)
    run = live.add_run(fig, "a", "strong")
    live.add_record(fig, run, {"time_s": 1.0, "train_loss": 0.1, "val_loss": 0.2})
    live.add_record(fig, run, {"time_s": 4.0, "train_loss": math.inf, "val_loss": math.nan})
    assert live.run_traces(fig, run)["val_loss"].y == (0.2, None)
    target = next(t for t in fig.data if t.name == live.TARGET_NAME)
    assert target.x == (0.0, 4.0) and target.y == (0.01, 0.01)
    live.set_target(fig, None)
    assert target.visible is False
    with pytest.raises(ValueError, match="missing val_loss"):
        live.add_record(fig, run, {"time_s": 1.0, "train_loss": 0.1})
    with pytest.raises(ValueError, match="run: expected one of 0..0"):
        live.add_record(fig, 5, {"time_s": 1.0, "train_loss": 0.1, "val_loss": 0.1})


# --- geometry -----------------------------------------------------------------------------------

def test_slices_and_centres_follow_the_array_axes():
    cube = np.arange(4 * 4 * 4, dtype=float).reshape(4, 4, 4)
    assert np.array_equal(gi.slice_volume(cube, "axial", 1), cube[1])
    assert np.array_equal(gi.slice_volume(cube, "coronal", 2), cube[:, 2, :])
    assert np.array_equal(gi.slice_volume(cube, "sagittal", 3), cube[:, :, 3])
    size = 4
    centre = lambda i: -1 + (2 * i + 1) / size  # noqa: E731  voxel i's coordinate
    mu = np.array([[centre(1), centre(2), centre(3)], [centre(0), centre(0), centre(0)]])
    c = gi.centres_on_slice(np.array([0.75, 0.25]), mu, "coronal", 2, size)
    # coronal keeps axes 0 (rows) and 2 (columns); component 0 lies on slice 2, component 1 two voxels away
    assert c["row"] == pytest.approx([1, 0]) and c["col"] == pytest.approx([3, 0])
    assert c["distance"] == pytest.approx([0, 2])
    with pytest.raises(InputError, match="axis: expected one of axial, coronal, sagittal"):
        gi.slice_volume(cube, "oblique", 0)
    with pytest.raises(InputError, match=r"slice index: expected an integer in \[0, 3\]"):
        gi.slice_volume(cube, 0, 4)
    assert gi.shared_range(np.array([0.2, 0.9]), np.array([-0.3])) == (-0.9, 0.9)


def test_slice_figure_shares_one_colour_scale_and_sizes_markers_by_alpha():
    fig = slices.slice_figure(widget=False)
    a = np.ones((3, 3))
    centres = {"row": np.array([1.0, 2.0]), "col": np.array([0.0, 1.0]), "alpha": np.array([0.9, 0.1]),
               "distance": np.array([0.0, 5.0])}
    slices.update_slices(fig, a, 0.5 * a, -0.5 * a, centres=centres)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 3 and {t.coloraxis for t in heatmaps} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-1.0, 1.0)
    marker = next(t for t in fig.data if t.type == "scatter").marker
    assert marker.size[0] == slices.MARKER_MAX and marker.size[1] < marker.size[0]
    assert marker.opacity[0] == 1.0 and marker.opacity[1] < 1.0


# --- the slice viewer on a real (tiny, untrained) checkpoint -------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with an epoch-1 checkpoint of the initial weights; tests that change it copy it."""
    from gmmkit import model as model_lib

    cfg = tiny_config(tmp_path_factory.mktemp("viewer") / "run", **SMALL, epochs=3)
    run = RunDir(cfg.out)
    run.claim(cfg)
    run.begin(cfg, [], {"status": "running", "epochs": 0})
    save_checkpoint(run, model_lib.from_config(cfg).get_weights(), epoch=1)
    run.release()
    return cfg.out


def save_checkpoint(run: RunDir, weights, epoch: int) -> None:
    """What an epoch of training commits, with the given weights."""
    records = [{"epoch": e, "val_loss": 0.1, "train_loss": 0.1, "time_s": float(e)} for e in range(1, epoch + 1)]
    run.commit(records, {"status": "running", "epochs": epoch},
               {"weights": weights, "optimizer": [], "epoch": epoch, "time_s": float(epoch)})


def test_slice_viewer_shows_input_density_and_difference(run_dir):
    viewer = SliceViewer(run_dir, volume=True)
    first = viewer.image()
    size = 16
    assert [im.shape for im in first] == [(size, size)] * 3 and viewer.slice.value == size // 2
    assert np.allclose(first[2], first[1] - first[0], atol=1e-5)
    s = viewer.inspector.sample(0)
    assert s.input.shape == s.density.shape == (size, size, size) and s.alpha.shape == (4,)
    assert 0 < s.density.sum() <= 1.05 * s.input.sum()  # the cube's mass, less what lies outside the cube
    assert len(next(t for t in viewer.figure.data if t.type == "scatter").x) == 4
    viewer.slice.value = 3  # what dragging the slider does
    moved = viewer.image()
    assert not np.allclose(moved[0], first[0]) and np.allclose(moved[0], s.input[3])
    viewer.axis.value = "sagittal"
    assert np.allclose(viewer.image()[0], s.input[:, :, 3])
    viewer.sample.value = 2
    assert np.allclose(viewer.image()[0], viewer.inspector.sample(2).input[:, :, 3])
    iso = [t for t in viewer.volume.data if t.type == "isosurface"]
    assert len(iso) == 2 and len(iso[0].value) == size ** 3
    assert "epoch 1" in viewer.info.value


def test_slice_viewer_reloads_a_newer_checkpoint(run_dir, tmp_path):
    run_dir = shutil.copytree(run_dir, tmp_path / "copy", symlinks=True)
    viewer = SliceViewer(run_dir, volume=False, min_refresh_s=0.0)
    before = viewer.image()[1]
    assert viewer.refresh() is False
    run = RunDir(run_dir)
    weights = [w * 1.5 for w in run.load_checkpoint()["weights"]]
    time.sleep(0.01)
    save_checkpoint(run, weights, epoch=2)
    assert viewer.refresh() is True and "epoch 2" in viewer.info.value
    assert not np.allclose(viewer.image()[1], before)
    with pytest.raises(InputError, match="not a gmmkit run directory"):
        SliceViewer(str(tmp_path / "nowhere"))


def test_dashboard_viewer_follows_the_run_directory(run_dir, tmp_path):
    cluster = FakeCluster()
    dash = Dashboard(cluster, base=tiny(tmp_path), out=str(tmp_path / "d"), viewer=True, poll_interval=None)
    dash.start()
    dash.viewer.follow(run_dir)  # what each new epoch does for the current run's directory
    deadline = time.monotonic() + 60
    while dash.viewer.image()[0].shape != (16, 16) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dash.viewer.inspector is not None and dash.viewer.image()[0].shape == (16, 16)
    assert "epoch 1," in dash.viewer.info.value
