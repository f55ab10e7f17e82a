"""The Keras 2 that gmmkit is written for, in either lane: TensorFlow 2.15's own ``tf.keras`` (the Horovod
lane), or the ``tf-keras`` package beside TensorFlow 2.16 and later, whose ``tf.keras`` is Keras 3 unless
``TF_USE_LEGACY_KERAS=1`` (the current lane; ``gmmkit/__init__.py`` sets it). Imported by name here, so
gmmkit gets Keras 2 even when TensorFlow was imported before gmmkit without that variable."""

from __future__ import annotations

try:
    import tf_keras as keras  # TensorFlow >= 2.16: Keras 2 is a package of its own
except ImportError:  # TensorFlow 2.15: Keras 2 is TensorFlow's
    from tensorflow import keras

__all__ = ["keras"]
