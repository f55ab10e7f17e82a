"""Shared test helpers: quiet TensorFlow, a private phantom cache, one tiny-config builder, one Horovod
marker, one notebook executor."""
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

from gmmkit.config import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

needs_horovod = pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                                   reason="Horovod is not installed (make setup builds it)")

# emulated hosts and a real SLURM (issue 17): fixtures emulated_hosts, slurm_cluster
pytest_plugins = ["support.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _phantom_cache(tmp_path_factory):
    os.environ["GMMKIT_CACHE"] = str(tmp_path_factory.mktemp("gmmkit-cache"))


def tiny_config(out, data: dict | None = None, model: dict | None = None, **train) -> RunConfig:
    """A run that trains in seconds: 96 phantom cubes (24 for validation), K = 4, batch 8, one thread, two
    epochs; ``data``, ``model`` and keyword arguments (``train`` fields) change any of it."""
    return RunConfig().replace(
        data={"dataset": "phantoms", "size": 120, "val_size": 24, "train_size": 96, **(data or {})},
        model={"components": 4, "latent": 32, "filters": 8, **(model or {})},
        train={"epochs": 2, "batch_size": 8, "target_loss": None, "threads": 1, **train},
        out=str(out))


@pytest.fixture
def tiny(tmp_path):
    return tiny_config(tmp_path / "run")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One sequential 3-epoch run shared by every test that compares against the sequential path:
    ``(config, run directory, summary)``."""
    from gmmkit.training import train

    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = tiny_config(out, epochs=3, lr=2e-3)
    return cfg, out, train(cfg)


def execute_notebook(name: str, cwd: Path, parameters: dict, timeout: int = 600):
    """Run ``notebooks/NAME`` top to bottom with papermill in ``cwd`` (the cell tagged ``parameters``
    replaced); returns the executed notebook."""
    import nbformat
    import papermill

    out = cwd / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(cwd),
                               kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    return nbformat.read(out, as_version=4)


def notebook_outputs(nb, kind: str | None = None) -> list:
    """Every output of an executed notebook (those holding ``kind``, e.g. a MIME type, when given)."""
    found = [o for c in nb.cells for o in c.get("outputs", [])]
    return [o for o in found if kind in o.get("data", {})] if kind else found


def notebook_text(nb) -> str:
    """All text an executed notebook printed or displayed."""
    parts = []
    for output in notebook_outputs(nb):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)
