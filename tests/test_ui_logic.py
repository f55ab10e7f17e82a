"""The pure helpers behind the slice viewer and the dashboard: geometry, windows, runs, tables and figures.
No TensorFlow, no model: each test takes milliseconds."""

import math

import numpy as np
import pytest
from conftest import tiny_config

from gmmkit import plots
from gmmkit.errors import InputError
from gmmkit.plots import live, slices, volume
from gmmkit.plots import runs as run_plots
from gmmkit.training import RunDir
from gmmkit.training.progress import per_rank, slowest_rank
from gmmkit.training.snapshots import is_milestone, milestones
from gmmkit.ui import sections as geo
from gmmkit.ui.format import components_html, facts_html, is_error_line, marked_log_html
from gmmkit.ui.inspector import cube_facts, fact_label
from gmmkit.ui.panels import RankLogs, rank_hosts, ranks_html
from gmmkit.ui.runs import (
    DashboardRun,
    RunDirHandle,
    discover,
    hosts_of,
    parallel_columns,
    sort_rows,
    summary_status,
    table_rows,
)
from gmmkit.ui.runs_table import RunsTable

# --- planes, crosshairs, windows ---------------------------------------------------------------


def test_slices_follow_the_array_axes():
    cube = np.arange(4 * 4 * 4, dtype=float).reshape(4, 4, 4)
    assert np.array_equal(geo.slice_volume(cube, "axial", 1), cube[1])
    assert np.array_equal(geo.slice_volume(cube, "coronal", 2), cube[:, 2, :])
    assert np.array_equal(geo.slice_volume(cube, "sagittal", 3), cube[:, :, 3])
    with pytest.raises(InputError, match="axis: expected one of axial, coronal, sagittal"):
        geo.slice_volume(cube, "oblique", 0)
    with pytest.raises(InputError, match=r"slice index: expected an integer in \[0, 3\]"):
        geo.slice_volume(cube, 0, 4)
    assert geo.shared_range(np.array([0.2, 0.9]), np.array([-0.3])) == (-0.9, 0.9)


def test_a_click_moves_the_two_in_plane_axes_and_the_crosshair_follows():
    # coronal keeps axes 0 (rows) and 2 (columns): a click there moves the axial and sagittal planes
    assert geo.click_position((5, 6, 7), "coronal", 2.4, 9.6, 16) == (2, 6, 10)
    assert geo.click_position((5, 6, 7), "axial", -3, 40, 16) == (5, 0, 15)
    assert geo.crosshair((5, 6, 7), "axial") == (6, 7) and geo.crosshair((5, 6, 7), "sagittal") == (5, 6)
    with pytest.raises(InputError, match="position: expected three voxel indices"):
        geo.click_position((1, 2), "axial", 0, 0, 16)


def test_windows_in_hu_map_to_the_normalised_cubes():
    assert geo.window_range(*geo.window_of("model")) == pytest.approx((0.0, 1.0))
    lo, hi = geo.window_range(*geo.window_of("lung"))  # W1500 L-600: -1350 to 150 HU
    assert (lo, hi) == pytest.approx(((-1350 + 1000) / 1400, (150 + 1000) / 1400))
    assert geo.preset_of(350, 50) == "mediastinum" and geo.preset_of(351, 50) is None
    with pytest.raises(InputError, match="window: expected a positive width"):
        geo.window_range(0, 40)
    with pytest.raises(InputError, match="window: expected one of lung, mediastinum, model"):
        geo.window_of("bone")


# --- a Gaussian cut by a plane ------------------------------------------------------------------


