"""`tfdeblend simulate` (placeholder: replaced by the module's owner)."""

import click


@click.command(name="simulate")
def simulate() -> None:
    """Not implemented yet."""
    raise click.ClickException("tfdeblend simulate is not implemented yet")
