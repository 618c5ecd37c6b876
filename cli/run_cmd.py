"""``tfdeblend run``: deblend stamps or whole survey images with a SavedModel."""

from __future__ import annotations

import click

from tfdeblend.config import DETECT_THRESHOLD


@click.command(name="run")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output FITS file. Stamps: HDUs COMPONENTS, RESIDUAL, CONSERVED, CATALOG, BLENDS. "
    "Images: MODEL, RESIDUAL (with the input's WCS), CATALOG. The primary header names the "
    "model and its peel.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(),
    help="Model directory (default: $TFDEBLEND_MODEL or the shipped tfdeblend_cpu).",
)
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Stamps per graph call.",
)
@click.option(
    "--preview",
    "preview_dir",
    type=click.Path(file_okay=False),
    help="Write PNGs into this folder: one per blend for stamps (input, components, residual, "
    "counts); image.png for an image (the galaxies marked by quality).",
)
@click.option(
    "--preview-count",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Stamps: previews for the first N blends.",
)
@click.option(
    "--bands",
    "file_bands",
    default=None,
    help="Images: the band of each input file (one file per band), or of each channel of a "
    "cube without a BANDS keyword, e.g. g,r,i. Default: the files' FILTER/BAND keywords.",
)
@click.option(
    "--mask-bits",
    default=None,
    help="Images: mask planes (names or bit numbers, e.g. BAD,SAT,NO_DATA or 0,1,8) that mark "
    "missing pixels. Default: BAD,SAT,CR,NO_DATA,SUSPECT when the mask names its planes "
    "(MP_* keywords), else any nonzero bit.",
)
@click.option(
    "--background",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Images: estimate and subtract the sky on a mesh of this many pixels (0: the image is "
    "already sky subtracted).",
)
@click.option(
    "--detect-threshold",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Images: detection threshold in noise sigmas per pixel of the filtered coadd "
    f"[default: {DETECT_THRESHOLD:g}, DES Y6's].",
)
@click.option(
    "--no-residual-detection",
    is_flag=True,
    help="Images: detect once only; by default the residual is searched again after the peel "
    "(galaxies a crowded field's first detection merged into brighter ones' segments).",
)
@click.option(
    "--catalog-format",
    type=click.Choice(["fits", "parquet", "csv"]),
    default="fits",
    show_default=True,
    help="Images: also write the catalog as OUT stem + .catalog.parquet or .csv.",
)
@click.option(
    "--footprints",
    is_flag=True,
    help="Images: also write FOOTPRINTS, each galaxy's model cut out to its bounding box.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Images: deblend the tiles on a local Dask cluster of N worker processes.",
)
@click.option(
    "--scheduler",
    default=None,
    help="Images: deblend the tiles on the Dask cluster at this scheduler address.",
)
@click.option(
    "--psf",
    multiple=True,
    help="For a model that takes the observing conditions: the PSF FWHM in arcsec, one per "
    "band (0.81,0.72,0.69) or one for all, or PSF images on the input's pixel grid: a FITS "
    "cube with the model's bands or one file per band in band order (repeat --psf). Default: "
    "the model's nominal PSF. The noise comes from the VARIANCE plane or the image itself.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(inputs, output, model_dir, batch_size, preview_dir, preview_count, file_bands, mask_bits,
        background, detect_threshold, no_residual_detection, catalog_format, footprints, workers,
        scheduler, psf, overwrite, quiet):
    """Deblend INPUTS: a FITS file of stamps (N, C, H, W), or a survey image: one cube
    (C, H, W) of any size with BANDS (and optional VARIANCE and MASK extensions), or one file
    per band in the LSST/HSC coadd layout (image, mask, variance HDUs).

    \b
    Examples:
      tfdeblend run blends.fits -o deblended.fits --preview previews/
      tfdeblend run field.fits -o field_out.fits --catalog-format parquet
      tfdeblend run calexp-g.fits calexp-r.fits calexp-i.fits -o out.fits --workers 2
    """
    from pathlib import Path

    from tfdeblend.errors import TfdeblendError
    from tfdeblend.run import deblend_kind

    image_only = {
        "--bands": file_bands, "--mask-bits": mask_bits, "--background": background or None,
        "--detect-threshold": detect_threshold, "--workers": workers, "--scheduler": scheduler,
        "--no-residual-detection": no_residual_detection or None,
        "--catalog-format": None if catalog_format == "fits" else catalog_format,
        "--footprints": footprints or None,
    }
    if deblend_kind(list(inputs), model_dir) == "stamps":
        used = [flag for flag, value in image_only.items() if value is not None]
        if used:
            raise TfdeblendError(f"{', '.join(used)} apply to images, not to a file of stamps")
        from tfdeblend.run import run_file, summary_line

        summary = run_file(
            inputs[0], output, model=model_dir, batch_size=batch_size, preview_dir=preview_dir,
            preview_count=preview_count, overwrite=overwrite, progress=not quiet, psf=psf,
        )
        if summary["note"]:
            click.echo(summary["note"])
        click.echo(summary_line(summary))
        if summary["previews"]:
            click.echo(f"Previews: {len(summary['previews'])} PNG(s) in {preview_dir}")
        return
    from tfdeblend.run import image_summary_line, run_image
    from tfdeblend.scene import SceneConfig

    scene = SceneConfig().replace(background=background, detect_threshold=detect_threshold,
                                  footprints=footprints or None,
                                  residual_detection=False if no_residual_detection else None)
    summary = run_image(
        list(inputs), output, model=model_dir, scene=scene, batch_size=batch_size,
        file_bands=file_bands, mask_bits=mask_bits.split(",") if mask_bits else None,
        catalog_format=catalog_format,
        preview_path=Path(preview_dir) / "image.png" if preview_dir else None,
        overwrite=overwrite, progress=not quiet, workers=workers, scheduler=scheduler, psf=psf,
    )
    if summary["note"]:
        click.echo(summary["note"])
    click.echo(image_summary_line(summary))
    if summary["preview"]:
        click.echo(f"Preview: {summary['preview']}")
