"""`tfdeblend run` (placeholder: replaced by the module's owner)."""

import click


@click.command(name="run")
def run() -> None:
    """Not implemented yet."""
    raise click.ClickException("tfdeblend run is not implemented yet")
