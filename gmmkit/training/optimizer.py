"""Adam with one fused kernel per variable (TensorFlow's ``ResourceApplyAdam``).

Keras 2's ``Adam.update_step`` updates each variable with about ten separate element-wise operations,
each a pass over memory; outside XLA (which Keras only turns on for GPUs) that is about 7 ms per step
for DeepDensity's 820 thousand weights on one CPU thread. ``ResourceApplyAdam`` does the same update in
one pass: about 5 ms, measured in ``benchmarks/RESULTS.md``. The update rule, the optimiser's variables
(``iteration``, ``m/...``, ``v/...``) and their order are Keras's own, so checkpoints, broadcasts and
``get_config`` are unchanged; the weights agree to float32 rounding (6.9e-6 relative after 33 steps).
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow import keras


class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (without AMSGrad) whose update runs as ``ResourceApplyAdam``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("amsgrad: expected False (the fused update is plain Adam), received True")

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices):  # sparse updates: Keras's own path
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._index_dict[self._var_key(variable)]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(self.learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=gradient)
