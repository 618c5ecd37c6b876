"""`tfdeblend export` (placeholder: replaced by the module's owner)."""

import click


@click.command(name="export")
def export() -> None:
    """Not implemented yet."""
    raise click.ClickException("tfdeblend export is not implemented yet")