def random_mixture(k=5, seed=0):
    rng = np.random.default_rng(seed)
    alpha = rng.dirichlet(np.ones(k))
    mu = rng.uniform(-0.5, 0.5, (k, 3))
    a = rng.normal(size=(k, 3, 3)) * 0.15
    cov = a @ np.swapaxes(a, 1, 2) + 0.01 * np.eye(3)
    return alpha, mu, np.linalg.cholesky(cov)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_section_outlines_lie_on_the_ellipsoids_of_the_3d_gaussian(plane):
    alpha, mu, tril = random_mixture()
    size, index = 16, 7
    cov = geo.voxel_covariances(tril, size)
    centre = geo.to_voxel(mu, size)
    a = geo.axis_index(plane)
    rows, cols = geo.in_plane_axes(plane)
    cuts = geo.gaussian_sections(alpha, mu, tril, plane, index, size)
    assert cuts and [c["alpha"] for c in cuts] == sorted((c["alpha"] for c in cuts), reverse=True)
    for cut in cuts:
        k = cut["component"]
        points = np.zeros((len(cut["row"]), 3))
        points[:, a], points[:, rows], points[:, cols] = index, cut["row"], cut["col"]
        d = points - centre[k]
        mahalanobis2 = np.einsum("pi,ij,pj->p", d, np.linalg.inv(cov[k]), d)
        assert mahalanobis2 == pytest.approx(np.full(len(d), cut["sigma"] ** 2), rel=1e-6)
    # a plane 2 sigmas or more from a centre cuts neither ellipsoid
    far = geo.gaussian_sections(alpha[:1], mu[:1], tril[:1], plane, centre[0, a] + 2.01 * math.sqrt(cov[0, a, a]), size)
    assert far == []
    near = geo.gaussian_sections(alpha[:1], mu[:1], tril[:1], plane, centre[0, a] + 1.5 * math.sqrt(cov[0, a, a]), size)
    assert [c["sigma"] for c in near] == [2.0]


def test_weights_set_opacity_and_the_table_lists_the_heaviest():
    alpha, mu, tril = random_mixture()
    op = geo.weight_opacity(alpha, alpha.max())
    assert op[np.argmax(alpha)] == 1.0 and np.all(op >= 0.15) and np.all(np.diff(op[np.argsort(alpha)]) >= 0)
    table = geo.components_table(alpha, mu, tril, 16, top=3, spacing_mm=0.7)
    assert [r["component"] for r in table] == list(np.argsort(-alpha)[:3])
    cov = geo.voxel_covariances(tril, 16)[table[0]["component"]]
    assert table[0]["sigma_mm"] == pytest.approx(np.sqrt(np.diag(cov)) * 0.7)
    line = geo.describe_component(table[0])
    assert line.startswith(f"component {table[0]['component']}: alpha ") and "mu (" in line and "sigma (" in line
    html = components_html(table, spacing_mm=0.7)
    assert "the 3 heaviest components" in html and "1 voxel = 0.7 mm" in html


# --- per-cube facts --------------------------------------------------------------------------------


def test_cube_facts_show_known_columns_first_and_skip_missing_values():
    columns = {
        "malignancy": np.array([4.0, np.nan]),
        "patient_id": np.array(["P1", "P2"]),
        "zeta": np.array([1, 2]),
        "mask": np.zeros((2, 3)),
        "category": np.array([2, 0]),
    }
    facts = cube_facts(columns, np.array([12.34, np.nan], np.float32), np.array([0, 1]))
    assert list(facts[0]) == ["patient_id", "category", "malignancy", "diameter_mm", "zeta"]  # 2-D left out
    assert facts[1] == {"patient_id": "P2", "category": "solid", "zeta": 2}
    assert fact_label(0, facts[0]) == "cube 0 · P1 · ground-glass · malignancy 4"
    assert fact_label(0, facts[0], limit=4).endswith(" · 12.3 mm")
    assert cube_facts({}, np.full(2, np.nan), np.array([0, 1])) == [{}, {}] and facts_html({}) == ""
    assert "<b>malignancy</b> 4" in facts_html(facts[0])


# --- runs ------------------------------------------------------------------------------------------


def fake_run(
    number, tmp_path, status="reached_target", ttt=None, workers=1, strategy="strong", target=0.1, hosts=None, lr=1e-3
):
    cfg = tiny_config(
        tmp_path / f"r{number}", strategy=strategy, workers=workers, target_loss=target, lr=lr, batch_size=8
    )
    summary = {"status": status, "epochs": 3, "time_to_target_s": ttt, "best_val_loss": 0.05}
    if hosts is not None:
        summary["hosts"] = hosts
    return DashboardRun(
        number=number,
        label=f"#{number} {strategy} n={workers}",
        cfg=cfg,
        trace=number - 1,
        clicked=0.0,
        summary=summary,
    )


