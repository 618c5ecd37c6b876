"""`tfdeblend train` (placeholder: replaced by the module's owner)."""

import click


@click.command(name="train")
def train() -> None:
    """Not implemented yet."""
    raise click.ClickException("tfdeblend train is not implemented yet")
