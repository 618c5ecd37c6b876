"""The iterative peel: count, deblend the brightest galaxy, subtract, repeat (Wang et al. 2021).

:class:`Peeler` combines the classifier (a count of 0-3 galaxies) and the RDN (the brightest
galaxy of an image) in one batched :class:`tf.function` (a ``tf.while_loop`` over the batch), so
the whole peel is exported as a SavedModel signature and served by TF Serving. How it runs is
one :class:`tfdeblend.peel_config.PeelConfig`; its ``paper`` preset is the paper's peel, its
defaults the shipped model's. What each step after the paper's peel bought is measured in
``docs/model_history.md``.

**Before the peel**, single-pixel outliers (cosmic rays, hot pixels) are replaced by the median
of their neighbours (:func:`tfdeblend.normalize.remove_outliers`): no network and no component
sees them, and they are added back to the residual at the end (output ``outliers``: how many).

**The peel.** At every step ``t = 0, 1, ..., K`` (``K = max_iterations``) and for every blend
still *active*:

1. the current residual (the input at ``t = 0``) is normalized by its own scale
   (:func:`tfdeblend.normalize.normalize`);
2. the classifier counts the galaxies left (argmax of its logits, averaged over ``count_views``
   rotations/flips of the image, or only of the images whose single view is unsure with
   ``view_confidence``, with ``prior_three`` added to the logit of 3 galaxies); the count is
   recorded in ``counts[:, t]``;
3. the blend stops when the count is 0 (quality *high* when the counts dropped by exactly one per
   step, e.g. ``3, 2, 1, 0``; *medium* otherwise), when the same non-zero count has come
   :data:`REPEAT_LIMIT` times in a row (quality *low*; nothing is peeled at that step), or when
   ``K`` components have been peeled and the count is still non-zero (quality *low*);
4. otherwise the RDN returns the brightest galaxy of the normalized residual, which is
   denormalized back to flux units, stored as component ``t`` and subtracted from the residual.

**After the peel**, in this order (each off in the paper's preset):

- *split* (:meth:`Peeler.split_merged`): in a blend with a free slot that has one component, or
  fewer than its first count, the component the classifier counts as two or more galaxies is
  split into the RDN's brightest galaxy of it and the rest (close pairs the RDN returned as one);
- *separated split* (:meth:`Peeler.split_separated`, ``split_distance``): in the blends the
  split may change, a component whose model holds a second peak farther than
  ``split_distance`` pixels from its brightest, with a valley between them, is cut in two along the line halfway between the peaks (two
  well-separated galaxies the RDN returned as one; the refinement then models each again);
- *refinement* (:meth:`Peeler.refine`, ``refine_steps`` Jacobi sweeps): every component of a
  blend with two or more is estimated again from the blend minus all the *other* components;
- *residual detection* (:meth:`Peeler.recover_missed`, ``detect_snr``): where the residual's
  matched-filter S/N map (:func:`residual_snr`) peaks above ``detect_snr`` away from the
  components found, the RDN's galaxy of the residual (or of a disc of ``detect_window`` pixels
  around the peak) becomes a new component if it lies at the peak;
- *merge* (:meth:`Peeler.merge_close`, ``merge_radius``): a component whose centroid lies within
  ``merge_radius`` pixels of an earlier (brighter) one is added to it;
- *significance* (:meth:`Peeler.keep_significant`, ``keep_snr``): a component after the first
  that lies on the other galaxies' models and whose matched-filter S/N, with ``model_error``
  of the models counted as noise, peaks at or below ``keep_snr`` goes back to the residual
  (pieces of a bright galaxy's model error that the classifier counted as a galaxy);
- *flux-conserving components* (:func:`conserve_flux`, always): the residual is handed back to the
  galaxies pixel by pixel in proportion to their models, inside the footprint where the summed
  model is above :data:`FOOTPRINT_SIGMA` noise sigmas. Use them for photometry; use the models
  (``components``) for images.

Counts, quality and ``counts`` are the peel's; ``split``, ``recovered``, ``merged`` and ``pruned``
say what the later steps did. Always: ``components.sum(axis=1) + residual == images`` up to float32
rounding. A blend whose first count is 0 has no components and quality *high*; an image that is
exactly zero everywhere counts 0 whatever the classifier says. ``counts`` has ``K + 1`` columns;
steps not run hold ``-1``.

Axis order: channels last, ``(N, H, W, C)`` blends and ``(N, K, H, W, C)`` components, in the
input's linear flux units.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdeblend.conditioning import (
    PSF_REFERENCE,
    call_network,
    condition_features,
    is_conditioned,
    pack,
)
from tfdeblend.measure import FOOTPRINT_SIGMA
from tfdeblend.normalize import denormalize, noise_std, normalize, remove_outliers
from tfdeblend.peel_config import COUNT_VIEWS, PeelConfig

#: Same non-zero count this many times in a row -> stop with quality low.
REPEAT_LIMIT: int = 3
#: Which of :func:`dihedral_views`' 8 transforms each allowed number of views uses.
_VIEW_ORDER: dict[int, tuple[int, ...]] = {1: (0,), 2: (0, 1), 4: (0, 2, 3, 4), 8: tuple(range(8))}
assert tuple(_VIEW_ORDER) == COUNT_VIEWS
#: Residual detection: Gaussian smoothing sigma (pixels) of the residual's S/N map, about the
#: LSST PSF's (0.7 arcsec FWHM at 0.2 arcsec per pixel).
DETECT_SMOOTH_SIGMA: float = 1.5
#: Residual detection: peaks closer than this (pixels) to a component's centroid are ignored.
DETECT_EXCLUDE_RADIUS: float = 5.0
#: Residual detection: the new component's centroid must lie within this (pixels) of the peak.
DETECT_MATCH_RADIUS: float = 4.0
#: Split: the part split off must peak above this S/N, the noise being the sky's and the
#: model's own error (``model_error``); a noiseless part needs no detection-level threshold.
SPLIT_SNR: float = 5.0
#: :meth:`Peeler.split_separated`: the second peak of a component must exceed this S/N (sky
#: noise only: the component is a noiseless model).
SEPARATED_SNR: float = 4.0
#: :meth:`Peeler.split_separated`: along the line between the two peaks the component's S/N
#: map must dip below this fraction of the lower peak (two sources, not one galaxy's knots).
SEPARATED_VALLEY: float = 0.5
#: :meth:`Peeler.split_separated`: points sampled along that line.
_VALLEY_SAMPLES: int = 24
#: :meth:`Peeler.keep_significant`: a weak component is dropped only where, at its own smoothed
#: peak, it is at most this many times the other galaxies' models (it lies on them).
ON_MODEL_RATIO: float = 1.5


def _as_float32(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _features(conditions: tf.Tensor | None, scale: tf.Tensor) -> tf.Tensor | None:
    """Condition features (:func:`tfdeblend.conditioning.condition_features`) or ``None``."""
    return None if conditions is None else condition_features(conditions, scale)


def _take(conditions: tf.Tensor | None, index: tf.Tensor, nd: bool = False):
    """The rows ``index`` of ``conditions`` (``None`` stays ``None``)."""
    if conditions is None:
        return None
    return tf.gather_nd(conditions, index) if nd else tf.gather(conditions, index)


def run_deblender(
    deblender, normalized: tf.Tensor, features: tf.Tensor | None = None
) -> tf.Tensor:
    """The RDN on a batch of normalized images that may be empty (then zeros, same shape).

    ``features``: the condition features ``(N, 2C)`` of a conditioned RDN (ignored otherwise).

    TensorFlow's oneDNN CPU kernels (on by default on recent x86 CPUs, e.g. AVX-512 ones) fail on
    a convolution over an empty batch ("input depth must be evenly divisible by filter depth").
    The peel hands the RDN an empty batch whenever no blend of a batch peels at a step, so every
    network call here is guarded.
    """
    return tf.cond(
        tf.shape(normalized)[0] > 0,
        lambda: _as_float32(call_network(deblender, normalized, features)),
        lambda: tf.zeros_like(normalized, tf.float32),
    )


def deblend_flux(
    deblender, images: tf.Tensor, conditions: tf.Tensor | None = None, sigma=None
) -> tf.Tensor:
    """One RDN pass on images in flux units: normalize, :func:`run_deblender`, denormalize.

    ``conditions``: ``(N, 2, C)`` noise sigma and PSF FWHM (:mod:`tfdeblend.conditioning`),
    needed by a conditioned RDN.
    """
    normalized, scale = normalize(_as_float32(images), sigma=sigma)
    features = _features(conditions, scale) if is_conditioned(deblender) else None
    return denormalize(run_deblender(deblender, normalized, features), scale)


def run_classifier(
    classifier, normalized: tf.Tensor, features: tf.Tensor | None = None
) -> tf.Tensor:
    """Classifier logits ``(N, classes)`` of a batch that may be empty (see
    :func:`run_deblender`)."""
    classes = int(classifier.output_shape[-1])
    return tf.cond(
        tf.shape(normalized)[0] > 0,
        lambda: _as_float32(call_network(classifier, normalized, features)),
        lambda: tf.zeros([0, classes], tf.float32),
    )


def _counts_from_logits(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Argmax of the logits, except 0 for an image that is exactly zero everywhere."""
    empty = tf.equal(tf.reduce_max(tf.abs(images), axis=[1, 2, 3]), 0.0)
    return tf.where(empty, 0, tf.cast(tf.argmax(logits, axis=-1), tf.int32))


