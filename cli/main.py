"""Entry point of the ``tfdeblend`` command.

Each sub-command lives in its own module and imports the library lazily, so ``tfdeblend --help``
is fast and does not import TensorFlow. User errors (:class:`tfdeblend.errors.TfdeblendError`)
become one ``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import importlib
import io
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
        except OSError as err:  # a file system refusal the library did not word itself
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            click.echo(f"Error: {err.strerror or err}{where}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


class QuietNativeStderr:
    """Send what native libraries write to file descriptor 2 to ``/dev/null``.

    TensorFlow's C++ core logs through absl before any setting of ours can reach it (the
    ``WARNING: All log messages before absl::InitializeLog()`` and ``I0000``/``E0000`` lines), so
    ``TF_CPP_MIN_LOG_LEVEL`` alone does not silence it. Python's ``sys.stderr`` (our messages,
    progress bars, warnings, tracebacks) moves to a duplicate of the terminal's descriptor and
    stays visible. A no-op when ``sys.stderr`` is not descriptor 2 (e.g. under Click's test
    runner).
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._stream = None

    def __enter__(self) -> QuietNativeStderr:
        try:
            if sys.stderr.fileno() != 2:
                return self
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return self
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._stream = sys.stderr
        sys.stderr = open(  # noqa: SIM115  (closed in __exit__)
            self._saved, "w", buffering=1, encoding=self._stream.encoding or "utf-8",
            errors="backslashreplace", closefd=False,
        )
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        sys.stderr.close()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        sys.stderr = self._stream
        self._saved = None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfdeblend")
@click.option(
    "--verbose", is_flag=True,
    help="Show TensorFlow's own log lines (hidden by default; use it when a command fails "
    "without a message).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """tfdeblend: separate overlapping galaxies with Residual Dense Networks.

    \b
    Deblend with the shipped model:
      tfdeblend run blends.fits -o deblended.fits --preview previews/

    \b
    Train and evaluate a model on a CPU (the shipped model's recipe, with its
    counts and seeds, is scripts/reproduce_default_model.sh; --preset cpu
    trains the CPU-sized networks, the default is the paper's GPU-sized ones):
      tfdeblend simulate deblender --out data/deblender --preset cpu --seed 61
      tfdeblend simulate classifier --out data/classifier --preset cpu --seed 63
      tfdeblend simulate test --n-gal 2 --format fits --out data/test2 --seed 3
      tfdeblend train --phase 1 --net deblender data/deblender --out runs/rdn \\
          --preset cpu --config configs/budget2h_deblender.yaml
      tfdeblend train --phase 1 --net classifier data/classifier --out runs/vgg \\
          --preset cpu --config configs/budget2h_classifier.yaml
      tfdeblend train --phase 2 data/deblender --deblender runs/rdn \\
          --classifier runs/vgg --out runs/joint --config configs/cpu_joint_v2.yaml
      tfdeblend export runs/joint --out saved_models/mymodel
      tfdeblend evaluate data/test2 --out report/ --model saved_models/mymodel
    """
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        ctx.with_resource(QuietNativeStderr())


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tfdeblend")


if __name__ == "__main__":
    sys.exit(main())
