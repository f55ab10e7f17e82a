"""Dashboard and SliceViewer, without a cluster or a browser.

The dashboard drives a fake cluster whose runs the test feeds epoch records by hand; buttons are clicked
with ``Button.click()``, which calls the same handlers a browser click does, and figure clicks go through
the trace's own click dispatch, as a FigureWidget click from the page does. The pure helpers behind them
are tested in ``test_ui_logic.py``.
"""

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from gmmkit.cluster import RunHandle, TrainingRun
from gmmkit.data.cubes import CubeSet
from gmmkit.plots import live, slices
from gmmkit.training import RunDir
from gmmkit.ui import Dashboard, SliceViewer

SMALL = {"data": {"size": 40, "val_size": 6, "train_size": 32}, "model": {"filters": 4, "latent": 16}}


def tiny(tmp_path, **train):
    return tiny_config(tmp_path / "run", **SMALL, **{"epochs": 3, **train})


# --- a fake cluster --------------------------------------------------------------------------


class FakeRun:
    """A run handle with the protocol of the real :class:`TrainingRun`, fed by hand."""

    def __init__(self, cfg):
        self.cfg, self.records, self.result, self.stop_calls = cfg, [], None, 0
        self.printed = {}

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

    def output(self, rank=0):
        return self.printed.get(rank, "")

    def epoch(self, val, t=None, **extra):
        e = len(self.records) + 1
        self.records.append(
            {
                "epoch": e,
                "train_loss": val * 1.1,
                "val_loss": val,
                "time_s": t or float(e),
                "epoch_time_s": 1.0,
                "lr": 1e-3,
                **extra,
            }
        )

    def finish(self, status, ttt=None, **extra):
        self.result = {
            "status": status,
            "epochs": len(self.records),
            "time_to_target_s": ttt,
            "best_val_loss": min((r["val_loss"] for r in self.records), default=None),
            **extra,
        }


class FakeCluster:
    def __init__(self, n=1, slots=None):
        self.n, self.running, self.resized, self.runs = n, True, [], []
        if slots is not None:
            self.slots = slots

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
        assert self.release.wait(120), "the test never released the engines"
        return super().train(cfg)


def test_the_fake_run_has_the_protocol_of_the_real_one(tmp_path):
    class Result:  # what a TrainingRun reads of ipyparallel's AsyncResult before the run ends
        data = {}

        def done(self):
            return False

    assert isinstance(TrainingRun(tiny(tmp_path), {0: Result()}), RunHandle)
    assert isinstance(FakeRun(tiny(tmp_path)), RunHandle)


def dashboard(tmp_path, cluster=None, **kw):
    return Dashboard(
        cluster or FakeCluster(),
        base=tiny(tmp_path),
        out=str(tmp_path / "dash"),
        viewer=False,
        poll_interval=None,
        **kw,
    )


# --- dashboard ----------------------------------------------------------------------------------


@pytest.mark.lane
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
    assert "#1 weak n=1 | weak | 1 | - | 0.002 | 4 |" in dash.table.text() and "running" in dash.table.text()
    dash.start_button.click()  # a second click while running: refused on the status line
    assert len(cluster.runs) == 1 and "in progress" in dash.status.value


def test_the_exact_checkbox_starts_an_exact_run_and_the_table_says_so(tmp_path):
    cluster = FakeCluster()
    dash = dashboard(tmp_path, cluster)
    assert dash.exact.value is False and dash.config().train.exact is False
    dash.strategy.value, dash.exact.value = "strong", True
    dash.start_button.click()
    assert cluster.runs[0].cfg.train.exact is True
    assert dash.rows()[0]["exact"] is True


@pytest.mark.lane
def test_epochs_stream_into_the_plot_table_and_status(tmp_path):
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
    assert dash.current.first_epoch_s is not None and "| running | 2 | 0.25 |" in dash.table.text()
    run.epoch(0.2)
    run.finish("max_epochs")
    dash.poll()
    assert not dash.running and "max_epochs" in dash.status.value and "| max_epochs | 3 |" in dash.table.text()
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
    assert "stopped" in dash.table.text()
    dash.start_button.click()  # the next run gets a new pair of traces; the old one stays
    assert live.run_count(dash.figure) == 2 and live.point_count(dash.figure, run=0) == 1


