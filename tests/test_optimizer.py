"""gmmkit's Adam (one fused kernel per variable) against Keras's own, step by step."""

import numpy as np
import pytest
import tensorflow as tf

from gmmkit.training.optimizer import Adam

pytestmark = pytest.mark.lane  # also in the current lane (make test-current)


def run(optimizer_cls, steps=5, **kwargs):
    rng = np.random.default_rng(0)
    variables = [tf.Variable(rng.normal(size=shape).astype(np.float32)) for shape in [(7, 3), (5,), (2, 2, 4)]]
    opt = optimizer_cls(learning_rate=0.01, **kwargs)
    opt.build(variables)

    @tf.function
    def step(grads):
        opt.apply_gradients(zip(grads, variables))

    for i in range(steps):
        if i == 3:
            opt.learning_rate.assign(0.003)  # the training loop sets a new rate during warm-up
        grads = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in variables]
        step(grads)
    ops = {op.type for op in step.get_concrete_function(grads).graph.get_operations()}
    return [v.numpy() for v in variables], [v.numpy() for v in opt.variables], opt, ops


def test_fused_adam_follows_keras_adam_and_keeps_its_state():
    kwargs = dict(beta_1=0.8, beta_2=0.95, epsilon=1e-6)
    ours, our_state, opt, ops = run(Adam, **kwargs)
    keras_weights, keras_state, keras_opt, _ = run(tf.keras.optimizers.Adam, **kwargs)
    assert "ResourceApplyAdam" in ops
    assert opt.get_config() == keras_opt.get_config()
    assert [v.name for v in opt.variables] == [v.name for v in keras_opt.variables]
    for a, b in zip(ours + our_state, keras_weights + keras_state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(opt.iterations.numpy()) == 5


def test_amsgrad_takes_keras_path():
    ours, _, _, ops = run(Adam, amsgrad=True)
    theirs, _, _, _ = run(tf.keras.optimizers.Adam, amsgrad=True)
    assert "ResourceApplyAdam" not in ops
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
