"""The one configuration of the iterative peel: :class:`PeelConfig`.

Every option of the peel lives here once, with its default, its check, its FITS header card and
its command-line help. :class:`tfdeblend.deblend.Peeler` runs it, :func:`tfdeblend.export.export_model`
stores it in the model's metadata, :class:`tfdeblend.export.DeblendModel` reads it back, the FITS
writer puts its cards in the output's primary header, and the CLI builds its ``--flags`` from
its fields (``tfdeblend.cli.options.peel_options``). Adding a step after the peel means adding a
field here and the step in :mod:`tfdeblend.deblend`; nothing else.

This module does not import TensorFlow, so options are checked before any network is loaded.

Presets (:data:`PEEL_PRESETS`):

- ``shipped`` (the defaults): the peel exported with the shipped model: counts averaged over the
  8 rotations/flips where the single view is unsure (top probability below 0.8), a count of 3
  made e times less likely than the classifier's balanced training classes say, a merged
  component split, a component with two peaks over 10 px apart cut in two, 2 refinement sweeps, the residual detection at S/N 10 within an 8 px window,
  and components closer than 3 px merged;
- ``paper``: Wang et al. (2021)'s peel exactly: count, deblend the brightest, subtract, repeat.

Example:
    >>> config = PeelConfig.preset("paper")
    >>> config.refine_steps, config.split
    (0, False)
    >>> PeelConfig().replace(merge_radius=0.0).merge_radius
    0.0
    >>> PeelConfig(count_views=3)
    Traceback (most recent call last):
    ...
    tfdeblend.errors.TfdeblendError: count_views must be one of 1, 2, 4, 8, not 3
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from tfdeblend.config import YamlConfig
from tfdeblend.errors import TfdeblendError

#: Allowed numbers of views (rotations/flips) the classifier's logits are averaged over.
COUNT_VIEWS: tuple[int, ...] = (1, 2, 4, 8)
#: The per-blend counts the steps after the peel report (peel outputs of that name; 0 for a
#: model exported before the step existed).
POST_PEEL_COUNTS: tuple[str, ...] = ("split", "recovered", "merged", "pruned")


def _option(default: Any, card: str, comment: str, help: str, **checks: Any) -> Any:
    """A :class:`PeelConfig` field: default, FITS card and comment, CLI help and its checks.

    ``checks``: ``minimum`` (inclusive), ``choices`` (allowed values) and ``off`` (the value that
    turns the step off, which models exported before the step existed take).
    """
    return dataclasses.field(
        default=default,
        metadata={"card": card, "comment": comment, "help": help, **checks},
    )


@dataclasses.dataclass(frozen=True)
class PeelConfig(YamlConfig):
    """How the iterative peel runs (see :mod:`tfdeblend.deblend` for what each step does).

    Attributes:
        max_iterations: ``K``, the most components peeled from one blend.
        count_views: the classifier's logits are averaged over this many rotations/flips of each
            image (1, 2, 4 or 8; 1 = the paper).
        view_confidence: average the views only for the images whose single view's top
            probability is below this (0: always).
        prior_three: added to the classifier's logit of a count of 3 (a log prior ratio
            against the balanced classes it was trained on; 0 = the paper).
        split: after the peel, split a component the classifier counts as two or more galaxies.
        split_distance: then cut in two a component whose model holds a second peak farther than
            this many pixels from its brightest, with a valley between (0 = off).
        refine_steps: RDN refinement sweeps after the peel: each galaxy estimated again from the
            blend minus the others (0 = the paper).
        detect_snr: after the sweeps, add a component where the residual still holds a source
            above this matched-filter S/N (0 = off).
        model_error: the noise of the residual detection, and of the split's test that the
            part split off is a galaxy, also holds this fraction of the components' models
            (their own error; 0 = sky noise only).
        detect_window: radius (pixels) of the disc around the residual's peak that the
            detection's RDN sees (0 = the whole residual).
        merge_radius: merge a component into an earlier (brighter) one whose centroid lies
            closer than this many pixels (0 = off).
        keep_snr: last, a component after the first is kept only where it peaks above this
            matched-filter S/N with ``model_error`` of the models counted as noise; the others
            are given back to the residual (0 = off).
    """

    max_iterations: int = _option(
        6, "MAXITER", "K, most components per blend",
        "Most galaxies peeled per blend.", minimum=1,
    )
    count_views: int = _option(
        8, "NVIEWS", "rotations/flips averaged by the classifier",
        "Average the classifier over this many rotations/flips of each image (1 = the paper).",
        choices=COUNT_VIEWS, off=1,
    )
    view_confidence: float = _option(
        0.8, "VIEWCONF", "views averaged only below this top probability",
        "Average the views only for images whose single view's top class probability is below "
        "this (0 = always; it saves most of the classifier's time).",
        minimum=0.0, maximum=1.0, off=0.0,
    )
    prior_three: float = _option(
        -1.0, "PRIOR3", "added to the classifier's logit of a count of 3",
        "Added to the classifier's logit of a count of 3: a log prior, the classifier having "
        "been trained on as many images of 3 galaxies as of 0, 1 or 2 (-1 makes a count of 3 "
        "e = 2.7 times less likely; 0 = as trained).",
        off=0.0,
    )
    split: bool = _option(
        True, "SPLIT", "merged components split after the peel",
        "After the peel, split a component the classifier counts as two or more galaxies.",
        off=False,
    )
    split_distance: float = _option(
        10.0, "SPLITDST", "2 peaks this far apart: cut in two, px (0 off)",
        "After the split, cut in two a galaxy whose model holds a second peak farther than this "
        "many pixels from its brightest, with a valley between (two separated galaxies the RDN "
        "returned as one; 0 = off).",
        minimum=0.0, off=0.0,
    )
    refine_steps: int = _option(
        2, "REFINE", "RDN refinement sweeps after the peel",
        "RDN refinement sweeps after the peel: each galaxy again from the blend minus the others "
        "(0 = the paper).",
        minimum=0, off=0,
    )
    detect_snr: float = _option(
        10.0, "DETECTSN", "residual detection S/N after the peel (0 off)",
        "After the sweeps, add a galaxy where the residual still holds a source above this "
        "matched-filter S/N, away from the galaxies found (0 = off).",
        minimum=0.0, off=0.0,
    )
    model_error: float = _option(
        0.03, "MODELERR", "models' own error, x model (detection, split)",
        "The residual detection and the split count the models' own error, this fraction of "
        "the models, as noise, so a bright galaxy's model error is taken neither for a missed "
        "galaxy nor for a second galaxy inside its model (0 = sky noise only).",
        minimum=0.0, off=0.0,
    )
    detect_window: float = _option(
        8.0, "DETECTWN", "residual detection window radius, px (0 all)",
        "Radius in pixels of the disc around the residual's peak that the detection's RDN sees "
        "(0 = the whole residual).",
        minimum=0.0, off=0.0,
    )
    merge_radius: float = _option(
        3.0, "MERGERAD", "components closer than this merged, px (0 off)",
        "After the peel, merge a galaxy into a brighter one whose centroid lies closer than this "
        "many pixels (0 = off).",
        minimum=0.0, off=0.0,
    )
    keep_snr: float = _option(
        5.0, "KEEPSNR", "later components kept above this S/N (0 off)",
        "Last, keep a galaxy after the brightest only where it peaks above this matched-filter "
        "S/N, with the models' own error (--model-error) counted as noise; the others go back "
        "to the residual, where the flux-conserving components take them (0 = off).",
        minimum=0.0, off=0.0,
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = hints[field.name]
            if kind is bool:
                if not isinstance(value, bool):
                    raise TfdeblendError(f"{field.name} must be true or false, not {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TfdeblendError(f"{field.name} must be a number, not {value!r}")
            if not math.isfinite(value):  # before int(): int(nan) and int(inf) raise
                raise TfdeblendError(f"{field.name} must be finite, not {value!r}")
            if kind is int and value != int(value):
                raise TfdeblendError(f"{field.name} must be a whole number, not {value!r}")
            object.__setattr__(self, field.name, kind(value))
            meta = field.metadata
            if "choices" in meta and value not in meta["choices"]:
                allowed = ", ".join(map(str, meta["choices"]))
                raise TfdeblendError(f"{field.name} must be one of {allowed}, not {value!r}")
            if "maximum" in meta and value > meta["maximum"]:
                raise TfdeblendError(
                    f"{field.name} must be at most {meta['maximum']}, not {value!r}"
                )
            if "minimum" in meta and value < meta["minimum"]:
                raise TfdeblendError(
                    f"{field.name} must be at least {meta['minimum']}, not {value!r}"
                )

    @property
    def slots(self) -> int:
        """Component slots per blend in the peel's outputs (``K``: the most components)."""
        return self.max_iterations

    @classmethod
    def preset(cls, name: str) -> PeelConfig:
        """The named preset (:data:`PEEL_PRESETS`).

        Raises:
            TfdeblendError: an unknown name.
        """
        if name not in PEEL_PRESETS:
            raise TfdeblendError(
                f"unknown peel preset {name!r}; known: {', '.join(PEEL_PRESETS)}"
            )
        return PEEL_PRESETS[name]

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> PeelConfig:
        """The peel of an exported model, from its ``tfdeblend.yaml`` mapping.

        New exports hold the configuration under ``peel``; older ones hold each option at the
        top level. Both lack the options of steps added after them: those take the value that
        turns the step off (the peel they were exported with).

        Raises:
            TfdeblendError: an invalid option.
        """
        stored = metadata["peel"] if isinstance(metadata.get("peel"), dict) else metadata
        values = {}
        for field in dataclasses.fields(cls):
            value = stored.get(field.name)
            values[field.name] = field.metadata.get("off") if value is None else value
        return cls.from_dict(values)

    def header_cards(self) -> list[tuple[str, Any, str]]:
        """``(keyword, value, comment)`` FITS cards describing this peel."""
        return [
            (f.metadata["card"], getattr(self, f.name), f.metadata["comment"])
            for f in dataclasses.fields(self)
        ]

    def describe(self) -> str:
        """One line: the options that differ from the paper's peel, or ``"the paper's peel"``."""
        paper = PEEL_PRESETS["paper"]
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(paper, f.name)
        ]
        return ", ".join(changed) if changed else "the paper's peel"


#: Named peels: the shipped model's (the defaults) and the paper's.
PEEL_PRESETS: dict[str, PeelConfig] = {
    "shipped": PeelConfig(),
    "paper": PeelConfig(
        count_views=1, view_confidence=0.0, prior_three=0.0, split=False, split_distance=0.0,
        refine_steps=0, detect_snr=0.0,
        model_error=0.0, detect_window=0.0, merge_radius=0.0, keep_snr=0.0,
    ),
}