def test_changing_workers_resizes_the_cluster_within_its_slots(tmp_path):
    cluster = FakeCluster(n=1, slots=3)
    dash = dashboard(tmp_path, cluster)
    assert dash.workers.max == 3  # a multi-host cluster says how many ranks it can place
    dash.workers.value, dash.strategy.value = 2, "lsr"
    dash.start_button.click()
    assert cluster.resized == [2] and cluster.runs[0].cfg.train.workers == 2
    assert dash.current.label == "#1 lsr n=2"
    assert dashboard(tmp_path, FakeCluster()).workers.max == 64


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


def finished_runs(tmp_path):
    """A dashboard with two runs that reached the target (n = 1 in 10 s, n = 2 in 6 s on hosts a and b)."""
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
    cluster.runs[1].finish("reached_target", ttt=6.0, hosts=["a", "b"])
    dash.poll()
    return dash, cluster


def test_runs_table_reports_time_to_target_efficiency_and_hosts(tmp_path):
    dash, _cluster = finished_runs(tmp_path)
    rows = dash.rows()
    assert [r["efficiency"] for r in rows] == [pytest.approx(1.0), pytest.approx(10 / 12)]
    text = dash.table.text()
    assert "83.3 %" in text and "10.0 s" in text and "| a, b |" in text
    assert (
        live.run_traces(dash.figure, 1)["val_loss"].line.color != live.run_traces(dash.figure, 0)["val_loss"].line.color
    )
    dims = {d["label"]: d for d in dash.parallel.data[0].dimensions}
    assert list(dims["time to target (s)"]["values"]) == [10.0, 6.0] and list(dims["workers n"]["values"]) == [1, 2]


def test_a_header_click_sorts_the_runs_table_and_a_second_click_reverses_it(tmp_path):
    dash, _cluster = finished_runs(tmp_path)
    first = lambda: dash.table.text().splitlines()[0]  # noqa: E731
    assert first().startswith("#1 ")
    dash.table.headers["time_to_target_s"].click()
    assert first().startswith("#2 ") and dash.table.headers["time_to_target_s"].description.endswith("▲")
    dash.table.headers["time_to_target_s"].click()
    assert first().startswith("#1 ") and dash.table.headers["time_to_target_s"].description.endswith("▼")


def test_a_runs_checkbox_hides_and_shows_its_curves(tmp_path):
    dash, _cluster = finished_runs(tmp_path)
    box = dash.table._check(2)  # the checkbox of run #2, as the table shows it
    box.value = False
    assert all(t.visible is False for t in live.run_traces(dash.figure, 1).values())
    assert all(t.visible is not False for t in live.run_traces(dash.figure, 0).values())
    box.value = True
    assert all(t.visible is True for t in live.run_traces(dash.figure, 1).values())


def test_rank_panel_names_the_slowest_rank_and_logs_mark_errors(tmp_path):
    cluster = FakeCluster(n=2)
    dash = dashboard(tmp_path, cluster)
    dash.workers.value = 2
    dash.start()
    run = cluster.runs[0]
    run.printed = {0: "epoch 1 done\n", 1: "Traceback (most recent call last):\nValueError: boom\n"}
    run.epoch(0.4, rank_step_s=[0.05, 0.05], rank_eval_s=[0.001, 0.003])
    dash.poll()
    assert "slowest: <b>rank 1</b>" in dash.ranks.value and "3.00x the fastest" in dash.ranks.value
    titles = dash.logs.titles()
    assert "⚠" not in titles[0] and "⚠ 2 error lines" in titles[1]
    assert "gmmkit-log-error" in dash.logs.widget.children[1].value and "boom" in dash.logs.widget.children[1].value
    run.finish("max_epochs", hosts=["node-a", "node-b"])
    dash.poll()
    assert "rank 1</b> on node-b" in dash.ranks.value


