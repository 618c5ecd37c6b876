"""``tfdeblend export``: write trained networks as a TF Serving SavedModel."""

from __future__ import annotations

import click


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
@click.option(
    "--max-iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Most galaxies peeled per blend (default 6).",
)
@click.option(
    "--refine-steps",
    type=click.IntRange(min=0),
    default=None,
    help="RDN refinement sweeps after the peel: each galaxy again from the blend minus the "
    "others (default 2; 0 = the paper's peel).",
)
@click.option(
    "--count-views",
    type=click.Choice(["1", "2", "4", "8"]),
    default=None,
    help="Average the classifier over this many rotations/flips of each image (default 8; "
    "1 = the paper's count).",
)
@click.option(
    "--split/--no-split",
    default=True,
    show_default=True,
    help="After the peel, split a component the classifier counts as two or more galaxies "
    "(--no-split = the paper's peel).",
)
@click.option(
    "--detect-snr",
    type=click.FloatRange(min=0.0),
    default=None,
    help="After the sweeps, add a galaxy where the residual still holds a source above this "
    "matched-filter S/N, away from the galaxies found (default 10; 0 = off, the paper's peel).",
)
@click.option(
    "--detect-window",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Radius in pixels of the disc around the residual's peak that the detection's RDN "
    "sees (default 8; 0 = the whole residual).",
)
@click.option(
    "--merge-radius",
    type=click.FloatRange(min=0.0),
    default=None,
    help="After the peel, merge a galaxy into a brighter one whose centroid lies closer than "
    "this many pixels (default 3; 0 = off, the paper's peel).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing NAME/<version>.")
def export(
    run_dir, out_dir, deblender_run, classifier_run, version, max_iterations, refine_steps,
    count_views, split, detect_snr, detect_window, merge_radius, overwrite,
):
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
        max_iterations=max_iterations,
        refine_steps=refine_steps,
        count_views=int(count_views) if count_views else None,
        split=split,
        detect_snr=detect_snr,
        detect_window=detect_window,
        merge_radius=merge_radius,
        overwrite=overwrite,
    )
    click.echo(f"Exported {path} (signatures serving_default, deblend_one, count)")
