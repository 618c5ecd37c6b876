"""The one normalization used by training, phase 2 and inference.

Images are divided by a per-image scale: the largest absolute pixel value over all pixels and
bands of the *network input* (the blend, or the residual in later peeling steps). Dividing by a
single number keeps colours and is linear, so

    network output x scale  ->  flux in the input's units

exactly. The paper's phase-2 rule, "residuals are divided by their max before the next pass and
scaled back", is the same function applied to the residual. Targets (noiseless truths) are
divided by the scale of the input they belong to, never by their own.

No single pixel decides the scale: before the maximum is taken, single-pixel outliers (cosmic
rays, hot pixels: a pixel that rises above the third brightest of its 8 neighbours by more than
:data:`OUTLIER_SNR` noise sigmas *and* by more than :data:`OUTLIER_SHARPNESS` times that
neighbour, which no PSF-convolved source does) are replaced by the median of their neighbours,
and the networks see the cleaned image (:func:`remove_outliers`). On an image without outliers
this changes nothing. Callers that need ``model + residual == input`` keep the original data
for the residual (:class:`tfdeblend.deblend.Peeler` does).

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
    >>> rng = np.random.default_rng(0)
    >>> sky = rng.normal(0.0, 1.0, (1, 20, 20, 1)).astype("float32")
    >>> sky[0, 5, 7, 0] = 1e6  # a hot pixel does not set the scale
    >>> float(normalize(sky)[1].numpy().ravel()[0]) < 5
    True
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdeblend.config import MAD_TO_SIGMA, OUTLIER_SHARPNESS, OUTLIER_SNR


def _median_last_axis(x: tf.Tensor) -> tf.Tensor:
    """Median over the last axis (the mean of the two middle values for an even length)."""
    n = tf.shape(x)[-1]
    ordered = tf.sort(x, axis=-1)
    lower = tf.gather(ordered, (n - 1) // 2, axis=-1)
    upper = tf.gather(ordered, n // 2, axis=-1)
    return 0.5 * (lower + upper)


def noise_std(images: tf.Tensor) -> tf.Tensor:
    """Robust noise sigma per image and band, ``1.4826 x MAD`` of ``(N, H, W, C)``.

    Returns:
        float32 ``(N, C)``, in the input's units (0 for an all-zero image).
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    flat = tf.reshape(
        tf.transpose(images, [0, 3, 1, 2]), [shape[0], shape[3], shape[1] * shape[2]]
    )
    median = _median_last_axis(flat)
    return MAD_TO_SIGMA * _median_last_axis(tf.abs(flat - median[..., None]))


def _as_batch(images: tf.Tensor) -> tf.Tensor:
    """``(..., H, W, C)`` as ``(N, H, W, C)``."""
    shape = tf.shape(images)
    return tf.reshape(images, tf.concat([[-1], shape[-3:]], axis=0))


def _shifted(images: tf.Tensor):
    """The 8 neighbours of every pixel of ``(N, H, W, C)`` (edges mirrored), one tensor each."""
    # mirrored as numpy's "reflect" (tf.pad's REFLECT refuses an empty batch)
    padded = tf.concat([images[:, 1:2], images, images[:, -2:-1]], axis=1)
    padded = tf.concat([padded[:, :, 1:2], padded, padded[:, :, -2:-1]], axis=2)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    return [padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width, :]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def outlier_sigma(images: tf.Tensor) -> tf.Tensor:
    """The noise sigma the outlier rule uses: ``1.4826 x MAD`` of every other pixel along each
    axis of ``(N, H, W, C)`` (a quarter of the pixels, within a few per cent of
    :func:`noise_std` and four times cheaper); ``(N, C)``."""
    return noise_std(tf.cast(images, tf.float32)[:, ::2, ::2, :])


