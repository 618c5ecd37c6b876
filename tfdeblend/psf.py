"""The PSF a conditioned model is told about: ``tfdeblend run --psf``.

A conditioned network (:mod:`tfdeblend.conditioning`) takes each band's PSF FWHM in pixels. This
module turns what a user has into that number:

* FWHMs in arcsec, ``--psf 0.81,0.72,0.69`` (one per band, in the model's band order, or one
  for all bands), converted with the image's pixel scale;
* PSF images, ``--psf psf.fits`` (a ``(C, h, w)`` cube with the model's bands, or with a
  ``BANDS`` keyword naming more, or one plane for all bands) or one file per band in band order (``--psf psf_g.fits --psf psf_r.fits ...``), on
  the image's pixel grid: the FWHM is measured on them (:func:`measure_fwhm`).

Without ``--psf`` the model's nominal PSF is used (its metadata's ``conditions``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfdeblend.errors import TfdeblendError

#: adaptive-moment sigma / FWHM of a Kolmogorov profile (GalSim, 0.5-1.2" at 0.2"/px: 0.448-0.451)
KOLMOGOROV_SIGMA_PER_FWHM: float = 0.449


#: The largest ``--psf`` FWHM taken, arcsec (ground-based seeing is 0.4-2"; a larger number is
#: most likely in pixels, or a typo).
MAX_FWHM_ARCSEC: float = 10.0
#: The smallest ``--psf`` FWHM taken, arcsec (the sharpest survey PSFs, HST's, are about 0.05";
#: a smaller number is a typo or a unit slip).
MIN_FWHM_ARCSEC: float = 0.01


def measure_fwhm(psf: np.ndarray) -> float:
    """The PSF's size as the FWHM, in pixels, of the Kolmogorov profile of the same size.

    The size is the adaptive-moment sigma (GalSim's HSM ``FindAdaptiveMom``) with the pixel's
    1/12 px^2 removed, so the result does not depend on where the PSF's centre falls within a
    pixel, and is the atmospheric FWHM that the training conditions name (BTK's PSFs, Kolmogorov
    atmosphere plus optics, measure within 0.3-2.5 % of it). For a Gaussian PSF it is 5 % below
    the Gaussian's FWHM, for a Moffat (beta = 3) 8 % above.

    Raises:
        TfdeblendError: an image without a positive peak, or one HSM cannot measure.
    """
    import galsim

    psf = np.asarray(psf, dtype=np.float64)
    psf = np.where(np.isfinite(psf), psf, 0.0)
    if psf.ndim != 2 or psf.max() <= 0:
        raise TfdeblendError("a PSF image must be 2-d with a positive peak")
    try:
        sigma = galsim.hsm.FindAdaptiveMom(galsim.Image(psf, scale=1.0)).moments_sigma
    except galsim.errors.GalSimError as err:
        raise TfdeblendError(f"cannot measure the PSF image's size: {err}") from err
    return float(np.sqrt(max(sigma**2 - 1.0 / 12.0, 1e-6)) / KOLMOGOROV_SIGMA_PER_FWHM)


def _read_psf_file(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The first image of a PSF file, and its ``BANDS`` keyword's bands (``None`` if absent)."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdus:
            hdu = next((h for h in hdus if h.data is not None and h.data.ndim >= 2), None)
            if hdu is None:
                raise TfdeblendError(f"PSF file {path.name} holds no image")
            bands = hdu.header.get("BANDS")
            data = np.asarray(hdu.data, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise TfdeblendError(f"cannot read PSF file {path.name}: {err}") from err
    names = [b.strip() for b in str(bands).split(",")] if bands else None
    return data, names


def psf_fwhm_pixels(
    values: tuple[str, ...] | list[str], bands: tuple[str, ...], pixel_scale: float | None
) -> np.ndarray:
    """Each band's PSF FWHM in pixels from the ``--psf`` values.

    Args:
        values: the option's values: numbers (arcsec; comma-separated or repeated) or FITS files.
        bands: the model's bands, in channel order.
        pixel_scale: arcsec per pixel of the image (needed for FWHMs given in arcsec).

    Returns:
        float32 ``(C,)``.

    Raises:
        TfdeblendError: a wrong count of values, an unreadable file, a non-positive FWHM.
    """
    items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
    if not items:
        raise TfdeblendError("--psf needs a FWHM in arcsec per band or PSF FITS files")
    numbers = []
    for item in items:
        try:
            numbers.append(float(item))
        except ValueError:
            numbers = None
            break
    if numbers is not None:
        if len(numbers) not in (1, len(bands)):
            raise TfdeblendError(
                f"--psf gives {len(numbers)} FWHMs; give one for all bands or one per band "
                f"({','.join(bands)})"
            )
        if not all(np.isfinite(v) and MIN_FWHM_ARCSEC <= v <= MAX_FWHM_ARCSEC for v in numbers):
            raise TfdeblendError(
                f"--psf FWHMs must be numbers of arcsec between {MIN_FWHM_ARCSEC:g} and "
                f"{MAX_FWHM_ARCSEC:g} "
                f"(got {','.join(items)})"
            )
        if pixel_scale is None or not pixel_scale > 0:
            raise TfdeblendError(
                "--psf in arcsec needs the image's pixel scale (a WCS or PIXSCALE keyword); "
                "give PSF images instead"
            )
        fwhm = np.broadcast_to(np.asarray(numbers, np.float64), (len(bands),)) / pixel_scale
        return fwhm.astype(np.float32)
    paths = [Path(os.path.expanduser(item)) for item in items]
    for path in paths:
        if not path.is_file():
            raise TfdeblendError(f"--psf {path}: no such file (and not a number of arcsec)")
    if len(paths) == 1:
        data, names = _read_psf_file(paths[0])
        planes = [data] if data.ndim == 2 else list(data.reshape(-1, *data.shape[-2:]))
        if names is not None and len(names) == len(planes) and set(bands) <= set(names):
            planes = [planes[names.index(b)] for b in bands]  # a cube with BANDS: pick ours
        elif len(planes) not in (1, len(bands)):
            raise TfdeblendError(
                f"PSF file {paths[0].name} has {len(planes)} planes; the model has "
                f"{len(bands)} bands ({','.join(bands)})"
            )
    elif len(paths) == len(bands):
        planes = []
        for path in paths:
            data, _ = _read_psf_file(path)
            if data.ndim != 2:
                raise TfdeblendError(f"PSF file {path.name} must hold one 2-d image")
            planes.append(data)
    else:
        raise TfdeblendError(
            f"--psf gives {len(paths)} files; give one cube or one file per band ({','.join(bands)})"
        )
    names = [p.name for p in paths] if len(paths) > 1 else [paths[0].name] * len(planes)
    fwhm = []
    for name, plane in zip(names, planes):
        bad = int((~np.isfinite(plane)).sum())
        if bad:
            raise TfdeblendError(f"PSF file {name} has {bad} pixel(s) that are NaN or infinite")
        try:
            fwhm.append(measure_fwhm(plane))
        except TfdeblendError as err:
            raise TfdeblendError(f"PSF file {name}: {err}") from None
    return np.broadcast_to(np.asarray(fwhm, np.float32), (len(bands),)).copy()


#: Stamp side (pixels) on which :func:`psf_moment_size` draws the PSF (the shipped models').
MOMENT_STAMP: int = 80


def psf_moment_size(fwhm: float) -> float:
    """``mu20 + mu02`` (pixels^2) of a Kolmogorov PSF of ``fwhm`` pixels, measured as the
    catalog measures a model (:func:`tfdeblend.measure.peak_moments`): a point source's
    model has this size."""
    import galsim

    from tfdeblend.measure import peak_moments

    image = galsim.Kolmogorov(fwhm=float(fwhm)).drawImage(
        nx=MOMENT_STAMP, ny=MOMENT_STAMP, scale=1.0).array
    moments = peak_moments(image[..., None])
    return float(moments["mu20"] + moments["mu02"])


def extendedness(mu20, mu02, fluxes, fwhm) -> np.ndarray:
    """How much larger than the PSF each model is: ``(mu20 + mu02) / T_psf - 1``, with
    ``T_psf`` the PSF's :func:`psf_moment_size` averaged over the bands with the object's own
    fluxes as weights (the models' moments are taken on their band sum). About 0 for a star,
    above 0 for a galaxy.

    Args:
        mu20, mu02: ``(N,)`` the catalog's second moments, pixels^2.
        fluxes: ``(N, C)`` fluxes per band (negative or NaN: weight 0).
        fwhm: ``(C,)`` PSF FWHM per band, pixels.
    """
    sizes = np.array([psf_moment_size(f) for f in np.asarray(fwhm, np.float64)])
    weights = np.clip(np.nan_to_num(np.asarray(fluxes, np.float64)), 0.0, None)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / len(sizes))
    psf_size = weights @ sizes
    return (np.asarray(mu20, np.float64) + np.asarray(mu02, np.float64)) / psf_size - 1.0
