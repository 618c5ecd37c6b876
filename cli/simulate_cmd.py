"""`tfdeblend simulate`: draw BTK blends into a TFRecord dataset or a FITS test set, or a whole
survey-like field with ground truth (kind ``field``)."""

from __future__ import annotations

import click

from tfdeblend.simulate import CONDITION_PRESETS

#: Options of the stamp kinds (deblender, classifier, test) and of kind 'field' only, by their
#: parameter names; the others (--out, --bands, --seed, --catalog, the observing conditions
#: --conditions, --survey, --psf-scale and --exposure-scale, --overwrite, --quiet) are shared.
STAMP_OPTIONS = {
    "n_gal": "--n-gal",
    "count": "--count",
    "preset": "--preset",
    "fmt": "--format",
    "max_shift": "--max-shift",
    "bright_fraction": "--bright-fraction",
    "bright_mag": "--bright-mag",
    "star_fraction": "--star-fraction",
    "num_shards": "--num-shards",
    "shard_index": "--shard-index",
    "jobs": "--jobs",
}
FIELD_OPTIONS = {
    "size": "--size",
    "bad_columns": "--bad-columns/--no-bad-columns",
    "saturate": "--saturate/--no-saturate",
    "per_band": "--per-band",
    "noiseless": "--noiseless",
    "stars": "--stars",
}


