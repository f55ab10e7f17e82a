"""Notebooks 04 (LUNA16: prepare, train, view) and 05 (augmentation: generate, view, export) run top to
bottom on a tiny configuration: 04 on a fake LUNA16 folder it builds itself, 05 on the run 04 trained."""
import json
import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
OURS = ["04_luna16.ipynb", "05_augmentation.ipynb"]


def execute(name: str, cwd: Path, parameters: dict, timeout: int = 600) -> nbformat.NotebookNode:
    papermill = pytest.importorskip("papermill")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = cwd / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(cwd),
                               kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    return nbformat.read(out, as_version=4)


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells for o in c.get("outputs", []) if kind in o.get("data", {})]


@pytest.mark.parametrize("name", OURS)
def test_committed_notebooks_are_clean_and_parameterised(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks with outputs cleared"
    assert nb.metadata.kernelspec.name == "python3"


def test_04_then_05(tmp_path):
    pytest.importorskip("SimpleITK")
    nb = execute("04_luna16.ipynb", tmp_path, {
        "luna_dir": None, "work_dir": "luna", "fake_scans": 3, "fake_nodules_per_scan": 3, "jobs": 1,
        "components": 4, "val_size": 4, "epochs": 1, "batch_size": 4})
    assert (tmp_path / "luna/cubes.npz").is_file()
    summary = json.loads((tmp_path / "luna/run/summary.json").read_text())
    assert summary["status"] == "max_epochs"
    assert len(outputs(nb, "application/vnd.plotly.v1+json")) == 2  # the cubes, then cube beside mixture

    nb = execute("05_augmentation.ipynb", tmp_path, {
        "run_dir": "luna/run", "out_dir": "synthetic", "n": 4, "size": 24, "image_format": "mhd"})
    manifest = json.loads((tmp_path / "synthetic/manifest.json").read_text())
    assert manifest["size"] == 24 and manifest["spacing_mm"] == pytest.approx(16 / 24)
    assert len(list((tmp_path / "synthetic").glob("nodule_*_hu.mhd"))) == 4
    assert len(outputs(nb, "application/vnd.plotly.v1+json")) == 2