def outlier_mask(images: tf.Tensor, sigma: tf.Tensor | None = None) -> tf.Tensor:
    """Boolean mask ``(N, H, W, C)`` of the single-pixel outliers (the module docstring's rule).

    Args:
        images: ``(N, H, W, C)`` in any linear unit, sky subtracted, at least 3x3 pixels;
            NaN pixels are never outliers, and a NaN neighbour counts as below every value.
        sigma: noise sigma ``(N, C)`` or ``(C,)``; default :func:`outlier_sigma`.
    """
    images = tf.cast(images, tf.float32)
    if sigma is None:
        sigma = outlier_sigma(images)
    sigma = tf.broadcast_to(tf.cast(sigma, tf.float32), tf.shape(images)[::3])
    # the three brightest neighbours, kept in order while the 8 are visited (elementwise)
    low = tf.fill(tf.shape(images), tf.constant(-np.inf, tf.float32))
    first = second = third = low
    for value in _shifted(tf.where(tf.math.is_nan(images), low, images)):
        third = tf.maximum(third, tf.minimum(second, value))
        second = tf.maximum(second, tf.minimum(first, value))
        first = tf.maximum(first, value)
    base = tf.where(tf.math.is_finite(third), tf.maximum(third, 0.0), 0.0)
    excess = images - base
    return tf.logical_and(
        excess > OUTLIER_SNR * sigma[:, None, None, :], excess > OUTLIER_SHARPNESS * base
    )


def neighbour_median(images: tf.Tensor) -> tf.Tensor:
    """Median of the 8 neighbours of every pixel of ``(N, H, W, C)`` (edges mirrored)."""
    return _median_last_axis(tf.stack(_shifted(tf.cast(images, tf.float32)), axis=-1))


def remove_outliers(
    images: tf.Tensor, sigma: tf.Tensor | None = None, passes: int = 2
) -> tuple[tf.Tensor, tf.Tensor]:
    """``images`` with their outliers (:func:`outlier_mask`) replaced by their neighbours' median.

    The replacement is repeated ``passes`` times, so that a pair of adjacent outliers (a short
    cosmic-ray track) is replaced by its surroundings, not by each other.

    Args:
        images: ``(..., H, W, C)``; smaller than 3x3 pixels: returned as they are.
        sigma: noise sigma per image and band (``(N, C)`` for a batch); default
            :func:`outlier_sigma`.

    Returns:
        ``(cleaned, mask)``, both shaped like ``images``.
    """
    images = tf.convert_to_tensor(images)
    static = images.shape
    if static.rank is not None and static.rank >= 3 and (
        (static[-3] is not None and static[-3] < 3) or (static[-2] is not None and static[-2] < 3)
    ):
        return images, tf.zeros_like(images, tf.bool)
    batch = tf.cast(_as_batch(images), tf.float32)
    mask = outlier_mask(batch, sigma)

    def replace():
        out = batch
        for _ in range(passes):
            out = tf.where(mask, neighbour_median(out), out)
        return out

    cleaned = tf.cond(tf.reduce_any(mask), replace, lambda: batch)
    cleaned = tf.ensure_shape(tf.reshape(tf.cast(cleaned, images.dtype), tf.shape(images)), static)
    mask = tf.ensure_shape(tf.reshape(mask, tf.shape(images)), static)
    return cleaned, mask


def _max_scale(images: tf.Tensor) -> tf.Tensor:
    """Max |pixel| over (H, W, C), ``(..., 1, 1, 1)``; 1 where the image is all zero."""
    scale = tf.reduce_max(tf.abs(images), axis=[-3, -2, -1], keepdims=True)
    return tf.where(scale > 0, scale, tf.ones_like(scale))


def normalize(
    images: tf.Tensor, scale: tf.Tensor | None = None, sigma: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """The network input of ``images``: without their outliers (:func:`remove_outliers`),
    divided by the per-image scale, the largest |pixel| left over (H, W, C) (1 for an
    all-zero image).

    With ``scale`` given (targets, divided by the scale of the input they belong to), the
    images are only divided by it. ``sigma`` (the images' sky noise, ``(N, C)``; default
    :func:`outlier_sigma`) is the outlier rule's noise: the peel gives the blend's, which its
    residuals and models share.

    Returns:
        ``(normalized, scale)``; keep ``scale`` to map network outputs back with
        :func:`denormalize`.
    """
    images = tf.convert_to_tensor(images)
    if scale is not None:
        return images / scale, scale
    cleaned = remove_outliers(images, sigma)[0]
    scale = _max_scale(cleaned)
    return cleaned / scale, scale


def denormalize(images: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`normalize`: back to the input's flux units."""
    return tf.convert_to_tensor(images) * scale
