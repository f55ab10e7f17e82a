"""Every notebook runs top to bottom, headless, on a tiny configuration (papermill replaces the cell tagged
``parameters``), in a temporary directory; the notebooks in the repository stay with their outputs cleared.
"""
import importlib.util
import json
import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY = {"phantoms": 40, "val_size": 6, "components": 4, "batch_size": 8}

needs_horovod = pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                                   reason="Horovod is not installed (make setup builds it)")


def execute(name: str, tmp_path: Path, parameters: dict, timeout: int = 600) -> nbformat.NotebookNode:
    import papermill

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = tmp_path / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    return nbformat.read(out, as_version=4)


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_distributed.ipynb", "03_reproduce_paper.ipynb"])
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
    nb = execute("01_quickstart.ipynb", tmp_path, {**TINY, "epochs": 2, "out": "runs/quickstart"})
    summary = json.loads((tmp_path / "runs/quickstart/summary.json").read_text())
    assert summary["status"] == "max_epochs" and summary["epochs"] == 2
    text = text_of(nb)
    assert "the five heaviest components" in text and "alpha" in text
    widgets = [o for c in nb.cells for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) >= 2  # the live loss figure and the slice viewer


@pytest.mark.mpi
@needs_horovod
def test_02_distributed(tmp_path):
    nb = execute("02_distributed.ipynb", tmp_path, {**TINY, "workers": 2, "epochs": 3, "target_loss": None,
                                                     "out": "runs/dashboard"})
    text = text_of(nb)
    assert "max_epochs after 3 epochs" in text
    assert "status stopped; the run ended" in text
    runs = sorted(p.name for p in (tmp_path / "runs/dashboard").iterdir())
    assert runs == ["01-strong-n2", "02-lsr-n2", "03-strong-n1"]
    stopped = json.loads((tmp_path / "runs/dashboard/02-lsr-n2/summary.json").read_text())
    assert stopped["status"] == "stopped"


@pytest.mark.mpi
@needs_horovod
def test_03_reproduce_paper(tmp_path):
    nb = execute("03_reproduce_paper.ipynb", tmp_path, {**TINY, "epochs": 2, "target_loss": 1.0,
                                                         "strategies": ["strong", "weak"], "workers": [1, 2],
                                                         "max_real": 2, "out": "runs/paper"})
    tables = (tmp_path / "runs/paper/tables.md").read_text()
    assert "### strong" in tables and "### weak" in tables and "reached_target" in tables
    text = text_of(nb)
    assert "allreduce of" in text and "fig2_time_to_target.html" in text
    assert "| n | mode | status |" in text  # the tables, displayed
