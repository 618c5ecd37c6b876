"""The one normalization used by training, phase 2 and inference.

Images are divided by a per-image scale: the largest absolute pixel value over all pixels and
bands of the *network input* (the blend, or the residual in later peeling steps). Dividing by a
single number keeps colours and is linear, so

    network output x scale  ->  flux in the input's units

exactly. The paper's phase-2 rule, "residuals are divided by their max before the next pass and
scaled back", is the same function applied to the residual. Targets (noiseless truths) are
divided by the scale of the input they belong to, never by their own.

Axis order: channels last, ``(..., H, W, C)``; the scale has shape ``(..., 1, 1, 1)``.
An all-zero image gets scale 1 (its normalized form is all zeros).

Example:
    >>> import numpy as np
    >>> x = np.array([[[[2.0], [-4.0]]]], dtype="float32")  # (1, 1, 2, 1)
    >>> xn, s = normalize(x)
    >>> float(s.numpy().ravel()[0]), xn.numpy().ravel().tolist()
    (4.0, [0.5, -1.0])
    >>> denormalize(xn, s).numpy().ravel().tolist()
    [2.0, -4.0]
"""

from __future__ import annotations

import tensorflow as tf


def image_scale(images: tf.Tensor) -> tf.Tensor:
    """Per-image scale: max |pixel| over (H, W, C); 1 where the image is all zero.

    Args:
        images: float tensor (..., H, W, C) in any linear flux unit.

    Returns:
        Tensor (..., 1, 1, 1) of the same dtype.
    """
    images = tf.convert_to_tensor(images)
    scale = tf.reduce_max(tf.abs(images), axis=[-3, -2, -1], keepdims=True)
    return tf.where(scale > 0, scale, tf.ones_like(scale))


def normalize(images: tf.Tensor, scale: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Divide ``images`` by their per-image scale (or by ``scale`` when given).

    Returns:
        ``(normalized, scale)``; keep ``scale`` to map network outputs back with
        :func:`denormalize`.
    """
    images = tf.convert_to_tensor(images)
    if scale is None:
        scale = image_scale(images)
    return images / scale, scale


def denormalize(images: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`normalize`: back to the input's flux units."""
    return tf.convert_to_tensor(images) * scale
