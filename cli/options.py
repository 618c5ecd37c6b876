"""Click options shared by several commands, built from the library's configuration objects.

:func:`peel_options` turns every field of :class:`tfdeblend.peel_config.PeelConfig` into a
``--flag`` (its help, type and limits come from the field), plus ``--peel PRESET``; the command
receives one ready :class:`PeelConfig` as ``peel``. A new peel option therefore appears on the
command line without touching the CLI.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import click

from tfdeblend.peel_config import PEEL_PRESETS, PeelConfig


def _click_type(kind: type, meta: dict):
    if "choices" in meta:
        return click.Choice([str(c) for c in meta["choices"]])
    if kind is int:
        return click.IntRange(min=meta.get("minimum"), max=meta.get("maximum"))
    return click.FloatRange(min=meta.get("minimum"), max=meta.get("maximum"))


def peel_options(command):
    """Add ``--peel`` and one flag per :class:`PeelConfig` field; pass ``peel=PeelConfig``."""
    hints = typing.get_type_hints(PeelConfig)
    fields = dataclasses.fields(PeelConfig)
    shipped = PEEL_PRESETS["shipped"]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        preset = kwargs.pop("peel_preset")
        changes = {}
        for field in fields:
            value = kwargs.pop(field.name)
            if value is not None:
                changes[field.name] = hints[field.name](value)
        return command(*args, peel=PeelConfig.preset(preset).replace(**changes), **kwargs)

    for field in reversed(fields):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(shipped, field.name)
        help_text = f"{field.metadata['help']} [shipped peel: {default}]"
        if hints[field.name] is bool:
            option = click.option(
                f"{flag}/--no-{flag[2:]}", field.name, default=None, help=help_text
            )
        else:
            option = click.option(
                flag, field.name, type=_click_type(hints[field.name], field.metadata),
                default=None, help=help_text,
            )
        wrapper = option(wrapper)
    return click.option(
        "--peel", "peel_preset", type=click.Choice(list(PEEL_PRESETS)), default="shipped",
        show_default=True,
        help="Start from this peel (the shipped model's, or the paper's exactly); the options "
        "below change it.",
    )(wrapper)
