"""Single-pixel outliers (cosmic rays, hot pixels) on numpy batches, and the peel of stamps
with them kept out of the networks.

The rule lives in :mod:`tfdeblend.normalize` (:func:`~tfdeblend.normalize.outlier_mask`,
:func:`~tfdeblend.normalize.remove_outliers`), the one normalization of training and inference:
every galaxy or star in a survey image is seen through the PSF, which spreads its light over a
few pixels, so a pixel that rises above the third brightest of its 8 neighbours by more than
:data:`OUTLIER_SNR` noise sigmas and by more than :data:`OUTLIER_SHARPNESS` times that
neighbour is no source. Models exported since version 11 remove outliers inside their peel
(output ``outliers``); for older ones :func:`deblend_batch` removes them first.

Axis order: channels last, ``(N, H, W, C)``; numpy in and out.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.normal(0.0, 1.0, (1, 20, 20, 1)).astype("float32")
    >>> image[0, 5, 7, 0] = 1e6
    >>> bad = find_outliers(image)
    >>> [tuple(map(int, i)) for i in np.argwhere(bad)]
    [(0, 5, 7, 0)]
    >>> float(abs(clean_outliers(image, bad)[0, 5, 7, 0])) < 5
    True
"""

from __future__ import annotations

import numpy as np

from tfdeblend.config import MAD_TO_SIGMA, OUTLIER_SHARPNESS, OUTLIER_SNR  # noqa: F401


def robust_sigma(images: np.ndarray) -> np.ndarray:
    """Noise sigma per image and band, ``1.4826 x MAD`` over the pixels ``(N, H, W, C) -> (N, C)``.

    NaN pixels are ignored; an image with no finite pixel gets 0.
    """
    images = np.asarray(images, dtype=np.float32)
    flat = images.reshape(images.shape[0], -1, images.shape[-1])
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(flat, axis=1)
            mad = np.nanmedian(np.abs(flat - median[:, None, :]), axis=1)
    return np.nan_to_num(MAD_TO_SIGMA * mad, nan=0.0).astype(np.float32)


def find_outliers(images: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask ``(N, H, W, C)`` of the outlier pixels
    (:func:`tfdeblend.normalize.outlier_mask` on a numpy batch).

    Args:
        images: ``(N, H, W, C)`` in any linear unit, sky subtracted; NaN pixels are never outliers.
        sigma: noise sigma ``(N, C)`` or ``(C,)``; default :func:`robust_sigma` of each image
            (NaN pixels ignored).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1] < 3 or images.shape[2] < 3 or images.size == 0:
        return np.zeros(images.shape, bool)
    from tfdeblend.normalize import outlier_mask

    if sigma is None:
        sigma = robust_sigma(images)
    return outlier_mask(images, np.asarray(sigma, np.float32)).numpy()


def clean_outliers(images: np.ndarray, mask: np.ndarray, passes: int = 2) -> np.ndarray:
    """A copy of ``images`` with the ``mask``ed pixels replaced by their neighbours' median,
    ``passes`` times (as :func:`tfdeblend.normalize.remove_outliers`)."""
    out = np.array(images, dtype=np.float32, copy=True)
    if not mask.any():
        return out
    from tfdeblend.normalize import neighbour_median

    for _ in range(passes):
        out = np.where(mask, neighbour_median(out).numpy(), out)
    return out


def prepare_batch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the networks see of a batch of stamps, and the number of outlier pixels per stamp.

    Args:
        images: ``(N, H, W, C)`` channels last, input units.

    Returns:
        ``(cleaned, n_outliers)``: the images with outlier pixels replaced
        (:func:`tfdeblend.outliers.clean_outliers`), and int32 ``(N,)``.
    """
    mask = find_outliers(images)
    return clean_outliers(images, mask), mask.sum(axis=(1, 2, 3)).astype(np.int32)


def deblend_batch(
    model, images: np.ndarray, batch_size: int = 32, noise_sigma=None, psf_fwhm=None
) -> dict[str, np.ndarray]:
    """The peel of ``model`` on a batch of stamps, outliers kept out of the networks (by the
    model's own peel, or cleaned first for models exported before version 11).

    ``noise_sigma`` and ``psf_fwhm`` (per band, ``(N, C)`` or ``(C,)``) feed a conditioned
    model (:meth:`tfdeblend.export.DeblendModel.deblend`).

    Returns the dict of :meth:`tfdeblend.export.DeblendModel.deblend`, whose ``residual`` is
    ``images - components.sum(1)`` (outliers included), plus ``outliers`` int32 ``(N,)``.
    """
    if model.removes_outliers:  # inside its peel (models exported since version 11)
        return model.deblend(images, batch_size=batch_size, **_given(noise_sigma, psf_fwhm))
    cleaned, n_outliers = prepare_batch(images)
    result = model.deblend(cleaned, batch_size=batch_size, **_given(noise_sigma, psf_fwhm))
    if n_outliers.any():
        result["residual"] = result["residual"] + (images - cleaned)
    result["outliers"] = n_outliers
    return result


def deblend_one_batch(
    model, images: np.ndarray, batch_size: int = 32, noise_sigma=None, psf_fwhm=None
) -> np.ndarray:
    """The RDN alone (:meth:`tfdeblend.export.DeblendModel.deblend_one`) on a batch of stamps
    ``(N, H, W, C)``, with outliers cleaned first; the brightest galaxy of each, input units."""
    cleaned = images if model.removes_outliers else prepare_batch(images)[0]
    return model.deblend_one(cleaned, batch_size=batch_size, **_given(noise_sigma, psf_fwhm))


def _given(noise_sigma, psf_fwhm) -> dict:
    """The conditions given (a model without conditions is called as before)."""
    given = {"noise_sigma": noise_sigma, "psf_fwhm": psf_fwhm}
    return {k: v for k, v in given.items() if v is not None}


def stamp_functions(model, batch_size: int = 32, psf_fwhm=None):
    """``(deblend, deblend_one)`` for :func:`tfdeblend.scene.deblend_tile`: the peel and the RDN
    of ``model`` on stamps ``(B, S, S, C)``, outliers cleaned, each taking the stamps' noise
    sigma per band (``noise_sigma=``, from the image's variance) and the PSF FWHM ``psf_fwhm``
    (pixels, per band) that ``tfdeblend run --psf`` gave."""

    def deblend(stamps, noise_sigma=None):
        return deblend_batch(model, stamps, batch_size, noise_sigma, psf_fwhm)

    def deblend_one(stamps, noise_sigma=None):
        return deblend_one_batch(model, stamps, batch_size, noise_sigma, psf_fwhm)

    return deblend, deblend_one
