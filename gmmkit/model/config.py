"""DeepDensity's configuration: its architecture's constants and the :class:`ModelConfig` of a run.

Plain Python, no TensorFlow: the run configuration (:mod:`gmmkit.config`), the data checks and the CLI read
it without loading the framework.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks

# The encoder's three valid convolutions (kernel sides) shrink a cube by 6 + 4 + 2 voxels, so a cube must be
# at least their receptive field wide: 1 + 6 + 4 + 2 = 13 voxels.
KERNELS = (7, 5, 3)
MIN_CUBE = 1 + sum(k - 1 for k in KERNELS)


@dataclass
class ModelConfig:
    """DeepDensity architecture (paper Section V); the defaults are the paper's."""

    components: int = 50
    filters: int = 32
    latent: int = 256
    sigma_min: float = 0.04  # grid units (the cube spans [-1, 1]): a third of a voxel of a 16-cube
    sigma_max: float = 1.0

    def validate(self) -> None:
        for name in ("components", "filters", "latent"):
            checks.positive_int(f"model.{name}", getattr(self, name))
        checks.positive_float("model.sigma_min", self.sigma_min)
        checks.positive_float("model.sigma_max", self.sigma_max)
        if self.sigma_max <= self.sigma_min:
            checks.fail("model.sigma_max", f"greater than sigma_min={self.sigma_min}", self.sigma_max)