def parse_scale(text: str | None, flag: str) -> float | tuple[float, float] | None:
    """``"1.5"`` -> 1.5, ``"0.1:1"`` -> (0.1, 1.0); ``None`` stays ``None``."""
    from tfdeblend.errors import TfdeblendError

    if text is None:
        return None
    parts = str(text).split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise TfdeblendError(f"{flag} must be a number or a range lo:hi, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option ``name`` on the command line (or through the environment)."""
    source = ctx.get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _refuse_foreign(ctx: click.Context, kind: str) -> None:
    """One-line error for options that do not apply to ``kind``."""
    from tfdeblend.errors import TfdeblendError

    foreign = FIELD_OPTIONS if kind != "field" else STAMP_OPTIONS
    given = [flag for name, flag in foreign.items() if _given(ctx, name)]
    if given:
        applies = "only to kind 'field'" if kind != "field" else "only to the stamp kinds"
        raise TfdeblendError(f"{', '.join(given)} applies {applies}, not to kind {kind!r}")


@click.command(name="simulate")
@click.argument("kind", metavar="KIND")
@click.option("--out", "out", required=True, type=click.Path(), help="Output directory.")
@click.option(
    "--n-gal", type=int, default=None, help="Galaxies per blend (kind 'test'; default 2)."
)
@click.option("--count", type=int, default=None, help="Number of examples (overrides the preset).")
@click.option(
    "--preset",
    type=click.Choice(["paper", "cpu"]),
    default="cpu",
    show_default=True,
    help="Dataset sizes: the paper's, or ones a 2-core CPU simulates in minutes.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tfrecord", "fits"]),
    default="tfrecord",
    show_default=True,
    help="Sharded GZIP TFRecords + manifest, or blends.fits + truth.fits.",
)
@click.option("--bands", default="g,r,i", show_default=True, help="Bands to draw, in order.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--max-shift",
    type=float,
    default=None,
    help="Largest shift of a galaxy centre from the stamp centre along x and y, arcsec "
    "(default 2.4, BTK's: a tenth of the 24\" stamp). Smaller values give closer pairs.",
)
@click.option(
    "--conditions",
    type=click.Choice(list(CONDITION_PRESETS)),
    default=None,
    help="Observing conditions: nominal (LSST 10-year depth, BTK's PSF; the default), psf1.5 "
    "(PSF FWHM x1.5), year1 (LSST exposure x0.1), hsc (HSC's pixels, PSF and depth). "
    "--survey, --psf-scale and --exposure-scale override the preset's values.",
)
@click.option(
    "--psf-scale",
    default=None,
    help="Multiply each band's atmospheric PSF FWHM by this; lo:hi samples it uniformly per "
    "stamp (default 1; a field takes one number).",
)
@click.option(
    "--exposure-scale",
    default=None,
    help="Multiply each band's full exposure time by this (0.1: LSST year 1); lo:hi samples it "
    "log-uniformly per stamp (default 1; a field takes one number).",
)
@click.option(
    "--bright-fraction",
    type=float,
    default=None,
    help="Share of galaxies drawn from those with i <= --bright-mag (default 0: all from the "
    "i <= 25.3 sample).",
)
@click.option(
    "--bright-mag",
    type=float,
    default=None,
    help="i-band magnitude limit of the galaxies --bright-fraction draws (default 20).",
)
@click.option(
    "--star-fraction",
    type=float,
    default=None,
    help="Share of the sources that are stars instead of galaxies (default 0): point sources "
    "with i uniform from 15 to 25.3 and stellar colours.",
)
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(),
    default=None,
    help="CatSim catalog (FITS or text); default: the built-in synthesized catalog.",
)
@click.option("--num-shards", type=int, default=None, help="TFRecord shards (default count/1000).")
@click.option("--shard-index", type=int, default=None, help="Write only this shard (job arrays).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset (or shard).")
@click.option("--jobs", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--size", type=int, default=512, show_default=True, help="Field side, pixels (field)."
)
@click.option(
    "--survey",
    default=None,
    help="Survey whose pixel scale, PSF, depth and sky are used: LSST, HSC, ... [default: LSST, "
    "or the --conditions preset's]. Bands keep their names (g,r,i).",
)
@click.option(
    "--bad-columns/--no-bad-columns",
    default=True,
    show_default=True,
    help="One bad column per band, flagged BAD in the mask (field).",
)
@click.option(
    "--saturate/--no-saturate",
    default=True,
    show_default=True,
    help="Saturate the brightest galaxy's core: NaN, flagged SAT (field).",
)
@click.option(
    "--per-band", is_flag=True, help="Also write field_<band>.fits, LSST/HSC coadd layout (field)."
)
@click.option("--noiseless", is_flag=True, help="No noise: the noiseless sum of galaxies (field).")
@click.option(
    "--stars", type=float, default=0.0, show_default=True,
    help="Stars per arcmin^2 brighter than the faintest magnitude drawn, i = 15 and fainter "
    "(field; about 1-3 at high Galactic latitude).",
)
@click.pass_context
def simulate(
    ctx: click.Context,
    kind: str,
    out: str,
    n_gal: int | None,
    count: int | None,
    preset: str,
    fmt: str,
    bands: str,
    seed: int,
    max_shift: float | None,
    conditions: str | None,
    psf_scale: str | None,
    exposure_scale: str | None,
    bright_fraction: float | None,
    bright_mag: float | None,
    star_fraction: float | None,
    catalog_path: str | None,
    num_shards: int | None,
    shard_index: int | None,
    overwrite: bool,
    jobs: int | None,
    quiet: bool,
    size: int,
    survey: str | None,
    bad_columns: bool,
    saturate: bool,
    per_band: bool,
    noiseless: bool,
    stars: float,
) -> None:
    """Simulate blends of KIND (deblender, classifier or test; LSST unless --survey or
    --conditions say otherwise) into --out, or a whole field (KIND field).

    \b
    deblender   2-galaxy blends
    classifier  0..3 galaxies, balanced classes, half of them noiseless
    test        exactly --n-gal galaxies (default 2)
    field       a --size x --size survey-like field of every catalog galaxy
                (i <= 26.5) with noise, mask, variance, WCS and truth.fits

    Stamps are drawn at LSST 10-year depth with BTK's PSF unless --conditions, --survey,
    --psf-scale or --exposure-scale say otherwise; each stamp's conditions are stored with it.

    Rerunning the same command on an incomplete dataset finishes it. A job array can write one
    dataset together: each task passes the same options plus --num-shards N --shard-index I.
    """
    from pathlib import Path

    from tfdeblend.errors import TfdeblendError
    from tfdeblend.simulate import KINDS

    if kind not in (*KINDS, "field"):
        raise TfdeblendError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}, field")
    _refuse_foreign(ctx, kind)
    if catalog_path is not None:
        if not Path(catalog_path).is_file():
            raise TfdeblendError(f"catalog {catalog_path} does not exist")
        catalog_path = str(Path(catalog_path).resolve())
    # the observing conditions: the --conditions preset, then the options given
    chosen = dict(CONDITION_PRESETS[conditions or "nominal"])
    given = {
        "survey": survey,
        "psf_scale": parse_scale(psf_scale, "--psf-scale"),
        "exposure_scale": parse_scale(exposure_scale, "--exposure-scale"),
    }
    chosen.update({k: v for k, v in given.items() if v is not None})
    if kind == "field":
        from astropy.io import fits

        from tfdeblend.field import FieldConfig, simulate_field

        field_config = FieldConfig(
            size=size,
            bands=bands,
            seed=seed,
            **chosen,
            catalog=catalog_path,
            noise=not noiseless,
            bad_columns=bad_columns,
            saturate=saturate,
            stars=stars,
            per_band=per_band,
        )
        path = simulate_field(field_config, out, overwrite=overwrite, progress=not quiet)
        truth = fits.getheader(path / "truth.fits", "TRUTH")
        star_note = f", {truth['NSTAR']} stars (field and margin)" if stars else ""
        click.echo(
            f"Wrote field {path}: {size}x{size} px, {field_config.survey} "
            f"{','.join(field_config.bands)} (PSF x{field_config.psf_scale:g}, exposure "
            f"x{field_config.exposure_scale:g}), {truth['NGAL']} galaxies ({truth['NINSIDE']} "
            f"centred inside){star_note}: field.fits, truth.fits{', field_<band>.fits' if per_band else ''}"
        )
        return

    from tfdeblend.config import parse_bands
    from tfdeblend.data import load_manifest, write_dataset
    from tfdeblend.simulate import SimConfig

    given = {
        "bright_fraction": bright_fraction,
        "bright_mag": bright_mag,
        "star_fraction": star_fraction,
        "max_shift": max_shift,
    }
    chosen.update({k: v for k, v in given.items() if v is not None})
    config = SimConfig(
        kind=kind,
        count=count,
        n_gal=n_gal,
        bands=parse_bands(bands),
        seed=seed,
        preset=preset,
        catalog=catalog_path,
        **chosen,
    )
    path = write_dataset(
        config,
        out,
        fmt=fmt,
        num_shards=num_shards,
        shard_index=shard_index,
        overwrite=overwrite,
        jobs=jobs,
        progress=not quiet,
    )
    if fmt == "fits":
        click.echo(f"Wrote {config.count} {kind} stamps to {path}/blends.fits and truth.fits "
                   f"({config.describe_conditions()})")
        return
    manifest = load_manifest(path)
    done = sum(bool(s["complete"]) for s in manifest["shards"])
    state = "complete" if manifest["complete"] else "incomplete: run the other shards"
    click.echo(
        f"Wrote {kind} dataset {path}: {done}/{len(manifest['shards'])} shards ({state}), "
        f"{config.count} examples, bands {','.join(config.bands)} "
        f"({config.describe_conditions()})"
    )
