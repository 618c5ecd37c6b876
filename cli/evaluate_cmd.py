"""``tfdeblend evaluate``: the paper's tables and figures, against sep / Source Extractor."""

from __future__ import annotations

from pathlib import Path

import click

from tfdeblend.evaluate.baselines import BASELINES


@click.command(name="evaluate")
@click.argument("testset_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Report directory (report.md, metrics.json, PNG figures).")
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help="Exported model directory [default: the shipped model / $TFDEBLEND_MODEL].")
@click.option("--baseline", "baselines", multiple=True,
              type=click.Choice(list(BASELINES)),
              help="Baseline(s) to compare with; repeat the option. [default: sep]")
@click.option("--no-baseline", is_flag=True, help="Compare with no baseline.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Blends per model call.")
@click.option("--max-sep", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Matching radius in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(testset_dirs, out_dir, model_dir, baselines, no_baseline, batch_size, max_sep,
             overwrite, quiet) -> None:
    """Evaluate a model on TESTSET_DIR(s) (blends.fits + truth.fits, or TFRecords), or on
    simulated fields (directories of `tfdeblend simulate field`: field.fits + truth.fits).

    Stamp test sets: writes Table I (quality fractions), Table II (PSNR/SSIM), flux and moment
    recovery, the baselines side by side and the paper's numbers to OUT/report.md,
    OUT/metrics.json and PNG figures. Test sets drawn under different observing conditions
    (tfdeblend simulate --conditions ...) also get the conditions grid, printed here too: one
    row per test set with tfdeblend and the baselines side by side, and OUT/conditions.png.

    Fields: deblends each whole field once (OUT/<field>_tfdeblend.fits), runs the baselines on
    the same image, matches every catalog to the true galaxies within 1 arcsec and writes
    completeness, purity, flux and pull metrics against the targets to OUT/report.md,
    OUT/metrics.json and PNG figures. Stamp test sets and fields go in separate reports;
    --max-sep applies to stamps only.

    \b
    Examples:
      tfdeblend evaluate data/test2 data/test3 --out report/ --baseline sep
      tfdeblend evaluate data/test2 data/test2_year1 data/test2_hsc --out grid/
      tfdeblend simulate field --size 512 --seed 7 --out data/field7
      tfdeblend evaluate data/field7 --out field_report/ --baseline sep \\
          --baseline source-extractor
    """
    from tfdeblend.evaluate.pipeline import evaluate as run_evaluation
    from tfdeblend.export import default_model_dir

    if no_baseline and baselines:
        raise click.UsageError("--no-baseline and --baseline exclude each other")
    chosen = () if no_baseline else (tuple(baselines) or ("sep",))
    model = model_dir if model_dir is not None else default_model_dir()
    results = run_evaluation(list(testset_dirs), model, out_dir, baselines=chosen,
                             batch_size=batch_size, max_sep=max_sep, overwrite=overwrite,
                             progress=not quiet)
    for note in results["notes"]:
        click.echo(f"Note: {note}", err=True)
    for name, entry in results.get("fields", {}).items():
        parts = []
        for method, m in entry["methods"].items():
            parts.append(f"{method} completeness {m['completeness']['value']:.3f}, purity "
                         f"{m['purity']['value']:.3f}")
        click.echo(f"{name}: {entry['field']['n_gold']} true galaxies with i < 25.3; "
                   + "; ".join(parts))
    for name, ts in results.get("testsets", {}).items():
        q = ts["table1_quality"]["all"]
        click.echo(f"{name}: {ts['n_stamps']} stamps; quality high/medium/low "
                   f"{100 * q['high']:.1f}/{100 * q['medium']:.1f}/{100 * q['low']:.1f} %")
    if results.get("conditions_grid"):
        from tfdeblend.evaluate.report import render_conditions_grid

        click.echo("")
        click.echo("\n".join(render_conditions_grid(results)))
    click.echo(f"Wrote {Path(out_dir) / 'report.md'}")
