"""`tfdeblend catalog` (placeholder: replaced by the module's owner)."""

import click


@click.command(name="catalog")
def catalog() -> None:
    """Not implemented yet."""
    raise click.ClickException("tfdeblend catalog is not implemented yet")
