"""gmmkit: Gaussian-mixture autoencoders for 3D CT nodules, trained data-parallel under four scaling strategies.

Light at import: TensorFlow, Horovod, ipyparallel, ipywidgets, plotly and SimpleITK load only in the
modules that own them, when those are imported.
"""
import os as _os

__version__ = "0.1.0"

# TensorFlow's oneDNN kernels, before anything imports TensorFlow (it reads this once, at import). TF 2.15
# turns them on by default only on recent Intel CPUs; elsewhere (AMD, older Intel) its CPU Conv3D falls
# back to Eigen, whose backward passes are slow: the paper's model trained at 1068 ms a step (batch 32,
# one thread, 2-core AMD EPYC) against 144 ms with oneDNN. TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
# If TensorFlow was imported before gmmkit, this has no effect: see gmmkit.bench.onednn_enabled().
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import ConfigError, InputError  # noqa: E402

__all__ = ["ConfigError", "InputError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "__version__"]
