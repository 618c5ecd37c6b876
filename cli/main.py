"""Entry point of the ``tfdeblend`` command.

Each sub-command lives in its own module and imports the library lazily, so ``tfdeblend --help``
is fast and does not import TensorFlow. User errors (:class:`tfdeblend.errors.TfdeblendError`)
become one ``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from tfdeblend import __version__

#: sub-command name -> "module:attribute" inside tfdeblend.cli
COMMANDS = {
    "catalog": "catalog_cmd:catalog",
    "simulate": "simulate_cmd:simulate",
    "residuals": "residuals_cmd:residuals",
    "train": "train_cmd:train",
    "export": "export_cmd:export",
    "run": "run_cmd:run",
    "evaluate": "evaluate_cmd:evaluate",
}


class LazyGroup(click.Group):
    """A Click group that imports each sub-command's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name].split(":")
        module = importlib.import_module(f"tfdeblend.cli.{module_name}")
        return getattr(module, attribute)

    def invoke(self, ctx: click.Context):
        from tfdeblend.errors import TfdeblendError

        try:
            return super().invoke(ctx)
        except TfdeblendError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfdeblend")
def cli() -> None:
    """tfdeblend: separate overlapping galaxies with Residual Dense Networks.

    \b
    Typical sequence:
      tfdeblend catalog --area 0.1 --seed 1 --out cat.fits
      tfdeblend simulate deblender --out data/deblender --preset cpu
      tfdeblend train --phase 1 --net deblender data/deblender --out runs/rdn
      tfdeblend export runs/joint --out saved_models/mymodel
      tfdeblend run blends.fits -o deblended.fits
      tfdeblend evaluate data/test --out report/
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tfdeblend")


if __name__ == "__main__":
    sys.exit(main())
