"""Simulated LSST blends with BlendingToolKit (BTK) and GalSim.

This module draws the training and test stamps of the paper: CatSim galaxies with i < 25.3,
rendered by BTK's :class:`btk.draw_blends.CatsimGenerator` at LSST 10-year depth with BTK's PSF
and Poisson noise (sky subtracted), on 120x120 pixel stamps cropped to the central 80x80.

Only the requested bands are drawn: the BTK survey is copied with ``available_filters`` cut down
to those bands (BTK otherwise draws all six LSST bands; see ``docs/benchmarks.md``).

Every example is a pure function of ``(config, catalog, example index)``: its random numbers
come from ``numpy.random.SeedSequence([seed, index])``. A dataset can therefore be written in
any number of shards, by any number of processes, and always holds the same bytes.

**Observing conditions.** By default the stamps are the paper's: LSST 10-year depth with BTK's
PSF. :class:`SimConfig` can draw them under other conditions instead: another ``survey`` (its
pixel scale, PSF, zeropoints, sky and exposure times, from BTK/surveycodex), a ``psf_scale``
(multiplies each band's atmospheric FWHM; the PSF is rebuilt with BTK's own
``_get_default_psf_with_surveycodex_info``, Kolmogorov atmosphere + Airy optics) and an
``exposure_scale`` (multiplies each band's full exposure time: 0.1 is LSST's first year). Each
is a fixed value or a range ``(lo, hi)`` sampled per example (uniformly; log-uniformly for the
exposure) from the example's own random stream, so every example stays a pure function of
``(config, catalog, index)``. ``bright_fraction`` draws that share of the galaxies from those
brighter than ``bright_mag`` (i band), to populate the bright end. The conditions of each example
(:data:`CONDITION_FIELDS`) are returned with it. The nominal config draws exactly the bytes it
drew before these options existed.

Records are returned as numpy arrays, channels last (see ``docs/architecture.md``); units are
electrons per pixel. Writing them to disk is :mod:`tfdeblend.data`'s job.

Example:
    >>> from tfdeblend.simulate import SimConfig
    >>> SimConfig(kind="test", n_gal=3, count=10).max_sources
    3
"""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import numbers
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from tfdeblend import measure
from tfdeblend.catalog import CATSIM_COLUMNS
from tfdeblend.config import (
    DEFAULT_BANDS,
    LSST_PIXEL_SCALE,
    MAX_COUNT,
    MAX_MAG,
    RAW_STAMP_SIZE,
    STAMP_SIZE,
    YamlConfig,
    parse_bands,
)
from tfdeblend.errors import CatalogError, TfdeblendError
from tfdeblend.stars import STAR_BRIGHTEST, star_columns, star_magnitudes

