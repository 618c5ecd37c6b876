"""Baselines: SExtractor-style detection and photometry with ``sep`` and with Source Extractor.

Both baselines and the deblender produce the same structure, a *catalog* dict of numpy arrays
(``K`` = largest number of objects in any stamp, ``nan`` padding):

========== ============= ======================================================
key        shape         meaning
========== ============= ======================================================
``x, y``   (N, K)        centroid, 0-based pixels (x = column, y = row)
``flux``   (N, K, C)     flux per band, image unit (FLUX_AUTO for the baselines)
``mu20``   (N, K)        second moment along x, pixels^2 (sep/SExtractor ``x2``)
``mu02``   (N, K)        second moment along y, pixels^2 (``y2``)
``mu11``   (N, K)        cross moment, pixels^2 (``xy``)
``n``      (N,)          number of objects per stamp
========== ============= ======================================================

Settings are the DES Y6 ones of ``esheldon/sxdes``: detection on the coadd of the detection
bands (g + r + i by default; the coadd is the plain sum, its noise ``sqrt(sum sigma_b^2)``),
threshold 0.8 sigma, ``minarea`` 4, ``deblend_nthresh`` 64, ``deblend_cont`` 0.001, 7x7 Gaussian
filter for a 3 px FWHM PSF (``conv``). FLUX_AUTO per band: Kron radius (factor 6) on the
detection image, flux in the ellipse of 2.5 Kron radii (``subpix=1``), other objects masked with
the segmentation map; Kron apertures smaller than a 1.75 px radius fall back to a circle of
1.75 px (SExtractor's minimum of 3.5). Stamps are sky subtracted (BTK), so no background is
subtracted.

Images are channels last ``(N, H, W, C)`` like the rest of the library.

Whole survey images (:meth:`Baseline.run_image`, :func:`run_sep_image`,
:func:`run_source_extractor_image`) give a *whole-image catalog* instead: a dict of 1-d arrays
``x, y`` (0-based full-image pixels), ``flux_<band>``, ``flux_err_<band>``
(:func:`image_catalog_columns`). There a 64 px background mesh is subtracted, the noise is the
image's variance plane, and missing pixels (NaN or masked) are interpolated in the detection
image and masked in the photometry, never read as zeros (see :func:`run_sep_image`).

Each baseline is a :class:`Baseline` object registered in :data:`BASELINES` under its CLI name
(``tfdeblend evaluate --baseline NAME``); a new baseline is one subclass and one registry entry in
this module, nothing else.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tfdeblend import measure
from tfdeblend.errors import TfdeblendError

#: the 7x7 Gaussian kernel for a 3 px FWHM PSF (Source Extractor's ``gauss_3.0_7x7.conv``)
FILTER_KERNEL = np.array(
    [
        [0.004963, 0.021388, 0.051328, 0.068707, 0.051328, 0.021388, 0.004963],
        [0.021388, 0.092163, 0.221178, 0.296069, 0.221178, 0.092163, 0.021388],
        [0.051328, 0.221178, 0.530797, 0.710525, 0.530797, 0.221178, 0.051328],
        [0.068707, 0.296069, 0.710525, 0.951108, 0.710525, 0.296069, 0.068707],
        [0.051328, 0.221178, 0.530797, 0.710525, 0.530797, 0.221178, 0.051328],
        [0.021388, 0.092163, 0.221178, 0.296069, 0.221178, 0.092163, 0.021388],
        [0.004963, 0.021388, 0.051328, 0.068707, 0.051328, 0.021388, 0.004963],
    ]
)

#: DES Y6 (sxdes) detection settings
SX_CONFIG = {
    "thresh": 0.8,
    "minarea": 4,
    "deblend_nthresh": 64,
    "deblend_cont": 0.001,
    "filter_type": "conv",
    "kron_factor": 6.0,
    "phot_autoparams": (2.5, 3.5),
}

DEFAULT_DETECT_BANDS = ("g", "r", "i")

CATALOG_KEYS = ("x", "y", "flux", "mu20", "mu02", "mu11", "n")


def empty_catalog(n_stamps: int, max_objects: int, n_bands: int) -> dict[str, np.ndarray]:
    """An all-``nan`` catalog with room for ``max_objects`` per stamp (``n`` = 0)."""
    shape = (n_stamps, max_objects)
    cat = {key: np.full(shape, np.nan) for key in ("x", "y", "mu20", "mu02", "mu11")}
    cat["flux"] = np.full(shape + (n_bands,), np.nan)
    cat["n"] = np.zeros(n_stamps, dtype=np.int64)
    return cat


def catalog_from_rows(rows: list[dict[str, np.ndarray]], n_bands: int) -> dict[str, np.ndarray]:
    """Stack per-stamp catalogs (each a dict of 1-d arrays, ``flux`` (k, C)) into padded arrays."""
    k_max = max([len(r["x"]) for r in rows] + [1])
    cat = empty_catalog(len(rows), k_max, n_bands)
    for i, row in enumerate(rows):
        k = len(row["x"])
        cat["n"][i] = k
        for key in ("x", "y", "mu20", "mu02", "mu11", "flux"):
            cat[key][i, :k] = row[key]
    return cat


def catalog_from_components(
    components: np.ndarray, n_components: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Measure deblended components like the baselines' catalogs (with :mod:`tfdeblend.measure`).

    Args:
        components: ``(N, K, H, W, C)`` deblended galaxies, channels last.
        n_components: ``(N,)`` number of real components per stamp; by default every component
            with positive total flux counts.

    Returns:
        A catalog dict (see the module docstring); ``flux`` is the plain sum per band, moments
        flux weighted over the band sum with negative pixels clipped.
    """
    components = np.asarray(components, dtype=np.float64)
    n_stamps, k_max = components.shape[:2]
    if n_components is None:
        n_components = (measure.brightness(components) > 0).sum(axis=1)
    n_components = np.asarray(n_components, dtype=np.int64)
    cat = empty_catalog(n_stamps, max(k_max, 1), components.shape[-1])
    real = np.arange(k_max)[None, :] < n_components[:, None]
    mom = measure.moments(components)
    flux = measure.fluxes(components)
    for key in ("x", "y", "mu20", "mu02", "mu11"):
        cat[key][:, :k_max] = np.where(real, mom[key], np.nan)
    cat["flux"][:, :k_max] = np.where(real[..., None], flux, np.nan)
    cat["n"] = n_components.copy()
    return cat