def test_table_rows_compute_efficiency_against_the_sequential_run_of_the_same_target(tmp_path):
    runs = [
        fake_run(1, tmp_path, ttt=12.0),
        fake_run(2, tmp_path, ttt=4.0, workers=4, hosts=["a", "b", "a", "b"]),
        fake_run(3, tmp_path, ttt=3.0, workers=4, target=0.2),
        fake_run(4, tmp_path, "max_epochs", workers=2),
    ]
    rows = table_rows(runs)
    assert [r["efficiency"] for r in rows] == [pytest.approx(1.0), pytest.approx(0.75), None, None]
    assert [r["hosts"] for r in rows] == ["-", "a, b", "-", "-"]
    assert [r["number"] for r in sort_rows(rows, "time_to_target_s")] == [3, 2, 1, 4]
    assert [r["number"] for r in sort_rows(rows, "time_to_target_s", descending=True)] == [1, 2, 3, 4]  # missing last
    assert [r["number"] for r in sort_rows(rows, "efficiency", descending=True)] == [1, 2, 3, 4]
    assert [r["number"] for r in sort_rows(rows, "run", descending=True)] == [4, 3, 2, 1]


def test_hosts_come_as_lists_mappings_or_counts():
    assert hosts_of({"hosts": ["n1", "n1", "n2"]}) == ["n1", "n2"]
    assert hosts_of({"hosts": {"1": "b", "0": "a"}}) == ["a", "b"] and rank_hosts({"hosts": {"1": "b", "0": "a"}}) == [
        "a",
        "b",
    ]
    assert hosts_of({"hosts": 3}) == ["3 hosts"] and hosts_of({}) == [] and hosts_of(None) == []


def test_parallel_columns_put_unreached_runs_above_the_slowest(tmp_path):
    rows = table_rows(
        [
            fake_run(1, tmp_path, ttt=10.0),
            fake_run(2, tmp_path, ttt=5.0, workers=2, strategy="lsr"),
            fake_run(3, tmp_path, "diverged", workers=4, strategy="lsr", lr=4e-3),
        ]
    )
    cols = parallel_columns(rows)
    dims = {d["label"]: d for d in cols["dimensions"]}
    ttt = dims["time to target (s)"]
    assert ttt["values"] == [10.0, 5.0, 12.5] and ttt["ticktext"][-1] == "not reached"
    assert dims["strategy"]["values"] == [0, 1, 1] and dims["strategy"]["ticktext"] == ["strong", "lsr"]
    assert dims["lr"]["values"] == pytest.approx([-3, -3, math.log10(4e-3)])
    assert cols["colour"] == ttt["values"] and parallel_columns([]) == {"dimensions": [], "colour": []}
    fig = run_plots.parallel_figure(widget=False)
    run_plots.update_parallel(fig, cols)
    assert len(fig.data[0].dimensions) == len(cols["dimensions"]) and fig.data[0].line.cmax == 12.5


def test_discover_finds_run_directories_and_the_handle_follows_one(tmp_path):
    cfg = tiny_config(tmp_path / "out" / "sweep" / "strong-n2")
    run = RunDir(cfg.out)
    run.claim(cfg)
    run.begin(cfg, [{"epoch": 1, "val_loss": 0.1}], {"status": "running", "epochs": 1})
    (tmp_path / "out" / "notes").mkdir()
    assert discover(tmp_path / "out") == [tmp_path / "out" / "sweep" / "strong-n2"]
    assert discover(tmp_path / "out" / "sweep" / "strong-n2") == [tmp_path / "out" / "sweep" / "strong-n2"]
    assert discover(tmp_path / "nowhere") == []
    handle = RunDirHandle(cfg.out)
    assert not handle.done() and handle.metrics == [{"epoch": 1, "val_loss": 0.1}]
    with pytest.raises(TimeoutError, match="still running after 0.1 s"):
        handle.wait(timeout=0.1)
    handle.stop(wait=False)
    assert run.stop_requested()
    run.release()
    assert handle.done() and handle.wait()["status"] == "interrupted"  # gone without its last summary
    assert summary_status({"status": "max_epochs"}, running=False) == {"status": "max_epochs"}