#: Dataset kinds: 2-galaxy blends, 0..3-galaxy classifier images, N-galaxy test blends.
KINDS: tuple[str, ...] = ("deblender", "classifier", "test")
#: Most galaxies a ``test`` blend may hold.
MAX_TEST_GALAXIES: int = 5
#: Number of examples per kind for each preset. ``paper``: Wang et al. 2021 (the paper's
#: classifier test used 8000 images; its deblender test 1000 blends of 2 or 3 galaxies).
#: ``cpu``: sizes this project's 2-core machine simulates in a few minutes each
#: (measured: see docs/simulate.md).
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"deblender": 50_000, "classifier": 400_000, "test": 1000},
    "cpu": {"deblender": 8000, "classifier": 8000, "test": 1000},
}
#: BTK's default largest centre shift (a tenth of the 24 arcsec stamp), arcsec.
DEFAULT_MAX_SHIFT: float = 2.4
#: CatSim columns BTK reads to draw a galaxy, besides the ``<band>_ab`` magnitudes (the catalog
#: module's full list less the id, redshift and magnitudes).
DRAW_COLUMNS: tuple[str, ...] = tuple(
    c for c in CATSIM_COLUMNS if not c.endswith("_ab") and c not in ("galtileid", "redshift")
)
#: Record fields (numpy arrays), channels last. See docs/architecture.md.
RECORD_FIELDS: tuple[str, ...] = (
    "blend",
    "blend_noiseless",
    "isolated",
    "n_gal",
    "noisy",
    "x",
    "y",
    "flux",
    "mu20",
    "mu02",
    "mu11",
)
#: Observing conditions stored with every example (float32; ``C`` = bands):
#: ``psf_fwhm`` (C,) atmospheric PSF FWHM in arcsec (the survey's, times the example's
#: ``psf_scale``; BTK adds the telescope's Airy optics to it), ``noise_sigma`` (C,) sky noise std
#: in electrons per pixel (``sqrt`` of BTK's mean sky level), ``depth`` (C,) 5-sigma limiting AB
#: magnitude of the sky noise in a 1 arcsec^2 aperture (exposure and sky only, not the PSF),
#: ``pixel_scale`` () arcsec, ``psf_scale`` () and ``exposure_scale`` () the example's factors.
CONDITION_FIELDS: tuple[str, ...] = (
    "psf_fwhm",
    "noise_sigma",
    "depth",
    "pixel_scale",
    "psf_scale",
    "exposure_scale",
)
#: Condition fields with one value per band (the others are scalars).
BAND_CONDITION_FIELDS: tuple[str, ...] = ("psf_fwhm", "noise_sigma", "depth")
#: Presets of ``tfdeblend simulate --conditions``: survey, psf_scale, exposure_scale.
CONDITION_PRESETS: dict[str, dict[str, Any]] = {
    "nominal": {"survey": "LSST", "psf_scale": 1.0, "exposure_scale": 1.0},
    "psf1.5": {"survey": "LSST", "psf_scale": 1.5, "exposure_scale": 1.0},
    "year1": {"survey": "LSST", "psf_scale": 1.0, "exposure_scale": 0.1},
    "hsc": {"survey": "HSC", "psf_scale": 1.0, "exposure_scale": 1.0},
}
#: Allowed values of ``psf_scale`` and ``exposure_scale`` (inclusive).
PSF_SCALE_LIMITS: tuple[float, float] = (0.25, 4.0)
EXPOSURE_SCALE_LIMITS: tuple[float, float] = (0.001, 10.0)
#: Default ``bright_mag``: i-band magnitude of the galaxies ``bright_fraction`` draws.
BRIGHT_MAG: float = 20.0

Scale = float | tuple[float, float]


@functools.cache
def survey_info(name: str) -> Any:
    """surveycodex's survey ``name`` (any case).

    Raises:
        TfdeblendError: an unknown survey.
    """
    import surveycodex

    names = {n.lower(): n for n in surveycodex.available_surveys}
    canonical = names.get(str(name).lower())
    if canonical is None:
        raise TfdeblendError(
            f"unknown survey {name!r}; choose one of "
            f"{', '.join(sorted(surveycodex.available_surveys))}"
        )
    return surveycodex.get_survey(canonical)


def survey_with_bands(name: str, bands: tuple[str, ...]) -> Any:
    """surveycodex's survey ``name`` (:func:`survey_info`), checked to have every one of ``bands``.

    Raises:
        TfdeblendError: an unknown survey, or a band it does not have.
    """
    info = survey_info(name)
    missing = [b for b in bands if b not in info.available_filters]
    if missing:
        raise TfdeblendError(
            f"survey {info.name} has no band(s) {','.join(missing)}; "
            f"its bands are {','.join(info.available_filters)}"
        )
    return info


def checked_scale(name: str, value: Any, limits: tuple[float, float]) -> Scale:
    """``value`` (a number or a pair ``[lo, hi]``) as a float or a ``(lo, hi)`` tuple, checked."""
    lo_limit, hi_limit = limits
    what = f"{name} must be a number or a range [lo, hi] within [{lo_limit:g}, {hi_limit:g}]"

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise TfdeblendError(f"{what}, got {value!r}")
        if not lo_limit <= float(v) <= hi_limit:
            raise TfdeblendError(f"{what}, got {value!r}")
        return float(v)

    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise TfdeblendError(f"{what}, got {value!r}")
        lo, hi = number(value[0]), number(value[1])
        if lo > hi:
            raise TfdeblendError(f"{name} range must have lo <= hi, got [{lo:g}, {hi:g}]")
        return lo if lo == hi else (lo, hi)
    return number(value)


def scale_text(value: Scale) -> str:
    """``1.5`` or ``1:2`` (the CLI's form) of a fixed value or a range."""
    if isinstance(value, tuple):
        return f"{value[0]:g}:{value[1]:g}"
    return f"{value:g}"


