"""The two Keras layers of DeepDensity: mixture heads and the density renderer."""

from __future__ import annotations

import tensorflow as tf

from . import mixture
from .keras2 import keras
from .per_example import record


@keras.saving.register_keras_serializable(package="gmmkit")
class Dense(keras.layers.Dense):
    """``keras.layers.Dense`` on dense rank-2 inputs (the same ops) that shows exact mode its input and its
    pre-activation output (:mod:`gmmkit.model.per_example`); any other input is plain Keras."""

    def call(self, inputs):
        if not isinstance(inputs, tf.Tensor) or inputs.shape.rank != 2 or inputs.dtype != self.kernel.dtype:
            return super().call(inputs)
        z = tf.matmul(inputs, self.kernel)
        if self.use_bias:
            z = tf.nn.bias_add(z, self.bias)
        record(self, inputs, z)
        return z if self.activation is None else self.activation(z)


@keras.saving.register_keras_serializable(package="gmmkit")
class GaussianMixtureHeads(keras.layers.Layer):
    """Parallel dense heads from the latent vector to K trivariate Gaussian components (paper Eqs. 10-13).

    Outputs ``(alpha, mu, tril)``: weights (B, K) through softmax, means (B, K, 3) through tanh in [-1, 1],
    and Cholesky factors (B, K, 3, 3) of positive-definite covariances built from sigmas
    ``sigma_min + (sigma_max - sigma_min) * sigmoid(.)`` and unconstrained correlations
    (see :mod:`gmmkit.model.mixture`).
    """

    def __init__(self, components: int, sigma_min: float = 0.04, sigma_max: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if components <= 0:
            raise ValueError(f"components: expected a positive integer, received {components!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, received {sigma_min!r}, {sigma_max!r}"
            )
        self.components = components
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        k = components
        self.alpha = Dense(k, activation="softmax", name="alpha")
        self.mu = Dense(3 * k, activation="tanh", name="mu")
        self.sigma = Dense(3 * k, activation="sigmoid", name="sigma")
        self.corr = Dense(3 * k, name="corr", kernel_initializer="zeros")

    def call(self, latent):
        k = self.components
        alpha = self.alpha(latent)
        mu = tf.reshape(self.mu(latent), (-1, k, 3))
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * tf.reshape(self.sigma(latent), (-1, k, 3))
        corr = tf.reshape(self.corr(latent), (-1, k, 3))
        return alpha, mu, mixture.scale_tril(sigma, corr)

    def get_config(self):
        return {
            **super().get_config(),
            "components": self.components,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }


@keras.saving.register_keras_serializable(package="gmmkit")
class DeepDensity(keras.layers.Layer):
    """Renders ``mass * M(x)`` on the input's voxel grid, where M is the mixture density (paper Eq. 7).

    Normalisation: M integrates to 1 over space, an input cube does not. The layer scales M by the cube's
    own mass ``m = sum(x) * (2 / S)**3`` (its integral over [-1, 1]^3), computed from the input, so the
    rendered density and the input are in the same units (normalised HU, see
    :func:`gmmkit.data.normalize_hu`) and integrate to the same value. The mixture alone carries the shape.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.features = tf.constant(mixture.quadratic_features(mixture.grid_coordinates(self.size)))

    def call(self, inputs):
        cube, alpha, mu, tril = inputs
        density = mixture.render_mixture(alpha, mu, tril, self.features) * mixture.cube_mass(cube)[:, None]
        return tf.reshape(density, (-1, self.size, self.size, self.size))

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="gmmkit")
class CubeMass(keras.layers.Layer):
    """A cube's mass, its integral over [-1, 1]^3 (:func:`gmmkit.model.mixture.cube_mass`): (B, S, S, S) -> (B,)."""

    def call(self, cube):
        return mixture.cube_mass(cube)