def test_background_thread_follows_the_run_and_wait_returns_the_summary(tmp_path):
    cluster = FakeCluster()
    dash = Dashboard(cluster, base=tiny(tmp_path), out=str(tmp_path / "d"), viewer=False, poll_interval=0.02)
    dash.start()
    deadline = time.monotonic() + 60  # bounds on the dashboard's threads: generous, a loaded machine is slow
    while not cluster.runs:
        assert time.monotonic() < deadline, "the dashboard's thread never submitted the run"
        time.sleep(0.01)
    cluster.runs[0].epoch(0.4)
    cluster.runs[0].finish("max_epochs")
    assert dash.wait(timeout=60)["status"] == "max_epochs"
    assert live.point_count(dash.figure) == 1


def test_stop_pressed_while_the_engines_start_the_run_still_stops_it(tmp_path):
    # the race the dashboard handles: Stop arrives before cluster.train has returned a handle to stop
    cluster = SlowCluster()
    dash = Dashboard(cluster, base=tiny(tmp_path), out=str(tmp_path / "d"), viewer=False, poll_interval=0.02)
    run = dash.start()
    assert cluster.entered.wait(60)
    dash.stop_button.click()  # the handle does not exist yet
    assert run.handle is None and run.stop_clicked is not None
    cluster.release.set()
    assert dash.wait(timeout=60)["status"] == "stopped"
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


# --- re-attaching to the runs of an output folder ------------------------------------------------


def commit_epochs(run: RunDir, epochs: int, status: str = "running") -> None:
    records = [
        {"epoch": e, "train_loss": 0.2 / e, "val_loss": 0.1 / e, "time_s": float(e)} for e in range(1, epochs + 1)
    ]
    run.commit(
        records,
        {
            "status": status,
            "epochs": epochs,
            "time_to_target_s": None,
            "best_val_loss": records[-1]["val_loss"] if records else None,
        },
    )


def test_a_new_dashboard_reattaches_to_finished_and_running_runs(tmp_path):
    out = tmp_path / "dash"
    done_cfg = tiny(tmp_path).replace(out=str(out / "01-strong-n1"))
    live_cfg = tiny(tmp_path, strategy="weak", workers=2).replace(out=str(out / "02-weak-n2"))
    done, running = RunDir(done_cfg.out), RunDir(live_cfg.out)
    for run, cfg in ((done, done_cfg), (running, live_cfg)):
        run.claim(cfg)
        run.begin(cfg, [], {"status": "running", "epochs": 0})
    commit_epochs(done, 3, "max_epochs")
    done.release()
    commit_epochs(running, 1)  # still holds its lock: a run training elsewhere

    dash = Dashboard(FakeCluster(), base=tiny(tmp_path), out=str(out), viewer=False, poll_interval=None)
    assert [(r.label, r.status) for r in dash.runs] == [("#1 strong n=1", "max_epochs"), ("#2 weak n=2", "running")]
    assert live.point_count(dash.figure, run=0) == 3 and live.point_count(dash.figure, run=1) == 1
    assert "| running | 1 |" in dash.table.text() and not dash.running  # Start stays free: not ours
    commit_epochs(running, 2)
    assert dash.poll() == 1 and live.point_count(dash.figure, run=1) == 2
    commit_epochs(running, 2, "max_epochs")
    running.release()
    dash.poll()
    assert dash.runs[1].status == "max_epochs" and "| max_epochs | 2 |" in dash.table.text()
    assert "not started by this dashboard" in dash.logs.widget.children[0].value
    assert dash.start().cfg.out.endswith("03-strong-n1")  # numbering goes on after the runs found


def test_a_run_that_died_without_its_summary_is_shown_interrupted(tmp_path):
    cfg = tiny(tmp_path).replace(out=str(tmp_path / "dash" / "01-strong-n1"))
    run = RunDir(cfg.out)
    run.claim(cfg)
    run.begin(cfg, [], {"status": "running", "epochs": 0})
    commit_epochs(run, 2)
    run.release()  # the process is gone, its summary still says running
    dash = dashboard(tmp_path)
    assert dash.runs[0].status == "interrupted" and "interrupted" in dash.table.text()