def test_runs_table_widget_sorts_and_reports_checkbox_changes():
    seen = []
    table = RunsTable(on_visible=lambda key, visible: seen.append((key, visible)))
    assert table.text() == "" and table.empty.layout.display is None
    rows = [{"key": 1, "run": "#1 a", "workers": 2, "status": "failed"}, {"key": 2, "run": "#2 b", "workers": 1}]
    table.set_rows(rows)
    status = [c.value for c in table.grid.children if "gmmkit-cell-status" in str(getattr(c, "value", ""))]
    assert table.empty.layout.display == "none" and "color:#b00020" in status[0] and "#b00020" not in status[1]
    table.headers["workers"].click()
    assert [r["key"] for r in table.ordered()] == [2, 1]
    table.headers["workers"].click()
    assert [r["key"] for r in table.ordered()] == [1, 2]
    table._check(2).value = False
    assert seen == [(2, False)]
    with pytest.raises(ValueError, match="sort key: expected one of run, strategy"):
        table.sort_by("colour")


# --- ranks and their output -------------------------------------------------------------------


class FakeContext:
    """Rank ``rank`` of ``size``, whose sums add what the other ranks contribute (given)."""

    def __init__(self, rank, size, others):
        self.rank, self.size, self.others = rank, size, np.asarray(others, dtype=float)

    def sum(self, values):
        return np.asarray(values, dtype=float) + self.others


def test_per_rank_values_gather_through_one_sum_of_one_hot_rows():
    # rank 1 of 3; ranks 0 and 2 contribute their own columns
    others = np.array([[0.1, 0.0, 0.3], [1.0, 0.0, 3.0]]).ravel()
    assert per_rank(FakeContext(1, 3, others), 0.2, 2.0) == [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]]
    assert slowest_rank({"rank_step_s": [0.1, 0.1], "rank_eval_s": [0.002, 0.001]}) == 0
    assert slowest_rank({"rank_step_s": [0.1, 0.3]}) == 1 and slowest_rank({}) is None


def test_rank_panel_and_logs():
    record = {"epoch": 4, "rank_step_s": [0.08, 0.08, 0.08], "rank_eval_s": [0.001, 0.004, 0.002]}
    text = ranks_html(record, ["a", "b", "c"], label="#2")
    assert "slowest: <b>rank 1</b> on b, 4.00x the fastest" in text and "step 80.0 ms" in text
    assert "no per-rank times yet" in ranks_html({"epoch": 1}, label="#1")
    assert is_error_line("ValueError: x") and not is_error_line("epoch 3: val 0.1")
    log = marked_log_html("ok\nTraceback (most recent call last):\n<b>")
    assert log.count("gmmkit-log-error") == 1 and "&lt;b&gt;" in log

    class Handle:
        def output(self, rank):
            return "fine\n" if rank == 0 else "RuntimeError: engine lost\n"

    logs = RankLogs()
    logs.update(Handle(), 2, label="#3")
    assert logs.titles() == ["#3 rank 0 output", "#3 rank 1 output ⚠ 1 error line"]


# --- figures --------------------------------------------------------------------------------------


