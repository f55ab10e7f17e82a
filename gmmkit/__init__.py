"""gmmkit: Gaussian-mixture autoencoders for 3D CT nodules, trained data-parallel under four scaling strategies.

Light at import: TensorFlow, Horovod, ipyparallel, ipywidgets, plotly and SimpleITK load only in the
modules that own them, when those are imported.
"""
__version__ = "0.1.0"

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import ConfigError, InputError  # noqa: E402

__all__ = ["ConfigError", "InputError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "__version__"]
