"""The DeepDensity autoencoder (paper Sections V and VI) as a plain Keras functional model."""

from __future__ import annotations

import tensorflow as tf

from .config import KERNELS
from .conv import Conv3D
from .keras2 import keras
from .layers import CubeMass, DeepDensity, Dense, GaussianMixtureHeads


def build_deepdensity(
    cube: int = 16,
    components: int = 50,
    filters: int = 32,
    latent: int = 256,
    sigma_min: float = 0.04,
    sigma_max: float = 1.0,
    seed: int | None = None,
) -> keras.Model:
    """Encoder (three valid Conv3D with ReLU, dense latent), mixture heads, DeepDensity renderer.

    Input: cubes (B, S, S, S) in normalised HU. Output: the rendered density, same shape and units.
    ``seed`` fixes the weight initialisation.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input((cube, cube, cube), name="cube")
    x = keras.layers.Reshape((cube, cube, cube, 1))(inputs)
    for i, k in enumerate(KERNELS):
        x = Conv3D(filters, k, padding="valid", activation="relu", name=f"conv{i + 1}")(x)
    x = keras.layers.Flatten()(x)
    z = Dense(latent, activation="relu", name="latent")(x)
    alpha, mu, tril = GaussianMixtureHeads(components, sigma_min, sigma_max, name="mixture")(z)
    density = DeepDensity(cube, name="density")([inputs, alpha, mu, tril])
    return keras.Model(inputs, density, name="deepdensity")


def mixture_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s weights that returns ``(alpha, mu, tril, mass)`` instead of the density."""
    cube = model.input
    alpha, mu, tril = model.get_layer("mixture").output
    mass = CubeMass(name="mass")(cube)
    return keras.Model(cube, [alpha, mu, tril, mass], name="deepdensity_mixture")


def per_sample_msle(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Mean squared log error per sample: ``mean((log(1 + y) - log(1 + y_hat))^2)`` over voxels, shape (B,)."""
    diff = tf.math.log1p(y_true) - tf.math.log1p(tf.maximum(y_pred, 0.0))
    return tf.reduce_mean(tf.reshape(tf.square(diff), (tf.shape(diff)[0], -1)), axis=1)


def from_config(cfg) -> keras.Model:
    """Build the model a :class:`gmmkit.config.RunConfig` describes (weights seeded by ``train.seed``)."""
    m = cfg.model
    return build_deepdensity(
        cube=cfg.data.cube,
        components=m.components,
        filters=m.filters,
        latent=m.latent,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        seed=cfg.train.seed,
    )
