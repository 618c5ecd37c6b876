"""``tfdeblend run``: deblend a FITS file of blend stamps with a SavedModel."""

from __future__ import annotations

import click


@click.command(name="run")
@click.argument("blends", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output FITS file (HDUs COMPONENTS, RESIDUAL, CONSERVED, CATALOG, BLENDS; the "
    "primary header names the model and its peel).",
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
    help="Blends per graph call.",
)
@click.option(
    "--preview",
    "preview_dir",
    type=click.Path(file_okay=False),
    help="Write PNG panels (input, components, residual, counts) into this folder.",
)
@click.option(
    "--preview-count",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Previews for the first N blends.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(blends, output, model_dir, batch_size, preview_dir, preview_count, overwrite, quiet):
    """Deblend every stamp of BLENDS (FITS, (N, C, H, W) with a BANDS header)."""
    from tfdeblend.run import run_file, summary_line

    summary = run_file(
        blends,
        output,
        model=model_dir,
        batch_size=batch_size,
        preview_dir=preview_dir,
        preview_count=preview_count,
        overwrite=overwrite,
        progress=not quiet,
    )
    click.echo(summary_line(summary))
    if summary["previews"]:
        click.echo(f"Previews: {len(summary['previews'])} PNG(s) in {preview_dir}")
