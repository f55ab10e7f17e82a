"""Trivariate Gaussian mixtures in TensorFlow: parametrisation and rendering on a voxel grid.

Coordinates
    A cube of S voxels per side spans [-1, 1] on each axis; voxel i sits at its centre
    ``-1 + (2 i + 1) / S``. Component means ``mu[..., d]`` are coordinates along array axis ``d`` of the
    cube (numpy order), so the same parameters render at any resolution S.

Covariances (always positive definite)
    The paper predicts sigmas and correlations with independent sigmoids, which does not guarantee a
    valid covariance (rho_12 = rho_13 = 0.9, rho_23 = -0.9 is not one). Here each covariance is
    ``Sigma = D R D`` with ``D = diag(sigma)`` and the correlation matrix ``R = W W^T``, where ``W`` is lower
    triangular with rows ``(1, 0, 0)``, ``(c0, 1, 0) / norm`` and ``(c1, c2, 1) / norm``: unit-norm rows
    give R a unit diagonal, and a positive diagonal makes W, hence R and Sigma, full rank. Any correlation
    matrix is reachable from the three unconstrained numbers (c0, c1, c2), and ``L = D W`` is the Cholesky
    factor of Sigma, so the log-determinant and the precision come without a decomposition.
    For conditioning in float32 the raw numbers pass through ``MAX_SHEAR * tanh(c / MAX_SHEAR)`` (the
    identity near 0): the diagonal of W then stays >= 1 / sqrt(1 + 2 MAX_SHEAR^2) ~ 0.23, so correlations
    reach +-0.95 but a component never collapses onto a plane, just as sigma is kept away from 0.

Rendering as one matrix product
    log(alpha_k N(x; mu_k, Sigma_k)) is a quadratic polynomial in x. With the ten features
    ``phi(x) = (x0^2, x1^2, x2^2, x0 x1, x0 x2, x1 x2, x0, x1, x2, 1)`` it equals ``phi(x) . c_k`` for
    coefficients c_k computed once per component, so the log-density of every component at every voxel
    is a single (B K, 10) x (10, S^3) matrix product, followed by exp and a sum over components
    (:func:`sum_of_exponentials`).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

N_FEATURES = 10
MAX_SHEAR = 3.0
_LOG_2PI = math.log(2.0 * math.pi)


def grid_coordinates(size: int, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Voxel-centre coordinates in [-1, 1] of a ``size``-cube, shape (size**3, 3), C order; or of its slices
    ``rows = (first, last)`` along axis 0 only, ((last - first) size**2, 3), the same values (a large cube's
    whole grid would take many times the cube's own memory)."""
    ax = ((2.0 * np.arange(size) + 1.0) / size - 1.0).astype(np.float32)  # computed in float64, kept in float32
    first, last = rows if rows is not None else (0, size)
    return np.stack(np.meshgrid(ax[first:last], ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)


def quadratic_features(points: np.ndarray) -> np.ndarray:
    """``phi(x)`` for each point: (P, 3) -> (P, 10), filled column by column (one temporary at a time)."""
    x0, x1, x2 = points[:, 0], points[:, 1], points[:, 2]
    out = np.empty((len(points), 10), dtype=points.dtype)
    for column, value in enumerate((x0 * x0, x1 * x1, x2 * x2, x0 * x1, x0 * x2, x1 * x2, x0, x1, x2)):
        out[:, column] = value
    out[:, 9] = 1
    return out


def scale_tril(sigma: tf.Tensor, corr: tf.Tensor) -> tf.Tensor:
    """Cholesky factor ``L = D W`` of each covariance from sigmas (..., 3) > 0 and raw correlations (..., 3)."""
    corr = MAX_SHEAR * tf.tanh(corr / MAX_SHEAR)
    c0, c1, c2 = corr[..., 0], corr[..., 1], corr[..., 2]
    one, zero = tf.ones_like(c0), tf.zeros_like(c0)
    n1 = tf.sqrt(1.0 + c0 * c0)
    n2 = tf.sqrt(1.0 + c1 * c1 + c2 * c2)
    w = tf.stack(
        [
            tf.stack([one, zero, zero], axis=-1),
            tf.stack([c0 / n1, 1.0 / n1, zero], axis=-1),
            tf.stack([c1 / n2, c2 / n2, 1.0 / n2], axis=-1),
        ],
        axis=-2,
    )
    return sigma[..., :, None] * w


def cube_mass(cube: tf.Tensor) -> tf.Tensor:
    """Each cube's integral over [-1, 1]^3, ``sum(x) * (2 / S)^3``: (B, S, S, S) -> (B,). The renderer scales
    the mixture (which integrates to 1) by it, so input and rendering are in the same units."""
    size = cube.shape[-1]
    return tf.reduce_sum(tf.reshape(cube, (tf.shape(cube)[0], -1)), axis=1) * (2.0 / size) ** 3


def covariance(tril: tf.Tensor) -> tf.Tensor:
    """``Sigma = L L^T``."""
    return tf.matmul(tril, tril, transpose_b=True)


def component_coefficients(alpha: tf.Tensor, mu: tf.Tensor, tril: tf.Tensor) -> tf.Tensor:
    """Coefficients c_k with ``log(alpha_k N(x)) = phi(x) . c_k``: (B, K), (B, K, 3), (B, K, 3, 3) -> (B, K, 10).

    With ``U = L^-1`` (lower triangular, in closed form) the precision is ``Sigma^-1 = U^T U`` and
    ``log det Sigma = 2 sum log diag(L)``. Everything is written out element by element: B K separate 3 x 3
    products and solves as batched kernels cost several times more, forward and gradient
    (``benchmarks/RESULTS.md``).
    """
    l00, l10, l11 = tril[..., 0, 0], tril[..., 1, 0], tril[..., 1, 1]
    l20, l21, l22 = tril[..., 2, 0], tril[..., 2, 1], tril[..., 2, 2]
    u00, u11, u22 = 1.0 / l00, 1.0 / l11, 1.0 / l22
    u10 = -l10 * u00 * u11
    u21 = -l21 * u11 * u22
    u20 = -(l20 * u00 + l21 * u10) * u22
    p00, p11, p22 = u00 * u00 + u10 * u10 + u20 * u20, u11 * u11 + u21 * u21, u22 * u22
    p01, p02, p12 = u10 * u11 + u20 * u21, u20 * u22, u21 * u22
    m0, m1, m2 = mu[..., 0], mu[..., 1], mu[..., 2]
    q0 = p00 * m0 + p01 * m1 + p02 * m2  # Sigma^-1 mu
    q1 = p01 * m0 + p11 * m1 + p12 * m2
    q2 = p02 * m0 + p12 * m1 + p22 * m2
    log_det = 2.0 * (tf.math.log(l00) + tf.math.log(l11) + tf.math.log(l22))
    const = tf.math.log(alpha) - 0.5 * (3.0 * _LOG_2PI + log_det) - 0.5 * (m0 * q0 + m1 * q1 + m2 * q2)
    return tf.stack([-0.5 * p00, -0.5 * p11, -0.5 * p22, -p01, -p02, -p12, q0, q1, q2, const], axis=-1)


def render_mixture(alpha: tf.Tensor, mu: tf.Tensor, tril: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """Mixture density ``sum_k alpha_k N(x; mu_k, L_k L_k^T)`` at the points whose features are given.

    ``features``: (P, 10) from :func:`quadratic_features`. Returns (B, P).
    """
    return sum_of_exponentials(component_coefficients(alpha, mu, tril), features)


def sum_of_exponentials(coef: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """``sum_k exp(features . coef[b, k])``: (B, K, 10), (P, 10) -> (B, P).

    The B K P exponentials are the renderer's whole cost, and on a CPU it is bound by passes over them,
    so each pass is one kernel (faster than TensorFlow's plain form, ``benchmarks/RESULTS.md``):

    * forward: the logits as one (B K, 10) x (10, P) product, exp, and the sum over K as a batched
      product with ones, a running sum per voxel (``reduce_sum`` over the middle axis is twice as slow);
    * gradient: ``d coef[b, k] = sum_p e[b, k, p] g[b, p] phi(p)`` as one batched product of the kept
      exponentials with ``g phi`` (B, 10, P), instead of broadcasting ``g`` over K, multiplying and
      reducing (three passes over B K P).

    The plain form's values and gradients agree to float32 rounding (tested).
    """
    return _sum_of_exponentials(coef, features)


@tf.custom_gradient
def _sum_of_exponentials(coef, features):
    b, k = tf.shape(coef)[0], tf.shape(coef)[1]
    features_t = tf.transpose(features)  # (10, P)
    logits = tf.matmul(tf.reshape(coef, (b * k, N_FEATURES)), features_t)
    e = tf.reshape(tf.exp(logits), (b, k, -1))  # (B, K, P)
    density = tf.matmul(tf.ones((b, 1, k), e.dtype), e)[:, 0, :]

    def grad(upstream):
        weighted = features_t[None] * upstream[:, None, :]  # (B, 10, P)
        return tf.matmul(e, weighted, transpose_b=True), None  # features: constants of the grid

    return density, grad


def render_grid(alpha, mu, tril, size: int, rows: tuple[int, int] | None = None) -> tf.Tensor:
    """The mixture density on the voxel-centre grid of a ``size``-cube: (B, size, size, size), or only the
    slices ``rows = (first, last)`` along axis 0: (B, last - first, size, size) (large cubes in pieces)."""
    first, last = rows if rows is not None else (0, size)
    points = grid_coordinates(size, (first, last))
    density = render_mixture(
        tf.convert_to_tensor(alpha),
        tf.convert_to_tensor(mu),
        tf.convert_to_tensor(tril),
        tf.constant(quadratic_features(points)),
    )
    return tf.reshape(density, (-1, last - first, size, size))
