"""Single-pixel outliers (cosmic rays, hot pixels) that no image of the sky can hold.

Every galaxy or star in a survey image is seen through the PSF, which spreads its light over a
few pixels: next to a pixel, its brightest neighbours are never far below it (for a point source
with a Gaussian PSF of sigma 1 pixel, the four nearest hold 0.6 of the central pixel; for LSST's
or HSC's PSF about 0.8). A cosmic ray or a hot pixel stands alone, or in a short track. A pixel
is an *outlier* when it rises above the third brightest of its 8 neighbours (a track of up to 3
pixels, or a galaxy in an image's corner with only 3 neighbours of data, leaves it as high as
the galaxy's own light) by both

- more than :data:`OUTLIER_SNR` noise sigmas (pure noise never does), and
- more than :data:`OUTLIER_SHARPNESS` times that neighbour (no PSF-convolved source does),

band by band. Outliers are replaced by the median of their neighbours before the networks see
the image (the networks' normalization divides by the brightest pixel, so one such pixel would
otherwise dim every galaxy of the stamp to nothing); the caller keeps the original data for the
residual, so ``model + residual == input`` still holds, and flags the stamp.

Axis order: channels last, ``(N, H, W, C)``; numpy only (no TensorFlow).

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

from tfdeblend.config import MAD_TO_SIGMA

#: An outlier rises above its third brightest neighbour by more than this many noise sigmas...
OUTLIER_SNR: float = 10.0
#: ...and by more than this many times that median (a PSF-convolved source: at most about 1).
OUTLIER_SHARPNESS: float = 2.0


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


def neighbour_median(images: np.ndarray) -> np.ndarray:
    """Median of the 8 neighbours of every pixel (edges mirrored), ``(N, H, W, C)``."""
    images = np.asarray(images, dtype=np.float32)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    shifts = [
        padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    ]
    return np.median(np.stack(shifts), axis=0)


def find_outliers(images: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask ``(N, H, W, C)`` of the outlier pixels (see the module docstring).

    Args:
        images: ``(N, H, W, C)`` in any linear unit, sky subtracted; NaN pixels are never outliers.
        sigma: noise sigma ``(N, C)`` or ``(C,)``; default :func:`robust_sigma` of each image.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1] < 3 or images.shape[2] < 3:
        return np.zeros(images.shape, bool)
    if sigma is None:
        sigma = robust_sigma(images)
    sigma = np.broadcast_to(np.asarray(sigma, np.float32), (images.shape[0], images.shape[-1]))
    out = np.zeros(images.shape, bool)
    # only pixels above OUTLIER_SNR sigmas can rise that far above a non-negative median
    with np.errstate(invalid="ignore"):
        candidates = np.argwhere(images > OUTLIER_SNR * sigma[:, None, None, :])
    if len(candidates) == 0:
        return out
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    n, y, x, c = candidates.T
    around = np.stack([padded[n, y + 1 + dy, x + 1 + dx, c]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    third = np.sort(np.nan_to_num(around, nan=-np.inf), axis=0)[-3]  # third brightest
    base = np.clip(np.where(np.isfinite(third), third, 0.0), 0.0, None)
    excess = images[n, y, x, c] - base
    flagged = (excess > OUTLIER_SNR * sigma[n, c]) & (excess > OUTLIER_SHARPNESS * base)
    out[n[flagged], y[flagged], x[flagged], c[flagged]] = True
    return out


def clean_outliers(images: np.ndarray, mask: np.ndarray, passes: int = 2) -> np.ndarray:
    """A copy of ``images`` with the ``mask``ed pixels replaced by their neighbours' median.

    Repeated ``passes`` times, so that a pair of adjacent outliers (a short cosmic-ray track)
    is replaced by its surroundings, not by each other.
    """
    out = np.array(images, dtype=np.float32, copy=True)
    if not mask.any():
        return out
    for _ in range(passes):
        out = np.where(mask, neighbour_median(out), out)
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
    """The peel of ``model`` on a batch of stamps, with outliers cleaned first.

    ``noise_sigma`` and ``psf_fwhm`` (per band, ``(N, C)`` or ``(C,)``) feed a conditioned
    model (:meth:`tfdeblend.export.DeblendModel.deblend`).

    Returns the dict of :meth:`tfdeblend.export.DeblendModel.deblend`, whose ``residual`` is
    ``images - components.sum(1)`` (outliers included), plus ``outliers`` int32 ``(N,)``.
    """
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
    cleaned, _ = prepare_batch(images)
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
