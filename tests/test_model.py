"""DeepDensity: the renderer and its gradients against scipy, the convolutions against TensorFlow's,
positive-definite covariances, shapes and units."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import multivariate_normal

from gmmkit.model import build_deepdensity, covariance, grid_coordinates, mixture_model, render_grid, scale_tril

pytestmark = pytest.mark.lane  # also in the current lane (make test-current)


def random_mixture(rng, b=2, k=5):
    alpha = rng.dirichlet(np.ones(k), size=b).astype(np.float32)
    mu = rng.uniform(-0.7, 0.7, (b, k, 3)).astype(np.float32)
    sigma = rng.uniform(0.08, 0.6, (b, k, 3)).astype(np.float32)
    corr = rng.normal(0, 2.0, (b, k, 3)).astype(np.float32)  # strong correlations
    return alpha, mu, scale_tril(tf.constant(sigma), tf.constant(corr))


@pytest.mark.parametrize("size", [16, 9])
def test_renderer_matches_scipy_with_full_covariances(size):
    rng = np.random.default_rng(1)
    alpha, mu, tril = random_mixture(rng)
    cov = covariance(tril).numpy().astype(np.float64)
    assert np.abs(cov[..., 0, 1]).max() > 0.01  # really full covariances
    got = render_grid(alpha, mu, tril, size).numpy()
    pts = grid_coordinates(size)
    for b in range(alpha.shape[0]):
        ref = sum(alpha[b, k] * multivariate_normal(mu[b, k], cov[b, k]).pdf(pts) for k in range(alpha.shape[1]))
        np.testing.assert_allclose(got[b].reshape(-1), ref, rtol=2e-4, atol=1e-5 * ref.max())


def test_grid_is_voxel_centres_in_c_order():
    pts = grid_coordinates(4)
    assert pts.shape == (64, 3)
    np.testing.assert_allclose(pts[0], [-0.75, -0.75, -0.75])
    np.testing.assert_allclose(pts[1], [-0.75, -0.75, -0.25])  # last axis varies fastest, as in numpy


def test_covariances_are_positive_definite_for_any_raw_heads():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.01, 1.0, (4000, 3)).astype(np.float32)
    corr = rng.normal(0, 30, (4000, 3)).astype(np.float32)  # extreme raw values
    tril = scale_tril(tf.constant(sigma), tf.constant(corr)).numpy().astype(np.float64)
    # the renderer uses the factor L itself: lower triangular with a diagonal bounded away from 0
    assert np.all(np.triu(tril, 1) == 0)
    assert np.diagonal(tril, axis1=1, axis2=2).min() >= 0.2 * sigma.min()
    cov = tril @ np.swapaxes(tril, 1, 2)
    assert np.linalg.eigvalsh(cov).min() > 0
    assert np.linalg.cond(cov / (sigma[:, :, None] * sigma[:, None, :])).max() < 1e3  # well conditioned R
    np.testing.assert_allclose(np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), sigma, rtol=1e-4)
    corr_matrix = cov / (sigma[:, :, None] * sigma[:, None, :])
    assert np.abs(corr_matrix).max() <= 1 + 1e-5


def test_independent_sigmoids_would_not_be_enough():
    # the paper's parametrisation: correlations in (-1, 1) independently; this one is not a covariance
    r = np.array([[1, 0.9, 0.9], [0.9, 1, -0.9], [0.9, -0.9, 1]])
    assert np.linalg.eigvalsh(r).min() < 0


def test_model_shapes_parameters_and_units():
    model = build_deepdensity(cube=16, components=50, seed=0)
    assert [model.get_layer(f"conv{i}").kernel_size for i in (1, 2, 3)] == [(7, 7, 7), (5, 5, 5), (3, 3, 3)]
    assert model.get_layer("conv3").output_shape == (None, 4, 4, 4, 32)
    x = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 16)).astype(np.float32)
    y = model(x).numpy()
    assert y.shape == x.shape and np.all(y >= 0)
    alpha, mu, tril, mass = (t.numpy() for t in mixture_model(model)(x))
    assert alpha.shape == (3, 50) and mu.shape == (3, 50, 3) and tril.shape == (3, 50, 3, 3)
    np.testing.assert_allclose(alpha.sum(axis=1), 1, rtol=1e-5)
    assert np.abs(mu).max() <= 1
    np.testing.assert_allclose(mass, x.reshape(3, -1).sum(1) * (2 / 16) ** 3, rtol=1e-5)
    # the rendered density is mass x mixture: same units as the input
    np.testing.assert_allclose(y, render_grid(alpha, mu, tril, 16).numpy() * mass[:, None, None, None], rtol=1e-4)
    # 1/2 (n^2 + 3n + 2) K = 10 K numbers per cube from the latent vector (paper Section V)
    heads = model.get_layer("mixture")
    assert sum(d.units for d in (heads.alpha, heads.mu, heads.sigma, heads.corr)) == 10 * 50


def test_layers_round_trip_through_get_config():
    model = build_deepdensity(cube=16, components=3, filters=4, latent=8, seed=0)
    clone = tf.keras.Model.from_config(
        model.get_config(),
        custom_objects={
            "GaussianMixtureHeads": type(model.get_layer("mixture")),
            "DeepDensity": type(model.get_layer("density")),
        },
    )
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), rtol=1e-5)


def test_renderer_gradients_match_the_closed_form():
    """d/d alpha_k and d/d mu_k of sum_x g(x) M(x), against alpha_k N_k(x) Sigma_k^-1 (x - mu_k) from scipy."""
    rng = np.random.default_rng(2)
    alpha, mu, tril = random_mixture(rng, b=2, k=4)
    alpha, mu = tf.constant(alpha), tf.constant(mu)
    size = 8
    g = rng.uniform(0, 1, (2, size, size, size)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch([alpha, mu])
        loss = tf.reduce_sum(render_grid(alpha, mu, tril, size) * g)
    d_alpha, d_mu = (t.numpy() for t in tape.gradient(loss, [alpha, mu]))
    cov, pts = covariance(tril).numpy().astype(np.float64), grid_coordinates(size).astype(np.float64)
    for b in range(2):
        for k in range(4):
            pdf = multivariate_normal(mu[b, k].numpy(), cov[b, k]).pdf(pts) * g[b].reshape(-1)
            np.testing.assert_allclose(d_alpha[b, k], pdf.sum(), rtol=2e-4)
            ref = alpha[b, k].numpy() * np.linalg.solve(cov[b, k], ((pts - mu[b, k].numpy()) * pdf[:, None]).sum(0))
            np.testing.assert_allclose(d_mu[b, k], ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())


def test_sum_of_exponentials_gradient_is_autodiffs_for_every_coefficient():
    from gmmkit.model.mixture import quadratic_features, sum_of_exponentials

    rng = np.random.default_rng(3)
    coef = tf.constant(rng.normal(0, 0.5, (3, 4, 10)).astype(np.float32))
    features = tf.constant(quadratic_features(grid_coordinates(6)))
    dy = tf.constant(rng.uniform(-1, 1, (3, 6**3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(coef)
        fast = sum_of_exponentials(coef, features)
        plain = tf.reduce_sum(tf.exp(tf.einsum("bkf,pf->bkp", coef, features)), axis=1)
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(fast, coef, output_gradients=dy).numpy(),
        tape.gradient(plain, coef, output_gradients=dy).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "shape,path",
    [
        ((16, (7, 7, 7), 1, 4), "folded"),
        ((9, (2, 3, 1), 1, 3), "folded"),
        ((9, (5, 5, 5), 3, 4), "forward"),
        ((4, (3, 2, 4), 2, 5), "forward"),
        ((10, (3, 3, 3), 3, 4), "tensorflow"),
    ],
    ids=["first-layer", "odd-single-channel", "kernel-gradient-as-forward", "odd-kernel", "large-output"],
)
def test_convolutions_match_tensorflows_values_and_gradients(shape, path):
    """Each path of :mod:`gmmkit.model.conv` (folded single channel, kernel gradient as a forward
    convolution, TensorFlow's own) against ``tf.nn.conv3d`` and its gradients, on non-cubic inputs."""
    from gmmkit.model.conv import conv3d_valid, kernel_gradient_as_forward

    size, kernel, cin, cout = shape
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, size, size + 1, size + 2, cin)).astype(np.float32))
    w = tf.constant(rng.normal(size=(*kernel, cin, cout)).astype(np.float32))
    if path != "folded":
        assert kernel_gradient_as_forward(x.shape, w.shape) == (path == "forward")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w])
        ours, theirs = conv3d_valid(x, w), tf.nn.conv3d(x, w, [1] * 5, "VALID")
        dy = tf.constant(rng.normal(size=theirs.shape).astype(np.float32))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(
        tape.gradient(ours, [x, w], output_gradients=dy), tape.gradient(theirs, [x, w], output_gradients=dy)
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * np.abs(b.numpy()).max())


