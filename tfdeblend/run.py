"""The file application: FITS files of stamps in, deblended FITS files out (``tfdeblend run``).

This is where files meet the peel. :func:`run_file` checks the input file and the options
*before* TensorFlow is loaded (so a wrong file fails in a fraction of a second), reads the stamps
batch by batch, replaces single-pixel outliers (cosmic rays, hot pixels:
:mod:`tfdeblend.outliers`) in what the networks see, runs the exported model's peel
(:class:`tfdeblend.export.DeblendModel`) and streams the results into one FITS file
(:mod:`tfdeblend.fitsio`). The residual is always ``input - components``, with the outliers left
in it, and every stamp that had outliers is flagged (``BLENDS.outliers``).

Imports flow one way: peel (:mod:`tfdeblend.deblend`) -> export -> this module.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from tfdeblend.config import QUALITY_NAMES
from tfdeblend.errors import TfdeblendError
from tfdeblend.outliers import deblend_batch, stamp_functions
from tfdeblend.peel_config import POST_PEEL_COUNTS


def pad_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """``(row, column)`` of a ``height x width`` stamp's first pixel inside the ``size x size``
    stamp it is centred in for the networks (:func:`fill_stamps`)."""
    return (size - height) // 2, (size - width) // 2


def fill_stamps(images: np.ndarray, first_index: int = 0, seed: int = 0,
                bands: tuple[str, ...] | None = None, size: int | None = None):
    """Stamps with their NaN/inf pixels filled, the number of such pixels per stamp, and the
    bands each stamp has no data in at all ``(N, C)`` bool.

    Missing pixels are filled from their valid neighbours plus noise of the band's robust sigma
    (:func:`tfdeblend.scene.fill_missing`), with a random stream per stamp index, so a stamp's
    result does not depend on the batch it is in. A band with no data in a stamp (every pixel
    NaN/inf, or exactly 0: a filler plane) would show the networks a galaxy that is absent in
    that band, and they return nothing (counts 0, flagged high): it is made from the other
    bands instead (:func:`tfdeblend.scene.fill_absent_bands`; its fluxes are reported NaN,
    :func:`_deblend_file`).

    Stamps smaller than the networks' ``size`` are centred in a ``size x size`` stamp
    (:func:`pad_offset`) whose other pixels are empty sky: 0 plus noise of the band's robust
    sigma, as the parts of a survey image's edge tiles outside the image are
    (:func:`tfdeblend.scene.fill_missing`'s ``outside``); they are not counted as missing.

    Args:
        images: ``(N, H, W, C)`` channels last.
        first_index: index of ``images[0]`` in its file.
        bands: the channels' bands (for :func:`tfdeblend.scene.band_shares`).
        size: the networks' stamp size (default: the stamps' own, no padding).
    """
    n, height, width, channels = images.shape
    size = height if size is None else int(size)
    padded = (height, width) != (size, size)
    missing = ~np.isfinite(images)
    absent = (missing | (images == 0)).all(axis=(1, 2))
    absent &= ~absent.all(axis=1, keepdims=True)  # an empty stamp stays empty
    missing |= absent[:, None, None, :]
    counts = missing.sum(axis=(1, 2, 3)).astype(np.int32)
    if not counts.any() and not padded:
        return images, counts, absent
    from tfdeblend.outliers import robust_sigma
    from tfdeblend.scene import band_shares, fill_absent_bands, fill_missing

    shares = band_shares(bands if bands else [""] * channels)
    row, col = pad_offset(height, width, size)
    inside = (slice(None), slice(row, row + height), slice(col, col + width))
    outside = np.ones((size, size), bool)
    outside[inside[1:]] = False
    out = np.zeros((n, size, size, channels), np.float32)
    out[:, inside[1], inside[2]] = images
    sigma = robust_sigma(np.where(missing, np.nan, images))
    for i in range(n) if padded else np.flatnonzero(counts):
        rng = np.random.default_rng(np.random.SeedSequence([seed, first_index + int(i)]))
        stamp = np.zeros((channels, size, size), np.float32)
        stamp[inside] = np.transpose(np.where(missing[i], 0.0, images[i]), (2, 0, 1))
        hole = np.zeros((channels, size, size), bool)
        hole[inside] = np.transpose(missing[i], (2, 0, 1))
        sig = np.broadcast_to(np.nan_to_num(sigma[i])[:, None, None], stamp.shape)
        filled = fill_missing(stamp, hole, sig, rng, outside=outside if padded else None)
        filled = fill_absent_bands(filled, absent[i], shares)
        out[i] = np.transpose(filled, (1, 2, 0))
    return out, counts, absent


def crop_result(result: dict, height: int, width: int) -> dict:
    """A peel's image outputs (``components``, ``conserved``, ``residual``) cut back from the
    networks' stamp to the ``height x width`` stamp :func:`fill_stamps` centred in it. The
    components' light outside it is dropped with the padding; ``components + residual`` is the
    input on what is kept."""
    size = np.shape(result["residual"])[1]
    if (height, width) == (size, size):
        return result
    row, col = pad_offset(height, width, size)
    rows, cols = slice(row, row + height), slice(col, col + width)
    out = dict(result)
    for key in ("components", "conserved"):
        if key in out:
            out[key] = np.asarray(out[key])[:, :, rows, cols]
    out["residual"] = np.asarray(out["residual"])[:, rows, cols]
    return out


def _model_info(model) -> tuple[tuple[str, ...], int]:
    """``(bands, stamp_size)`` of a model, read from its metadata without loading it."""
    metadata = _metadata(model)
    return tuple(metadata["bands"]), int(metadata["stamp_size"])


def _metadata(model) -> dict:
    """A model's metadata (``bands``, ``stamp_size``, ``conditions``...), without loading it."""
    from tfdeblend.export import DeblendModel, read_model_metadata

    return model.metadata if isinstance(model, DeblendModel) else read_model_metadata(model)[1]


