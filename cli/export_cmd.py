"""``tfdeblend export``: write trained networks as a TF Serving SavedModel."""

from __future__ import annotations

import click
from tfdeblend.cli.options import peel_options


@click.command(name="export")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(),
    help="Model base directory NAME; the export goes to NAME/<version>.",
)
@click.option(
    "--deblender",
    "deblender_run",
    type=click.Path(),
    help="Take the deblender from this run directory (or an exported model directory).",
)
@click.option(
    "--classifier",
    "classifier_run",
    type=click.Path(),
    help="Take the classifier from this run directory (or an exported model directory).",
)
@click.option(
    "--version", type=click.IntRange(min=1), help="Integer version (default: the next free one)."
)
@peel_options
@click.option("--overwrite", is_flag=True, help="Replace an existing NAME/<version>.")
def export(run_dir, out_dir, deblender_run, classifier_run, version, peel, overwrite):
    """Export RUN_DIR's deblender and classifier as a SavedModel for TF Serving.

    RUN_DIR is a phase-2 run directory (deblender.keras + classifier.keras); --deblender and
    --classifier take either network from another run instead (RUN_DIR may then be omitted).
    """
    from tfdeblend.errors import TfdeblendError
    from tfdeblend.export import export_model

    if run_dir is None and (deblender_run is None or classifier_run is None):
        raise TfdeblendError("give RUN_DIR, or both --deblender and --classifier")
    path = export_model(
        run_dir,
        out_dir,
        version=version,
        deblender_run=deblender_run,
        classifier_run=classifier_run,
        peel=peel,
        overwrite=overwrite,
    )
    from tfdeblend.export import read_model_metadata

    signatures = read_model_metadata(path)[1]["signatures"]
    click.echo(f"Exported {path} (signatures {', '.join(signatures)}; peel: {peel.describe()})")
