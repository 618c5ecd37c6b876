"""`tfdeblend catalog`: write the built-in CatSim-format catalog to a file."""

from __future__ import annotations

import click


@click.command(name="catalog")
@click.option(
    "--area",
    type=float,
    default=0.1,
    show_default=True,
    help="Area of the square patch (centred on ra = dec = 0), in deg^2.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--max-mag",
    type=float,
    default=26.5,
    show_default=True,
    help="Faintest i-band AB magnitude synthesized (at most 26.5).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Output catalog (FITS when it ends in .fits; BTK reads only .fits as FITS).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def catalog(area: float, seed: int, max_mag: float, out: str, overwrite: bool) -> None:
    """Synthesize a CatSim-format galaxy catalog and print its statistics.

    The catalog has the columns and units of LSST CatSim's OneDegSq.fits, so BTK's
    CatsimCatalog / CatsimGenerator draw it unchanged. The statistics of the i < 25.3 sample
    are printed next to the OneDegSq reference values.

    \b
    Example:
      tfdeblend catalog --area 0.1 --seed 1 --out cat.fits
    """
    from tfdeblend import catalog as catalog_lib
    from tfdeblend.utils import check_output_path

    check_output_path(out, overwrite)  # fail before the work, not after
    table = catalog_lib.synthesize_catalog(area_deg2=area, seed=seed, max_mag=max_mag)
    path = catalog_lib.write_catalog(table, out, overwrite=overwrite)
    stats = catalog_lib.catalog_statistics(table)
    click.echo(catalog_lib.format_statistics(stats))
    click.echo(f"Wrote {len(table)} galaxies to {path}")
