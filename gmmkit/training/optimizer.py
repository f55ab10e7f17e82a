"""Keras's Adam with its dense update as one fused TensorFlow kernel."""

from __future__ import annotations

import tensorflow as tf

from ..model.keras2 import keras


class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam``: the same variables, configuration, state and rule, updated by
    ``ResourceApplyAdam`` instead of Keras's dozen element-wise ops per variable.

    The rule of both: ``m += (g - m)(1 - beta_1)``, ``v += (g^2 - v)(1 - beta_2)``,
    ``w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon)``. For DeepDensity's 820 k
    weights on a CPU the fused kernel is the faster (profiled, ``benchmarks/RESULTS.md``), and it runs on
    every rank of a data-parallel job whatever its share of the batch. Sparse gradients and
    AMSGrad take Keras's own path.
    """

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._index_dict[self._var_key(variable)]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(self.learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=gradient,
        )
