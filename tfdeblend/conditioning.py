"""Observing conditions as network input: one encoding for training, phase 2 and inference.

A *conditioned* network (``conditions > 0`` in :class:`~tfdeblend.models.presets.RDNConfig` or
:class:`~tfdeblend.models.presets.ClassifierConfig`) takes, next to the normalized image, a
vector of ``2 C`` numbers per image (``C`` bands) built here from

* ``noise_sigma`` ``(N, C)``: the per-band sky noise standard deviation **in the input's flux
  units** (from the variance plane, the simulation, or estimated from the image with
  :func:`tfdeblend.deblend.noise_std` when none is given), and
* ``psf_fwhm`` ``(N, C)``: the per-band PSF FWHM **in pixels**.

The raw pair is carried as one ``(N, 2, C)`` tensor, ``conditions``; :func:`condition_features`
turns it into the network's input, using the same per-image ``scale`` as the image
(:mod:`tfdeblend.normalize`), so the noise is seen in the network's units:

    features = [log10(noise_sigma / scale) + NOISE_OFFSET, psf_fwhm / PSF_REFERENCE - 1]

Both are near 0 at LSST 10-year conditions for a typical stamp. Networks without conditions
ignore them, so every call site passes them and older models run unchanged.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

#: added to log10(noise / scale): a typical nominal stamp (peak ~300 sigma) maps near 0
NOISE_OFFSET: float = 2.5
#: PSF FWHM in pixels that maps to 0 (LSST's r band is ~3.5 px, HSC's i band ~3.7 px)
PSF_REFERENCE: float = 4.0
#: floor of noise / scale (an all-zero or noiseless image)
NOISE_FLOOR: float = 1e-6


def n_features(channels: int) -> int:
    """Length of the feature vector of a ``channels``-band network."""
    return 2 * int(channels)


def pack(noise_sigma, psf_fwhm) -> tf.Tensor:
    """``(N, C)`` noise sigma (flux units) and ``(N, C)`` PSF FWHM (pixels) -> ``(N, 2, C)``."""
    noise_sigma = tf.cast(tf.convert_to_tensor(noise_sigma), tf.float32)
    psf_fwhm = tf.cast(tf.convert_to_tensor(psf_fwhm), tf.float32)
    psf_fwhm = tf.broadcast_to(psf_fwhm, tf.shape(noise_sigma))
    return tf.stack([noise_sigma, psf_fwhm], axis=1)


def condition_features(conditions: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """The network's condition input ``(N, 2C)`` for images divided by ``scale``.

    Args:
        conditions: ``(N, 2, C)`` from :func:`pack`.
        scale: ``(N, 1, 1, 1)`` the images' normalization scale.
    """
    conditions = tf.cast(conditions, tf.float32)
    scale = tf.reshape(tf.cast(scale, tf.float32), [-1, 1])
    noise = tf.maximum(conditions[:, 0] / scale, NOISE_FLOOR)
    log_noise = tf.math.log(noise) / np.log(10.0) + NOISE_OFFSET
    psf = conditions[:, 1] / PSF_REFERENCE - 1.0
    return tf.concat([log_noise, psf], axis=-1)


def conditions_from_features(features: tf.Tensor) -> tf.Tensor:
    """The ``(N, 2, C)`` conditions whose features at scale 1 are ``features`` ``(N, 2C)``: the
    inverse of :func:`condition_features` (exact above :data:`NOISE_FLOOR`). Phase 2 receives
    its blends already normalized, with their features, and derives the conditions of every
    image it makes from them (each image then gets its own scale)."""
    features = tf.cast(features, tf.float32)
    channels = tf.shape(features)[-1] // 2
    noise = tf.pow(10.0, features[:, :channels] - NOISE_OFFSET)
    psf = (features[:, channels:] + 1.0) * PSF_REFERENCE
    return tf.stack([noise, psf], axis=1)


def is_conditioned(model) -> bool:
    """Whether a Keras network takes a condition input besides the image."""
    return len(getattr(model, "inputs", None) or ()) > 1


def call_network(
    model, normalized: tf.Tensor, features: tf.Tensor | None = None, training: bool = False
) -> tf.Tensor:
    """``model`` (inference mode unless ``training``) on normalized images, with the condition
    ``features`` (:func:`condition_features`) when it takes them; a network without conditions
    ignores them.

    Raises:
        ValueError: a conditioned network and no features.
    """
    if not is_conditioned(model):
        return model(normalized, training=training)
    if features is None:
        raise ValueError(f"network {model.name} needs observing conditions")
    return model([normalized, features], training=training)


def record_conditions(record: dict) -> tf.Tensor:
    """``(…, 2, C)`` conditions of dataset records (``noise_sigma``, ``psf_fwhm`` in arcsec and
    ``pixel_scale``, as :mod:`tfdeblend.simulate` stores them)."""
    sigma = tf.cast(record["noise_sigma"], tf.float32)
    pixel_scale = tf.cast(record["pixel_scale"], tf.float32)[..., None]
    fwhm = tf.cast(record["psf_fwhm"], tf.float32) / pixel_scale
    return tf.stack([sigma, fwhm], axis=-2)