def _band_indices(bands: Sequence[str], detect_bands: Sequence[str]) -> list[int]:
    bands = list(bands)
    chosen = [b for b in detect_bands if b in bands]
    if not chosen:
        raise TfdeblendError(
            f"none of the detection bands {','.join(detect_bands)} is in the data's bands "
            f"{','.join(bands)}"
        )
    return [bands.index(b) for b in chosen]


def _check_blends(blends: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    blends = np.asarray(blends, dtype=np.float64)
    if blends.ndim != 4 or blends.shape[-1] != len(bands):
        raise TfdeblendError(
            f"blends must be (N, H, W, C) with C = {len(bands)} bands, got shape {blends.shape}"
        )
    return blends


def _check_noise(noise_std: np.ndarray, n_stamps: int, n_bands: int) -> np.ndarray:
    """``noise_std`` as float64, checked to be ``(C,)`` or ``(N, C)``."""
    noise_std = np.asarray(noise_std, dtype=np.float64)
    if noise_std.shape not in ((n_bands,), (n_stamps, n_bands)):
        raise TfdeblendError(
            f"noise_std must be (C,) or (N, C) with C = {n_bands} bands and N = {n_stamps} "
            f"stamps, got shape {noise_std.shape}"
        )
    return noise_std


def coadd(
    blends: np.ndarray, noise_std: np.ndarray, bands: Sequence[str], detect_bands=DEFAULT_DETECT_BANDS
) -> tuple[np.ndarray, float | np.ndarray]:
    """Detection image: sum of the detection bands, and its noise std ``sqrt(sum sigma_b^2)``.

    Args:
        blends: ``(N, H, W, C)``.
        noise_std: ``(C,)`` sky noise std per band, or ``(N, C)`` per stamp and band.
        bands: band names of the C channels.
        detect_bands: bands to coadd (those present are used).

    Returns:
        ``(N, H, W)`` coadd and its noise std: a scalar for ``(C,)`` noise, ``(N,)`` for
        ``(N, C)``.
    """
    idx = _band_indices(bands, detect_bands)
    noise_std = np.asarray(noise_std, dtype=np.float64)
    image = np.asarray(blends, dtype=np.float64)[..., idx].sum(axis=-1)
    if noise_std.ndim == 2:
        return image, np.sqrt((noise_std[:, idx] ** 2).sum(axis=-1))
    return image, float(np.sqrt((noise_std[idx] ** 2).sum()))


def _sep_stamp(image_bands: np.ndarray, det: np.ndarray, det_err: float, noise_std: np.ndarray):
    import sep

    det = np.ascontiguousarray(det, dtype=np.float64)
    objs, seg = sep.extract(
        det,
        SX_CONFIG["thresh"],
        err=det_err,
        segmentation_map=True,
        minarea=SX_CONFIG["minarea"],
        filter_kernel=FILTER_KERNEL,
        filter_type=SX_CONFIG["filter_type"],
        deblend_nthresh=SX_CONFIG["deblend_nthresh"],
        deblend_cont=SX_CONFIG["deblend_cont"],
    )
    flux, _ = _auto_photometry(det, objs, seg, np.moveaxis(image_bands, -1, 0),
                               [float(s) for s in noise_std])
    return {
        "x": np.asarray(objs["x"], dtype=np.float64),
        "y": np.asarray(objs["y"], dtype=np.float64),
        "mu20": np.asarray(objs["x2"], dtype=np.float64),
        "mu02": np.asarray(objs["y2"], dtype=np.float64),
        "mu11": np.asarray(objs["xy"], dtype=np.float64),
        "flux": flux,
    }


def _auto_photometry(det, objs, seg, images, errors, masks=None, det_mask=None):
    """FLUX_AUTO of sep's detections in each band, and its error (SX_CONFIG's Kron settings).

    Args:
        det: the detection image the objects were found on.
        objs, seg: sep's objects and segmentation map (other objects are masked with it).
        images: ``(C, H, W)`` measurement images (any sequence of 2-d arrays).
        errors: per band, the noise std: a float or an ``(H, W)`` array.
        masks: per band, a bool ``(H, W)`` map of missing pixels, or ``None``; sep leaves them
            out of the sums and scales the sum to the full aperture area.
        det_mask: missing pixels of ``det`` (for the Kron radius), or ``None``.

    Returns:
        ``(flux (k, C), flux_err (k, C))``.
    """
    import sep

    k, n_bands = len(objs), len(images)
    flux_out, err_out = np.zeros((k, n_bands)), np.zeros((k, n_bands))
    if k == 0:
        return flux_out, err_out
    seg = np.ascontiguousarray(seg, dtype=np.int32)
    seg_id = np.arange(1, k + 1, dtype=np.int32)
    x, y = objs["x"], objs["y"]
    a, b, theta = objs["a"], objs["b"], objs["theta"]
    # sep refuses degenerate ellipses (a or b zero/nan): give them a unit circle here; they are
    # measured with the minimum circular aperture below.
    bad_shape = ~(np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (a > 0) & (b > 0))
    a = np.where(bad_shape, 1.0, a)
    b = np.where(bad_shape, 1.0, np.minimum(b, a))
    # sep's theta is float32: +-pi/2 rounds to just beyond the [-pi/2, pi/2] that its
    # photometry accepts (an object elongated along y)
    theta = np.clip(np.where(bad_shape, 0.0, theta), -np.pi / 2, np.pi / 2)
    mask_args = {} if det_mask is None else {"mask": np.ascontiguousarray(det_mask)}
    kronrad, _ = sep.kron_radius(
        det, x, y, a, b, theta, SX_CONFIG["kron_factor"], seg_id=seg_id, segmap=seg, **mask_args
    )
    kron_factor, min_radius = SX_CONFIG["phot_autoparams"]
    r_min = min_radius / 2.0
    kronrad = np.where(np.isfinite(kronrad), kronrad, 0.0)
    use_circle = (kronrad * np.sqrt(a * b) < r_min) | bad_shape
    for c in range(n_bands):
        data = np.ascontiguousarray(images[c], dtype=np.float64)
        err = errors[c]
        err = float(err) if np.ndim(err) == 0 else np.ascontiguousarray(err, dtype=np.float64)
        mask_args = {} if masks is None else {"mask": np.ascontiguousarray(masks[c])}
        flux, flux_err, _ = sep.sum_ellipse(
            data, x, y, a, b, theta, kron_factor * np.maximum(kronrad, 1e-3),
            err=err, subpix=1, seg_id=seg_id, segmap=seg, **mask_args,
        )
        flux = np.asarray(flux, dtype=np.float64).copy()
        flux_err = np.asarray(flux_err, dtype=np.float64).copy()
        if use_circle.any():
            cflux, cerr, _ = sep.sum_circle(
                data, x[use_circle], y[use_circle], r_min, err=err, subpix=1,
                seg_id=seg_id[use_circle], segmap=seg, **mask_args,
            )
            flux[use_circle] = cflux
            flux_err[use_circle] = cerr
        flux_out[:, c], err_out[:, c] = flux, flux_err
    return flux_out, err_out


def run_sep(
    blends: np.ndarray,
    noise_std: np.ndarray,
    bands: Sequence[str],
    detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Detect and measure every stamp with ``sep`` and the DES Y6 settings.

    Args:
        blends: ``(N, H, W, C)`` noisy, sky-subtracted blends, channels last.
        noise_std: ``(C,)`` sky noise std per band (image unit), e.g.
            :func:`tfdeblend.evaluate.metrics.sky_noise_std`, or ``(N, C)`` per stamp.
        bands: names of the C bands.
        detect_bands: bands summed into the detection image.
        progress: show a tqdm bar.

    Returns:
        A catalog dict (module docstring) with FLUX_AUTO per band and sep's moments.
    """
    import sep

    blends = _check_blends(blends, bands)
    noise_std = _check_noise(noise_std, len(blends), len(bands))
    det, det_err = coadd(blends, noise_std, bands, detect_bands)
    per_stamp = noise_std.ndim == 2
    sep.set_sub_object_limit(4096)
    rows = [
        _sep_stamp(blends[i], det[i], float(det_err[i]) if per_stamp else det_err,
                   noise_std[i] if per_stamp else noise_std)
        for i in tqdm(range(len(blends)), desc="sep", unit="stamp", disable=not progress)
    ]
    return catalog_from_rows(rows, len(bands))


def source_extractor_binary() -> str | None:
    """Path of the Source Extractor executable (``source-extractor`` or ``sex``), or ``None``."""
    return shutil.which("source-extractor") or shutil.which("sex")


SEXTRACTOR_PARAMS = (
    "NUMBER",
    "EXT_NUMBER",
    "X_IMAGE",
    "Y_IMAGE",
    "X2_IMAGE",
    "Y2_IMAGE",
    "XY_IMAGE",
    "FLUX_AUTO",
)


def _write_mef(path: Path, images: np.ndarray) -> None:
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(np.asarray(im, dtype=np.float32)) for im in images]
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _sextractor_config(tmp: Path, threshold: float, catalog: Path, image_mode: bool = False,
                       weights: tuple[Path, Path] | None = None) -> Path:
    """Config, parameter and filter files for one run. Stamps: absolute threshold, no
    background; whole images (``image_mode``): threshold relative to the variance maps
    ``weights`` (detection, measurement), 64 px background mesh, FLUXERR_AUTO."""
    conv = tmp / "gauss_3.0_7x7.conv"
    conv.write_text(
        "CONV NORM\n# 7x7 Gaussian, FWHM 3 px\n"
        + "\n".join(" ".join(f"{v:.6f}" for v in row) for row in FILTER_KERNEL)
        + "\n"
    )
    params = tmp / "tfdeblend.param"
    names = SEXTRACTOR_PARAMS + (("FLUXERR_AUTO", "FLAGS") if image_mode else ())
    params.write_text("\n".join(names) + "\n")
    kron, rmin = SX_CONFIG["phot_autoparams"]
    config = {
        "CATALOG_NAME": str(catalog),
        "CATALOG_TYPE": "ASCII_HEAD",
        "PARAMETERS_NAME": str(params),
        "DETECT_TYPE": "CCD",
        "DETECT_MINAREA": str(SX_CONFIG["minarea"]),
        "THRESH_TYPE": "ABSOLUTE",
        "DETECT_THRESH": f"{threshold:.8g}",
        "ANALYSIS_THRESH": f"{threshold:.8g}",
        "FILTER": "Y",
        "FILTER_NAME": str(conv),
        "DEBLEND_NTHRESH": str(SX_CONFIG["deblend_nthresh"]),
        "DEBLEND_MINCONT": str(SX_CONFIG["deblend_cont"]),
        "CLEAN": "Y",
        "CLEAN_PARAM": "1.0",
        "MASK_TYPE": "CORRECT",
        "PHOT_AUTOPARAMS": f"{kron}, {rmin}",
        "SATUR_LEVEL": "1e20",
        "GAIN": "0.0",
        "BACK_TYPE": "MANUAL",
        "BACK_VALUE": "0.0",
        "CHECKIMAGE_TYPE": "NONE",
        "VERBOSE_TYPE": "QUIET",
        "WRITE_XML": "N",
        "NTHREADS": "1",
    }
    if image_mode:
        config.update({
            "THRESH_TYPE": "RELATIVE",
            "BACK_TYPE": "AUTO",
            "BACK_SIZE": str(IMAGE_BACKGROUND_MESH),
            "BACK_FILTERSIZE": "3",
            "WEIGHT_TYPE": "MAP_VAR,MAP_VAR",
            "WEIGHT_IMAGE": f"{weights[0]},{weights[1]}",
            "WEIGHT_GAIN": "N,N",
            "WEIGHT_THRESH": f"{_SEX_BAD_VARIANCE / 10:g},{_SEX_BAD_VARIANCE / 10:g}",
            "INTERP_TYPE": "ALL,ALL",
            "INTERP_MAXXLAG": "16,16",
            "INTERP_MAXYLAG": "16,16",
        })
        del config["BACK_VALUE"]
    path = tmp / "tfdeblend.sex"
    path.write_text("".join(f"{k:<18}{v}\n" for k, v in config.items()))
    return path


def _run_sextractor(binary: str, detect: Path, measure: Path, config: Path, catalog: Path,
                    band: str) -> dict[str, np.ndarray]:
    """One dual-image Source Extractor run (detection on ``detect``, photometry on ``measure``)
    in ``config``'s folder; its ASCII_HEAD catalog, or one clear error."""
    proc = subprocess.run(
        [binary, f"{detect},{measure}", "-c", str(config)],
        capture_output=True, text=True, cwd=config.parent, check=False,
    )
    if proc.returncode != 0 or not catalog.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TfdeblendError(f"Source Extractor failed on band {band}: {tail[0]}")
    return _read_ascii_head(catalog)


def _read_ascii_head(path: Path) -> dict[str, np.ndarray]:
    names: list[str] = []
    lines = path.read_text().splitlines()
    for line in lines:
        if line.startswith("#"):
            parts = line.split()
            names.append(parts[2])
    data = np.loadtxt([ln for ln in lines if not ln.startswith("#")], ndmin=2)
    if data.size == 0:
        data = np.zeros((0, len(names)))
    return {name: data[:, i] for i, name in enumerate(names)}


def run_source_extractor(
    blends: np.ndarray,
    noise_std: np.ndarray,
    bands: Sequence[str],
    detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS,
    binary: str | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run the Source Extractor binary with the DES Y6 settings in dual-image mode.

    The coadd of ``detect_bands`` is the detection image and each band in turn the measurement
    image; all stamps go in one multi-extension FITS file per band (one extension per stamp),
    with an absolute threshold of 0.8 times the coadd's noise std. Config, parameter and filter
    files are written to a temporary directory.

    Args:
        blends: ``(N, H, W, C)`` noisy, sky-subtracted blends.
        noise_std: ``(C,)`` sky noise std per band, or ``(N, C)`` per stamp (one run per distinct
            row, as the threshold is absolute).
        bands: names of the C bands.
        detect_bands: bands summed into the detection image.
        binary: executable; default :func:`source_extractor_binary`.
        progress: show a tqdm bar (one step per band).

    Returns:
        A catalog dict (module docstring): FLUX_AUTO per band, ``X_IMAGE - 1``, ``Y_IMAGE - 1``,
        ``X2_IMAGE``, ``Y2_IMAGE``, ``XY_IMAGE``.

    Raises:
        TfdeblendError: the binary is missing or fails.
    """
    binary = binary or source_extractor_binary()
    if binary is None:
        raise TfdeblendError(
            "Source Extractor is not installed (no 'source-extractor' or 'sex' on PATH); "
            "on Debian/Ubuntu: apt-get install source-extractor"
        )
    blends = _check_blends(blends, bands)
    noise_std = _check_noise(noise_std, len(blends), len(bands))
    if noise_std.ndim == 2:
        # the threshold is absolute, one per run: one run per distinct noise row
        rows_noise, group = np.unique(noise_std, axis=0, return_inverse=True)
        group = np.asarray(group).ravel()
        parts = [
            (np.flatnonzero(group == g), run_source_extractor(
                blends[group == g], rows_noise[g], bands, detect_bands, binary, progress=False))
            for g in tqdm(range(len(rows_noise)), desc="source-extractor", unit="noise",
                          disable=not progress)
        ]
        k_max = max([cat["x"].shape[1] for _, cat in parts] + [1])
        merged = empty_catalog(len(blends), k_max, len(bands))
        for index, cat in parts:
            k = cat["x"].shape[1]
            for key in CATALOG_KEYS:
                if key == "n":
                    merged[key][index] = cat[key]
                else:
                    merged[key][index, :k] = cat[key]
        return merged
    n_stamps = len(blends)
    det, det_err = coadd(blends, noise_std, bands, detect_bands)
    per_band = []
    with tempfile.TemporaryDirectory(prefix="tfdeblend-sex-") as tmp_name:
        tmp = Path(tmp_name)
        det_path = tmp / "detect.fits"
        _write_mef(det_path, det)
        for c, band in enumerate(tqdm(list(bands), desc="source-extractor", disable=not progress)):
            band_path = tmp / f"band_{c}.fits"
            _write_mef(band_path, blends[..., c])
            catalog = tmp / f"cat_{c}.txt"
            config = _sextractor_config(tmp, SX_CONFIG["thresh"] * det_err, catalog)
            per_band.append(_run_sextractor(binary, det_path, band_path, config, catalog, band))
    ref = per_band[0]
    rows = []
    for i in range(n_stamps):
        sel = ref["EXT_NUMBER"].astype(int) == i + 1
        row = {
            "x": ref["X_IMAGE"][sel] - 1.0,
            "y": ref["Y_IMAGE"][sel] - 1.0,
            "mu20": ref["X2_IMAGE"][sel],
            "mu02": ref["Y2_IMAGE"][sel],
            "mu11": ref["XY_IMAGE"][sel],
            "flux": np.stack(
                [cat["FLUX_AUTO"][cat["EXT_NUMBER"].astype(int) == i + 1] for cat in per_band],
                axis=-1,
            ),
        }
        rows.append(row)
    return catalog_from_rows(rows, len(bands))


# --------------------------------------------------------------------------------------------
# whole images

#: side (pixels) of the background mesh subtracted from whole images (sep.Background, Source
#: Extractor's BACK_SIZE), filter 3x3 meshes
IMAGE_BACKGROUND_MESH = 64
#: missing pixels this close (pixels) to valid ones are interpolated in the detection image
IMAGE_INTERP_REACH = 16
#: variance written for missing pixels in Source Extractor's weight maps (above
#: ``WEIGHT_THRESH``: a bad pixel)
_SEX_BAD_VARIANCE = 1e30


def image_catalog_columns(bands: Sequence[str]) -> list[str]:
    """Columns of a whole-image catalog: ``x, y`` (0-based pixels of the full image),
    ``flux_<band>``, ``flux_err_<band>`` (the image's unit)."""
    return ["x", "y", *[f"flux_{b}" for b in bands], *[f"flux_err_{b}" for b in bands]]


def _image_catalog(x, y, flux: np.ndarray, flux_err: np.ndarray, bands) -> dict[str, np.ndarray]:
    out = {"x": np.asarray(x, np.float64), "y": np.asarray(y, np.float64)}
    for c, band in enumerate(bands):
        out[f"flux_{band}"] = np.asarray(flux[:, c], np.float64)
    for c, band in enumerate(bands):
        out[f"flux_err_{band}"] = np.asarray(flux_err[:, c], np.float64)
    return out


def interpolate_missing(image: np.ndarray, missing: np.ndarray,
                        reach: int = IMAGE_INTERP_REACH) -> tuple[np.ndarray, np.ndarray]:
    """Fill the missing pixels of a 2-d image that lie within ``reach`` pixels of valid ones.

    Each takes the mean of its valid (or already filled) 8 neighbours, ring after ring inward:
    across a bad column it is the mean of its two sides, a saturated core is filled from its
    edge. Like Source Extractor's bad-pixel interpolation (``INTERP_TYPE ALL``, 16 px lags), so
    that a bad column or a masked core does not cut a galaxy's footprint in two.

    Returns:
        ``(filled image, still missing)``: pixels farther than ``reach`` from valid data stay
        missing (0 in the image).
    """
    from scipy import ndimage

    known = ~np.asarray(missing, bool)
    values = np.where(known, image, 0.0)
    kernel = np.ones((3, 3))
    for _ in range(reach):
        if known.all():
            break
        total = ndimage.convolve(values, kernel, mode="constant")
        count = ndimage.convolve(known.astype(np.float64), kernel, mode="constant")
        ring = ~known & (count > 0)
        if not ring.any():
            break
        values = np.where(ring, total / np.maximum(count, 1.0), values)
        known |= ring
    return values, ~known


def image_planes(source, detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS,
                 mesh: int = IMAGE_BACKGROUND_MESH) -> dict[str, np.ndarray]:
    """A whole image read for sep: background subtracted, with its variance and missing pixels.

    Args:
        source: a :class:`tfdeblend.image_io.ImageSource` (read whole: ``read()``).
        detect_bands: bands summed into the detection image.
        mesh: background mesh side, pixels (sep.Background, 3x3 mesh filter), per band with the
            missing pixels masked.

    Returns:
        ``image`` float64 ``(C, H, W)`` minus its background (0 where missing), ``variance``
        ``(C, H, W)`` (the variance plane, else sep's background rms squared; 1 where missing),
        ``missing`` bool ``(C, H, W)``, and the detection coadd: ``det``, the plain sum of the
        detection bands after :func:`interpolate_missing` of each, ``det_var`` the sum of their
        (equally interpolated) variances, and ``det_missing`` the pixels still missing in some
        detection band (more than :data:`IMAGE_INTERP_REACH` px from valid data).
    """
    import sep

    image, variance, missing = source.read()
    image = np.asarray(image, dtype=np.float64)
    missing = np.asarray(missing, bool)
    out_var = np.ones_like(image)
    for c in range(len(image)):
        data = np.ascontiguousarray(image[c])
        side = max(1, min(mesh, *data.shape))
        background = sep.Background(data, mask=np.ascontiguousarray(missing[c]), bw=side, bh=side)
        image[c] = np.where(missing[c], 0.0, data - background.back())
        band_var = background.rms() ** 2 if variance is None else variance[c]
        out_var[c] = np.where(missing[c], 1.0, band_var)
    det = np.zeros(image.shape[1:])
    det_var = np.zeros(image.shape[1:])
    det_missing = np.zeros(image.shape[1:], bool)
    for c in _band_indices(source.bands, detect_bands):
        filled, still = interpolate_missing(image[c], missing[c])
        det += filled
        det_var += interpolate_missing(out_var[c], missing[c])[0]
        det_missing |= still
    return {
        "image": image, "variance": out_var, "missing": missing,
        "det": np.ascontiguousarray(np.where(det_missing, 0.0, det)),
        "det_var": np.ascontiguousarray(np.where(det_missing, 1.0, det_var)),
        "det_missing": np.ascontiguousarray(det_missing),
    }


def run_sep_image(
    source, detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS, progress: bool = True
) -> dict[str, np.ndarray]:
    """Detect and measure a whole image with sep and the DES Y6 settings.

    The image is read whole and prepared by :func:`image_planes` (64 px background mesh
    subtracted per band). Detection on the plain sum of the detection bands with its
    per-pixel noise ``sqrt(sum var_b)``, threshold 0.8 sigma, the stamp baseline's ``minarea``,
    deblending and 3 px FWHM filter. Missing pixels are never read as zeros: in the detection
    image they are interpolated from their neighbours within 16 px, as Source Extractor does
    (masking them there instead cuts every galaxy on a bad column or with a saturated core into
    pieces), and farther ones are masked; in the photometry each band's missing pixels are
    masked (sep scales the sum over the valid pixels of an aperture to its full area).
    FLUX_AUTO per band as on stamps, the error from the variance plane
    (``sep.sum_ellipse(err=sqrt(var))``).

    Args:
        source: a :class:`tfdeblend.image_io.ImageSource`.
        detect_bands: bands summed into the detection image.
        progress: unused (one step); for the :class:`Baseline` interface.

    Returns:
        A whole-image catalog: dict of 1-d arrays, :func:`image_catalog_columns`.
    """
    import sep

    del progress
    planes = image_planes(source, detect_bands)
    det = planes["det"]
    sep.set_extract_pixstack(max(300_000, 4 * det.size))
    sep.set_sub_object_limit(4096)
    objs, seg = sep.extract(
        det,
        SX_CONFIG["thresh"],
        var=planes["det_var"],
        mask=planes["det_missing"],
        segmentation_map=True,
        minarea=SX_CONFIG["minarea"],
        filter_kernel=FILTER_KERNEL,
        filter_type=SX_CONFIG["filter_type"],
        deblend_nthresh=SX_CONFIG["deblend_nthresh"],
        deblend_cont=SX_CONFIG["deblend_cont"],
    )
    flux, flux_err = _auto_photometry(
        det, objs, seg, planes["image"], list(np.sqrt(planes["variance"])),
        masks=planes["missing"], det_mask=planes["det_missing"],
    )
    return _image_catalog(objs["x"], objs["y"], flux, flux_err, source.bands)


def _write_fits(path: Path, data: np.ndarray) -> None:
    from astropy.io import fits

    fits.PrimaryHDU(np.asarray(data, dtype=np.float32)).writeto(path, overwrite=True)


def run_source_extractor_image(
    source,
    detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS,
    binary: str | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run the Source Extractor binary on a whole image, dual-image mode, DES Y6 settings.

    Detection image: the plain sum of the detection bands as read (missing pixels 0), with the
    sum of their variances as its variance map; measurement images: each band with its variance
    map (``WEIGHT_TYPE MAP_VAR,MAP_VAR``; a missing pixel gets a variance of 1e30, above
    ``WEIGHT_THRESH``: Source Extractor's own bad-pixel handling, interpolation over at most 16
    px (``INTERP_TYPE ALL``)). Threshold 0.8 sigma of the variance map (``THRESH_TYPE
    RELATIVE``), Source Extractor's own background with a 64 px mesh (``BACK_SIZE 64``,
    ``BACK_FILTERSIZE 3``), ``GAIN 0`` (the variance maps hold the sources' Poisson noise),
    FLUX_AUTO / FLUXERR_AUTO per band. One run per band, the same detections in each.

    Args:
        source: a :class:`tfdeblend.image_io.ImageSource`.
        detect_bands: bands summed into the detection image.
        binary: executable; default :func:`source_extractor_binary`.
        progress: a tqdm bar over the bands.

    Returns:
        A whole-image catalog (:func:`image_catalog_columns`); ``x = X_IMAGE - 1``,
        ``y = Y_IMAGE - 1``.

    Raises:
        TfdeblendError: the binary is missing or fails, or the bands' runs disagree.
    """
    binary = binary or source_extractor_binary()
    if binary is None:
        raise TfdeblendError(
            "Source Extractor is not installed (no 'source-extractor' or 'sex' on PATH); "
            "on Debian/Ubuntu: apt-get install source-extractor"
        )
    image, variance, missing = source.read()
    idx = _band_indices(source.bands, detect_bands)
    if variance is None:  # one robust sigma per band, from the valid pixels
        from tfdeblend.scene import noise_sigma

        sigma = np.maximum(noise_sigma(image, missing).astype(np.float64), 1e-12)
        variance = np.broadcast_to((sigma**2)[:, None, None], image.shape)
    variance = np.where(missing, _SEX_BAD_VARIANCE, variance)
    det = np.where(missing[idx].any(axis=0), 0.0, image[idx].sum(axis=0))
    det_var = np.where(missing[idx].any(axis=0), _SEX_BAD_VARIANCE, variance[idx].sum(axis=0))
    per_band = []
    with tempfile.TemporaryDirectory(prefix="tfdeblend-sex-") as tmp_name:
        tmp = Path(tmp_name)
        _write_fits(tmp / "detect.fits", det)
        _write_fits(tmp / "detect_var.fits", det_var)
        for c, band in enumerate(tqdm(list(source.bands), desc="source-extractor",
                                      disable=not progress)):
            _write_fits(tmp / f"band_{c}.fits", image[c])
            _write_fits(tmp / f"band_{c}_var.fits", variance[c])
            catalog = tmp / f"cat_{c}.txt"
            config = _sextractor_config(tmp, SX_CONFIG["thresh"], catalog, image_mode=True,
                                        weights=(tmp / "detect_var.fits", tmp / f"band_{c}_var.fits"))
            per_band.append(_run_sextractor(binary, tmp / "detect.fits", tmp / f"band_{c}.fits",
                                            config, catalog, band))
    ref = per_band[0]
    for band, cat in zip(source.bands, per_band):
        if not np.array_equal(cat["NUMBER"], ref["NUMBER"]) or not np.allclose(
                cat["X_IMAGE"], ref["X_IMAGE"]):
            raise TfdeblendError(f"Source Extractor detected other objects in the run of band "
                                 f"{band} than in the first band's")
    flux = np.stack([cat["FLUX_AUTO"] for cat in per_band], axis=-1)
    flux_err = np.stack([cat["FLUXERR_AUTO"] for cat in per_band], axis=-1)
    return _image_catalog(ref["X_IMAGE"] - 1.0, ref["Y_IMAGE"] - 1.0, flux, flux_err,
                          source.bands)


class Baseline:
    """A baseline method: detects and measures objects on stamps (or whole images).

    Subclasses set :attr:`name` (the CLI name) and :attr:`description`, implement :meth:`run`, and
    override :meth:`why_unavailable` when they need something that may be missing (a binary, an
    optional package). Register an instance in :data:`BASELINES`.

    Two entry points: :meth:`run` on a batch of stamps (channels last) with a sky noise std,
    returning a catalog dict; :meth:`run_image` on a whole survey image (an
    :class:`tfdeblend.image_io.ImageSource`, with its variance and missing pixels), returning a
    whole-image catalog (:func:`image_catalog_columns`). A baseline that works on whole images
    sets :attr:`runs_on_images` and overrides :meth:`run_image`; the default raises
    :class:`TfdeblendError`.
    """

    #: CLI name (``--baseline NAME``) and key in :data:`BASELINES`
    name: str = ""
    #: one line for help texts and reports
    description: str = ""
    #: whether :meth:`run_image` is implemented
    runs_on_images: bool = False
    #: one line on how :meth:`run_image` detects and measures (for reports)
    image_description: str = ""

    def why_unavailable(self) -> str | None:
        """Why this baseline cannot run here (one line, with the fix), or ``None`` when it can."""
        return None

    def available(self) -> bool:
        """Whether everything the baseline needs is installed."""
        return self.why_unavailable() is None

    def require(self) -> None:
        """Raise :class:`TfdeblendError` (one line saying why) when the baseline cannot run."""
        why = self.why_unavailable()
        if why is not None:
            raise TfdeblendError(f"{self.name} is not available: {why}")

    def run(
        self,
        images: np.ndarray,
        noise_std: np.ndarray,
        bands: Sequence[str],
        progress: bool = True,
    ) -> dict[str, np.ndarray]:
        """Detect and measure every stamp.

        Args:
            images: ``(N, H, W, C)`` noisy, sky-subtracted stamps, channels last.
            noise_std: ``(C,)`` sky noise std per band, or ``(N, C)`` per stamp and band.
            bands: names of the C bands.
            progress: show a tqdm bar.

        Returns:
            A catalog dict (module docstring).
        """
        raise NotImplementedError

    def run_image(self, source, progress: bool = True) -> dict[str, np.ndarray]:
        """Detect and measure a whole survey image.

        Args:
            source: a :class:`tfdeblend.image_io.ImageSource` (sky-subtracted or not: the
                baselines subtract a 64 px background mesh); missing pixels (NaN, masked) are
                masked, never read as zeros.
            progress: show a tqdm bar.

        Returns:
            A whole-image catalog: dict of 1-d arrays ``x, y`` (0-based full-image pixels),
            ``flux_<band>``, ``flux_err_<band>`` for the source's bands.

        Raises:
            TfdeblendError: this baseline does not work on whole images.
        """
        raise TfdeblendError(f"baseline {self.name} does not run on whole images")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SepBaseline(Baseline):
    """:func:`run_sep`: sep with the DES Y6 settings."""

    name = "sep"
    description = "sep (SExtractor algorithms in Python), DES Y6 settings"

    def __init__(self, detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS) -> None:
        self.detect_bands = tuple(detect_bands)

    def why_unavailable(self) -> str | None:
        if importlib.util.find_spec("sep") is None:
            return "the `sep` Python package is not installed (pip install sep)"
        return None

    runs_on_images = True
    image_description = (
        "sep on the plain g+r+i sum, 64 px background mesh subtracted, missing pixels masked; "
        "FLUX_AUTO per band, errors from the variance plane")

    def run(self, images, noise_std, bands, progress=True):
        return run_sep(images, noise_std, bands, self.detect_bands, progress=progress)

    def run_image(self, source, progress=True):
        return run_sep_image(source, self.detect_bands, progress=progress)


class SourceExtractorBaseline(Baseline):
    """:func:`run_source_extractor`: the Source Extractor binary with the DES Y6 settings."""

    name = "source-extractor"
    description = "the Source Extractor binary in dual-image mode, DES Y6 settings"

    def __init__(
        self,
        detect_bands: Sequence[str] = DEFAULT_DETECT_BANDS,
        binary: Callable[[], str | None] = source_extractor_binary,
    ) -> None:
        self.detect_bands = tuple(detect_bands)
        self._binary = binary

    def why_unavailable(self) -> str | None:
        if self._binary() is None:
            return ("the `source-extractor` (or `sex`) binary is not on PATH "
                    "(apt-get install source-extractor)")
        return None

    runs_on_images = True
    image_description = (
        "Source Extractor 2.x, dual-image mode (g+r+i sum / each band) with variance maps, "
        "BACK_SIZE 64, missing pixels as bad weights (interpolated); FLUX_AUTO, FLUXERR_AUTO")

    def run(self, images, noise_std, bands, progress=True):
        return run_source_extractor(images, noise_std, bands, self.detect_bands,
                                    binary=self._binary(), progress=progress)

    def run_image(self, source, progress=True):
        return run_source_extractor_image(source, self.detect_bands, binary=self._binary(),
                                          progress=progress)


#: CLI name -> baseline; the one place a baseline is registered
BASELINES: dict[str, Baseline] = {
    baseline.name: baseline for baseline in (SepBaseline(), SourceExtractorBaseline())
}


def get_baseline(name: str, require: bool = True) -> Baseline:
    """The registered baseline called ``name``.

    Raises:
        TfdeblendError: unknown name, or (with ``require``) the baseline cannot run here; one
            line saying why.
    """
    if name not in BASELINES:
        raise TfdeblendError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    baseline = BASELINES[name]
    if require:
        baseline.require()
    return baseline


def run_baseline(
    name: str, blends: np.ndarray, noise_std: np.ndarray, bands: Sequence[str], **kwargs
) -> dict[str, np.ndarray]:
    """Run the registered baseline called ``name`` (see :data:`BASELINES`) on stamps."""
    return get_baseline(name).run(blends, noise_std, bands, **kwargs)
