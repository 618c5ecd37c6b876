"""``tfdeblend residuals``: peel a simulated dataset and keep the labelled residuals."""

from __future__ import annotations

import click


@click.command(name="residuals")
@click.argument("source_dir", type=click.Path(file_okay=False))
@click.option(
    "--deblender",
    "deblender",
    required=True,
    type=click.Path(),
    help="The RDN: a run directory, a .keras file, or an exported model directory.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Output directory.")
@click.option(
    "--steps",
    default=2,
    show_default=True,
    type=click.IntRange(1, 5),
    help="Residuals per source stamp (after 1, 2, ... galaxies peeled).",
)
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of a galaxy that must be left in a residual for it to count.",
)
@click.option(
    "--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
    help="Stamps per RDN call.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def residuals(
    source_dir: str,
    deblender: str,
    out_dir: str,
    steps: int,
    threshold: float,
    batch_size: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Peel SOURCE_DIR (a simulated TFRecord dataset) with a trained deblender, without a
    classifier, and write every residual labelled with the number of true galaxies left in it.

    The output is a dataset of kind 'residuals' for classifier training, next to a
    classifier set, so that the classifier learns what the peel shows it:

    \b
      tfdeblend residuals data/deblender --deblender saved_models/tfdeblend_cpu --out data/res
      tfdeblend train --phase 1 --net classifier data/classifier data/res --out runs/vgg ...

    Rerunning the same command on an interrupted output finishes it.
    """
    from tfdeblend.training.residuals import mine_residuals

    summary = mine_residuals(
        source_dir,
        deblender,
        out_dir,
        steps=steps,
        threshold=threshold,
        batch_size=batch_size,
        overwrite=overwrite,
        progress=not quiet,
    )
    click.echo(f"Wrote residuals dataset {summary['path']}: {summary['count']} stamps")
    for step, counts in sorted(summary["labels"].items(), key=lambda kv: int(kv[0])):
        total = sum(counts.values()) or 1
        shares = ", ".join(
            f"{label} in {100 * n / total:.1f}%"
            for label, n in sorted(counts.items(), key=lambda kv: int(kv[0]))
        )
        click.echo(f"  after step {step}, galaxies left: {shares}")