def test_planes_figure_puts_each_image_and_outline_in_its_panel():
    fig = slices.planes_figure(widget=False)
    assert len(slices.traces(fig, "image")) == 9 and len(slices.traces(fig, "crosshair")) == 9
    assert {t.coloraxis for t in slices.traces(fig, "image", image="difference")} == {"coloraxis2"}
    assert {t.coloraxis for t in slices.traces(fig, "image", image="input")} == {"coloraxis"}
    a = np.zeros((4, 4))
    images = {p: (a - 800, a - 700, a + 100) for p in slices.PLANES}
    cut = {
        "component": 3,
        "sigma": 1.0,
        "alpha": 0.5,
        "opacity": 0.5,
        "row": np.array([1.0, 2.0]),
        "col": np.array([0.0, 1.0]),
        "centre": (1.5, 0.5),
    }
    slices.update_planes(
        fig,
        images,
        {p: (1, 2) for p in slices.PLANES},
        4,
        (-1350, 150),
        (-100, 100),
        sections={"axial": [cut, {**cut, "sigma": 2.0}]},
        labels={3: "component 3: alpha 0.500"},
        title="t",
    )
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-1350, 150)
    assert (fig.layout.coloraxis2.cmin, fig.layout.coloraxis2.cmax) == (-100, 100)
    drawn = [t for t in slices.traces(fig, "gaussians", "axial") if t.x]
    assert [(t.meta["image"], t.meta["sigma"], t.meta["level"]) for t in drawn] == [
        ("input", 1.0, 0.65),
        ("input", 2.0, 0.65),
        ("estimate", 1.0, 0.65),
        ("estimate", 2.0, 0.65),
    ]
    assert drawn[0].x == (0.0, 1.0, None) and {t.hoverinfo for t in drawn} == {"skip"}  # clicks pass through
    centres = slices.traces(fig, "centres", "axial", "estimate")[0]
    assert (centres.x, centres.y, centres.text) == ((0.5,), (1.5,), ("component 3: alpha 0.500",))
    assert centres.marker.opacity == (0.5,)
    assert not any(t.x for t in slices.traces(fig, "gaussians", "coronal") + slices.traces(fig, "centres", "coronal"))
    assert slices.traces(fig, "crosshair", "sagittal")[0].y == (1, 1, None, -0.5, 3.5)
    assert fig.layout.yaxis5.range == (3.5, -0.5)  # row 0 on top, the cube's extent
    with pytest.raises(ValueError, match="expected three 2D arrays of one shape"):
        slices.update_planes(fig, {**images, "axial": (a, a, np.zeros(3))}, {}, 4, (0, 1), (-1, 1))


def test_volume_figure_draws_both_cubes_in_one_scene_side_by_side():
    fig = volume.volume_figure(widget=False)
    cube = np.zeros((4, 4, 4))
    cube[1:3, 1:3, 1:3] = 1.0
    volume.update_volume(fig, cube, 0.5 * cube, centres=np.array([[1.5, 1.5, 1.5]]))
    surfaces = [t for t in fig.data if t.type == "isosurface"]
    assert len(surfaces) == 2 and {t.scene for t in fig.data} == {None}  # one scene: one camera
    assert min(surfaces[1].x) == pytest.approx(volume.offset(4)) and volume.offset(4) > max(surfaces[0].x)
    assert "scene2" not in fig.layout
    assert fig.data[2].x == (1.5 + volume.offset(4),)


def test_live_figure_hides_a_run_and_draws_gaps_for_diverged_epochs():
    fig = live.loss_figure(target=0.01, widget=False)
    run = live.add_run(fig, "a", "strong")
    live.add_record(fig, run, {"time_s": 1.0, "train_loss": 0.1, "val_loss": 0.2})
    live.add_record(fig, run, {"time_s": 4.0, "train_loss": math.inf, "val_loss": math.nan})
    assert live.run_traces(fig, run)["val_loss"].y == (0.2, None)
    live.set_run_visible(fig, run, False)
    assert {t.visible for t in live.run_traces(fig, run).values()} == {False}
    with pytest.raises(ValueError, match="run: expected one of 0..0"):
        live.set_run_visible(fig, 5, True)


def test_write_html_puts_several_figures_in_one_page_with_plotly_once(tmp_path):
    one = live.loss_figure(widget=False)
    path = plots.write_html([one, slices.planes_figure(widget=False)], tmp_path / "two.html", title="x")
    text = path.read_text()
    assert text.count("Plotly.newPlot") == 2 and text.count("plotly.js v") == 1
    assert plots.write_html(one, tmp_path / "one.html").read_text().count("Plotly.newPlot") == 1


def test_snapshot_milestones_are_the_1_2_5_series():
    assert milestones(400) == [1, 2, 5, 10, 20, 50, 100, 200]
    assert [e for e in range(1, 1001) if is_milestone(e)][-3:] == [200, 500, 1000]
    assert not is_milestone(0) and not is_milestone(30) and not is_milestone(25)
