"""DeepDensity: the model (TensorFlow and Keras only) and its configuration (plain Python).

``gmmkit.model.config`` loads without TensorFlow; the names below load the framework on first use, so the
run configuration and the command line can import this package cheaply.
"""

from __future__ import annotations

import importlib

from .config import KERNELS, MIN_CUBE, ModelConfig

_LAZY = {
    "build_deepdensity": "deepdensity",
    "mixture_model": "deepdensity",
    "per_sample_msle": "deepdensity",
    "from_config": "deepdensity",
    "load_weights": "deepdensity",
    "DeepDensity": "layers",
    "GaussianMixtureHeads": "layers",
    "CubeMass": "layers",
    "covariance": "mixture",
    "grid_coordinates": "mixture",
    "render_grid": "mixture",
    "scale_tril": "mixture",
    "cube_mass": "mixture",
}

__all__ = ["KERNELS", "MIN_CUBE", "ModelConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
