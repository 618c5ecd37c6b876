"""Fluxes, centroids and second moments of galaxy images.

All functions take channels-last images ``(..., H, W, C)`` in any linear flux unit and work on
numpy arrays. Pixel coordinates are 0-based: pixel ``(row=y, col=x)`` has its centre at
``(x, y)``.

Definitions (the paper's, section 4):

- flux per band: the plain sum of the pixels of that band;
- centroid and second moments: flux-weighted over the *band sum* image, with negative pixels set
  to zero (noise or over-subtraction must not produce negative weights);
- ``mu20 = sum w (x - xc)^2 / sum w``, ``mu02 = sum w (y - yc)^2 / sum w``,
  ``mu11 = sum w (x - xc)(y - yc) / sum w`` in pixels^2.

An image with no positive flux has centroid and moments ``nan``.

Example:
    >>> import numpy as np
    >>> img = np.zeros((5, 5, 1)); img[2, 1, 0] = img[2, 3, 0] = 1.0
    >>> m = moments(img)
    >>> float(m["x"]), float(m["y"]), float(m["mu20"]), float(m["mu02"]), float(m["mu11"])
    (2.0, 2.0, 1.0, 0.0, 0.0)
"""

from __future__ import annotations

import numpy as np


def fluxes(images: np.ndarray) -> np.ndarray:
    """Flux per band: sum over (H, W). ``(..., H, W, C) -> (..., C)``."""
    return np.asarray(images, dtype=np.float64).sum(axis=(-3, -2))


def moments(images: np.ndarray) -> dict[str, np.ndarray]:
    """Centroid and central second moments of the band-sum image.

    Args:
        images: ``(..., H, W, C)`` channels last.

    Returns:
        Dict with ``x, y, mu20, mu02, mu11`` each of shape ``(...)`` (pixels, pixels^2).
    """
    images = np.asarray(images, dtype=np.float64)
    weight = np.clip(images.sum(axis=-1), 0.0, None)  # (..., H, W)
    height, width = weight.shape[-2:]
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    total = weight.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(total > 0, total, np.nan)
        xc = (weight * xx).sum(axis=(-2, -1)) / safe
        yc = (weight * yy).sum(axis=(-2, -1)) / safe
        dx = xx - xc[..., None, None]
        dy = yy - yc[..., None, None]
        mu20 = (weight * dx * dx).sum(axis=(-2, -1)) / safe
        mu02 = (weight * dy * dy).sum(axis=(-2, -1)) / safe
        mu11 = (weight * dx * dy).sum(axis=(-2, -1)) / safe
    return {"x": xc, "y": yc, "mu20": mu20, "mu02": mu02, "mu11": mu11}


def brightness(images: np.ndarray) -> np.ndarray:
    """Brightness used to order galaxies: total flux summed over all bands. ``(..., H, W, C) -> (...)``.

    The "brightest" galaxy, the deblender's target, is the one with the largest flux summed over
    the bands the model sees (g + r + i by default), measured on its noiseless image inside the
    80x80 crop.
    """
    return fluxes(images).sum(axis=-1)


#: Footprint of the flux-conserving components: a pixel's data are handed to the galaxies where
#: their summed model is above this many noise sigmas of its band (used by the peel's
#: :func:`tfdeblend.deblend.conserve_flux` and by the flux of the galaxies that
#: :mod:`tfdeblend.scene` recovers at a detection).
FOOTPRINT_SIGMA: float = 0.5


#: Radius (pixels) of the disc around a model's peak in which :func:`peak_moments` finds its
#: centre, and of the disc around that centre in which it measures second moments.
CENTRE_RADIUS: float = 5.0
MOMENT_RADIUS: float = 15.0


def peak_moments(images: np.ndarray, centre_radius: float = CENTRE_RADIUS,
                 moment_radius: float = MOMENT_RADIUS) -> dict[str, np.ndarray]:
    """Centroid and second moments of noiseless galaxy models, measured near their peak.

    A network's model of a faint galaxy can carry a faint, lopsided halo over the whole stamp
    that drags a plain flux-weighted centroid (:func:`moments`) several pixels away. Here the
    centre is the flux-weighted centroid within ``centre_radius`` of the brightest pixel of the
    band sum (recentred twice), and the moments are taken within ``moment_radius`` of it.

    Args:
        images: ``(..., H, W, C)`` channels last, noiseless.

    Returns:
        Dict with ``x, y, mu20, mu02, mu11`` of shape ``(...)``; ``nan`` without positive flux.
    """
    images = np.asarray(images, dtype=np.float64)
    weight = np.clip(images.sum(axis=-1), 0.0, None)
    shape = weight.shape[:-2]
    flat = weight.reshape(-1, *weight.shape[-2:])
    height, width = flat.shape[1:]
    yy, xx = np.mgrid[:height, :width]
    out = {key: np.full(len(flat), np.nan) for key in ("x", "y", "mu20", "mu02", "mu11")}
    for i, w in enumerate(flat):
        if not (w > 0).any():
            continue
        yc, xc = np.unravel_index(np.argmax(w), w.shape)
        yc, xc = float(yc), float(xc)
        for _ in range(3):
            disc = w * (np.square(xx - xc) + np.square(yy - yc) <= centre_radius**2)
            total = disc.sum()
            if total <= 0:
                break
            xc, yc = float((disc * xx).sum() / total), float((disc * yy).sum() / total)
        disc = w * (np.square(xx - xc) + np.square(yy - yc) <= moment_radius**2)
        total = disc.sum()
        dx, dy = xx - xc, yy - yc
        out["x"][i], out["y"][i] = xc, yc
        out["mu20"][i] = (disc * dx * dx).sum() / total
        out["mu02"][i] = (disc * dy * dy).sum() / total
        out["mu11"][i] = (disc * dx * dy).sum() / total
    return {key: value.reshape(shape) for key, value in out.items()}
