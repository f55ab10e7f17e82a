"""Shared fixtures: quiet TensorFlow, a private phantom cache, and tiny run configs."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

from gmmkit.config import RunConfig  # noqa: E402

# emulated hosts and a real SLURM (issue 17): fixtures emulated_hosts, slurm_cluster
pytest_plugins = ["support.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _phantom_cache(tmp_path_factory):
    os.environ["GMMKIT_CACHE"] = str(tmp_path_factory.mktemp("gmmkit-cache"))


def tiny_config(out, **train) -> RunConfig:
    """A run that trains in seconds: 96 phantom cubes, K = 4, batch 8."""
    return RunConfig().replace(
        data={"size": 120, "val_size": 24, "train_size": 96},
        model={"components": 4, "latent": 32, "filters": 8},
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
