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
from pathlib import Path

import numpy as np

from tfdeblend.config import QUALITY_NAMES
from tfdeblend.errors import TfdeblendError
from tfdeblend.outliers import clean_outliers, find_outliers


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


def deblend_batch(model, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The peel of ``model`` on a batch of stamps, with outliers cleaned first.

    Returns the dict of :meth:`tfdeblend.export.DeblendModel.deblend`, whose ``residual`` is
    ``images - components.sum(1)`` (outliers included), plus ``outliers`` int32 ``(N,)``.
    """
    cleaned, n_outliers = prepare_batch(images)
    result = model.deblend(cleaned, batch_size=batch_size)
    if n_outliers.any():
        result["residual"] = result["residual"] + (images - cleaned)
    result["outliers"] = n_outliers
    return result


def _model_info(model) -> tuple[tuple[str, ...], int]:
    """``(bands, stamp_size)`` of a model, read from its metadata without loading it."""
    from tfdeblend.export import DeblendModel, read_model_metadata

    if isinstance(model, DeblendModel):
        return model.bands, model.stamp_size
    _, metadata = read_model_metadata(model)
    return tuple(metadata["bands"]), int(metadata["stamp_size"])


def run_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model=None,
    batch_size: int = 32,
    preview_dir: str | os.PathLike | None = None,
    preview_count: int = 16,
    overwrite: bool = False,
    progress: bool = True,
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

    Returns:
        Summary dict: ``n_blends``, ``quality`` (count per quality name), ``n_components``
        (total), ``n_split`` (blends where a merged component was split), ``n_recovered``
        (blends where the residual detection added one), ``n_merged`` (components merged
        into a brighter one), ``n_outlier_blends`` and ``n_outliers`` (stamps with outlier
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
    with open_blends(input_path, bands=bands, stamp_size=stamp_size) as blends:
        from tfdeblend.export import DeblendModel, load_model

        if not isinstance(model, DeblendModel):
            model = load_model(model)
        summary = _deblend_file(
            blends, model, output_path, batch_size, preview_count if preview_dir else 0,
            overwrite, progress, Path(input_path).name,
        )
    previews = []
    if preview_dir is not None and summary["kept"]["blend"]:
        from tfdeblend.preview import save_previews

        previews = save_previews(preview_dir, summary["kept"], model.bands)
    del summary["kept"]
    return {
        **summary,
        "output": str(output_path),
        "previews": [str(p) for p in previews],
        "seconds": time.perf_counter() - started,
    }


def _deblend_file(blends, model, output_path, batch_size, preview_count, overwrite, progress,
                  input_name) -> dict:
    """Peel every stamp of an open :class:`tfdeblend.fitsio.BlendFile` into ``output_path``."""
    from tqdm.auto import tqdm

    from tfdeblend.fitsio import ResultWriter

    kept: dict[str, list] = {
        key: [] for key in ("blend", "components", "residual", "counts", "quality",
                            "n_components", "split")
    }
    totals = {"n_components": 0, "n_split": 0, "n_recovered": 0, "n_merged": 0,
              "n_outlier_blends": 0, "n_outliers": 0}
    sums = {"n_components": "n_components", "n_split": "split", "n_recovered": "recovered",
            "n_merged": "merged", "n_outliers": "outliers"}
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
            model.stamp_size,
            info,
            overwrite=overwrite,
        ) as writer,
        tqdm(total=blends.n, unit="blend", desc="deblending", disable=not progress) as bar,
    ):
        for start in range(0, blends.n, batch_size):
            chunk = blends.read(start, start + batch_size, channels_last=True)
            result = deblend_batch(model, chunk, batch_size=batch_size)
            writer.write_batch(result)
            for q in result["quality"]:
                quality_total[QUALITY_NAMES[int(q)]] += 1
            for total, key in sums.items():
                totals[total] += int(result[key].sum())
            totals["n_outlier_blends"] += int((result["outliers"] > 0).sum())
            room = preview_count - len(kept["blend"])
            if room > 0:
                kept["blend"].extend(chunk[:room])
                for key in kept.keys() - {"blend"}:
                    kept[key].extend(result[key][:room])
            bar.update(len(chunk))
    return {"n_blends": blends.n, "quality": quality_total, **totals, "kept": kept}


def summary_line(summary: dict) -> str:
    """The one line ``tfdeblend run`` prints about a finished run."""
    quality = ", ".join(f"{k} {v}" for k, v in summary["quality"].items())
    added = f", {summary['n_split']} split" if summary.get("n_split") else ""
    if summary.get("n_recovered"):
        added += f", {summary['n_recovered']} found in the residual"
    if summary.get("n_merged"):
        added += f", {summary['n_merged']} merged into a brighter galaxy"
    line = (
        f"Deblended {summary['n_blends']} blend(s) into {summary['n_components']} component(s) "
        f"in {summary['seconds']:.1f} s (quality: {quality}{added}); wrote {summary['output']}"
    )
    if summary.get("n_outlier_blends"):
        line += (
            f"\nWarning: {summary['n_outlier_blends']} blend(s) held {summary['n_outliers']} "
            "outlier pixel(s) (cosmic rays or hot pixels); they were ignored by the networks, "
            "left in the residual, and flagged in BLENDS.outliers"
        )
    return line