# --- the slice viewer on a real (tiny, untrained) run ---------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with epochs 1 to 3 committed (weights scaled a little each epoch): snapshots 1 and 2,
    the checkpoint of epoch 3. Its data set is a cubes.npz whose cubes carry LIDC-like facts."""
    from gmmkit import model as model_lib
    from gmmkit.data.phantoms import load_phantoms

    root = tmp_path_factory.mktemp("viewer")
    n = 40
    cubes = load_phantoms(n, 0, 16).cubes
    CubeSet.of(
        cubes,
        texture=np.arange(n) % 5 + 1.0,
        malignancy=np.arange(n) % 4 + 1.0,
        patient_id=np.array([f"LIDC-IDRI-{i:04d}" for i in range(n)]),
    ).save(root / "cubes.npz")
    cfg = tiny_config(
        root / "run",
        data={"dataset": str(root / "cubes.npz"), "val_size": 6, "train_size": 32},
        model={"filters": 4, "latent": 16},
        epochs=3,
    )
    run = RunDir(cfg.out)
    run.claim(cfg)
    run.begin(cfg, [], {"status": "running", "epochs": 0})
    weights = model_lib.from_config(cfg).get_weights()
    for epoch in (1, 2, 3):
        save_checkpoint(run, [w * (1 + 0.15 * epoch) for w in weights], epoch=epoch)
    run.release()
    return cfg.out


def save_checkpoint(run: RunDir, weights, epoch: int) -> None:
    """What an epoch of training commits, with the given weights."""
    records = [{"epoch": e, "val_loss": 0.1, "train_loss": 0.1, "time_s": float(e)} for e in range(1, epoch + 1)]
    run.commit(
        records,
        {"status": "running", "epochs": epoch},
        {"weights": weights, "optimizer": [], "epoch": epoch, "time_s": float(epoch)},
    )


def click(figure, plane: str, row: int, col: int) -> None:
    """A click on a heatmap cell of ``plane``'s input panel, through the trace's click dispatch (what the
    FigureWidget does with the page's plotly_click)."""
    from plotly.callbacks import Points

    trace = slices.traces(figure, "image", plane, "input")[0]
    index = list(figure.data).index(trace)
    for i, t in enumerate(figure.data):  # the widget calls every trace, with points only for the clicked one
        mine = i == index
        t._dispatch_on_click(
            Points(
                point_inds=[[row, col]] if mine else [],
                xs=[col] if mine else [],
                ys=[row] if mine else [],
                trace_name=t.name,
                trace_index=i,
            ),
            None,
        )


def test_three_planes_show_input_estimate_and_difference_in_hu(run_dir):
    viewer = SliceViewer(run_dir, volume=True)
    s = viewer.inspector.sample(0)
    hu = lambda v: v * 1400.0 - 1000.0  # noqa: E731  the cubes' window, [-1000, 400] HU
    assert viewer.position == (8, 8, 8)
    for plane, cut in (("axial", lambda v: v[8]), ("coronal", lambda v: v[:, 8]), ("sagittal", lambda v: v[:, :, 8])):
        inp, est, diff = viewer.image(plane)
        assert np.allclose(inp, hu(cut(s.input)), atol=1e-3) and np.allclose(est, hu(cut(s.density)), atol=1e-3)
        assert np.allclose(diff, est - inp, atol=1e-3)
    layout = viewer.figure.layout
    assert (layout.coloraxis.cmin, layout.coloraxis.cmax) == (-1350.0, 150.0)  # the lung window by default
    assert layout.coloraxis2.cmid == 0 and layout.coloraxis2.cmin == -layout.coloraxis2.cmax
    viewer.sliders["axial"].value = 3  # what dragging a slider does
    assert np.allclose(viewer.image("axial")[0], hu(s.input[3]), atol=1e-3) and viewer.position == (3, 8, 8)
    assert [t for t in slices.traces(viewer.figure, "gaussians") if t.x]
    centres = [t for t in slices.traces(viewer.figure, "centres") if t.x]
    assert centres and all("alpha" in t.text[0] and "mu (" in t.text[0] and "sigma (" in t.text[0] for t in centres)
    assert "the 4 heaviest components" in viewer.components.value
    assert (
        len([t for t in viewer.volume.data if t.type == "isosurface"]) == 2
        and len(viewer.volume.data[0].value) == 16**3
    )


def test_a_click_in_one_plane_moves_the_crosshair_in_the_other_two(run_dir):
    viewer = SliceViewer(run_dir, volume=False)
    before = viewer.image("coronal")[0]
    click(viewer.figure, "axial", 3, 12)  # axial keeps (coronal, sagittal) as (rows, columns)
    assert viewer.position == (8, 3, 12)
    assert viewer.crosshair("axial") == (3.0, 12.0)
    assert viewer.crosshair("coronal") == (8.0, 12.0) and viewer.crosshair("sagittal") == (8.0, 3.0)
    assert (viewer.sliders["coronal"].value, viewer.sliders["sagittal"].value) == (3, 12)
    assert not np.allclose(viewer.image("coronal")[0], before)  # the coronal plane moved to row 3
    assert viewer.click("sagittal", 99, -4) == (15, 0, 12)  # (axial, coronal) clamped to the cube


def test_window_presets_and_free_window_level(run_dir):
    viewer = SliceViewer(run_dir, volume=False)
    viewer.preset.value = "mediastinum"  # what a click on the preset does
    assert (viewer.figure.layout.coloraxis.cmin, viewer.figure.layout.coloraxis.cmax) == (-125.0, 225.0)
    assert (viewer.width.value, viewer.level.value) == (350.0, 50.0)
    viewer.width.value = 700.0
    assert viewer.preset.value is None and viewer.figure.layout.coloraxis.cmin == -300.0
    viewer.set_window("model")
    assert viewer.window == (-1000.0, 400.0) and viewer.preset.value == "model"
    with pytest.raises(Exception, match="window: expected one of lung, mediastinum, model"):
        viewer.set_window("bone")


def test_the_epoch_slider_shows_the_same_cube_at_each_kept_epoch(run_dir):
    viewer = SliceViewer(run_dir, volume=False)
    assert [v for _label, v in viewer.epoch.options] == [0, 1, 2, 3] and viewer.epoch.value == 3
    latest = viewer.image("axial")[1]
    viewer.epoch.value = 1  # the slider
    first = viewer.image("axial")[1]
    assert not np.allclose(first, latest) and "epoch 1" in viewer.figure.layout.title.text
    assert np.allclose(viewer.image("axial")[0], SliceViewer(run_dir, volume=False).image("axial")[0])  # same cube
    viewer.epoch.value = 0
    assert "initial weights" in viewer.figure.layout.title.text and not np.allclose(viewer.image("axial")[1], first)


def test_the_viewer_follows_a_run_and_keeps_an_earlier_epoch_when_parked_there(run_dir, tmp_path):
    run_dir = shutil.copytree(run_dir, tmp_path / "copy", symlinks=True)
    # the viewer tells a new checkpoint by its mtime: the copied one is made a second older than any the test
    # writes, instead of sleeping past the file system's timestamp granularity
    old = (Path(run_dir) / "checkpoint.npz").resolve()
    os.utime(old, ns=(old.stat().st_atime_ns - 10**9, old.stat().st_mtime_ns - 10**9))
    follower = SliceViewer(run_dir, volume=False, min_refresh_s=0.0)
    parked = SliceViewer(run_dir, volume=False, min_refresh_s=0.0)
    parked.epoch.value = 2
    assert follower.refresh() is False
    run = RunDir(run_dir)
    weights = [w * 1.5 for w in run.load_checkpoint()["weights"]]
    for epoch in (4, 5):
        save_checkpoint(run, weights, epoch=epoch)
    assert follower.refresh() is True and parked.refresh() is True
    assert [v for _l, v in follower.epoch.options] == [0, 1, 2, 5]  # 5 is a milestone and the latest
    assert follower.epoch.value == 5 and "epoch 5" in follower.info.value
    assert parked.epoch.value == 2 and "epoch 2" in parked.figure.layout.title.text
    with pytest.raises(Exception, match="not a gmmkit run directory"):
        SliceViewer(str(tmp_path / "nowhere"))


def test_the_cube_picker_shows_each_cubes_facts(run_dir):
    viewer = SliceViewer(run_dir, volume=False)
    labels = [label for label, _ in viewer.sample.options]
    assert all(label.startswith(f"cube {i} · LIDC-IDRI-") for i, label in enumerate(labels))
    assert "texture" in labels[0] and "malignancy" in labels[0]
    assert "<b>patient_id</b> LIDC-IDRI-" in viewer.facts.value and "<b>malignancy</b>" in viewer.facts.value


def test_export_to_self_contained_html_and_png(run_dir, tmp_path):
    viewer = SliceViewer(run_dir, volume=True, export_dir=str(tmp_path / "views"))
    page = viewer.export(tmp_path / "view.html")
    text = page.read_text()
    assert text.count("<div id=") >= 2 and "Plotly.newPlot" in text and "<script src=" not in text
    with pytest.raises(ValueError, match="ending in .png or .html"):
        viewer.export(tmp_path / "view.jpg")
    viewer.html_button.click()  # the button saves in the background, under export_dir
    path = viewer.default_export_path("html")
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists() and path.name == "run-cube0-epoch3.html"
    pytest.importorskip("kaleido")
    if not shutil.which("chromium"):
        pytest.skip("PNG export needs Chromium (apt-get install chromium)")
    png = viewer.export(tmp_path / "view.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.lane
def test_dashboard_viewer_follows_the_run_directory(run_dir, tmp_path):
    cluster = FakeCluster()
    dash = Dashboard(cluster, base=tiny(tmp_path), out=str(tmp_path / "d"), viewer=True, poll_interval=None)
    dash.start()
    dash.viewer.follow(run_dir)  # what each new epoch does for the current run's directory
    deadline = time.monotonic() + 60

    def drawn():  # the viewer's thread draws the planes, then writes the info line
        return dash.viewer.image()[0].shape == (16, 16) and "epoch 3," in dash.viewer.info.value

    while not drawn() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dash.viewer.inspector is not None and dash.viewer.image()[0].shape == (16, 16)
    assert "epoch 3," in dash.viewer.info.value


def test_the_elastic_checkbox_is_for_strong_scaling_and_restarts_show_in_the_table_and_details(tmp_path):
    cluster = FakeCluster(n=2, slots=2)
    dash = dashboard(tmp_path, cluster)
    elastic = dash.controls.elastic
    dash.strategy.value = "weak"  # the global batch grows with the workers: no elastic run
    assert elastic.disabled and elastic.value is False and "strong scaling only" in elastic.tooltip
    elastic.value = True  # set from code anyway: the config refuses it on the status line
    dash.start_button.click()
    assert not cluster.runs and "train.elastic" in dash.status.value
    dash.strategy.value, elastic.value = "strong", False
    assert not elastic.disabled and dash.config().train.elastic is False
    dash.workers.value, elastic.value = 2, True
    dash.start_button.click()
    cfg = cluster.runs[0].cfg
    assert cfg.train.elastic is True and dash.rows()[0]["restarts"] == 0
    assert "elastic: no restart (at most 3)" in dash.ranks.value
    # the launcher commits a restart to the run's summary.json while the run goes on: seen at the next look
    run = RunDir(cfg.out)
    run.claim(cfg)
    lost = {
        "restart": 1,
        "cause": "host h1 (rank 1) was lost",
        "workers_before": 2,
        "workers_after": 1,
        "hosts_before": ["h0", "h1"],
        "hosts_after": ["h0"],
        "dropped": ["h1"],
        "from_epoch": 1,
        "from_step": 3,
        "steps_redone": 5,
        "lost_s": 2.04,
    }
    run.begin(cfg, [], {"status": "running", "epochs": 1, "restarts": [lost]})
    run.release()
    dash.poll()
    assert dash.table.text().endswith("| 1") and dash.rows()[0]["restarts"] == 1
    assert (
        "restart 1/3: host h1 (rank 1) was lost; going on with 1 worker (2 before) on h0 (dropped h1) from step 3 "
        "of epoch 2, 5 steps done again (2.0 s since that state)"
    ) in dash.ranks.value
    back = {**lost, "restart": 2, "cause": "rank 0 (pid 7 on h0) was killed by SIGKILL", "hosts_after": ["h0", "h1"]}
    cluster.runs[0].finish("max_epochs", restarts=[lost, back])
    dash.poll()
    assert dash.rows()[0]["restarts"] == 2 and dash.ranks.value.count("<li>") == 2
    dash.strategy.value, elastic.value = "strong", False
    dash.start_button.click()
    assert dash.rows()[1]["restarts"] is None and dash.table.text().endswith("| -")  # not elastic: no column value
    assert "restart" not in dash.ranks.value