def test_the_encoder_uses_gmmkits_convolution_and_other_settings_stay_keras():
    from gmmkit.model.conv import Conv3D

    model = build_deepdensity(cube=16, components=2, filters=4, latent=8, seed=0)
    assert all(type(model.get_layer(f"conv{i}")) is Conv3D for i in (1, 2, 3))
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 9, 9, 9, 2)).astype(np.float32))
    strided = Conv3D(3, 3, strides=2, padding="same")  # not the rewritten case: plain Keras
    plain = tf.keras.layers.Conv3D(3, 3, strides=2, padding="same")
    plain.build(x.shape)
    strided.build(x.shape)
    strided.set_weights(plain.get_weights())
    np.testing.assert_allclose(strided(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-6)


def test_component_coefficients_match_the_linear_algebra_and_its_gradients():
    """The element-wise closed form against tf.linalg: triangular solve, precision, log-determinant."""
    from gmmkit.model.mixture import component_coefficients

    def reference(alpha, mu, tril):
        inv = tf.linalg.triangular_solve(tril, tf.eye(3, batch_shape=tf.shape(tril)[:-2]), lower=True)
        prec = tf.matmul(inv, inv, transpose_a=True)
        log_det = tf.linalg.logdet(tf.matmul(tril, tril, transpose_b=True))
        p_mu = tf.linalg.matvec(prec, mu)
        const = tf.math.log(alpha) - 0.5 * (3 * np.log(2 * np.pi) + log_det) - 0.5 * tf.reduce_sum(mu * p_mu, -1)
        quad = [
            -0.5 * prec[..., 0, 0],
            -0.5 * prec[..., 1, 1],
            -0.5 * prec[..., 2, 2],
            -prec[..., 0, 1],
            -prec[..., 0, 2],
            -prec[..., 1, 2],
        ]
        return tf.stack([*quad, p_mu[..., 0], p_mu[..., 1], p_mu[..., 2], const], axis=-1)

    rng = np.random.default_rng(6)
    alpha, mu, tril = (tf.constant(t) for t in random_mixture(rng, b=3, k=6))
    g = tf.constant(rng.normal(size=(3, 6, 10)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([alpha, mu, tril])
        ours, ref = component_coefficients(alpha, mu, tril), reference(alpha, mu, tril)
        ours_loss, ref_loss = tf.reduce_sum(ours * g), tf.reduce_sum(ref * g)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(tape.gradient(ours_loss, [alpha, mu, tril]), tape.gradient(ref_loss, [alpha, mu, tril])):
        b = b.numpy() * (np.tril(np.ones((3, 3))) if b.ndim == 4 else 1)  # only L's lower triangle is free
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-3, atol=1e-4 * np.abs(b).max())


def test_a_saved_model_loads_without_custom_objects(tmp_path):
    # every gmmkit layer is registered serializable: Keras finds it by name, as for its own layers
    import tensorflow as tf

    model = build_deepdensity(cube=16, components=3, filters=4, latent=8, seed=1)
    path = tmp_path / "deepdensity.keras"
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    x = np.random.default_rng(0).random((2, 16, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    mixture = mixture_model(loaded)
    assert [t.shape for t in mixture(x)] == [(2, 3), (2, 3, 3), (2, 3, 3, 3), (2,)]
