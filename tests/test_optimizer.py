"""gmmkit's fused Adam against Keras's own: same weights, same state variables, same configuration."""
import numpy as np
import pytest
import tensorflow as tf

from gmmkit.model import build_deepdensity
from gmmkit.training.optimizer import Adam


def _train(optimizer, steps=5):
    model = build_deepdensity(cube=16, components=3, filters=4, latent=8, seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 16)).astype(np.float32)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - x))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(steps)]
    return model, optimizer, losses


def test_fused_adam_follows_keras_adam():
    kwargs = dict(learning_rate=3e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    ours_model, ours, ours_losses = _train(Adam(**kwargs))
    ref_model, ref, ref_losses = _train(tf.keras.optimizers.Adam(**kwargs))
    assert ours_losses[-1] < ours_losses[0]  # it trains
    np.testing.assert_allclose(ours_losses, ref_losses, rtol=1e-4)
    assert [v.name for v in ours.variables] == [v.name for v in ref.variables]  # checkpoints, broadcasts
    for a, b in zip(ours.variables + ours_model.weights, ref.variables + ref_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b.numpy()).max()))
    assert int(ours.iterations) == 5
    config = ours.get_config()
    assert Adam.from_config(config).get_config() == config
    assert (config["beta_1"], config["epsilon"]) == (0.8, 1e-6)


def test_amsgrad_is_refused_by_name():
    with pytest.raises(ValueError, match="amsgrad"):
        Adam(amsgrad=True)
