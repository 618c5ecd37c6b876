"""Registered custom layers (no ``Lambda``), so ``.keras`` files load with ``safe_mode=True``.

Axis order is channels last, ``(N, H, W, C)``, everywhere.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class _BlockRearrange(keras.layers.Layer):
    """Base of the two lossless rearrangements: holds and serializes the block size."""

    def __init__(self, block: int, **kwargs):
        super().__init__(**kwargs)
        if int(block) < 1:
            raise ValueError(f"block must be >= 1, not {block}")
        self.block = int(block)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


@keras.saving.register_keras_serializable(package="tfdeblend")
class SpaceToDepth(_BlockRearrange):
    """Lossless rearrangement ``(N, H, W, C) -> (N, H/b, W/b, C*b*b)`` (``tf.nn.space_to_depth``).

    Lets the dense blocks run on a ``b`` times smaller grid; :class:`DepthToSpace` (the ESPCN
    sub-pixel shuffle) restores full resolution at the end. ``block=1`` is the identity.

    Args:
        block: block size ``b``; ``H`` and ``W`` must be multiples of it.
    """

    def call(self, inputs):
        if self.block == 1:
            return inputs
        return tf.nn.space_to_depth(inputs, self.block)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (
            n,
            None if h is None else h // b,
            None if w is None else w // b,
            None if c is None else c * b * b,
        )


@keras.saving.register_keras_serializable(package="tfdeblend")
class DepthToSpace(_BlockRearrange):
    """ESPCN sub-pixel upsampling ``(N, H, W, C*b*b) -> (N, H*b, W*b, C)`` (``tf.nn.depth_to_space``).

    Args:
        block: upsampling factor ``b``; the channel count must be a multiple of ``b*b``.
    """

    def call(self, inputs):
        if self.block == 1:
            return inputs
        return tf.nn.depth_to_space(inputs, self.block)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (
            n,
            None if h is None else h * b,
            None if w is None else w * b,
            None if c is None else c // (b * b),
        )


@keras.saving.register_keras_serializable(package="tfdeblend")
class AsinhStretch(keras.layers.Layer):
    """``y = asinh(x / a) / asinh(1 / a)``: a monotonic stretch that maps 0 -> 0 and 1 -> 1.

    Linear for ``|x| << a``, logarithmic above: faint structure ``a`` times fainter than the
    image's max stays visible. Used as the classifier's first layer on normalized images.

    Args:
        softening: ``a`` (> 0), in normalized units.
    """

    def __init__(self, softening: float, **kwargs):
        super().__init__(**kwargs)
        if float(softening) <= 0:
            raise ValueError(f"softening must be > 0, not {softening}")
        self.softening = float(softening)

    def call(self, inputs):
        scale = float(np.arcsinh(1.0 / self.softening))
        return tf.math.asinh(inputs / self.softening) / scale

    def get_config(self):
        return {**super().get_config(), "softening": self.softening}


@keras.saving.register_keras_serializable(package="tfdeblend")
class ConditionMaps(keras.layers.Layer):
    """Append observing conditions to a feature map as constant channels.

    ``[(N, H, W, F) features, (N, K) conditions] -> (N, H, W, F + K)``: each of the ``K``
    condition values (see :mod:`tfdeblend.conditioning`) is broadcast over the image plane and
    concatenated, so the next convolution sees the per-band noise and PSF at every pixel.
    """

    def call(self, inputs):
        features, conditions = inputs
        conditions = tf.cast(conditions, features.dtype)
        shape = tf.shape(features)
        maps = tf.broadcast_to(
            conditions[:, None, None, :],
            tf.stack([shape[0], shape[1], shape[2], tf.shape(conditions)[-1]]),
        )
        return tf.concat([features, maps], axis=-1)

    def compute_output_shape(self, input_shape):
        features, conditions = input_shape
        extra = conditions[-1]
        channels = None if features[-1] is None or extra is None else features[-1] + extra
        return (*features[:-1], channels)
