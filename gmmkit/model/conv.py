"""Valid, unit-stride 3D convolutions arranged for the CPU kernels TensorFlow has (same sums, other order).

Two rewrites, each measured at DeepDensity's shapes (batch 32, one thread, oneDNN; ``benchmarks/RESULTS.md``):

* **Kernel gradient as a forward convolution.** The kernel gradient of ``y = conv3d(x, w)`` is itself a
  valid convolution: with the batch taken as the input channels and the input channels as the batch,
  ``dw = conv3d(x^T, dy^T)^T``, whose "kernel" is the output gradient. oneDNN's forward Conv3D runs it
  faster than its own kernel-gradient kernel while that output is small next to the kernel (the second
  encoder layer on 16^3 cubes), and slower once it is large (the same layer on 24^3 cubes). Of the shapes
  measured, it won or tied exactly where the output's spatial volume is at most twice the kernel's
  (:func:`kernel_gradient_as_forward`).
* **One input channel: depth folded into channels.** A Conv3D on a single channel (the first layer, on
  the CT cube) leaves oneDNN little to vectorise. Stacking the ``kd`` depth windows of the input as
  channels turns it into a Conv2D with ``kd`` input channels over a batch of ``B x D'`` slices, with the
  same multiply-adds, which oneDNN runs faster.

The input gradient stays TensorFlow's own.
"""

from __future__ import annotations

import tensorflow as tf

from .keras2 import keras
from .per_example import record

_STRIDES = [1, 1, 1, 1, 1]


def kernel_gradient(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """``dw[a, b, c, i, o] = sum_{n, d, h, w} x[n, d + a, h + b, w + c, i] dy[n, d, h, w, o]``."""
    xt = tf.transpose(x, (4, 1, 2, 3, 0))  # (Ci, D, H, W, B): channels as the batch, the batch as channels
    dyt = tf.transpose(dy, (1, 2, 3, 0, 4))  # (D', H', W', B, Co): the output gradient as the kernel
    return tf.transpose(tf.nn.conv3d(xt, dyt, _STRIDES, "VALID"), (1, 2, 3, 0, 4))


def conv3d_valid(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """``tf.nn.conv3d(x, kernel, strides 1, "VALID")`` for NDHWC ``x`` and a (kd, kh, kw, Ci, Co) kernel.

    Same values and gradients as TensorFlow's up to float32 summation order.
    """
    if x.shape[-1] == 1 and None not in x.shape[1:4]:
        return _folded_single_channel(x, kernel)
    if kernel_gradient_as_forward(x.shape, kernel.shape):
        return _conv3d_forward_kernel_gradient(x, kernel)
    return tf.nn.conv3d(x, kernel, _STRIDES, "VALID")


def kernel_gradient_as_forward(x_shape, kernel_shape) -> bool:
    """Whether the output's spatial volume is known and at most twice the kernel's (see the module
    docstring for the measurements behind the rule)."""
    dims = [x_shape[d] for d in (1, 2, 3)] + [kernel_shape[d] for d in (0, 1, 2)]
    if any(d is None for d in dims):
        return False
    out = (dims[0] - dims[3] + 1) * (dims[1] - dims[4] + 1) * (dims[2] - dims[5] + 1)
    return out <= 2 * dims[3] * dims[4] * dims[5]


def _folded_single_channel(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """One input channel: the ``kd`` depth windows as the channels of a Conv2D over (B D') slices."""
    kd, kh, kw, _, co = kernel.shape
    depth = x.shape[1] - kd + 1
    # stacked in front, then moved last: faster than a stack along the last axis (benchmarks/RESULTS.md)
    windows = tf.transpose(tf.stack([x[:, a : a + depth, :, :, 0] for a in range(kd)]), (1, 2, 3, 4, 0))
    slices = tf.reshape(windows, (-1, x.shape[2], x.shape[3], kd))
    kernel2d = tf.transpose(kernel[:, :, :, 0, :], (1, 2, 0, 3))  # (kh, kw, kd, Co)
    y = tf.nn.conv2d(slices, kernel2d, 1, "VALID")  # (B D', H', W', Co)
    return tf.reshape(y, (-1, depth, y.shape[1], y.shape[2], co))


@tf.custom_gradient
def _conv3d_forward_kernel_gradient(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """TensorFlow's Conv3D with the kernel gradient of :func:`kernel_gradient`."""

    def grad(dy):
        dx = tf.raw_ops.Conv3DBackpropInputV2(
            input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=_STRIDES, padding="VALID"
        )
        return dx, kernel_gradient(x, dy)

    return tf.nn.conv3d(x, kernel, _STRIDES, "VALID"), grad


@keras.saving.register_keras_serializable(package="gmmkit")
class Conv3D(keras.layers.Conv3D):
    """``keras.layers.Conv3D`` that trains through :func:`conv3d_valid` when it can.

    Same weights, configuration and outputs (up to float32 summation order): a single input channel runs
    folded into a Conv2D, and the kernel gradient may run as a forward convolution (module docstring).
    Any other set-up (strides, dilation, padding, groups, channels first) is plain Keras.
    """

    def _fast(self) -> bool:
        return (
            self.padding == "valid"
            and tuple(self.strides) == (1, 1, 1)
            and tuple(self.dilation_rate) == (1, 1, 1)
            and self.groups == 1
            and not self._channels_first
        )

    def convolution_op(self, inputs, kernel):
        if not self._fast():
            return super().convolution_op(inputs, kernel)
        return conv3d_valid(inputs, tf.convert_to_tensor(kernel))

    def call(self, inputs):
        if not self._fast():
            return super().call(inputs)
        z = self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            z = tf.nn.bias_add(z, self.bias)
        record(self, inputs, z)
        return z if self.activation is None else self.activation(z)