def _extendedness(catalog, bands, psf_fwhm, model) -> np.ndarray:
    """The catalog's ``extendedness`` (:func:`tfdeblend.psf.extendedness`) with the PSF of
    ``--psf`` (``psf_fwhm``, pixels), else the model's nominal one; NaN without either, and
    for objects on a masked core (their model's shape is the filled core's)."""
    from tfdeblend.psf import extendedness

    if psf_fwhm is None:
        conditions = _metadata(model).get("conditions") or {}
        psf_fwhm = conditions.get("psf_fwhm")
    if psf_fwhm is None or len(catalog) == 0:
        return np.full(len(catalog), np.nan, np.float32)
    fluxes = np.stack([np.asarray(catalog[f"flux_{b}"], np.float64) for b in bands], axis=1)
    value = extendedness(catalog["mu20"], catalog["mu02"], fluxes,
                         np.broadcast_to(np.asarray(psf_fwhm, np.float64), (len(bands),)))
    return np.where(np.asarray(catalog["masked_core"], bool), np.nan, value).astype(np.float32)


def run_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model=None,
    batch_size: int = 32,
    preview_dir: str | os.PathLike | None = None,
    preview_count: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    psf=None,
) -> dict:
    """Deblend every stamp of a FITS file with a SavedModel; write the results FITS file.

    The input is read batch by batch (memmap) and the output streamed, so memory stays bounded
    by one batch whatever the file size. See :mod:`tfdeblend.fitsio` for both file layouts.

    Args:
        input_path: blends FITS file, ``(N, C, H, W)`` or ``(C, H, W)`` with a ``BANDS`` header.
        output_path: results FITS file (``COMPONENTS``, ``RESIDUAL``, ``CONSERVED``,
            ``CATALOG``, ``BLENDS``).
        model: a :class:`tfdeblend.export.DeblendModel`, a model directory, or ``None`` for
            :func:`tfdeblend.export.default_model_dir`.
        batch_size: blends per graph call.
        preview_dir: write PNG panels (input, components, residual, counts) of the first
            ``preview_count`` blends there.
        preview_count: how many previews at most.
        overwrite: replace an existing output file (and previews).
        progress: show a tqdm progress bar.
        psf: ``--psf`` values (:func:`tfdeblend.psf.psf_fwhm_pixels`: FWHMs in arcsec, with
            the file's ``PIXSCALE``, or PSF FITS files) for a conditioned model; default its
            nominal PSF. The noise is estimated on each stamp.

    Returns:
        Summary dict: ``n_blends``, ``quality`` (count per quality name), ``n_components``
        (total), ``n_split`` (blends where a merged component was split), ``n_recovered``
        (blends where the residual detection added one), ``n_merged`` (components merged
        into a brighter one), ``n_pruned`` (components dropped as not significant),
        ``n_outlier_blends`` and ``n_outliers`` (stamps with outlier
        pixels, and those pixels), ``output``, ``previews`` (list of PNG paths), ``seconds``.

    Raises:
        TfdeblendError: bad input, missing model, existing output without ``overwrite``.
    """
    from tfdeblend.fitsio import open_blends
    from tfdeblend.utils import check_output_path

    started = time.perf_counter()
    if int(batch_size) < 1:
        raise TfdeblendError(f"batch size must be positive, not {batch_size}")
    output_path = check_output_path(output_path, overwrite)
    if Path(input_path).exists() and Path(input_path).resolve() == output_path.resolve():
        raise TfdeblendError("the output file must differ from the input file")
    if preview_dir is not None:
        preview_dir = Path(preview_dir)
        if preview_dir.exists() and not preview_dir.is_dir():
            raise TfdeblendError(f"preview directory {preview_dir} is a file")
        if preview_dir.exists() and any(preview_dir.iterdir()) and not overwrite:
            raise TfdeblendError(
                f"preview directory {preview_dir} is not empty; pass --overwrite to write into it"
            )
    bands, stamp_size = _model_info(model)  # no TensorFlow yet
    with open_blends(input_path, bands=bands, stamp_size=stamp_size, check_finite=False,
                     smaller_ok=True) as blends:
        psf_fwhm = _psf_pixels(psf, bands, blends.header.get("PIXSCALE"))
        from tfdeblend.export import DeblendModel, load_model

        if not isinstance(model, DeblendModel):
            model = load_model(model)
        summary = _deblend_file(
            blends, model, output_path, batch_size, preview_count if preview_dir else 0,
            overwrite, progress, Path(input_path).name, psf_fwhm,
        )
    previews = []
    if preview_dir is not None and summary["kept"]["blend"]:
        from tfdeblend.preview import save_previews

        previews = save_previews(preview_dir, summary["kept"], model.bands)
    del summary["kept"]
    return {
        **summary,
        "note": psf_note(model, psf),
        "output": str(output_path),
        "previews": [str(p) for p in previews],
        "seconds": time.perf_counter() - started,
    }