def dihedral_views(images: tf.Tensor, views: int) -> tf.Tensor:
    """The first ``views`` of the 8 rotations/flips of ``(N, H, W, C)`` images, stacked on axis 0.

    Order: the image, its mirror image (left-right flip), then rotations by 90, 180 and 270
    degrees, then the mirror image of each rotation. Returns ``(views * N, H, W, C)``.
    """

    def rotations(x):  # by 90, 180 and 270 degrees (counter-clockwise, as numpy's rot90)
        swapped = tf.transpose(x, [0, 2, 1, 3])
        return [tf.reverse(swapped, [1]), tf.reverse(x, [1, 2]), tf.reverse(swapped, [2])]

    mirror = tf.reverse(images, axis=[2])
    out = [images, mirror, *rotations(images), *rotations(mirror)]
    return tf.concat([out[i] for i in _VIEW_ORDER[views]], axis=0)


def _gaussian_kernel(sigma: float) -> tf.Tensor:
    """Normalized 2-D Gaussian ``(S, S, 1, 1)``, truncated at 4 sigma."""
    half = int(np.ceil(4.0 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    k = np.outer(g, g)
    k /= k.sum()
    return tf.constant(k[:, :, None, None], tf.float32)


def _coadd_weights(images: tf.Tensor, sigma: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
    """Inverse-variance band weights ``(N, C)`` and their norm ``(N, 1, 1)`` for
    :func:`smoothed_coadd` (``sigma`` default: :func:`noise_std` of ``images``)."""
    sigma = noise_std(images) if sigma is None else _as_float32(sigma)
    # a noiseless image: a floor far below its pixels (float32 holds the weights)
    floor = 1e-6 * tf.reduce_max(tf.abs(images), axis=[1, 2, 3])[:, None]
    sigma = tf.maximum(sigma, tf.maximum(floor, 1e-30))
    weight = 1.0 / tf.square(sigma)  # (N, C)
    return weight, tf.sqrt(tf.reduce_sum(weight, axis=-1))[:, None, None]


def smoothed_coadd(
    images: tf.Tensor, weight: tf.Tensor, norm: tf.Tensor,
    smooth_sigma: float = DETECT_SMOOTH_SIGMA,
) -> tf.Tensor:
    """The bands' inverse-variance coadd (unit noise per pixel), smoothed with a Gaussian of
    ``smooth_sigma`` pixels: ``(N, H, W, C) -> (N, H, W)`` (weights from
    :func:`_coadd_weights`)."""
    coadd = tf.reduce_sum(images * weight[:, None, None, :], axis=-1) / norm
    kernel = _gaussian_kernel(smooth_sigma)
    return tf.nn.conv2d(coadd[..., None], kernel, strides=1, padding="SAME")[..., 0]


def residual_snr(
    residual: tf.Tensor,
    smooth_sigma: float = DETECT_SMOOTH_SIGMA,
    model: tf.Tensor | None = None,
    model_error: float = 0.0,
    sigma: tf.Tensor | None = None,
) -> tf.Tensor:
    """Matched-filter S/N map of a residual, all bands together ``(N, H, W, C) -> (N, H, W)``.

    The bands are combined with inverse-variance weights (noise from :func:`noise_std`) into a
    coadd of unit noise per pixel, smoothed with a Gaussian of ``smooth_sigma`` pixels and divided
    by the smoothed noise, so a pure-noise residual has unit variance everywhere (zero padding at
    the edges lowers it there).

    With ``model`` (the components' sum, ``(N, H, W, C)``) and ``model_error`` > 0, the noise
    also holds the models' own error, ``model_error`` times the smoothed model: the residual
    of a bright galaxy (whose model is off by a few per cent, far above the sky noise) is not
    mistaken for a missed source, while the sky-noise S/N is kept where the models are faint.

    ``sigma`` ``(N, C)``: the sky noise per band (default: :func:`noise_std` of the residual;
    give it for a noiseless image, such as a part of a model).
    """
    residual = _as_float32(residual)
    weight, norm = _coadd_weights(residual, sigma)
    smooth_model = None
    if model is not None and model_error > 0:
        smooth_model = smoothed_coadd(_as_float32(model), weight, norm, smooth_sigma)
    return _snr(smoothed_coadd(residual, weight, norm, smooth_sigma), smooth_model, model_error,
                smooth_sigma)


def _snr(smooth_residual: tf.Tensor, smooth_model: tf.Tensor | None, model_error: float,
         smooth_sigma: float = DETECT_SMOOTH_SIGMA) -> tf.Tensor:
    """:func:`residual_snr` from the smoothed coadds (:func:`smoothed_coadd`) of the residual and
    of the models (``None``: sky noise only)."""
    noise = tf.sqrt(tf.reduce_sum(tf.square(_gaussian_kernel(smooth_sigma))))
    if smooth_model is not None:
        noise = tf.sqrt(tf.square(noise) + tf.square(model_error * smooth_model))
    return smooth_residual / noise


def centroids(images: tf.Tensor) -> tf.Tensor:
    """Flux-weighted centroid ``(..., 2)`` as (x, y) pixels of the band sum, negatives clipped.

    ``images`` is ``(..., H, W, C)``; an image with no positive flux gets ``nan``.
    """
    images = _as_float32(images)
    total = tf.nn.relu(tf.reduce_sum(images, axis=-1))  # (..., H, W)
    h, w = tf.shape(total)[-2], tf.shape(total)[-1]
    ys = tf.cast(tf.range(h), tf.float32)[:, None]
    xs = tf.cast(tf.range(w), tf.float32)[None, :]
    flux = tf.reduce_sum(total, axis=[-2, -1])
    safe = tf.where(flux > 0, flux, tf.ones_like(flux))
    cx = tf.reduce_sum(total * xs, axis=[-2, -1]) / safe
    cy = tf.reduce_sum(total * ys, axis=[-2, -1]) / safe
    nan = tf.fill(tf.shape(flux), np.float32(np.nan))
    return tf.stack([tf.where(flux > 0, cx, nan), tf.where(flux > 0, cy, nan)], axis=-1)


def conserve_flux(
    components: tf.Tensor, residual: tf.Tensor, footprint_sigma: float = FOOTPRINT_SIGMA
) -> dict[str, tf.Tensor]:
    """Hand the residual back to the galaxies in proportion to their models.

    Args:
        components: ``(N, K, H, W, C)`` noiseless models (zero padded), input units.
        residual: ``(N, H, W, C)`` input minus the summed models.
        footprint_sigma: a pixel is re-apportioned when the summed (positive) model there is above
            this many noise sigmas of its band.

    Returns:
        ``conserved`` ``(N, K, H, W, C)``, with ``conserved.sum(1) == components.sum(1) + residual``
        inside the footprint and ``components.sum(1)`` outside it, and ``noise_std`` ``(N, C)``.
    """
    components = _as_float32(components)
    residual = _as_float32(residual)
    sigma = noise_std(residual)
    models = tf.nn.relu(components)
    total = tf.reduce_sum(models, axis=1)  # (N, H, W, C)
    footprint = total > footprint_sigma * sigma[:, None, None, :]
    safe = tf.where(total > 0, total, tf.ones_like(total))
    weights = tf.where(footprint[:, None], models / safe[:, None], tf.zeros_like(models))
    return {"conserved": components + weights * residual[:, None], "noise_std": sigma}


def _peak_xy(flat: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The maximum of each row of ``flat`` (``(M, H*W)``, images of width ``w`` flattened) and
    its pixel: ``(peak, x, y)``, each ``(M,)``, the coordinates as float32."""
    where = tf.cast(tf.argmax(flat, axis=1), tf.int32)
    return (tf.reduce_max(flat, axis=1), tf.cast(where % w, tf.float32),
            tf.cast(where // w, tf.float32))


def _split_candidates(
    n_components: tf.Tensor, first_count: tf.Tensor, k: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The components a split step may change: those of the blends with a free slot and one
    component or fewer components than the classifier's first count.

    Returns:
        ``(index, present)``: int32 ``(M, 2)`` (blend, slot) of those components, and bool
        ``(N, K)``, the slots that hold a component.
    """
    eligible = tf.logical_and(
        n_components < k,
        tf.logical_or(tf.equal(n_components, 1), n_components < first_count),
    )
    present = tf.range(k)[None, :] < n_components[:, None]
    return tf.cast(tf.where(tf.logical_and(present, eligible[:, None])), tf.int32), present


def stop_rule(t, k, count, active, monotone, previous, run, quality):
    """One step of the peel's stop rules and quality flags, for a batch of blends.

    At step ``t`` (0-based; ``k`` = ``max_iterations``) the classifier counted ``count`` on the
    ``active`` blends' residuals. A blend stops with quality *high* (2) when its count reaches 0
    having dropped by exactly one at every step (``monotone``), *medium* (1) when it reaches 0
    otherwise, and *low* (0) when the same non-zero count came :data:`REPEAT_LIMIT` times in a
    row (``run``) or ``k`` components were peeled; otherwise it peels its brightest galaxy.
    :meth:`Peeler.peel` runs it in its loop; ``scripts/count_trajectories.py`` replays recorded
    counts through it.

    Args:
        t, k: the step and the most components per blend (scalars).
        count: int32 ``(N,)`` this step's counts (ignored where not ``active``).
        active: bool ``(N,)``; monotone: bool ``(N,)``; previous: int32 ``(N,)``, the last
            count (-1 before the first); run: int32 ``(N,)``; quality: int32 ``(N,)``.

    Returns:
        ``(monotone, run, quality, peel_now)``: the updated state and bool ``(N,)``, the blends
        that peel at this step (the active ones that did not stop).
    """
    is_first = tf.equal(t, 0)
    drops_by_one = tf.logical_or(is_first, tf.equal(count, previous - 1))
    monotone = tf.where(active, tf.logical_and(monotone, drops_by_one), monotone)
    run = tf.where(active, tf.where(tf.equal(count, previous), run + 1, tf.ones_like(run)), run)
    zero = tf.logical_and(active, tf.equal(count, 0))
    repeated = tf.logical_and(active, tf.logical_and(count > 0, run >= REPEAT_LIMIT))
    guard = tf.logical_and(active, tf.logical_and(count > 0, tf.equal(t, k)))
    quality = tf.where(zero, tf.where(monotone, 2, 1), quality)
    quality = tf.where(tf.logical_or(repeated, guard), 0, quality)
    peel_now = tf.logical_and(
        active, tf.logical_not(tf.logical_or(zero, tf.logical_or(repeated, guard))))
    return monotone, run, quality, peel_now


def _pack(components: tf.Tensor, keep: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The components ``(N, K, H, W, C)`` whose ``keep`` ``(N, K)`` is true, packed to the front
    in their order and zero padded, and how many per blend."""
    k = tf.shape(keep)[1]
    slots = tf.range(k)[None, :]
    order = tf.argsort(tf.where(keep, 0, 1) * k + slots, axis=1, stable=True)
    components = tf.gather(components, order, axis=1, batch_dims=1)
    n_kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    padding = slots >= n_kept[:, None]
    return tf.where(padding[:, :, None, None, None], 0.0, components), n_kept


class Peeler(tf.Module):
    """The iterative deblender: a classifier and an RDN combined in one batched graph.

    Args:
        deblender: Keras model, normalized ``(None, H, W, C)`` blend -> normalized brightest
            galaxy ``(None, H, W, C)``.
        classifier: Keras model, normalized ``(None, H, W, C)`` image -> ``(None, 4)`` logits
            (number of galaxies 0-3).
        config: how the peel runs; default :class:`PeelConfig`'s defaults (the shipped
            model's peel; ``PeelConfig.preset("paper")`` is the paper's).
        name: module name.
        default_psf: conditioned networks: the PSF FWHM per band in pixels ``(C,)`` used when a
            call gives none (the model's nominal survey; see :meth:`conditions_for`).

    Example:
        >>> peeler = Peeler(deblender, classifier, PeelConfig.preset("paper"))  # doctest: +SKIP
        >>> out = peeler(images)  # images (N, 80, 80, 3) float32  # doctest: +SKIP
        >>> out["components"].shape  # (N, 6, 80, 80, 3)  # doctest: +SKIP
    """

    def __init__(
        self,
        deblender,
        classifier,
        config: PeelConfig | None = None,
        name: str | None = None,
        default_psf=None,
    ) -> None:
        super().__init__(name=name)
        self.deblender = deblender
        self.classifier = classifier
        self.config = PeelConfig() if config is None else config
        #: whether either network takes the observing conditions (:mod:`tfdeblend.conditioning`)
        self.conditioned = is_conditioned(deblender) or is_conditioned(classifier)
        #: PSF FWHM per band, pixels, used when a call gives none (the model's nominal survey)
        self.default_psf = None if default_psf is None else tf.constant(
            np.asarray(default_psf, np.float32))

    # ---------------------------------------------------------------- single networks
    def logits(
        self, normalized: tf.Tensor, conditions: tf.Tensor | None = None, scale=None
    ) -> tf.Tensor:
        """Classifier logits ``(N, 4)`` of normalized images, averaged over ``count_views``.

        With ``view_confidence`` > 0, the views are averaged only for the images whose single
        view is unsure (top probability below ``view_confidence``); the others keep the single
        view's logits. ``conditions`` ``(N, 2, C)`` and the images' ``scale`` feed a conditioned
        classifier. ``prior_three`` is added to the logit of a count of 3.
        """
        features = _features(conditions, scale) if is_conditioned(self.classifier) else None
        views = self.config.count_views
        if views == 1:
            return self._with_prior(run_classifier(self.classifier, normalized, features))
        if self.config.view_confidence <= 0:
            return self._view_average(normalized, features)
        single = self._with_prior(run_classifier(self.classifier, normalized, features))
        unsure = tf.reduce_max(tf.nn.softmax(single, axis=-1), axis=-1) < self.config.view_confidence
        index = tf.cast(tf.where(unsure), tf.int32)
        averaged = self._view_average(
            tf.gather_nd(normalized, index), _take(features, index, nd=True)
        )
        return tf.tensor_scatter_nd_update(single, index, averaged)

    def _view_average(self, normalized: tf.Tensor, features: tf.Tensor | None = None) -> tf.Tensor:
        """Logits averaged over ``count_views`` rotations/flips (an empty batch gives ``(0, 4)``)."""
        views = self.config.count_views
        if features is not None:  # rotations and flips keep the conditions
            features = tf.tile(features, [views, 1])
        logits = run_classifier(self.classifier, dihedral_views(normalized, views), features)
        shape = tf.shape(logits)
        return self._with_prior(
            tf.reduce_mean(tf.reshape(logits, [views, shape[0] // views, shape[1]]), 0))

    def _with_prior(self, logits: tf.Tensor) -> tf.Tensor:
        """``prior_three`` added to the logit of a count of 3 (the last class)."""
        if self.config.prior_three == 0:
            return logits
        classes = int(self.classifier.output_shape[-1])
        offset = np.zeros(classes, np.float32)
        offset[-1] = self.config.prior_three
        return logits + tf.constant(offset)

    def conditions_for(
        self, images: tf.Tensor, noise_sigma=None, psf_fwhm=None, estimated=None
    ) -> tf.Tensor | None:
        """The ``(N, 2, C)`` conditions of a batch, or ``None`` when no network takes them.

        Args:
            images: float32 ``(N, H, W, C)``.
            noise_sigma: ``(N, C)`` sky noise sigma in the images' units; default: estimated
                from the images (:func:`noise_std`), also for NaN or non-positive entries.
            psf_fwhm: ``(N, C)`` or ``(C,)`` PSF FWHM in pixels; default (also for NaN or
                non-positive entries): ``default_psf``.
            estimated: :func:`noise_std` of the images, when the caller has it already.
        """
        if not self.conditioned:
            return None
        if estimated is None:
            estimated = noise_std(_as_float32(images))
        if noise_sigma is None:
            noise_sigma = estimated
        noise_sigma = tf.broadcast_to(_as_float32(noise_sigma), tf.shape(estimated))
        # NaN (or a non-positive value) means "unknown": estimated from the image
        noise_sigma = tf.where(noise_sigma > 0, noise_sigma, estimated)
        if self.default_psf is None:
            if psf_fwhm is None:
                raise ValueError("conditioned networks need psf_fwhm (no default_psf)")
            default = tf.fill(tf.shape(estimated), np.float32(PSF_REFERENCE))
        else:
            default = tf.broadcast_to(self.default_psf, tf.shape(estimated))
        psf_fwhm = default if psf_fwhm is None else tf.broadcast_to(
            _as_float32(psf_fwhm), tf.shape(estimated))
        psf_fwhm = tf.where(psf_fwhm > 0, psf_fwhm, default)  # NaN: the default
        return pack(noise_sigma, psf_fwhm)

    def deblend_one(self, images: tf.Tensor, noise_sigma=None, psf_fwhm=None) -> tf.Tensor:
        """One RDN pass: the brightest galaxy of each image, in the input's flux units.

        Args:
            images: float32 ``(N, H, W, C)``, any linear flux unit.
            noise_sigma, psf_fwhm: the conditions (:meth:`conditions_for`).

        Returns:
            float32 ``(N, H, W, C)``.
        """
        conditions = self.conditions_for(images, noise_sigma, psf_fwhm)
        return deblend_flux(self.deblender, images, conditions)

    def count(self, images: tf.Tensor, noise_sigma=None, psf_fwhm=None) -> dict[str, tf.Tensor]:
        """Classifier count of each image.

        Args:
            images: float32 ``(N, H, W, C)``, any linear flux unit.
            noise_sigma, psf_fwhm: the conditions (:meth:`conditions_for`).

        Returns:
            Dict with ``count`` int32 ``(N,)`` (0-3) and ``probabilities`` float32 ``(N, 4)``.
        """
        images = _as_float32(images)
        normalized, scale = normalize(images)
        logits = self.logits(normalized, self.conditions_for(images, noise_sigma, psf_fwhm), scale)
        return {
            "count": _counts_from_logits(logits, images),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    def refine(
        self, images: tf.Tensor, components: tf.Tensor, n_components: tf.Tensor, conditions=None,
        sigma=None,
    ) -> tf.Tensor:
        """``refine_steps`` Jacobi sweeps: each component again from the blend minus the others.

        Args:
            images: float32 ``(N, H, W, C)`` blends.
            components: float32 ``(N, K, H, W, C)`` peeled components (zero padded).
            n_components: int32 ``(N,)`` components per blend; blends with fewer than 2 are
                left alone (their one component already saw the whole blend).

        Returns:
            The refined components, same shape; padding slots stay zero.
        """
        slots = tf.range(tf.shape(components)[1])[None, :]
        n_components = n_components[:, None]
        mask = tf.logical_and(slots < n_components, n_components >= 2)
        index = tf.cast(tf.where(mask), tf.int32)  # (M, 2): blend, slot
        for _ in range(self.config.refine_steps):
            others = tf.gather(images - tf.reduce_sum(components, axis=1), index[:, 0])
            inputs = others + tf.gather_nd(components, index)
            galaxy = deblend_flux(self.deblender, inputs, _take(conditions, index[:, 0]),
                                  _take(sigma, index[:, 0]))
            components = tf.tensor_scatter_nd_update(components, index, galaxy)
        return components

    def split_merged(
        self, components: tf.Tensor, n_components: tf.Tensor, first_count: tf.Tensor,
        conditions=None, sigma: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Split one component per blend that the classifier counts as two or more galaxies.

        A blend is eligible when it has a free slot and either one component only or fewer
        components than its first count. Of its components the classifier counts as >= 2, the one
        with the highest probability of >= 2 is split: the RDN returns its brightest galaxy
        ``a``, which stays in the old slot, and ``component - a`` becomes a new component (the
        last one). The sum of the components, hence the residual, does not change. With
        ``model_error`` above 0 and the blends' sky noise ``sigma`` given, the split is kept
        only where ``component - a`` peaks above :data:`SPLIT_SNR` in :func:`residual_snr`
        with the component's own error counted as noise.

        Args:
            components: float32 ``(N, K, H, W, C)`` (zero padded).
            n_components: int32 ``(N,)``.
            first_count: int32 ``(N,)``, the classifier's count of the blend.

        Returns:
            ``(components, n_components, split)``; ``split`` int32 ``(N,)`` is 1 where a
            component was split.
        """
        k = self.config.max_iterations
        n = tf.shape(components)[0]
        # only the components of eligible blends are counted (most blends are not eligible)
        index, _ = _split_candidates(n_components, first_count, k)  # (M, 2): blend, slot
        sub = tf.gather_nd(components, index)
        normalized, sub_scale = normalize(sub, sigma=_take(sigma, index[:, 0]))
        logits = self.logits(normalized, _take(conditions, index[:, 0]), sub_scale)
        probabilities = tf.nn.softmax(logits, axis=-1)
        candidate = _counts_from_logits(logits, sub) >= 2  # an all-zero component counts 0
        score = tf.where(candidate, tf.reduce_sum(probabilities[:, 2:], axis=-1), -1.0)
        scores = tf.tensor_scatter_nd_update(tf.fill([n, k], -1.0), index, score)
        chosen = tf.cast(tf.argmax(scores, axis=1), tf.int32)
        do_split = tf.reduce_max(scores, axis=1) >= 0.0
        blends = tf.cast(tf.where(do_split)[:, 0], tf.int32)
        old = tf.stack([blends, tf.gather(chosen, blends)], axis=1)
        new = tf.stack([blends, tf.gather(n_components, blends)], axis=1)
        merged = tf.gather_nd(components, old)
        brightest = deblend_flux(self.deblender, merged, _take(conditions, blends),
                                 _take(sigma, blends))
        if self.config.model_error > 0 and sigma is not None:
            # the part split off must stand out as a source of its own above the sky noise and
            # the model's own error (a bright galaxy's model is not two galaxies)
            snr = residual_snr(merged - brightest, model=merged,
                               model_error=self.config.model_error,
                               sigma=tf.gather(sigma, blends))
            real = tf.reduce_max(snr, axis=[1, 2]) > SPLIT_SNR
            blends = tf.boolean_mask(blends, real)
            old, new = tf.boolean_mask(old, real), tf.boolean_mask(new, real)
            merged, brightest = tf.boolean_mask(merged, real), tf.boolean_mask(brightest, real)
        components = tf.tensor_scatter_nd_update(
            components, tf.concat([old, new], 0), tf.concat([brightest, merged - brightest], 0)
        )
        split = tf.scatter_nd(blends[:, None], tf.ones_like(blends), [n])
        return components, n_components + split, split

    def split_separated(
        self, components: tf.Tensor, n_components: tf.Tensor, first_count: tf.Tensor,
        sigma: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Cut in two one component per blend that holds two well-separated sources.

        The RDN sometimes returns two galaxies far apart (20 px and more) as one component; the
        residual is then empty, the classifier counts 0 and neither galaxy is catalogued where
        it is (the component's centroid lies between them). In the component's matched-filter S/N
        map (:func:`residual_snr`, sky noise only) a second local maximum farther than
        ``split_distance`` pixels from the brightest pixel, above :data:`SEPARATED_SNR` and above
        ``model_error`` times the brightest peak (the model's own error), with
        the map dipping below :data:`SEPARATED_VALLEY` times the lower peak along the line
        between them, marks a second source, unless another component's centroid lies within
        :data:`DETECT_EXCLUDE_RADIUS` of it (light of that galaxy the model took in): the pixels
        closer to it than to the brightest become a new component (the last one) and the rest
        stays. As for :meth:`split_merged`, only blends with a free slot and one component, or
        fewer components than their first count, are eligible. The sum of the components,
        hence the residual, does not change; the refinement sweeps after this step model each
        galaxy again from the blend minus the others.

        Returns:
            ``(components, n_components, split)``; ``split`` int32 ``(N,)`` is 1 where a
            component was cut.
        """
        k = self.config.max_iterations
        n = tf.shape(components)[0]
        index, present = _split_candidates(n_components, first_count, k)  # (M, 2): blend, slot
        slots = tf.range(k)[None, :]
        sub = tf.gather_nd(components, index)  # (M, H, W, C)
        snr = residual_snr(sub, sigma=_take(sigma, index[:, 0]))  # (M, H, W)
        shape = tf.shape(snr)
        m, h, w = shape[0], shape[1], shape[2]
        flat = tf.reshape(snr, [m, h * w])
        peak1, x1, y1 = _peak_xy(flat, w)
        ys = tf.cast(tf.range(h), tf.float32)[None, :, None]
        xs = tf.cast(tf.range(w), tf.float32)[None, None, :]
        far = tf.square(xs - x1[:, None, None]) + tf.square(ys - y1[:, None, None]) > float(
            self.config.split_distance) ** 2
        local = tf.equal(snr, tf.nn.max_pool2d(snr[..., None], 5, 1, "SAME")[..., 0])
        candidates = tf.reshape(tf.where(tf.logical_and(far, local), snr, -np.inf), [m, h * w])
        peak2, x2, y2 = _peak_xy(candidates, w)
        # the S/N map along the line between the peaks, its interior only
        t = tf.linspace(0.0, 1.0, _VALLEY_SAMPLES + 2)[1:-1][None, :]  # (1, S)
        lx = tf.cast(tf.round(x1[:, None] + t * (x2 - x1)[:, None]), tf.int32)
        ly = tf.cast(tf.round(y1[:, None] + t * (y2 - y1)[:, None]), tf.int32)
        rows = tf.broadcast_to(tf.range(m)[:, None], tf.shape(lx))
        line = tf.gather_nd(snr, tf.stack([rows, ly, lx], axis=-1))  # (M, S)
        lower = tf.minimum(peak1, peak2)
        valley = tf.reduce_min(line, axis=1) < SEPARATED_VALLEY * lower
        # above the sky noise, and above the model's own error at its brightest peak (a bright
        # galaxy's model is not two galaxies)
        floor = tf.maximum(SEPARATED_SNR, self.config.model_error * peak1)
        # not on another component of the blend (that galaxy's light, taken in by this model)
        centre = tf.gather(centroids(components), index[:, 0])  # (M, K, 2)
        others = tf.logical_and(tf.gather(present, index[:, 0]),
                                tf.not_equal(slots, index[:, 1:2]))
        gap2 = tf.square(centre[..., 0] - x2[:, None]) + tf.square(centre[..., 1] - y2[:, None])
        on_other = tf.reduce_any(tf.logical_and(others, gap2 < DETECT_EXCLUDE_RADIUS**2), axis=1)
        two = tf.logical_and(tf.logical_and(peak2 > floor, valley), tf.logical_not(on_other))
        score = tf.where(two, peak2, -1.0)
        scores = tf.tensor_scatter_nd_update(tf.fill([n, k], -1.0), index, score)
        chosen = tf.cast(tf.argmax(scores, axis=1), tf.int32)
        blends = tf.cast(tf.where(tf.reduce_max(scores, axis=1) > 0.0)[:, 0], tf.int32)
        old = tf.stack([blends, tf.gather(chosen, blends)], axis=1)
        new = tf.stack([blends, tf.gather(n_components, blends)], axis=1)
        # the chosen component's row in ``sub``: its peaks
        row = tf.tensor_scatter_nd_update(tf.fill([n, k], -1), index, tf.range(m))
        pick = tf.gather_nd(row, old)
        px1, py1 = tf.gather(x1, pick), tf.gather(y1, pick)
        px2, py2 = tf.gather(x2, pick), tf.gather(y2, pick)
        nearer = (tf.square(xs - px2[:, None, None]) + tf.square(ys - py2[:, None, None])
                  < tf.square(xs - px1[:, None, None]) + tf.square(ys - py1[:, None, None]))
        whole = tf.gather_nd(components, old)
        part = whole * tf.cast(nearer, tf.float32)[..., None]
        components = tf.tensor_scatter_nd_update(
            components, tf.concat([old, new], 0), tf.concat([whole - part, part], 0))
        split = tf.scatter_nd(blends[:, None], tf.ones_like(blends), [n])
        return components, n_components + split, split

    def recover_missed(
        self, images: tf.Tensor, components: tf.Tensor, n_components: tf.Tensor, conditions=None,
        sigma=None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Add one component per blend where a significant source is left in the residual.

        The classifier sometimes counts 0 on a residual that still holds a faint galaxy, and the
        peel stops with that galaxy unmodelled. Here the residual's matched-filter S/N map
        (:func:`residual_snr`) is searched outside discs of ``DETECT_EXCLUDE_RADIUS`` pixels
        around every component's centroid (the models' own core errors live there). Where its
        peak exceeds ``detect_snr`` (the noise including ``model_error`` times the
        models, :func:`residual_snr`) and the blend has a free slot, the RDN's brightest galaxy
        of the residual becomes a new component (the last one), provided its centroid lies
        within ``DETECT_MATCH_RADIUS`` pixels of the peak (otherwise the RDN modelled something
        else, such as a model's core error, and nothing is added).

        With ``detect_window`` > 0 the RDN sees only a disc of that radius around the peak
        instead of the whole residual.

        Args:
            images: float32 ``(N, H, W, C)`` blends.
            components: float32 ``(N, K, H, W, C)`` (zero padded).
            n_components: int32 ``(N,)``.

        Returns:
            ``(components, n_components, recovered)``; ``recovered`` int32 ``(N,)`` is 1 where
            a component was added. The residual is ``images - components.sum(1)`` as before.
        """
        k = self.config.max_iterations
        model = tf.reduce_sum(components, axis=1)
        residual = images - model
        snr = residual_snr(residual, model=model, model_error=self.config.model_error,
                           sigma=sigma)
        shape = tf.shape(snr)
        n, h, w = shape[0], shape[1], shape[2]
        centre = centroids(components)  # (N, K, 2)
        slots = tf.range(k)[None, :]
        real = tf.logical_and(slots < n_components[:, None], tf.reduce_all(
            tf.math.is_finite(centre), axis=-1))
        ys = tf.cast(tf.range(h), tf.float32)[None, None, :, None]
        xs = tf.cast(tf.range(w), tf.float32)[None, None, None, :]
        cx = tf.where(real, centre[..., 0], 0.0)[:, :, None, None]
        cy = tf.where(real, centre[..., 1], 0.0)[:, :, None, None]
        near = tf.logical_and(
            real[:, :, None, None],
            tf.square(xs - cx) + tf.square(ys - cy) < DETECT_EXCLUDE_RADIUS**2,
        )
        masked = tf.where(tf.reduce_any(near, axis=1), -np.inf, snr)
        flat = tf.reshape(masked, [n, h * w])
        peak, peak_x, peak_y = _peak_xy(flat, w)
        candidate = tf.logical_and(n_components < k, peak > self.config.detect_snr)
        blends = tf.cast(tf.where(candidate)[:, 0], tf.int32)
        inputs = tf.gather(residual, blends)
        if self.config.detect_window > 0:
            dx = xs[:, 0] - tf.gather(peak_x, blends)[:, None, None]  # (M, 1, W)
            dy = ys[:, 0] - tf.gather(peak_y, blends)[:, None, None]  # (M, H, 1)
            window = tf.square(dx) + tf.square(dy) < self.config.detect_window**2  # (M, H, W)
            inputs = inputs * tf.cast(window, tf.float32)[..., None]
        galaxy = deblend_flux(self.deblender, inputs, _take(conditions, blends),
                              _take(sigma, blends))
        centre_new = centroids(galaxy)  # (M, 2), nan for no positive flux
        dist2 = tf.square(centre_new[:, 0] - tf.gather(peak_x, blends)) + tf.square(
            centre_new[:, 1] - tf.gather(peak_y, blends)
        )
        keep = dist2 < DETECT_MATCH_RADIUS**2  # false for nan
        kept = tf.boolean_mask(blends, keep)
        index = tf.stack([kept, tf.gather(n_components, kept)], axis=1)
        components = tf.tensor_scatter_nd_update(components, index, tf.boolean_mask(galaxy, keep))
        recovered = tf.scatter_nd(kept[:, None], tf.ones_like(kept), [n])
        return components, n_components + recovered, recovered

    def merge_close(
        self, components: tf.Tensor, n_components: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Merge each component into the nearest earlier one closer than ``merge_radius``.

        Component ``k`` (peel order, so brighter ones come first) is added to the earlier
        component ``j < k`` nearest to it when their centroids (:func:`centroids`) are less
        than ``merge_radius`` pixels apart; chains end in the earliest component. The rest are
        packed to the front in their order. The components' sum does not change.

        Args:
            components: float32 ``(N, K, H, W, C)`` (zero padded).
            n_components: int32 ``(N,)``.

        Returns:
            ``(components, n_components, merged)``; ``merged`` int32 ``(N,)`` is the number of
            components merged away.
        """
        k = self.config.max_iterations
        centre = centroids(components)  # (N, K, 2), nan where no positive flux
        slots = tf.range(k)
        real = tf.logical_and(
            slots[None, :] < n_components[:, None],
            tf.reduce_all(tf.math.is_finite(centre), axis=-1),
        )
        diff = centre[:, :, None, :] - centre[:, None, :, :]  # (N, K, K, 2): k minus j
        dist = tf.sqrt(tf.reduce_sum(tf.square(tf.where(tf.math.is_finite(diff), diff, 0.0)), -1))
        earlier = slots[None, :] < slots[:, None]  # (K, K): j < k
        allowed = tf.logical_and(
            earlier[None], tf.logical_and(real[:, :, None], real[:, None, :])
        )
        dist = tf.where(allowed, dist, np.float32(np.inf))
        target = tf.cast(tf.argmin(dist, axis=-1), tf.int32)  # (N, K)
        merge = tf.reduce_min(dist, axis=-1) < self.config.merge_radius  # (N, K); never slot 0
        # last slot first, so that a component merged into one that merges on carries over
        for slot in range(k - 1, 0, -1):
            moving = merge[:, slot]  # (N,)
            onto = tf.one_hot(target[:, slot], k, dtype=tf.float32)  # (N, K)
            weight = tf.cast(moving, tf.float32)[:, None] * onto
            weight -= tf.cast(moving, tf.float32)[:, None] * tf.one_hot(slot, k, dtype=tf.float32)
            components += weight[:, :, None, None, None] * components[:, slot][:, None]
        keep = tf.logical_and(slots[None, :] < n_components[:, None], tf.logical_not(merge))
        components, n_kept = _pack(components, keep)
        merged = tf.reduce_sum(tf.cast(merge, tf.int32), axis=1)
        return components, n_kept, merged

    def keep_significant(
        self, components: tf.Tensor, n_components: tf.Tensor, sigma: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Drop the components after the first that are pieces of the other galaxies' models.

        A component after the first (the brightest galaxy, always kept) is dropped when it is
        both *weak*, its matched-filter S/N (:func:`residual_snr` of the component, the noise
        holding the sky and ``model_error`` times all the models) peaking at or below
        ``keep_snr``, and *on the others*: at its own smoothed peak the other components'
        models exceed 1 / :data:`ON_MODEL_RATIO` of it. Around a bright galaxy the classifier
        may count the model's few per cent of error as another galaxy, and the peel models it;
        such a component is no source of its own. A faint component away from the models is
        kept whatever its S/N (that is the classifier's call).

        Args:
            components: float32 ``(N, K, H, W, C)`` (zero padded).
            n_components: int32 ``(N,)``.
            sigma: float32 ``(N, C)``, the blends' sky noise.

        Returns:
            ``(components, n_components, pruned)``: the kept components packed to the front in
            their order, and ``pruned`` int32 ``(N,)``, how many were dropped. The caller gives
            the dropped ones back to the residual (the components' sum changes).
        """
        k = self.config.max_iterations
        slots = tf.range(k)[None, :]
        later = tf.logical_and(slots >= 1, slots < n_components[:, None])
        index = tf.cast(tf.where(later), tf.int32)  # (M, 2): blend, slot
        component = tf.gather_nd(components, index)
        model = tf.gather(tf.reduce_sum(components, axis=1), index[:, 0])
        # the component's S/N (residual_snr), from smoothed coadds that the second test reuses
        weight, norm = _coadd_weights(component, tf.gather(sigma, index[:, 0]))
        m = tf.shape(component)[0]
        own = smoothed_coadd(component, weight, norm)
        total = smoothed_coadd(model, weight, norm)
        smooth_model = total if self.config.model_error > 0 else None
        snr = _snr(own, smooth_model, self.config.model_error)
        weak = tf.reduce_max(snr, axis=[1, 2]) <= self.config.keep_snr
        # ... and on the others: at its own (smoothed) peak, the other galaxies' models are
        # brighter than 1 / ON_MODEL_RATIO of it (a faint galaxy of its own is left to the count)
        own = tf.reshape(own, [m, -1])
        others = tf.reshape(total, [m, -1]) - own  # the coadd and the smoothing are linear
        peak = tf.argmax(own, axis=1, output_type=tf.int32)
        on_others = tf.gather(own, peak, batch_dims=1) <= ON_MODEL_RATIO * tf.gather(
            others, peak, batch_dims=1)
        weak = tf.logical_and(weak, on_others)
        drop = tf.scatter_nd(index, weak, tf.shape(later))
        keep = tf.logical_and(slots < n_components[:, None], tf.logical_not(drop))
        components, n_kept = _pack(components, keep)
        return components, n_kept, tf.reduce_sum(tf.cast(drop, tf.int32), axis=1)

    # ---------------------------------------------------------------- the peel
    def __call__(self, images: tf.Tensor, noise_sigma=None, psf_fwhm=None) -> dict[str, tf.Tensor]:
        """Peel every blend of the batch.

        Args:
            images: float32 ``(N, H, W, C)`` blends in any linear flux unit.
            noise_sigma: conditioned networks: ``(N, C)`` sky noise sigma in the images' units
                (default: estimated from the images).
            psf_fwhm: conditioned networks: ``(N, C)`` or ``(C,)`` PSF FWHM in pixels (default:
                ``default_psf``, the model's nominal survey).

        Returns:
            Dict of tensors: ``components`` float32 ``(N, K, H, W, C)`` (peel order, zero
            padded, input units), ``residual`` float32 ``(N, H, W, C)``, ``counts`` int32
            ``(N, K + 1)`` (count before each step, ``-1`` where not run), ``quality`` int32
            ``(N,)`` (2 high, 1 medium, 0 low), ``n_components`` int32 ``(N,)``, ``split``
            int32 ``(N,)`` (1 where :meth:`split_merged` or :meth:`split_separated` split a component),
            ``recovered`` int32 ``(N,)`` (1 where :meth:`recover_missed` added one),
            ``merged`` int32 ``(N,)`` (components :meth:`merge_close` merged away),
            ``pruned`` int32 ``(N,)`` (components :meth:`keep_significant` dropped);
            ``conserved`` float32 ``(N, K, H, W, C)``, the flux-conserving components
            (:func:`conserve_flux`), ``noise_std`` float32 ``(N, C)``, and ``outliers`` int32
            ``(N,)``, the single-pixel outliers (:func:`tfdeblend.normalize.remove_outliers`)
            that were kept out of the networks and the components (they stay in the residual).
        """
        return self.peel(images, noise_sigma, psf_fwhm)

    def peel(self, images: tf.Tensor, noise_sigma=None, psf_fwhm=None) -> dict[str, tf.Tensor]:
        """The batched iterative peel (see the module docstring for the rules)."""
        original = _as_float32(images)
        # single-pixel outliers never reach the networks nor a component; they are given back
        # to the residual at the end, so that components + residual == input
        images, outliers = remove_outliers(original)
        sigma = noise_std(images)  # the sky noise, shared by every residual and model
        conditions = self.conditions_for(images, noise_sigma, psf_fwhm, estimated=sigma)
        k = self.config.max_iterations
        shape = tf.shape(images)
        n = shape[0]
        # components are kept step-major (K, N, H, W, C) so one step is one row update.
        components = tf.zeros(tf.concat([[k], shape], axis=0), tf.float32)
        counts = tf.fill([k + 1, n], tf.constant(-1, tf.int32))
        active = tf.ones([n], tf.bool)
        monotone = tf.ones([n], tf.bool)  # every count so far dropped by exactly one
        previous = tf.fill([n], tf.constant(-1, tf.int32))
        run = tf.zeros([n], tf.int32)  # how many times in a row the current count came
        quality = tf.zeros([n], tf.int32)
        n_components = tf.zeros([n], tf.int32)

        def condition(t, *state):
            active = state[2]
            return tf.logical_and(t <= k, tf.reduce_any(active))

        def body(t, residual, components, active, monotone, previous, run, quality, n_comp):
            index = tf.cast(tf.where(active), tf.int32)  # (A, 1)
            sub = tf.gather_nd(residual, index)
            normalized, scale = normalize(sub, sigma=tf.gather_nd(sigma, index))
            sub_conditions = _take(conditions, index, nd=True)
            logits = self.logits(normalized, sub_conditions, scale)
            sub_count = _counts_from_logits(logits, sub)
            count = tf.tensor_scatter_nd_update(tf.fill([n], -1), index, sub_count)

            monotone, run, quality, peel_now = stop_rule(
                t, k, count, active, monotone, previous, run, quality)

            # deblend only the blends that peel at this step (a subset of the active ones)
            sub_peel = tf.gather_nd(peel_now, index)
            peel_index = tf.boolean_mask(index, sub_peel)
            peel_normalized = tf.boolean_mask(normalized, sub_peel)
            peel_scale = tf.boolean_mask(scale, sub_peel)
            peel_features = None
            if is_conditioned(self.deblender):
                peel_features = condition_features(
                    tf.boolean_mask(sub_conditions, sub_peel), peel_scale)
            galaxy = denormalize(
                run_deblender(self.deblender, peel_normalized, peel_features), peel_scale)
            component = tf.scatter_nd(peel_index, galaxy, tf.shape(residual))
            residual = residual - component
            step = tf.minimum(t, k - 1)  # at t == k nothing peels: component is all zero
            components = tf.tensor_scatter_nd_add(components, [[step]], component[None])
            n_comp = n_comp + tf.cast(peel_now, tf.int32)
            return (
                t + 1,
                residual,
                components,
                peel_now,
                monotone,
                tf.where(active, count, previous),
                run,
                quality,
                n_comp,
                count,
            )

        def body_with_counts(
            t, residual, components, active, monotone, previous, run, quality, n_comp, counts
        ):
            out = body(t, residual, components, active, monotone, previous, run, quality, n_comp)
            counts = tf.tensor_scatter_nd_update(counts, [[t]], out[-1][None])
            return (*out[:-1], counts)

        result = tf.while_loop(
            condition,
            body_with_counts,
            (
                tf.constant(0),
                images,
                components,
                active,
                monotone,
                previous,
                run,
                quality,
                n_components,
                counts,
            ),
            maximum_iterations=k + 1,
        )
        _, residual, components, _, _, _, _, quality, n_components, counts = result
        components = tf.transpose(components, [1, 0, 2, 3, 4])
        counts = tf.transpose(counts, [1, 0])
        split = tf.zeros([n], tf.int32)
        if self.config.split:
            components, n_components, split = self.split_merged(
                components, n_components, counts[:, 0], conditions, sigma=sigma
            )
        if self.config.split_distance > 0:
            components, n_components, separated = self.split_separated(
                components, n_components, counts[:, 0], sigma=sigma)
            split = tf.maximum(split, separated)
        if self.config.refine_steps:
            components = self.refine(images, components, n_components, conditions, sigma)
        # after the sweeps: a sweep would re-estimate the new galaxy from the whole residual,
        # where the RDN models a brighter galaxy's leftover instead (see the module docstring)
        recovered = tf.zeros([n], tf.int32)
        if self.config.detect_snr > 0:
            components, n_components, recovered = self.recover_missed(
                images, components, n_components, conditions, sigma
            )
        if self.config.detect_snr > 0 or self.config.refine_steps:  # the split keeps the components' sum
            residual = images - tf.reduce_sum(components, axis=1)
        merged = tf.zeros([n], tf.int32)
        if self.config.merge_radius > 0:  # keeps the components' sum, hence the residual
            components, n_components, merged = self.merge_close(components, n_components)
        pruned = tf.zeros([n], tf.int32)
        if self.config.keep_snr > 0:  # the dropped components go back to the residual
            components, n_components, pruned = self.keep_significant(
                components, n_components, sigma)
            residual = images - tf.reduce_sum(components, axis=1)
        return {
            "components": components,
            "residual": residual + (original - images),
            **conserve_flux(components, residual),
            "counts": counts,
            "quality": quality,
            "n_components": n_components,
            "split": split,
            "recovered": recovered,
            "merged": merged,
            "pruned": pruned,
            "outliers": tf.reduce_sum(tf.cast(outliers, tf.int32), axis=[1, 2, 3]),
        }
