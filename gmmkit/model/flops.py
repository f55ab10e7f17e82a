"""DeepDensity's floating-point operations, counted from its architecture, and the dense matmul they are
measured against (``gmmkit bench``'s ``mfu``).

The counts are analytic (a multiply-add counts 2) and checked against the layers of the built Keras model in
``tests/test_bench.py``.
"""

from __future__ import annotations

import time

from .config import KERNELS, ModelConfig


def conv_flops(model: ModelConfig, cube: int) -> list[float]:
    """Forward FLOPs of each Conv3D of the encoder, for one sample of a ``cube``-sided cube."""
    size, channels, flops = cube, 1, []
    for k in KERNELS:
        size -= k - 1
        flops.append(2.0 * size**3 * k**3 * channels * model.filters)
        channels = model.filters
    return flops


def forward_flops(model: ModelConfig, cube: int) -> float:
    """Floating-point operations of one sample's forward pass."""
    size = cube - sum(k - 1 for k in KERNELS)
    flops = sum(conv_flops(model, cube))
    flops += 2.0 * size**3 * model.filters * model.latent  # dense latent
    flops += 2.0 * model.latent * 10 * model.components  # heads: alpha K, mu 3K, sigma 3K, correlations 3K
    flops += 2.0 * model.components * 10 * cube**3 + 2.0 * model.components * cube**3  # renderer: features, exp, sum
    return flops


def train_flops(model: ModelConfig, cube: int) -> float:
    """One sample's training step: forward plus backward (gradients of weights and of inputs), 3 x forward,
    less the first convolution's input gradient, which nothing needs (its input is the data)."""
    return 3.0 * forward_flops(model, cube) - conv_flops(model, cube)[0]


def matmul_timer(n: int = 1024):
    """A :func:`gmmkit.timing.take_turns` timer: seconds of one dense float32 (n x n) @ (n x n) product on this
    process's TensorFlow threads (``2 n^3`` FLOPs)."""
    import tensorflow as tf  # heavy

    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))

    def timer():
        t0 = time.perf_counter()
        mm(a, b).numpy()
        return time.perf_counter() - t0

    return timer