def psf_note(model, psf) -> str | None:
    """The line to print when ``--psf`` was given to a model whose networks take no conditions."""
    if not psf:
        return None
    metadata = _metadata(model)
    if metadata.get("conditions"):
        return None
    return (f"Note: model {metadata.get('name')} version {metadata.get('version')} takes no "
            "observing conditions; --psf was not used")


def _psf_pixels(psf, bands, pixel_scale):
    """``--psf`` as per-band FWHMs in pixels (``None`` without ``--psf``)."""
    if not psf:
        return None
    from tfdeblend.psf import psf_fwhm_pixels

    return psf_fwhm_pixels(psf, bands, None if pixel_scale is None else float(pixel_scale))


def _deblend_file(blends, model, output_path, batch_size, preview_count, overwrite, progress,
                  input_name, psf_fwhm=None) -> dict:
    """Peel every stamp of an open :class:`tfdeblend.fitsio.BlendFile` into ``output_path``."""
    from tqdm.auto import tqdm

    from tfdeblend.fitsio import ResultWriter

    kept: dict[str, list] = {
        key: [] for key in ("blend", "components", "residual", "counts", "quality",
                            "n_components", "split")
    }
    # summary term -> the peel output it sums
    sums = {"n_components": "n_components", **{f"n_{key}": key for key in POST_PEEL_COUNTS},
            "n_outliers": "outliers", "n_missing": "missing"}
    totals = {**dict.fromkeys(sums, 0), "n_outlier_blends": 0, "n_missing_blends": 0}
    levels: list[np.ndarray] = []  # each stamp's sky level per band (stamp_sky_levels)
    quality_total = {name: 0 for name in QUALITY_NAMES.values()}
    info = {
        "model": model.name,
        "version": model.version,
        "peel": model.peel_config,
        "bunit": blends.bunit,
        "input": input_name,
    }
    with (
        ResultWriter(
            output_path,
            blends.n,
            model.peel_config.slots,
            model.bands,
            (blends.height, blends.width),
            info,
            overwrite=overwrite,
        ) as writer,
        tqdm(total=blends.n, unit="blend", desc="deblending", disable=not progress) as bar,
    ):
        for start in range(0, blends.n, batch_size):
            chunk = blends.read(start, start + batch_size, channels_last=True)
            filled, n_missing, absent = fill_stamps(chunk, start, bands=model.bands,
                                                    size=model.stamp_size)
            result = deblend_batch(model, filled, batch_size=batch_size, psf_fwhm=psf_fwhm)
            result = crop_result(result, blends.height, blends.width)
            result["missing"] = n_missing
            result["absent"] = absent
            # a stamp with no data at all: nothing was deblended, which is no "high" quality
            empty = n_missing == np.prod(chunk.shape[1:])
            if empty.any():
                result["quality"] = np.where(empty, 0, result["quality"])
            if n_missing.any():  # the residual is the input's: NaN where it is missing
                seen = np.isfinite(chunk) & ~absent[:, None, None, :]
                result["residual"] = np.where(seen, result["residual"], np.nan)
            writer.write_batch(result)
            if result.get("noise_std") is not None:  # models before version 10 have none
                levels.append(stamp_sky_levels(chunk, result["noise_std"]))
            for q in result["quality"]:
                quality_total[QUALITY_NAMES[int(q)]] += 1
            for total, key in sums.items():
                totals[total] += int(result[key].sum())
            totals["n_outlier_blends"] += int((result["outliers"] > 0).sum())
            totals["n_missing_blends"] += int((result["missing"] > 0).sum())
            room = preview_count - len(kept["blend"])
            if room > 0:
                kept["blend"].extend(chunk[:room])
                for key in kept.keys() - {"blend"}:
                    kept[key].extend(result[key][:room])
            bar.update(len(chunk))
    shape = (blends.height, blends.width)
    padded = {"padded_from": shape, "stamp_size": model.stamp_size} if shape != (
        model.stamp_size, model.stamp_size) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no stamp with data in a band
        sky = np.nanmedian(np.concatenate(levels), axis=0) if levels else np.zeros(0)
    low = {"sky_below": {model.bands[int(np.nanargmin(sky))]: float(np.nanmin(sky))}} if (
        np.isfinite(sky).any() and np.nanmin(sky) < STAMP_SKY_BELOW) else {}
    return {"n_blends": blends.n, "quality": quality_total, **totals, **padded, **low,
            "kept": kept}


