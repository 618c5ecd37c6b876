"""`tfdeblend simulate`: draw BTK blends into a TFRecord dataset or a FITS test set."""

from __future__ import annotations

import click


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
@click.option("--bands", default="g,r,i", show_default=True, help="LSST bands to draw, in order.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--max-shift",
    type=float,
    default=None,
    help="Largest shift of a galaxy centre from the stamp centre along x and y, arcsec "
    "(default 2.4, BTK's: a tenth of the 24\" stamp). Smaller values give closer pairs.",
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
def simulate(
    kind: str,
    out: str,
    n_gal: int | None,
    count: int | None,
    preset: str,
    fmt: str,
    bands: str,
    seed: int,
    max_shift: float | None,
    catalog_path: str | None,
    num_shards: int | None,
    shard_index: int | None,
    overwrite: bool,
    jobs: int | None,
    quiet: bool,
) -> None:
    """Simulate LSST blends of KIND (deblender, classifier or test) into --out.

    \b
    deblender   2-galaxy blends
    classifier  0..3 galaxies, balanced classes, half of them noiseless
    test        exactly --n-gal galaxies (default 2)

    Rerunning the same command on an incomplete dataset finishes it. A job array can write one
    dataset together: each task passes the same options plus --num-shards N --shard-index I.
    """
    from pathlib import Path

    from tfdeblend.config import parse_bands
    from tfdeblend.data import load_manifest, write_dataset
    from tfdeblend.errors import TfdeblendError
    from tfdeblend.simulate import SimConfig

    if catalog_path is not None:
        if not Path(catalog_path).is_file():
            raise TfdeblendError(f"catalog {catalog_path} does not exist")
        catalog_path = str(Path(catalog_path).resolve())
    config = SimConfig(
        kind=kind,
        count=count,
        n_gal=n_gal,
        bands=parse_bands(bands),
        seed=seed,
        preset=preset,
        catalog=catalog_path,
        **({} if max_shift is None else {"max_shift": max_shift}),
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
        click.echo(f"Wrote {config.count} {kind} stamps to {path}/blends.fits and truth.fits")
        return
    manifest = load_manifest(path)
    done = sum(bool(s["complete"]) for s in manifest["shards"])
    state = "complete" if manifest["complete"] else "incomplete: run the other shards"
    click.echo(
        f"Wrote {kind} dataset {path}: {done}/{len(manifest['shards'])} shards ({state}), "
        f"{config.count} examples, bands {','.join(config.bands)}"
    )
