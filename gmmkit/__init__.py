"""gmmkit: Gaussian-mixture autoencoders for 3D CT nodules, trained data-parallel under four scaling strategies.

Light at import: TensorFlow, Horovod, ipyparallel, ipywidgets, plotly and SimpleITK load only in the
modules that own them, when those are imported.
"""

import os as _os
import sys as _sys
from importlib.util import find_spec as _find_spec

__version__ = "0.1.0"

# Whether TensorFlow was already imported when gmmkit was: the setting below cannot reach it then.
TENSORFLOW_IMPORTED_FIRST = "tensorflow" in _sys.modules

# TensorFlow's oneDNN kernels, before anything imports TensorFlow (it reads this once, at import). TF 2.15
# turns them on by default only on recent Intel CPUs; elsewhere (AMD, older Intel) its CPU Conv3D falls
# back to Eigen, whose backward passes are several times slower (README "Performance").
# TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
# If TensorFlow was imported before gmmkit, this has no effect: see gmmkit.machine.onednn_enabled().
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# The current lane (TensorFlow 2.16 and later, README "Two lanes"): gmmkit is written for Keras 2, which is
# the tf-keras package there, and ``tf.keras`` is Keras 2 too only with this variable set before TensorFlow
# loads (gmmkit's own modules import tf_keras by name: gmmkit.model.keras2). TF_USE_LEGACY_KERAS in the
# environment wins. Without tf-keras (the Horovod lane) the variable goes: TensorFlow 2.15's tf.keras would
# look for tf-keras and, not finding it, load no Keras at all (a process started from the other lane has it).
if _find_spec("tf_keras") is not None:
    _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
else:
    _os.environ.pop("TF_USE_LEGACY_KERAS", None)

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import ConfigError, InputError  # noqa: E402

__all__ = ["ConfigError", "InputError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "__version__"]