#: The typical stamp's median pixel below this many noise sigmas (in some band) gets a note in
#: :func:`summary_line`: two galaxies per stamp put it at +0.03 to +0.07 on the validation
#: sets (a bright galaxy: +0.7), and a sky subtracted half a sigma too much at -0.43.
STAMP_SKY_BELOW: float = -0.2


def stamp_sky_levels(stamps: np.ndarray, noise_std: np.ndarray) -> np.ndarray:
    """``(N, C)``: each ``(N, H, W, C)`` stamp's median pixel per band in units of its noise
    sigma (``noise_std``, the peel's robust estimate); NaN where there is no data or noise."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stamps
        median = np.nanmedian(stamps, axis=(1, 2))
        sigma = np.asarray(noise_std, np.float64).reshape(median.shape)
        return np.where(sigma > 0, median / np.where(sigma > 0, sigma, 1.0), np.nan)


def summary_line(summary: dict) -> str:
    """The one line ``tfdeblend run`` prints about a finished run."""
    quality = ", ".join(f"{k} {v}" for k, v in summary["quality"].items())
    added = f", {summary['n_split']} split" if summary.get("n_split") else ""
    if summary.get("n_recovered"):
        added += f", {summary['n_recovered']} found in the residual"
    if summary.get("n_merged"):
        added += f", {summary['n_merged']} merged into a brighter galaxy"
    if summary.get("n_pruned"):
        added += f", {summary['n_pruned']} dropped as not significant"
    line = (
        f"Deblended {summary['n_blends']} blend(s) into {summary['n_components']} component(s) "
        f"in {summary['seconds']:.1f} s (quality: {quality}{added}); wrote {summary['output']}"
    )
    if summary.get("n_missing_blends"):
        line += (
            f"\nNote: {summary['n_missing_blends']} blend(s) held {summary['n_missing']} missing "
            "pixel(s) (NaN/inf, or a band of zeros); they were filled from their neighbours (a "
            "whole band from the other bands) for the networks, are NaN in the residual (a "
            "band with no data: NaN fluxes), and are counted in BLENDS.missing"
        )
    if summary.get("padded_from"):
        (height, width), size = summary["padded_from"], summary["stamp_size"]
        line += (
            f"\nNote: the {height}x{width} stamps were deblended centred in the model's "
            f"{size}x{size} (the rest empty sky with the stamp's noise) and cut back to "
            f"{height}x{width}"
        )
    if summary.get("sky_below"):
        (band, level), = summary["sky_below"].items()
        line += (
            f"\nNote: the stamps' sky in {band} is {-level:.2f} noise sigmas below 0 (a typical "
            "stamp's median pixel): the networks need it at 0 (half a sigma below takes 'high' "
            "from 90 % to 57 % of the blends); subtract less sky"
        )
    if summary.get("n_outlier_blends"):
        line += (
            f"\nWarning: {summary['n_outlier_blends']} blend(s) held {summary['n_outliers']} "
            "outlier pixel(s) (cosmic rays or hot pixels); they were ignored by the networks, "
            "left in the residual, and flagged in BLENDS.outliers"
        )
    return line


def run_image(
    inputs,
    output_path: str | os.PathLike,
    model=None,
    scene=None,
    batch_size: int = 32,
    file_bands=None,
    mask_bits=None,
    catalog_format: str = "fits",
    preview_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    psf=None,
) -> dict:
    """Deblend a whole survey image (cube or one file per band): FITS out with ``MODEL``,
    ``RESIDUAL`` and ``CATALOG`` (:mod:`tfdeblend.scene`, :mod:`tfdeblend.image_io`). The
    catalog is the scene's plus ``extendedness`` (:func:`tfdeblend.psf.extendedness`, with the
    PSF of ``psf`` or the model's nominal one).

    Args:
        inputs: one cube FITS file, or one file per band (LSST/HSC coadd layout).
        output_path: results FITS file.
        model: a :class:`tfdeblend.export.DeblendModel`, a model directory, or ``None`` for the
            default model.
        scene: a :class:`tfdeblend.scene.SceneConfig` (default options when ``None``).
        batch_size: stamps per graph call.
        file_bands: the band of each file (one file per band), or of each cube channel when the
            cube has no ``BANDS`` keyword.
        mask_bits: mask planes (names or bits) that mark missing pixels.
        catalog_format: ``fits`` (the ``CATALOG`` HDU only), ``parquet`` or ``csv`` (also a
            catalog file beside the output: ``<output stem>.catalog.<format>``).
        preview_path: write a PNG of the image with the galaxies marked by quality there.
        overwrite: replace existing outputs.
        progress: show a progress bar over blends (stamps peeled).
        workers: deblend the tiles on a local Dask cluster of this many worker processes.
        scheduler: deblend the tiles on the Dask cluster at this scheduler address.
        psf: ``--psf`` values for a conditioned model (FWHMs in arcsec, with the WCS's pixel
            scale, or PSF FITS files on the image's grid); default its nominal PSF. The noise is
            the VARIANCE plane's (or estimated on the image).

    Returns:
        Summary dict: ``n_objects``, ``n_blends``, ``n_stamps``, ``quality`` (objects per quality
        name), ``flags`` (objects per flag), ``shape``, ``output``, ``catalog`` (side file or
        ``None``), ``preview``, ``seconds``.

    Raises:
        TfdeblendError: bad input or options, missing model, existing output without
            ``overwrite``.
    """
    from tfdeblend.image_io import open_image
    from tfdeblend.scene import SceneConfig, merge_tiles, plan_tiles
    from tfdeblend.utils import check_output_path

    started = time.perf_counter()
    if int(batch_size) < 1:
        raise TfdeblendError(f"batch size must be positive, not {batch_size}")
    if catalog_format not in CATALOG_FORMATS:
        raise TfdeblendError(
            f"unknown catalog format {catalog_format!r}; one of {', '.join(CATALOG_FORMATS)}"
        )
    if catalog_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise TfdeblendError(
                "--catalog-format parquet needs pyarrow: pip install 'tfdeblend[parquet]'"
            ) from None
    if workers is not None and scheduler is not None:
        raise TfdeblendError("give --workers or --scheduler, not both")
    if workers is not None and int(workers) < 1:
        raise TfdeblendError(f"workers must be at least 1, not {workers}")
    scene = SceneConfig() if scene is None else scene
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    output_path = check_output_path(output_path, overwrite)
    if any(Path(p).exists() and Path(p).resolve() == output_path.resolve() for p in inputs):
        raise TfdeblendError("the output file must differ from the input file")
    side = None
    if catalog_format != "fits":
        side = check_output_path(
            output_path.with_name(f"{output_path.stem}.catalog.{catalog_format}"), overwrite
        )
    if preview_path is not None:
        preview_path = check_output_path(preview_path, overwrite)
    bands, stamp_size = _model_info(model)
    source = open_image(inputs, bands, file_bands=file_bands, mask_bits=mask_bits)
    from tfdeblend.image_io import sky_to_pixel_scale

    psf_fwhm = _psf_pixels(psf, bands, sky_to_pixel_scale(source) if psf else None)
    tiles = plan_tiles(source.shape, scene.tile_size, scene.tile_overlap)
    colour = measure_colour(source, tiles, scene, progress)
    if workers is not None or scheduler is not None:
        from tfdeblend.cluster import deblend_tiles_dask

        model_dir = model.path if hasattr(model, "path") else model
        results, model_info = deblend_tiles_dask(
            source, tiles, model_dir, scene, batch_size, workers=workers, scheduler=scheduler,
            progress=progress, psf_fwhm=psf_fwhm, colour=colour,
        )
    else:
        from tfdeblend.export import DeblendModel, load_model

        if not isinstance(model, DeblendModel):
            model = load_model(model)
        results = deblend_tiles(source, tiles, model, scene, batch_size, progress, psf_fwhm,
                                colour)
        model_info = {"model": model.name, "version": model.version, "peel": model.peel_config}
    columns = merge_tiles(results, source.bands)
    catalog = _catalog_table(columns, source)
    catalog.add_column(_extendedness(catalog, source.bands, psf_fwhm, model), name="extendedness",
                       index=catalog.colnames.index("mu11") + 1)
    footprints = _footprint_table(columns) if scene.footprints else None
    image_model = np.zeros((len(source.bands), *source.shape), np.float32)
    for result in results:
        y0, y1, x0, x1 = result.ext
        image_model[:, y0:y1, x0:x1] += result.model
    from tfdeblend.image_io import write_image_results

    colours = [r.stats["colour"] for r in results if r.stats["colour"] is not None]
    info = {**model_info, "scene": scene, "input": ",".join(Path(p).name for p in inputs),
            "detect_colour": np.median(colours, axis=0) if colours else None}
    write_image_results(output_path, source, image_model, catalog, info, overwrite=overwrite,
                        footprints=footprints)
    if side is not None:
        _write_side_catalog(catalog, side, catalog_format, overwrite)
    if preview_path is not None:
        from tfdeblend.preview import save_image_preview

        save_image_preview(preview_path, source, catalog, overwrite=overwrite)
    quality = {name: int((catalog["quality"] == code).sum()) for code, name in QUALITY_NAMES.items()}
    from tfdeblend.scene import FLAGS

    return {
        "n_objects": len(catalog),
        "n_blends": int(len(np.unique(catalog["blend_id"]))),
        "n_stamps": int(sum(r.stats["stamps"] for r in results)),
        "n_tiles": len(tiles),
        "quality": quality,
        "flags": {flag: int(np.sum(catalog[flag])) for flag in FLAGS},
        "shape": source.shape,
        "output": str(output_path),
        "catalog": None if side is None else str(side),
        "preview": None if preview_path is None else str(preview_path),
        "note": "\n".join(n for n in (psf_note(model, psf), sky_note(results, source.bands, scene))
                          if n) or None,
        "seconds": time.perf_counter() - started,
    }


#: A tile whose median pixel lies this many noise sigmas above 0 in some band (sky-subtracted
#: images: 0-1.5, the real HSC cut-out's bright galaxies 1.3) gets :func:`sky_note`.
SKY_NOTE_SIGMA: float = 5.0
#: A typical tile's median pixel below this many noise sigmas (some band) gets :func:`sky_note`.
SKY_NOTE_BELOW: float = -0.2
#: A tile of :data:`SKY_NOTE_PIXELS` pixels or more with data, whose largest group covers
#: more than this share of them, gets :func:`sky_note` (a small cut-out filled by a blend, as
#: the real HSC one at 92 %, does not).
SKY_NOTE_COVERED: float = 0.9
SKY_NOTE_PIXELS: int = 10_000


def sky_note(results, bands, scene) -> str | None:
    """The line to print when the image's sky seems not subtracted, or not to 0, and no
    ``--background`` was asked for. Only a note (a cut-out filled by one bright galaxy can be
    that bright), not an error.

    A pedestal of half a noise sigma already changes the catalog: on the tutorial field, +0.5
    sigma joined every galaxy into one blend and -0.5 sigma lost 28 % of them. Three signs:

    - a tile's median pixel :data:`SKY_NOTE_SIGMA` or more sigmas above 0 in a band (the sky
      not subtracted at all);
    - the typical (median) tile's median pixel below :data:`SKY_NOTE_BELOW` sigmas in a band:
      faint galaxies only add light (the simulated fields sit at +0.05 to +0.7), so the sky
      was subtracted too much;
    - a tile of :data:`SKY_NOTE_PIXELS` pixels or more whose largest group (detection
      footprints joined, as the scene groups them) covers more than :data:`SKY_NOTE_COVERED`
      of it: the sky above 0 joins the galaxies (a positive pedestal cannot be told from faint
      galaxies' light by its level alone; the simulated fields: 1-8 %, 21 % with 50 stars per
      arcmin^2, 77 % at four times the usual density; +0.5 sigma: 95-99 %).
    """
    if scene.background > 0:
        return None
    sky = np.array([r.stats["sky"] for r in results], np.float64)  # (tiles, bands)
    level = sky.max(axis=0)
    worst = int(np.argmax(level))
    advice = "give --background 64 to subtract it"
    if level[worst] >= SKY_NOTE_SIGMA:
        return (f"Note: the image's median pixel in {bands[worst]} is {level[worst]:.0f} noise "
                "sigmas above 0: if its sky is not subtracted, give --background 64 (the catalog "
                "takes the sky for a source)")
    typical = np.median(sky, axis=0)
    worst = int(np.argmin(typical))
    if typical[worst] < SKY_NOTE_BELOW:
        return (f"Note: the image's sky in {bands[worst]} is {-typical[worst]:.2f} noise sigmas "
                "below 0 (a typical tile's median pixel): the detection needs the sky at 0 and "
                f"misses faint galaxies below it; {advice}")
    covered = [r.stats.get("covered", 0.0) for r in results
               if r.stats.get("pixels", 0) >= SKY_NOTE_PIXELS]
    if covered and max(covered) > SKY_NOTE_COVERED:
        return (f"Note: one blend covers {max(covered):.0%} of a tile: the sky is probably "
                "above 0 (a pedestal joins the galaxies into one blend); " + advice)
    return None


#: Catalog file formats of :func:`run_image` (``fits``: only the ``CATALOG`` HDU).
CATALOG_FORMATS: tuple[str, ...] = ("fits", "parquet", "csv")


def measure_colour(source, tiles, scene, progress: bool = True):
    """The whole image's typical galaxy colour (:func:`tfdeblend.scene.image_colour`), from
    the first detection of each of its ``tiles``, which then all detect with the same band
    weights; ``None`` for an image of one tile (the tile measures it itself, the same) or one
    with too few galaxies."""
    if len(tiles) < 2:
        return None
    from tqdm.auto import tqdm

    from tfdeblend.scene import colour_shares, image_colour, tile_planes

    shares = []
    for tile in tqdm(tiles, desc="measuring the galaxies' colour", unit=" tiles",
                     disable=not progress):
        image, variance, missing = source.read(*tile.ext)
        image, sigma = tile_planes(image, variance, missing, scene)
        (y0, y1, x0, x1), (ey, _, ex, _) = tile.core, tile.ext
        shares.append(colour_shares(image, sigma, missing, scene,
                                    (y0 - ey, y1 - ey, x0 - ex, x1 - ex)))
    return image_colour(shares)


def deblend_tiles(source, tiles, model, scene, batch_size: int = 32, progress: bool = True,
                  psf_fwhm=None, colour=None):
    """Deblend every tile of ``source`` in this process; the tiles' results in tile order
    (``psf_fwhm``: per band, pixels, for a conditioned model; ``colour``: the image's
    typical galaxy colour, :func:`measure_colour`)."""
    from tqdm.auto import tqdm

    from tfdeblend.scene import deblend_tile

    stamp_size = model.stamp_size
    deblend, deblend_one = stamp_functions(model, batch_size, psf_fwhm)
    results = []
    # the number of stamps is known only as the groups are peeled (windows, repeated peels,
    # second tries at detections): the bar counts them and their rate, without a total
    desc = "deblending" if len(tiles) == 1 else f"deblending {len(tiles)} tiles"
    with tqdm(total=None, unit=" stamps", desc=desc, disable=not progress) as bar:
        for index, tile in enumerate(tiles):
            if len(tiles) > 1:
                bar.set_postfix_str(f"tile {index + 1}/{len(tiles)}")
            image, variance, missing = source.read(*tile.ext)
            results.append(deblend_tile(
                image, variance, missing, deblend, tile, scene, stamp_size, source.bands,
                batch_size=batch_size, progress=bar.update, deblend_one=deblend_one,
                colour=colour,
            ))
    return results


def _catalog_table(columns: dict, source):
    """The catalog as an astropy Table with units; ``ra, dec`` from the WCS when there is one."""
    from astropy.table import Table

    from tfdeblend.scene import catalog_columns

    wcs = source.wcs()
    table = Table()
    for name in catalog_columns(source.bands):
        if name in ("ra", "dec"):
            if wcs is None:
                continue
            ra, dec = wcs.pixel_to_world_values(columns["x"], columns["y"])
            table["ra"] = np.asarray(ra, np.float64) % 360.0
            table["dec"] = np.asarray(dec, np.float64)
            table["ra"].unit = table["dec"].unit = "deg"
            continue
        table[name] = columns[name]
    table["x"].unit = table["y"].unit = "pix"
    for name in ("mu20", "mu02", "mu11"):
        table[name].unit = "pix2"
    if source.bunit:  # only a unit FITS knows (else the CATALOG header's BUNIT says it)
        import astropy.units as u

        try:
            unit = u.Unit(source.bunit, format="fits")
        except ValueError:
            unit = None
        for band in source.bands:
            table[f"flux_{band}"].unit = table[f"flux_err_{band}"].unit = unit
    return table


def _footprint_table(columns: dict):
    """The ``FOOTPRINTS`` table: each galaxy's model cut out to its bounding box (scarlet-style):
    ``id, x0, y0`` (full-image pixel of the cut-out's first pixel), ``width, height`` and
    ``model`` (float32, ``(C, height, width)`` flattened, channels first)."""
    from astropy.table import Table

    entries = columns.get("footprint", np.empty(0, dtype=object))
    table = Table()
    table["id"] = columns["id"]
    table["x0"] = np.array([e[0] for e in entries], np.int64)
    table["y0"] = np.array([e[1] for e in entries], np.int64)
    table["width"] = np.array([e[2].shape[2] for e in entries], np.int32)
    table["height"] = np.array([e[2].shape[1] for e in entries], np.int32)
    pixels = np.empty(len(entries), dtype=object)
    pixels[:] = [np.ascontiguousarray(e[2], np.float32).ravel() for e in entries]
    table["model"] = pixels
    return table


def _write_side_catalog(table, path: Path, fmt: str, overwrite: bool) -> None:
    from tfdeblend.utils import atomic_file

    with atomic_file(path, overwrite=overwrite) as tmp:
        plain = table.copy()
        for column in plain.columns.values():
            column.unit = None if fmt == "csv" else column.unit
        if fmt == "parquet":
            plain.write(tmp, format="parquet", overwrite=True)
        else:
            plain.write(tmp, format="ascii.csv", overwrite=True)


def image_summary_line(summary: dict) -> str:
    """The one line ``tfdeblend run`` prints about a whole-image run."""
    quality = ", ".join(f"{k} {v}" for k, v in summary["quality"].items())
    flags = ", ".join(f"{v} {k}" for k, v in summary["flags"].items() if v)
    height, width = summary["shape"]
    line = (
        f"Deblended a {width}x{height} image into {summary['n_objects']} galaxies in "
        f"{summary['n_blends']} blend(s) ({summary['n_stamps']} stamps) in "
        f"{summary['seconds']:.1f} s (quality: {quality}"
        + (f"; flags: {flags}" if flags else "") + f"); wrote {summary['output']}"
    )
    if summary.get("catalog"):
        line += f" and {summary['catalog']}"
    return line


def deblend_kind(inputs, model=None) -> str:
    """``"stamps"`` or ``"image"``: what :func:`run_file` or :func:`run_image` takes ``inputs``
    for (:func:`tfdeblend.image_io.input_kind` with the model's stamp size)."""
    from tfdeblend.image_io import input_kind

    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    _, stamp_size = _model_info(model)
    return input_kind(inputs, stamp_size)
