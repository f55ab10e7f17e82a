"""DeepDensity: the model math. Imports TensorFlow only."""
from .deepdensity import build_deepdensity, mixture_model, per_sample_msle
from .layers import DeepDensity, GaussianMixtureHeads
from .mixture import covariance, grid_coordinates, render_grid, scale_tril

__all__ = ["DeepDensity", "GaussianMixtureHeads", "build_deepdensity", "covariance", "grid_coordinates",
           "mixture_model", "per_sample_msle", "render_grid", "scale_tril"]


def from_config(cfg):
    """Build the model a :class:`gmmkit.config.RunConfig` describes (weights seeded by ``train.seed``)."""
    m = cfg.model
    return build_deepdensity(cube=cfg.data.cube, components=m.components, filters=m.filters, latent=m.latent,
                             sigma_min=m.sigma_min, sigma_max=m.sigma_max, seed=cfg.train.seed)