def band_conditions(
    survey: str, bands: tuple[str, ...], psf_scale: float, exposure_scale: float
) -> dict[str, np.ndarray]:
    """The :data:`CONDITION_FIELDS` of one example drawn under fixed conditions.

    Computed from surveycodex's numbers as BTK uses them (no drawing): the sky noise is
    ``sqrt(mean_sky_level)`` with the scaled exposure time, and the depth is
    ``0.5 (zeropoint + sky brightness) + 1.25 log10(exposure time) - 2.5 log10(5)``, the 5-sigma
    AB magnitude of the sky noise in 1 arcsec^2.
    """
    return {k: v.copy() for k, v in _band_conditions(survey, tuple(bands), float(psf_scale),
                                                     float(exposure_scale)).items()}


@functools.lru_cache(maxsize=256)
def _band_conditions(
    survey: str, bands: tuple[str, ...], psf_scale: float, exposure_scale: float
) -> dict[str, np.ndarray]:
    from surveycodex.utilities import mean_sky_level

    info = survey_info(survey)
    fwhm, sigma, depth = [], [], []
    for band in bands:
        filt = info.get_filter(band)
        exposure = filt.full_exposure_time * exposure_scale
        scaled = dataclasses.replace(filt, full_exposure_time=exposure)
        fwhm.append(filt.psf_fwhm.to_value("arcsec") * psf_scale)
        sigma.append(math.sqrt(mean_sky_level(info, scaled).to_value("electron")))
        depth.append(
            0.5 * (filt.zeropoint.value + filt.sky_brightness.value)
            + 1.25 * math.log10(exposure.to_value("s"))
            - 2.5 * math.log10(5.0)
        )
    return {
        "psf_fwhm": np.asarray(fwhm, np.float32),
        "noise_sigma": np.asarray(sigma, np.float32),
        "depth": np.asarray(depth, np.float32),
        "pixel_scale": np.float32(info.pixel_scale.to_value("arcsec")),
        "psf_scale": np.float32(psf_scale),
        "exposure_scale": np.float32(exposure_scale),
    }


