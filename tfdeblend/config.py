"""Configuration dataclasses and their YAML form.

Every configuration in tfdeblend is a dataclass that inherits :class:`YamlConfig`, so it can be
written next to a dataset, checkpoint or SavedModel and read back exactly. A model therefore always
knows the bands, stamp size, normalization and preset it was trained with.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tfdeblend.errors import TfdeblendError

T = TypeVar("T", bound="YamlConfig")

#: Bands drawn by default (the paper's choice).
DEFAULT_BANDS: tuple[str, ...] = ("g", "r", "i")
#: Side of the stamps BTK draws, pixels.
RAW_STAMP_SIZE: int = 120
#: Side of the central crop that the networks see, pixels.
STAMP_SIZE: int = 80
#: LSST pixel scale, arcsec per pixel.
LSST_PIXEL_SCALE: float = 0.2
#: Faintest i-band AB magnitude drawn (LSST gold sample).
MAX_MAG: float = 25.3
#: Most galaxies a classifier can count (classes 0..MAX_COUNT).
MAX_COUNT: int = 3
#: 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian sigma.
MAD_TO_SIGMA: float = 1.4826
#: Whole images: the detection threshold (``SceneConfig.detect_threshold``), noise sigmas per
#: pixel of the filtered coadd; DES Y6's 0.8 (the ``sep`` baseline's), about S/N 4 of the
#: filtered image. Here so that the CLI's help can name it without importing the scene.
DETECT_THRESHOLD: float = 0.8
#: Single-pixel outliers (:func:`tfdeblend.normalize.outlier_mask`): a pixel that rises above its
#: third brightest neighbour by more than this many noise sigmas...
OUTLIER_SNR: float = 10.0
#: ...and by more than this many times that neighbour (a PSF-convolved source: at most about 1).
OUTLIER_SHARPNESS: float = 2.0
#: Quality labels of the iterative peel (the paper's Table I), by their integer code.
QUALITY_NAMES: dict[int, str] = {2: "high", 1: "medium", 0: "low"}


class YamlConfig:
    """Base class of the configuration dataclasses: dataclass <-> dict <-> YAML with unknown-key
    checking. Not a dataclass itself, so that subclasses may be frozen or not."""

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (tuples become lists) suitable for YAML/JSON."""

        def plain(value: Any) -> Any:
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return plain(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        """Build from a dict, rejecting unknown keys and values of the wrong type.

        Lists become tuples where the field is a tuple, and strings that read as numbers become
        floats where the field is a float (PyYAML reads ``1e-4``, without a dot, as a string).
        """
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise TfdeblendError(
                f"unknown {cls.__name__} option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(fields))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {name: _checked(name, value, hints[name]) for name, value in data.items()}
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        """Return a copy with ``changes`` applied (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the configuration as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls: type[T], path: str | os.PathLike) -> T:
        """Read a configuration written by :meth:`to_yaml` (or by hand)."""
        return cls.from_dict(read_yaml_options(path))


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` for a field annotated ``hint`` (see :meth:`YamlConfig.from_dict`)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if option is float and not isinstance(value, bool):
            if isinstance(value, numbers.Real):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        if option is str and isinstance(value, str):
            return value
    expected = " or ".join(
        "null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options
    )
    raise TfdeblendError(f"option {name} must be {expected}, not {value!r}")


def read_yaml_options(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of options in a YAML configuration file (``{}`` for an empty file).

    Raises:
        TfdeblendError: a missing file, invalid YAML, or YAML that is not a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as err:
        raise TfdeblendError(f"config file {path} does not exist") from err
    except IsADirectoryError as err:
        raise TfdeblendError(f"config file {path} is a directory") from err
    except UnicodeDecodeError as err:
        raise TfdeblendError(f"config file {path} is not a text file") from err
    except yaml.YAMLError as err:
        raise TfdeblendError(f"config file {path} is not valid YAML: {err}") from err
    if data is not None and not isinstance(data, dict):
        raise TfdeblendError(f"config file {path} must hold a mapping of options")
    return dict(data or {})


def parse_bands(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Parse ``"g,r,i"`` into ``("g", "r", "i")``, checking against the LSST bands.

    Raises:
        TfdeblendError: an unknown or repeated band, or an empty list.
    """
    bands = tuple(b.strip() for b in text.split(",")) if isinstance(text, str) else tuple(text)
    bands = tuple(b for b in bands if b)
    known = ("u", "g", "r", "i", "z", "y")
    if not bands:
        raise TfdeblendError("no bands given; use e.g. --bands g,r,i")
    bad = [b for b in bands if b not in known]
    if bad:
        raise TfdeblendError(f"unknown band(s) {', '.join(bad)}; LSST bands are {','.join(known)}")
    if len(set(bands)) != len(bands):
        raise TfdeblendError(f"repeated band in {','.join(bands)}")
    return bands


def band_name(value) -> str | None:
    """The band a ``FILTER``/``BAND`` keyword or a ``BANDS`` entry names: ``i``, ``I``,
    ``HSC-I``, ``i_01``, ``HSC-R2``... (``None`` if none)."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"(?:hsc-|lsst-|lsst_|des-)?([ugrizy])(?:\d*|[_.-].*)", text)
    return match.group(1) if match else None


def parse_band_keyword(text) -> tuple[str, ...]:
    """A ``BANDS`` header keyword's bands, each entry read as a filter keyword is
    (:func:`band_name`: ``'G, R, I'``, ``'HSC-G,HSC-R,HSC-I'``), then :func:`parse_bands`."""
    return parse_bands([band_name(b) or b.strip() for b in str(text).split(",") if b.strip()])
