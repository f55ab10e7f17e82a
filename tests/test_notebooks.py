"""Every notebook runs top to bottom, headless, on a tiny configuration (papermill replaces the cell tagged
``parameters``), in a temporary directory; the notebooks in the repository stay with their outputs cleared.
04 (LUNA16: prepare, train, view) builds a fake LUNA16 folder itself; 05 (augmentation) uses the run 04
trained.
"""

import importlib.util
import json
import os

import nbformat
import pytest
from conftest import NOTEBOOKS, execute_notebook, needs_horovod, notebook_outputs, notebook_text

TINY = {"dataset": "phantoms", "phantoms": 40, "val_size": 6, "components": 4, "batch_size": 8}
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", ALL)
def test_committed_notebooks_are_clean_and_parameterised(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "expected exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks with outputs cleared"
    assert nb.metadata.kernelspec.name == "python3"


def test_01_quickstart(tmp_path):
    nb = execute_notebook("01_quickstart.ipynb", tmp_path, {**TINY, "epochs": 2, "out": "runs/quickstart"})
    summary = json.loads((tmp_path / "runs/quickstart/summary.json").read_text())
    assert summary["status"] == "max_epochs" and summary["epochs"] == 2
    text = notebook_text(nb)
    assert "the five heaviest components" in text and "alpha" in text
    assert len(notebook_outputs(nb, "application/vnd.jupyter.widget-view+json")) >= 2  # loss figure, viewer


def browser_runs_02(session) -> bool:
    """Whether tests/test_browser.py runs 02_distributed top to bottom in this session (selected, with Chromium
    and Playwright there): it makes this test's checks on its own execution of the notebook, which costs a
    cluster, three runs and a resize (about 50 s on 2 cores), so the notebook runs once."""
    from test_browser import CHROMIUM

    selected = any(item.nodeid.endswith("test_browser.py::test_dashboard_runs_in_jupyterlab") for item in session.items)
    return selected and os.path.exists(CHROMIUM) and importlib.util.find_spec("playwright") is not None


@pytest.mark.mpi
@needs_horovod
def test_02_distributed(tmp_path, request):
    if browser_runs_02(request.session):
        pytest.skip("tests/test_browser.py runs 02_distributed in JupyterLab and checks this on that execution")
    nb = execute_notebook(
        "02_distributed.ipynb",
        tmp_path,
        {**TINY, "workers": 2, "epochs": 3, "target_loss": None, "out": "runs/dashboard"},
    )
    text = notebook_text(nb)
    assert "max_epochs after 3 epochs" in text
    assert "status stopped; the run ended" in text
    runs = sorted(p.name for p in (tmp_path / "runs/dashboard").iterdir())
    assert runs == ["01-strong-n2", "02-lsr-n2", "03-strong-n1"]
    stopped = json.loads((tmp_path / "runs/dashboard/02-lsr-n2/summary.json").read_text())
    assert stopped["status"] == "stopped"


@pytest.mark.mpi
@needs_horovod
def test_03_reproduce_paper(tmp_path):
    nb = execute_notebook(
        "03_reproduce_paper.ipynb",
        tmp_path,
        {
            **TINY,
            "epochs": 2,
            "target_loss": 1.0,
            "strategies": ["strong", "weak"],
            "workers": [1, 2],
            "max_real": 2,
            "calibrate": False,  # nothing is simulated here (test_study's sweep calibrates)
            "out": "runs/paper",
            "reproduction_dir": "runs/paper",
        },
    )
    tables = (tmp_path / "runs/paper/tables.md").read_text()
    assert "### strong" in tables and "### weak" in tables and "reached_target" in tables
    text = notebook_text(nb)
    assert "calibrating" not in text and "fig2_time_to_target.html" in text
    assert "| n | mode | status |" in text  # the tables, displayed
    # section 4 opens a folder's progress: here the sweep's own (no protocol, no claims, every point ended)
    assert "eta = not chosen yet" in text and "3 of 3 grid points ended; still to run: none" in text
    assert "no claims yet" in text


def test_04_then_05(tmp_path):
    pytest.importorskip("SimpleITK")
    # LIDC: the six nodules all four readers marked on 0.6 mm slices (4 patients)
    nb = execute_notebook(
        "04_luna16.ipynb",
        tmp_path,
        {
            "work_dir": "real",
            "lidc_min_readers": 4,
            "lidc_max_slice_thickness": 0.6,
            "luna_dir": None,
            "fake_scans": 3,
            "fake_nodules_per_scan": 3,
            "jobs": 1,
            "components": 4,
            "val_size": 2,
            "epochs": 1,
            "batch_size": 2,
        },
    )
    assert (tmp_path / "real/lidc.npz").is_file() and (tmp_path / "real/cubes.npz").is_file()
    summary = json.loads((tmp_path / "real/run/summary.json").read_text())
    assert summary["status"] == "max_epochs"
    assert "6 nodules of" in notebook_text(nb)
    # LIDC's nodules with their ratings, LUNA's cubes, then cube beside mixture
    figures = notebook_outputs(nb, "application/vnd.plotly.v1+json")
    assert len(figures) == 3
    labels = json.dumps(figures[0]["data"]["application/vnd.plotly.v1+json"]["layout"])
    assert labels.count("malignancy") == 6 and labels.count("texture") == 6 and "LIDC" not in labels

    nb = execute_notebook(
        "05_augmentation.ipynb",
        tmp_path,
        {"run_dir": "real/run", "out_dir": "synthetic", "n": 4, "size": 24, "image_format": "mhd"},
    )
    manifest = json.loads((tmp_path / "synthetic/manifest.json").read_text())
    assert manifest["size"] == 24 and manifest["spacing_mm"] == pytest.approx(16 / 24)
    assert len(list((tmp_path / "synthetic").glob("nodule_*_hu.mhd"))) == 4
    figures = notebook_outputs(nb, "application/vnd.plotly.v1+json")
    assert len(figures) == 3  # perturbed, sampled, and one row per texture category
    rows = json.dumps(figures[2]["data"]["application/vnd.plotly.v1+json"]["layout"])
    assert "real)" in rows and any(name in rows for name in ("solid", "ground-glass", "calcified"))