@dataclasses.dataclass
class SimConfig(YamlConfig):
    """What to simulate. Validated on construction (raises :class:`TfdeblendError`).

    Attributes:
        kind: ``deblender`` (2-galaxy blends), ``classifier`` (0..3 galaxies, balanced classes,
            half of them noiseless) or ``test`` (exactly ``n_gal`` galaxies).
        count: number of examples; ``None`` takes the preset's size for ``kind``.
        n_gal: galaxies per ``test`` blend (1..MAX_TEST_GALAXIES, default 2); must be ``None``
            for the other kinds.
        bands: LSST bands drawn, in channel order.
        seed: random seed; example ``k`` uses ``SeedSequence([seed, k])``.
        preset: ``paper`` or ``cpu`` (only used to fill ``count``).
        raw_stamp_size: side of the stamp BTK draws, pixels.
        stamp_size: side of the central crop kept, pixels.
        max_mag: faintest i-band AB magnitude sampled.
        max_shift: largest shift of a galaxy centre from the stamp centre along x and y, arcsec.
            Must keep every centre well inside the crop.
        survey: BTK/surveycodex survey (``LSST``, ``HSC``, ...; any case): its pixel scale, PSF,
            zeropoints, sky brightness and full exposure times. Bands keep their names
            (surveycodex names HSC's filters g, r, i, z, y); galaxies take the catalog's
            magnitude of the band of the same name.
        pixel_scale: arcsec per pixel: the survey's (set from it; any other value is refused).
        psf_scale: multiplies each band's atmospheric PSF FWHM: a number, or a range
            ``[lo, hi]`` sampled uniformly per example.
        exposure_scale: multiplies each band's full exposure time (0.1: LSST year 1): a number,
            or a range ``[lo, hi]`` sampled log-uniformly per example.
        bright_fraction: share of the galaxies drawn from those with ``i <= bright_mag`` (each
            galaxy independently); 0 draws every galaxy from the whole ``i <= max_mag`` sample.
        bright_mag: i-band magnitude limit of the bright galaxies ``bright_fraction`` draws.
        star_fraction: share of the sources that are stars instead of galaxies (each source
            independently): point sources of i-band magnitude uniform from ``STAR_BRIGHTEST``
            (15) to ``max_mag``, colours on the stellar locus (:mod:`tfdeblend.stars`). A star
            counts as a source like a galaxy (the deblender's target when brightest, one in
            the classifier's count). 0 (default) draws no star and the same bytes as before.
        catalog: path of the CatSim catalog, or ``None`` for the default catalog.
    """

    kind: str = "deblender"
    count: int | None = None
    n_gal: int | None = None
    bands: tuple[str, ...] = DEFAULT_BANDS
    seed: int = 0
    preset: str = "cpu"
    raw_stamp_size: int = RAW_STAMP_SIZE
    stamp_size: int = STAMP_SIZE
    max_mag: float = MAX_MAG
    max_shift: float = DEFAULT_MAX_SHIFT
    survey: str = "LSST"
    pixel_scale: float = LSST_PIXEL_SCALE
    psf_scale: float | tuple[float, float] = 1.0
    exposure_scale: float | tuple[float, float] = 1.0
    bright_fraction: float = 0.0
    bright_mag: float = BRIGHT_MAG
    star_fraction: float = 0.0
    catalog: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TfdeblendError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.preset not in PRESETS:
            raise TfdeblendError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"
            )
        self.bands = parse_bands(self.bands)
        if self.count is None:
            self.count = PRESETS[self.preset][self.kind]
        if isinstance(self.count, bool) or not isinstance(self.count, (int, np.integer)):
            raise TfdeblendError(f"count must be a whole number, got {self.count!r}")
        self.count = int(self.count)
        if self.count <= 0:
            raise TfdeblendError(f"count must be positive, got {self.count}")
        if self.kind == "test":
            if self.n_gal is None:
                self.n_gal = 2
            if not 1 <= int(self.n_gal) <= MAX_TEST_GALAXIES:
                raise TfdeblendError(
                    f"n_gal must be between 1 and {MAX_TEST_GALAXIES} for a test set, "
                    f"got {self.n_gal}"
                )
            self.n_gal = int(self.n_gal)
        elif self.n_gal is not None:
            raise TfdeblendError(
                f"--n-gal applies only to kind 'test' ({self.kind} sets have "
                f"{'2' if self.kind == 'deblender' else '0..3'} galaxies)"
            )
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise TfdeblendError(f"seed must be a non-negative whole number, got {self.seed!r}")
        self.seed = int(self.seed)
        if not 0 < self.stamp_size <= self.raw_stamp_size:
            raise TfdeblendError(
                f"stamp_size ({self.stamp_size}) must be positive and at most "
                f"raw_stamp_size ({self.raw_stamp_size})"
            )
        self._check_conditions()
        # keep every centre at least 5 pixels inside the crop
        limit = (self.stamp_size / 2 - 5) * self.pixel_scale
        if not 0 <= self.max_shift <= limit:
            raise TfdeblendError(
                f"max_shift must be between 0 and {limit:.1f} arcsec so that every galaxy "
                f"lies inside the {self.stamp_size}x{self.stamp_size} crop, got {self.max_shift}"
            )

    def _check_conditions(self) -> None:
        info = survey_with_bands(self.survey, self.bands)
        self.survey = info.name
        scale = float(info.pixel_scale.to_value("arcsec"))
        given = self.pixel_scale
        if isinstance(given, bool) or not isinstance(given, numbers.Real):
            raise TfdeblendError(f"pixel_scale must be a number, got {given!r}")
        if not (math.isclose(given, scale, rel_tol=1e-6) or given == LSST_PIXEL_SCALE):
            raise TfdeblendError(
                f"pixel_scale is the survey's ({scale:g} arcsec for {self.survey}), got {given!r}"
            )
        self.pixel_scale = scale
        self.psf_scale = checked_scale("psf_scale", self.psf_scale, PSF_SCALE_LIMITS)
        self.exposure_scale = checked_scale(
            "exposure_scale", self.exposure_scale, EXPOSURE_SCALE_LIMITS
        )
        for name in ("bright_fraction", "bright_mag", "star_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TfdeblendError(f"{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if not 0.0 <= self.bright_fraction <= 1.0:
            raise TfdeblendError(
                f"bright_fraction must be between 0 and 1, got {self.bright_fraction}"
            )
        if not 0.0 <= self.star_fraction <= 1.0:
            raise TfdeblendError(
                f"star_fraction must be between 0 and 1, got {self.star_fraction}"
            )
        if not 10.0 <= self.bright_mag <= self.max_mag:
            raise TfdeblendError(
                f"bright_mag must be between 10 and max_mag ({self.max_mag:g}), "
                f"got {self.bright_mag}"
            )

    @property
    def fixed_conditions(self) -> bool:
        """Whether every example has the same conditions (no range)."""
        return not isinstance(self.psf_scale, tuple) and not isinstance(
            self.exposure_scale, tuple
        )

    @property
    def nominal(self) -> bool:
        """The paper's conditions: LSST 10-year depth with BTK's PSF (the default)."""
        return self.survey == "LSST" and self.psf_scale == 1.0 and self.exposure_scale == 1.0

    def describe_conditions(self) -> str:
        """One line: survey, scales and bright fraction, e.g. ``LSST, psf x1.5, exposure x1``."""
        text = (
            f"{self.survey}, psf x{scale_text(self.psf_scale)}, "
            f"exposure x{scale_text(self.exposure_scale)}"
        )
        if self.bright_fraction > 0:
            text += f", {self.bright_fraction:g} of galaxies with i <= {self.bright_mag:g}"
        if self.star_fraction > 0:
            text += f", {self.star_fraction:g} of sources stars"
        return text

    def example_stars(self, index: int, n_sources: int) -> dict[str, np.ndarray] | None:
        """Which sources of example ``index`` are stars, and their magnitudes: ``None`` when
        none is, else ``{"star": (n_sources,) bool, "<band>": (n_stars,) AB magnitudes}``.

        Drawn from the example's fourth random stream ``SeedSequence([seed, index]).spawn(4)[3]``
        (the other three are unchanged, so a set with ``star_fraction`` holds the galaxies,
        conditions and noise draws of the same set without, where no star replaces them).
        """
        if self.star_fraction <= 0 or n_sources == 0:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]).spawn(4)[3])
        star = rng.random(n_sources) < self.star_fraction
        if not star.any():
            return None
        i_mag = rng.uniform(STAR_BRIGHTEST, self.max_mag, int(star.sum()))
        return {"star": star, **star_magnitudes(rng, i_mag)}

    def example_scales(self, index: int) -> tuple[float, float, np.ndarray]:
        """``(psf_scale, exposure_scale, bright)`` of example ``index``.

        Drawn from the example's third random stream ``SeedSequence([seed, index]).spawn(3)[2]``
        (the galaxies and the noise use the first two, as before these options existed):
        uniform numbers ``u``; ``u[0]`` picks the PSF scale (uniform in its range), ``u[1]`` the
        exposure scale (log-uniform), ``u[2 + j] < bright_fraction`` makes galaxy ``j`` bright.
        """
        stream = np.random.SeedSequence([self.seed, int(index)]).spawn(3)[2]
        u = np.random.default_rng(stream).random(2 + max(MAX_TEST_GALAXIES, MAX_COUNT))
        psf = self.psf_scale
        if isinstance(psf, tuple):
            psf = psf[0] + (psf[1] - psf[0]) * float(u[0])
        exposure = self.exposure_scale
        if isinstance(exposure, tuple):
            lo, hi = math.log(exposure[0]), math.log(exposure[1])
            exposure = math.exp(lo + (hi - lo) * float(u[1]))
        return float(psf), float(exposure), u[2:] < self.bright_fraction

    @property
    def max_sources(self) -> int:
        """Galaxies per record slot ``S`` (zero padded)."""
        if self.kind == "deblender":
            return 2
        if self.kind == "classifier":
            return MAX_COUNT
        return int(self.n_gal)

    def plan(self, index: int) -> tuple[int, bool]:
        """Number of galaxies and whether the image is noisy for example ``index``.

        Classifier sets cycle through the classes 0..3 and alternate noisy/noiseless blocks of
        four, so every class is balanced and half of each class is noiseless (also within any
        shard of at least eight examples).
        """
        if self.kind == "deblender":
            return 2, True
        if self.kind == "test":
            return int(self.n_gal), True
        return index % (MAX_COUNT + 1), (index // (MAX_COUNT + 1)) % 2 == 0


def validate_catalog(table: Any, config: SimConfig) -> Any:
    """Check a CatSim table for ``config`` and return its rows with ``i_ab <= max_mag``.

    Args:
        table: astropy Table with CatSim columns.
        config: the simulation config (bands, max_mag, max_sources).

    Returns:
        The eligible rows, keeping only the columns BTK needs.

    Raises:
        CatalogError: missing columns or too few galaxies brighter than ``max_mag``.
    """
    needed = list(DRAW_COLUMNS) + sorted({f"{b}_ab" for b in config.bands} | {"i_ab"})
    missing = [c for c in needed if c not in table.colnames]
    if missing:
        raise CatalogError(f"catalog is missing column(s): {', '.join(missing)}")
    mags = np.asarray(table["i_ab"], dtype=float)
    eligible = table[needed][np.isfinite(mags) & (mags <= config.max_mag)]
    if len(eligible) < config.max_sources:
        raise CatalogError(
            f"catalog has {len(eligible)} galaxies with i <= {config.max_mag}; "
            f"{config.kind} blends need at least {config.max_sources}"
        )
    if config.bright_fraction > 0:
        n_bright = int(np.sum(np.asarray(eligible["i_ab"], dtype=float) <= config.bright_mag))
        if n_bright < config.max_sources:
            raise CatalogError(
                f"catalog has {n_bright} galaxies with i <= {config.bright_mag:g} (bright_mag); "
                f"bright_fraction {config.bright_fraction:g} needs at least {config.max_sources}"
            )
    return eligible


def load_catalog(config: SimConfig) -> Any:
    """Read the catalog named in ``config`` (or the default one) as an astropy Table."""
    from tfdeblend import catalog as catalog_module

    if config.catalog is None:
        return catalog_module.load_default_catalog()
    return catalog_module.read_catalog(config.catalog)


def make_survey(name: str, bands: Iterable[str]) -> Any:
    """A BTK survey restricted to ``bands`` (in that order), with BTK's default PSF."""
    import btk

    try:
        survey = btk.survey.get_surveys(survey_info(name).name)
    except TfdeblendError:
        raise
    except Exception as err:  # surveycodex raises a bare ValueError
        raise TfdeblendError(f"unknown survey {name!r}: {err}") from err
    bands = list(bands)
    missing = [b for b in bands if b not in survey.available_filters]
    if missing:
        raise TfdeblendError(f"survey {name} has no band(s) {', '.join(missing)}")
    survey.available_filters = bands
    return survey


def nominal_filters(survey: Any, bands: Iterable[str], psfs: list) -> dict[str, tuple]:
    """``{band: (PSF FWHM, full exposure time, PSF)}`` of ``survey`` as built (``psfs`` in band
    order), what :func:`scale_filters` scales from."""
    return {
        band: (filt.psf_fwhm, filt.full_exposure_time, psf)
        for band, psf in zip(bands, psfs)
        for filt in [survey.get_filter(band)]
    }


def scale_filters(
    survey: Any, bands: Iterable[str], nominal: dict[str, tuple], psf_scale: float,
    exposure_scale: float,
) -> list:
    """Scale ``survey``'s filters in place from ``nominal`` (:func:`nominal_filters`); returns
    each band's PSF.

    Each band's full exposure time becomes ``exposure_scale`` times the nominal one, and its
    atmospheric PSF FWHM ``psf_scale`` times the nominal one, the PSF being rebuilt with BTK's
    own helper (Kolmogorov atmosphere of the scaled FWHM + the telescope's Airy optics). A
    ``psf_scale`` of 1 keeps the nominal PSF object. Stamps (:class:`BlendRenderer`) and fields
    (:func:`tfdeblend.field.render_field`) are drawn under conditions this way.
    """
    import btk

    psfs = []
    for band in bands:
        filt = survey.get_filter(band)
        fwhm, exposure, psf = nominal[band]
        filt.full_exposure_time = exposure * exposure_scale
        filt.psf_fwhm = fwhm
        if psf_scale != 1.0:
            filt.psf_fwhm = fwhm * psf_scale
            psf = btk.survey._get_default_psf_with_surveycodex_info(survey, filt)
        filt.psf = psf
        psfs.append(psf)
    return psfs


class BlendRenderer:
    """Draws the example with a given index; one per process.

    Args:
        config: what to simulate.
        table: the eligible catalog rows (see :func:`validate_catalog`).
    """

    def __init__(self, config: SimConfig, table: Any) -> None:
        import btk

        self.config = config
        self.table = table
        self.survey = make_survey(config.survey, config.bands)
        raw_arcsec = config.raw_stamp_size * config.pixel_scale
        if int(raw_arcsec / config.pixel_scale) != config.raw_stamp_size:
            # BTK sizes its stamps as int(arcsec / pixel scale): keep it from rounding down
            raw_arcsec = (config.raw_stamp_size + 0.5) * config.pixel_scale
        sampling = btk.sampling_functions.DefaultSampling(
            stamp_size=raw_arcsec,
            max_number=max(config.max_sources, 1),
            min_number=0,
            max_shift=config.max_shift,
            seed=config.seed,
            max_mag=config.max_mag,
        )
        self.generator = btk.draw_blends.CatsimGenerator(
            btk.catalog.CatsimCatalog(table),
            sampling,
            self.survey,
            batch_size=1,
            njobs=1,
            add_noise="all",
            seed=config.seed,
        )
        self.psf = self.generator._get_psf_from_survey(self.survey)
        self.nominal_filters = nominal_filters(self.survey, config.bands, self.psf)
        self.scales: tuple[float, float] = (1.0, 1.0)
        self.bright_rows = np.flatnonzero(np.asarray(table["i_ab"], float) <= config.bright_mag)
        start = (config.raw_stamp_size - config.stamp_size) // 2
        self.crop = slice(start, start + config.stamp_size)

    def set_conditions(self, psf_scale: float, exposure_scale: float) -> None:
        """Scale the survey's atmospheric PSF FWHM and exposure times (from the nominal ones,
        :func:`scale_filters`); scales of 1 keep BTK's own PSF objects, so nominal stamps are
        unchanged."""
        if (psf_scale, exposure_scale) == self.scales:
            return
        self.psf = scale_filters(self.survey, self.config.bands, self.nominal_filters,
                                 psf_scale, exposure_scale)
        self.scales = (psf_scale, exposure_scale)

    def _choose_rows(
        self, rng: np.random.Generator, n_gal: int, bright: np.ndarray
    ) -> np.ndarray:
        """Catalog rows of the example's galaxies (``bright[j]``: galaxy ``j`` is bright)."""
        n_bright = int(np.sum(bright[:n_gal])) if self.config.bright_fraction > 0 else 0
        if n_bright == 0:
            return rng.choice(len(self.table), size=n_gal, replace=False)
        chosen = rng.choice(self.bright_rows, size=n_bright, replace=False)
        others = rng.choice(len(self.table), size=n_gal, replace=False)
        others = others[~np.isin(others, chosen)][: n_gal - n_bright]
        return np.concatenate([chosen, others])

    def render(self, index: int) -> dict[str, np.ndarray]:
        """Draw example ``index``: a dict of the :data:`RECORD_FIELDS` and
        :data:`CONDITION_FIELDS`, channels last."""
        cfg = self.config
        n_gal, noisy = cfg.plan(index)
        seq = np.random.SeedSequence([cfg.seed, int(index)])
        sample_seq, noise_seq = seq.spawn(2)
        psf_scale, exposure_scale, bright = cfg.example_scales(index)
        self.set_conditions(psf_scale, exposure_scale)
        rng = np.random.default_rng(sample_seq)
        rows = self._choose_rows(rng, n_gal, bright)
        blend = self.table[np.sort(rows)]
        stars = cfg.example_stars(index, n_gal)
        if stars is not None:  # before the positions, which every source gets alike
            for name, values in star_columns(blend, stars).items():
                blend[name][stars["star"]] = values
        blend["ra"] = rng.uniform(-cfg.max_shift, cfg.max_shift, n_gal)
        blend["dec"] = rng.uniform(-cfg.max_shift, cfg.max_shift, n_gal)
        blend["btk_rotation"] = np.zeros(n_gal)

        n_bands = len(cfg.bands)
        size = cfg.stamp_size
        self.generator.add_noise = "all" if noisy else "none"
        band_seqs = noise_seq.spawn(n_bands)
        noisy_image = np.zeros((size, size, n_bands), np.float64)
        isolated = np.zeros((max(n_gal, 1), size, size, n_bands), np.float64)
        for channel, band in enumerate(cfg.bands):
            filt = self.survey.get_filter(band)
            image, iso = self.generator.render_blend(
                blend, self.psf[channel], filt, self.survey, band_seqs[channel]
            )
            noisy_image[..., channel] = image[self.crop, self.crop]
            isolated[:n_gal, ..., channel] = iso[:n_gal, self.crop, self.crop]
        isolated = isolated[:n_gal]
        order = np.argsort(-measure.brightness(isolated), kind="stable")
        isolated = isolated[order]
        noiseless = isolated.sum(axis=0) if n_gal else np.zeros_like(noisy_image)
        record = make_record(
            blend=noisy_image if noisy else noiseless,
            isolated=isolated,
            noisy=noisy,
            max_sources=cfg.max_sources,
        )
        record.update(band_conditions(cfg.survey, cfg.bands, psf_scale, exposure_scale))
        return record


def make_record(
    blend: np.ndarray, isolated: np.ndarray, noisy: bool, max_sources: int
) -> dict[str, np.ndarray]:
    """Build one record from a blend ``(H, W, C)`` and its isolated galaxies ``(n, H, W, C)``.

    The isolated galaxies must already be brightest first. Truth (centroids, fluxes, second
    moments) is measured with :mod:`tfdeblend.measure`; slots beyond ``n`` are zero (images) or
    ``nan`` (catalog values).
    """
    n_gal = isolated.shape[0]
    height, width, n_bands = blend.shape
    padded = np.zeros((max_sources, height, width, n_bands), np.float32)
    padded[:n_gal] = isolated
    record: dict[str, np.ndarray] = {
        "blend": blend.astype(np.float32),
        "blend_noiseless": padded[:n_gal].sum(axis=0, dtype=np.float32)
        if n_gal
        else np.zeros((height, width, n_bands), np.float32),
        "isolated": padded,
        "n_gal": np.int64(n_gal),
        "noisy": np.int64(bool(noisy)),
    }
    if not noisy:  # the image seen is exactly the noiseless blend
        record["blend"] = record["blend_noiseless"].copy()
    moments = measure.moments(isolated)
    for key in ("x", "y", "mu20", "mu02", "mu11"):
        values = np.full(max_sources, np.nan, np.float32)
        values[:n_gal] = moments[key]
        record[key] = values
    flux = np.full((max_sources, n_bands), np.nan, np.float32)
    flux[:n_gal] = measure.fluxes(isolated)
    record["flux"] = flux
    return record


# ----------------------------------------------------------------------------- parallel drawing

_WORKER: BlendRenderer | None = None


def _init_worker(config_dict: dict, table: Any) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = BlendRenderer(SimConfig.from_dict(config_dict), table)


def _render_in_worker(index: int) -> dict[str, np.ndarray]:
    assert _WORKER is not None
    return _WORKER.render(index)


def default_jobs() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Stream:
    """Iterator over rendered examples; owns the worker pool (if any), closed at the end."""

    def __init__(self, iterator: Iterator[dict[str, np.ndarray]], pool: Any = None) -> None:
        self._iterator = iterator
        self._pool = pool

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return next(self._iterator)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __del__(self) -> None:
        self.close()


def simulate(
    config: SimConfig,
    indices: Iterable[int] | None = None,
    table: Any = None,
    jobs: int | None = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Draw examples, in the order of ``indices``.

    The catalog is checked and the worker processes are started right away (before any
    TensorFlow import by the caller, so that they can be forked); the examples are drawn as the
    returned iterator is consumed. Call its ``close()`` to stop early.

    Args:
        config: what to simulate.
        indices: example indices (default ``range(config.count)``).
        table: a CatSim astropy Table (default: the catalog named in ``config``).
        jobs: worker processes (``None``: all cores). Results do not depend on it.

    Returns:
        Iterator of records: dicts of numpy arrays (see :data:`RECORD_FIELDS`), channels last,
        electrons.

    Raises:
        CatalogError: the catalog lacks columns or galaxies.
    """
    indices = list(range(config.count) if indices is None else indices)
    if table is None:
        table = load_catalog(config)
    table = validate_catalog(table, config)
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise TfdeblendError(f"jobs must be at least 1, got {jobs}")
    jobs = min(jobs, max(len(indices), 1))
    if jobs == 1:
        renderer = BlendRenderer(config, table)
        return _Stream(renderer.render(index) for index in indices)
    # fork is cheap; once TensorFlow is imported, start clean processes instead (then a script
    # calling this needs the usual ``if __name__ == "__main__":`` guard)
    method = "spawn" if "tensorflow" in sys.modules else "fork"
    context = multiprocessing.get_context(method)
    chunk = max(1, min(16, len(indices) // (4 * jobs)))
    pool = context.Pool(jobs, _init_worker, (config.to_dict(), table))
    return _Stream(pool.imap(_render_in_worker, indices, chunksize=chunk), pool)


def simulate_arrays(
    config: SimConfig, table: Any = None, jobs: int | None = 1
) -> dict[str, np.ndarray]:
    """Draw all ``config.count`` examples and stack them into arrays ``(N, ...)``.

    Meant for small sets (everything is held in memory). Holds the :data:`RECORD_FIELDS` and
    :data:`CONDITION_FIELDS`, plus ``bands`` (array of str) and ``survey`` (0-d str array).
    """
    records = list(simulate(config, table=table, jobs=jobs))
    arrays = {key: np.stack([r[key] for r in records])
              for key in (*RECORD_FIELDS, *CONDITION_FIELDS)}
    arrays["bands"] = np.array(config.bands)
    arrays["survey"] = np.array(config.survey)
    return arrays
