"""Survey-like simulated fields with ground truth (``tfdeblend simulate field``).

A *field* is one large multi-band image, like a patch of a survey coadd, on which whole-image
deblending can be scored. It is drawn with the same galaxy profiles, PSF, fluxes and noise as the
BTK stamps of :mod:`tfdeblend.simulate`, but every galaxy of a square window of the catalog is
drawn, faint ones included, on a postage stamp sized to the galaxy that is added into the field.

What is drawn (see ``docs/simulate.md``, "Fields"):

- **Galaxies.** The galaxies of a square window of the catalog of the field's angular size plus
  ``margin`` arcsec on each side, down to ``max_mag`` (i band, default 26.5: the built-in
  catalog's full depth). Galaxies centred in the margin are drawn (their light enters the field)
  and flagged ``inside = False`` in the truth.
- **Catalog and seed.** Without ``catalog``, the built-in synthesizer
  (:func:`tfdeblend.catalog.synthesize_catalog`) is run over exactly the window's area with the
  catalog seed :func:`catalog_seed` ``(seed)``: a number drawn from the field's seed, so the
  field's seed decides the galaxies, and a field never reuses the galaxies of the default
  (training) catalog. With ``catalog``, the window is placed at a random spot of the catalog
  (drawn from the seed) and its galaxies' positions are projected (TAN) about the window centre.
  Either way the catalog's positions are kept: the galaxies of the window, not re-drawn ones.
- **Profiles and fluxes.** :func:`btk.draw_blends.get_catsim_galaxy` (bulge DeVaucouleurs + disk
  Exponential, fluxes from the magnitudes with the survey's zeropoint and full exposure time)
  convolved with the survey's PSF of each band (BTK's default PSF), drawn by GalSim exactly as
  BTK draws its stamps, with shapes oriented in pixel coordinates as in BTK's stamps.
- **Stars** (``stars`` per arcmin^2, default none): point sources (CatSim rows whose only
  component is the AGN one, so that BTK draws them as the PSF), spread uniformly over the
  window, i-band magnitudes from ``STAR_BRIGHTEST`` to ``max_mag`` with number counts
  ``dN/dm ~ 10^(STAR_COUNT_SLOPE m)`` (high Galactic latitude), colours along a stellar locus
  (:mod:`tfdeblend.stars`). Their truth rows have ``star = True`` and
  ``catalog_id`` -1, -2, ... Stars brighter than about :data:`STAR_SATURATION_MAG` saturate.
- **Noise.** As in BTK: Poisson noise of the source and of the mean sky level (surveycodex's
  ``mean_sky_level``), sky subtracted: ``image = Poisson(sky + model) - sky``, drawn exactly
  (not a Gaussian approximation). The ``VARIANCE`` plane is the expected variance
  ``sky + model``.
- **Defects.** ``bad_columns``: one bad column per band (random ``x``, full height) whose pixels
  hold :data:`BAD_VALUE` (0.0: looks like empty sky to a careless reader) and have the ``BAD``
  bit. ``saturate``: in each band, pixels at or above the band's saturation level are NaN and
  have the ``SAT`` bit; the level is :data:`SAT_FRACTION` of the noiseless peak of the brightest
  galaxy inside the field in that band, so that galaxy's core (and any other peak as high)
  saturates; in a field with stars, at least the peak of a point source of
  :data:`STAR_SATURATION_MAG` (:func:`_star_saturation`).

Random numbers: ``SeedSequence(seed).spawn(5)`` gives the catalog, noise, defect, window and
star streams, so every output is a pure function of the config (and catalog file): the same config
gives byte-identical files.

Output layout (written atomically into ``out_dir``) is documented in :func:`simulate_field`.
Channels first, ``(C, H, W)``, electrons per pixel. No TensorFlow is imported.

Example:
    >>> FieldConfig(size=128, survey="hsc").survey
    'HSC'
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tfdeblend.catalog import FAINT_MAG
from tfdeblend.config import DEFAULT_BANDS, YamlConfig, parse_bands
from tfdeblend.errors import CatalogError, TfdeblendError
from tfdeblend.simulate import (
    EXPOSURE_SCALE_LIMITS,
    PSF_SCALE_LIMITS,
    checked_scale,
    survey_info,
    survey_with_bands,
)
from tfdeblend.stars import STAR_BRIGHTEST, STAR_COUNT_SLOPE, star_columns, star_magnitudes
from tfdeblend.utils import atomic_dir, check_output_path

#: Largest field side, pixels (a 3-band 8192^2 field needs ~5 GB of memory while drawn).
MAX_SIZE: int = 8192
#: Smallest field side, pixels.
MIN_SIZE: int = 16
#: Largest margin around the field whose galaxies are drawn, arcsec.
MAX_MARGIN: float = 60.0
#: Most stars per arcmin^2 (a crowded field near the Galactic plane).
MAX_STARS: float = 200.0
#: Value written into the pixels of a bad column.
BAD_VALUE: float = 0.0
#: Saturation level of a band, as a fraction of the brightest galaxy's noiseless peak.
SAT_FRACTION: float = 0.5
#: Mask planes (LSST/HSC bit numbers), written as ``MP_<NAME>`` header keywords. Only BAD and
#: SAT are ever set; NO_DATA is named for readers that expect it.
MASK_PLANES: dict[str, int] = {"BAD": 0, "SAT": 1, "NO_DATA": 8}
#: Smallest half side of a galaxy's postage stamp, pixels (stamps are at least 65x65: the PSF's
#: Airy wings hold ~0.5 % of a small galaxy's light beyond 16 px).
MIN_HALF_STAMP: int = 32
#: Largest half side of a galaxy's postage stamp, pixels.
MAX_HALF_STAMP: int = 160
#: Stamp radius in units of each component's half-light radius (disk, bulge), plus this many
#: PSF FWHMs. Measured on a 256x256 LSST field: the stamps hold 0.3 % less light than BTK's
#: 120x120 stamps (median; at most 0.4 % less), and up to 1.3 % more for galaxies with large
#: bulges, whose de Vaucouleurs wings BTK's 24" stamps cut (see docs/simulate.md).
STAMP_HLR_DISK: float = 8.0
STAMP_HLR_BULGE: float = 20.0
STAMP_PSF_FWHM: float = 5.0
#: Stars: half side of the postage stamp (pixels) of stars brighter than i = 19, whose PSF
#: wings reach further than a galaxy's minimal stamp.
STAR_HALF_STAMP: int = 96
#: Stars: in a field with stars the saturation level is at least the peak pixel of a point
#: source of this magnitude in each band (LSST's 15-s visits saturate at r ~ 16; without this
#: floor the level, half the brightest galaxy's peak, saturated every star brighter than
#: i ~ 21 in some fields). Fields without stars keep the galaxy-based level.
STAR_SATURATION_MAG: float = 17.0
#: Columns of truth.fits besides the per-band ones, in order.
TRUTH_COLUMNS: tuple[str, ...] = (
    "id",
    "catalog_id",
    "x",
    "y",
    "ra",
    "dec",
    "inside",
    "frac_inside",
    "masked",
    "star",
)


def catalog_seed(seed: int) -> int:
    """The seed of the built-in catalog synthesized for a field of seed ``seed``."""
    return int(_streams(seed)[0].generate_state(1)[0])


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Catalog, noise, defect, window and star random streams of a field (the first four are
    those of the fields drawn before stars existed: ``spawn`` numbers its children)."""
    return np.random.SeedSequence(int(seed)).spawn(5)


@dataclasses.dataclass
class FieldConfig(YamlConfig):
    """What field to draw. Validated on construction (raises :class:`TfdeblendError`).

    Attributes:
        size: side of the square field, pixels.
        bands: bands drawn, in channel order (the survey must have them).
        seed: random seed (decides the catalog draw, the noise and the defects).
        survey: BTK/surveycodex survey (``LSST``, ``HSC``, ...; any case).
        psf_scale: multiplies each band's atmospheric PSF FWHM (1.5: seeing 1.5 times the
            survey's nominal one), as ``tfdeblend simulate --psf-scale`` does for stamps.
        exposure_scale: multiplies each band's full exposure time (0.1: LSST year 1).
        catalog: CatSim catalog path, or ``None`` for the built-in synthesizer.
        max_mag: faintest i-band AB magnitude drawn (at most 26.5 with the built-in catalog).
        margin: galaxies centred up to this many arcsec outside the field are drawn too.
        ra, dec: sky position of the field's centre, deg (the WCS's ``CRVAL``).
        noise: add noise (``False``: the image is the noiseless sum of the galaxies and
            stars).
        bad_columns: one bad column per band (value :data:`BAD_VALUE`, mask bit ``BAD``).
        saturate: NaN and ``SAT`` where the image reaches the band's saturation level.
        stars: stars per arcmin^2 brighter than ``max_mag`` (0: none; about 1-3 at high
            Galactic latitude, tens near the plane).
        per_band: also write ``field_<band>.fits`` in the LSST/HSC coadd layout.
    """

    size: int = 512
    bands: tuple[str, ...] = DEFAULT_BANDS
    seed: int = 0
    survey: str = "LSST"
    psf_scale: float = 1.0
    exposure_scale: float = 1.0
    catalog: str | None = None
    max_mag: float = FAINT_MAG
    margin: float = 4.0
    ra: float = 150.1
    dec: float = 2.2
    noise: bool = True
    bad_columns: bool = True
    saturate: bool = True
    stars: float = 0.0
    per_band: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise TfdeblendError(f"size must be a whole number of pixels, got {self.size!r}")
        self.size = int(self.size)
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise TfdeblendError(
                f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {self.size}"
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or (self.seed < 0)
        ):
            raise TfdeblendError(f"seed must be a non-negative whole number, got {self.seed!r}")
        self.seed = int(self.seed)
        self.bands = parse_bands(self.bands)
        self.survey = survey_with_bands(self.survey, self.bands).name
        for name, limits in (("psf_scale", PSF_SCALE_LIMITS),
                             ("exposure_scale", EXPOSURE_SCALE_LIMITS)):
            value = checked_scale(name, getattr(self, name), limits)
            if isinstance(value, tuple):
                raise TfdeblendError(f"{name}: a field is drawn under one condition, not a range")
            setattr(self, name, value)
        for name in ("max_mag", "margin", "ra", "dec", "stars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TfdeblendError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise TfdeblendError(f"{name} must be finite, got {value!r}")
            setattr(self, name, float(value))
        top = FAINT_MAG if self.catalog is None else 30.0
        if not 16.0 < self.max_mag <= top:
            where = "the built-in catalog goes" if self.catalog is None else "fields go"
            raise TfdeblendError(
                f"max_mag must be in (16, {top:g}] ({where} to i = {top:g}), got {self.max_mag}"
            )
        if not 0.0 <= self.stars <= MAX_STARS:
            raise TfdeblendError(
                f"stars must be between 0 and {MAX_STARS:g} per arcmin^2, got {self.stars:g}"
            )
        if not 0.0 <= self.margin <= MAX_MARGIN:
            raise TfdeblendError(
                f"margin must be between 0 and {MAX_MARGIN:g} arcsec, got {self.margin}"
            )
        if not 0.0 <= self.ra < 360.0 or not -89.0 <= self.dec <= 89.0:
            raise TfdeblendError(
                f"field centre must have 0 <= ra < 360 and -89 <= dec <= 89, "
                f"got ra={self.ra}, dec={self.dec}"
            )
        for name in ("noise", "bad_columns", "saturate", "per_band"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TfdeblendError(f"{name} must be true or false, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if self.catalog is not None:
            self.catalog = str(self.catalog)

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel of the survey."""
        return float(survey_info(self.survey).pixel_scale.to_value("arcsec"))

    @staticmethod
    def psf_card(band: str) -> str:
        """The header card holding a band's PSF FWHM (arcsec): ``PSF_G`` for ``g``."""
        return f"PSF_{band.upper()}"[:8]

    @property
    def psf_fwhm(self) -> list[float]:
        """Each band's atmospheric PSF FWHM in arcsec, as drawn (the survey's times
        ``psf_scale``): what a user passes to ``tfdeblend run --psf``."""
        from tfdeblend.simulate import band_conditions

        fwhm = band_conditions(self.survey, self.bands, self.psf_scale, self.exposure_scale)
        return [round(float(v), 4) for v in fwhm["psf_fwhm"]]

    @property
    def window_arcsec(self) -> float:
        """Side of the square catalog window drawn (field plus margins), arcsec."""
        return self.size * self.pixel_scale + 2.0 * self.margin


# ------------------------------------------------------------------------------------ catalog


def field_catalog(config: FieldConfig, table: Any = None) -> Any:
    """The galaxies of the field's catalog window, with tangent-plane offsets.

    Args:
        config: the field.
        table: a CatSim astropy Table to take the window from (default: the catalog named in
            ``config``, or the built-in catalog synthesized over the window).

    Returns:
        astropy Table of the CatSim rows with ``i_ab <= max_mag`` whose centres lie in the
        window, plus columns ``xi``, ``eta``: offsets from the window centre towards east and
        north, arcsec. Positions uniform over the window for the built-in catalog.

    Raises:
        CatalogError: missing columns, or a catalog smaller than the window.
    """
    from astropy.table import Table

    from tfdeblend import catalog as catalog_module
    from tfdeblend.simulate import DRAW_COLUMNS

    half_deg = config.window_arcsec / 2.0 / 3600.0
    if table is None and config.catalog is None:
        table = catalog_module.synthesize_catalog(
            area_deg2=(2.0 * half_deg) ** 2, seed=catalog_seed(config.seed), max_mag=FAINT_MAG
        )
        ra0 = dec0 = 0.0
    else:
        if table is None:
            table = catalog_module.read_catalog(config.catalog)
        ra0, dec0 = _window_centre(table, half_deg, _streams(config.seed)[3])
    needed = ["galtileid", *DRAW_COLUMNS, *sorted({f"{b}_ab" for b in config.bands} | {"i_ab"})]
    missing = [c for c in needed if c not in table.colnames]
    if missing:
        raise CatalogError(f"catalog is missing column(s): {', '.join(missing)}")
    xi, eta = _tangent(np.asarray(table["ra"], float), np.asarray(table["dec"], float), ra0, dec0)
    half = config.window_arcsec / 2.0
    keep = (np.abs(xi) <= half) & (np.abs(eta) <= half)
    mags = np.stack([np.asarray(table[f"{b}_ab"], float) for b in config.bands])
    i_mag = np.asarray(table["i_ab"], float)
    keep &= np.isfinite(i_mag) & (i_mag <= config.max_mag) & np.isfinite(mags).all(axis=0)
    out = Table(table[needed][keep], copy=True)
    out["galtileid"] = np.asarray(out["galtileid"]).astype(np.int64)
    out["xi"], out["eta"] = xi[keep], eta[keep]
    out["star"] = np.zeros(len(out), bool)
    if config.stars > 0:
        from astropy.table import vstack

        out = vstack([out, star_catalog(config, out)], join_type="exact")
    return out


def star_catalog(config: FieldConfig, like: Any) -> Any:
    """The field's stars as CatSim rows with the columns of ``like``: point sources (only the
    AGN component, which BTK draws as the PSF), positions uniform over the window (``xi``,
    ``eta``), magnitudes and colours as in the module docstring; ``galtileid`` -1, -2, ...
    and ``star`` true."""
    from astropy.table import Table

    rng = np.random.default_rng(_streams(config.seed)[4])
    side = config.window_arcsec
    n = int(rng.poisson(config.stars * (side / 60.0) ** 2))
    lo, hi = STAR_BRIGHTEST, config.max_mag  # max_mag > 16 (FieldConfig)
    k = STAR_COUNT_SLOPE * math.log(10.0)  # inverse CDF of dN/dm ~ exp(k m) on [lo, hi]
    i_mag = np.log(np.exp(k * lo) + rng.uniform(size=n) * (np.exp(k * hi) - np.exp(k * lo))) / k
    columns = star_columns(like, star_magnitudes(rng, i_mag))
    columns["galtileid"] = -1 - np.arange(n, dtype=np.int64)
    columns["star"] = np.ones(n, bool)
    half = side / 2.0
    columns["xi"], columns["eta"] = rng.uniform(-half, half, (2, n))
    return Table(columns)


def _tangent(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple:
    """Gnomonic (TAN) projection about (ra0, dec0): standard coordinates in arcsec."""
    ra_r, dec_r = np.deg2rad(ra), np.deg2rad(dec)
    ra0_r, dec0_r = np.deg2rad(ra0), np.deg2rad(dec0)
    cos_c = np.sin(dec0_r) * np.sin(dec_r) + np.cos(dec0_r) * np.cos(dec_r) * np.cos(ra_r - ra0_r)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.cos(dec_r) * np.sin(ra_r - ra0_r) / cos_c
        eta = (
            np.cos(dec0_r) * np.sin(dec_r) - np.sin(dec0_r) * np.cos(dec_r) * np.cos(ra_r - ra0_r)
        ) / cos_c
    far = cos_c <= 0  # the other hemisphere: never in the window
    xi, eta = np.where(far, np.inf, xi), np.where(far, np.inf, eta)
    return np.rad2deg(xi) * 3600.0, np.rad2deg(eta) * 3600.0


def _window_centre(
    table: Any, half_deg: float, stream: np.random.SeedSequence
) -> tuple[float, float]:
    """A random window centre (deg) such that the window lies inside the catalog's extent."""
    ra = np.asarray(table["ra"], float)
    dec = np.asarray(table["dec"], float)
    if np.ptp(ra) > 180.0:  # wraps through ra = 0
        ra = (ra + 180.0) % 360.0 - 180.0
    dec_lo, dec_hi = dec.min() + half_deg, dec.max() - half_deg
    cos_dec = max(math.cos(math.radians(float(np.mean(dec)))), 1e-3)
    ra_half = half_deg / cos_dec
    ra_lo, ra_hi = ra.min() + ra_half, ra.max() - ra_half
    if dec_lo > dec_hi or ra_lo > ra_hi:
        side = 2.0 * half_deg * 60.0
        raise CatalogError(
            f"catalog covers {np.ptp(ra) * cos_dec * 60:.1f} x {np.ptp(dec) * 60:.1f} arcmin, "
            f"smaller than the {side:.1f} x {side:.1f} arcmin window of this field"
        )
    rng = np.random.default_rng(stream)
    return float(rng.uniform(ra_lo, ra_hi) % 360.0), float(rng.uniform(dec_lo, dec_hi))


# ---------------------------------------------------------------------------------- rendering


def make_wcs(config: FieldConfig) -> Any:
    """The field's celestial TAN WCS: north up, east left, centre pixel at ``(ra, dec)``."""
    from astropy.wcs import WCS

    scale = config.pixel_scale / 3600.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [config.ra, config.dec]
    wcs.wcs.crpix = [(config.size + 1) / 2.0, (config.size + 1) / 2.0]
    wcs.wcs.cdelt = [-scale, scale]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.equinox = 2000.0
    return wcs


def _psfs(survey: Any) -> list:
    """The PSF of each band of ``survey``, as BTK's generators build them."""
    import galsim

    out = []
    for band in survey.available_filters:
        filt = survey.get_filter(band)
        psf = filt.psf(survey, filt) if callable(filt.psf) else filt.psf
        if not isinstance(psf, galsim.GSObject):
            raise TfdeblendError(f"the PSF of band {band} of survey {survey.name} is not GalSim's")
        out.append(psf)
    return out


def stamp_half_size(entry: Any, psf_fwhm: float, pixel_scale: float) -> int:
    """Half side (pixels) of the postage stamp of a galaxy (CatSim row, arcsec units)."""
    hlr_d = math.sqrt(max(float(entry["a_d"]) * float(entry["b_d"]), 0.0))
    hlr_b = math.sqrt(max(float(entry["a_b"]) * float(entry["b_b"]), 0.0))
    radius = max(STAMP_HLR_DISK * hlr_d, STAMP_HLR_BULGE * hlr_b) + STAMP_PSF_FWHM * psf_fwhm
    return int(min(max(math.ceil(radius / pixel_scale), MIN_HALF_STAMP), MAX_HALF_STAMP))


def draw_galaxy(entry: Any, filt: Any, survey: Any, psf: Any, x: float, y: float, half: int) -> Any:
    """One galaxy, convolved with ``psf``, on a ``(2 half + 1)^2`` stamp centred near (x, y).

    Uses BTK's :func:`btk.draw_blends.get_catsim_galaxy` and GalSim's default drawing, as BTK
    does. ``x, y`` are 0-based field pixels; the returned ``galsim.ImageD`` has 1-based bounds
    in the field's frame (field pixel ``i`` is GalSim column ``i + 1``), or ``None`` for a
    galaxy with no flux in this band.
    """
    import galsim
    from btk.draw_blends import SourceNotVisible, get_catsim_galaxy

    try:
        gal = get_catsim_galaxy(entry, filt, survey)
    except SourceNotVisible:
        return None
    ix, iy = int(round(x)), int(round(y))
    bounds = galsim.BoundsI(ix - half + 1, ix + half + 1, iy - half + 1, iy + half + 1)
    stamp = galsim.ImageD(bounds, scale=survey.pixel_scale.to_value("arcsec"))
    galsim.Convolve(gal, psf).drawImage(image=stamp, center=galsim.PositionD(x + 1.0, y + 1.0))
    return stamp


@dataclasses.dataclass
class Field:
    """A drawn field (channels first).

    Attributes:
        image: (C, H, W) float32, electrons, sky subtracted, NaN where saturated.
        variance: (C, H, W) float32, ``sky + model``.
        mask: (C, H, W) int32 bit mask (:data:`MASK_PLANES`).
        model: (C, H, W) float64, the noiseless sum of the galaxies (and stars).
        truth: astropy Table, one row per drawn galaxy (see :func:`simulate_field`).
        wcs: astropy WCS of the field.
        header: extra header keywords (name -> (value, comment)).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    model: np.ndarray
    truth: Any
    wcs: Any
    header: dict[str, tuple[Any, str]]


def render_field(config: FieldConfig, table: Any = None, progress: bool = False) -> Field:
    """Draw the field of ``config`` in memory (see the module docstring).

    Args:
        config: the field.
        table: CatSim table to take the window from (default: per ``config``).
        progress: tqdm progress bar over the galaxies.
    """
    import galsim
    from surveycodex.utilities import mean_sky_level
    from tqdm.auto import tqdm

    from tfdeblend.simulate import make_survey, nominal_filters, scale_filters

    survey = make_survey(config.survey, config.bands)
    psfs = _psfs(survey)
    if (config.psf_scale, config.exposure_scale) != (1.0, 1.0):
        psfs = scale_filters(survey, config.bands, nominal_filters(survey, config.bands, psfs),
                             config.psf_scale, config.exposure_scale)
    scale = survey.pixel_scale.to_value("arcsec")
    filters = [survey.get_filter(b) for b in config.bands]
    sky = np.array([mean_sky_level(survey, f).to_value("electron") for f in filters], float)
    sigma = np.sqrt(sky)
    fwhm = max(float(f.psf_fwhm.to_value("arcsec")) for f in filters)
    size, n_bands = config.size, len(config.bands)
    centre = (size - 1) / 2.0
    _, noise_stream, defect_stream, _, _ = _streams(config.seed)

    cat = field_catalog(config, table)
    n = len(cat)
    x = centre - np.asarray(cat["xi"], float) / scale  # east is left
    y = centre + np.asarray(cat["eta"], float) / scale
    inside = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
    star = np.asarray(cat["star"], bool)

    model = np.zeros((n_bands, size, size), np.float64)
    flux = np.zeros((n, n_bands))
    flux_in = np.zeros((n, n_bands))
    peak = np.zeros((n, n_bands))
    footprints: list[tuple[slice, slice, np.ndarray] | None] = [None] * n
    field_bounds = galsim.BoundsI(1, size, 1, size)
    with tqdm(total=n, desc="drawing galaxies" + (" and stars" if star.any() else ""),
              unit="obj", disable=not progress) as bar:
        for k, entry in enumerate(cat):
            half = stamp_half_size(entry, fwhm, scale)
            if star[k] and float(entry["i_ab"]) < 19.0:
                half = STAR_HALF_STAMP
            footprint = None
            for b, (filt, psf) in enumerate(zip(filters, psfs)):
                stamp = draw_galaxy(entry, filt, survey, psf, x[k], y[k], half)
                if stamp is None:
                    continue
                flux[k, b] = stamp.array.sum()
                peak[k, b] = stamp.array.max()
                over = stamp.bounds & field_bounds
                if not over.isDefined():
                    continue
                part = stamp[over].array
                rows = slice(over.ymin - 1, over.ymax)
                cols = slice(over.xmin - 1, over.xmax)
                model[b, rows, cols] += part
                flux_in[k, b] = part.sum()
                above = part > sigma[b]
                footprint = (rows, cols, above if footprint is None else footprint[2] | above)
            if footprint is not None and footprint[2].any():
                footprints[k] = footprint
            bar.update(1)

    # noise: Poisson of source and sky, sky subtracted (as BTK)
    expected = sky[:, None, None] + np.clip(model, 0.0, None)
    variance = expected.astype(np.float32)
    if config.noise:
        image = np.empty((n_bands, size, size), np.float32)
        for b, stream in enumerate(noise_stream.spawn(n_bands)):
            rng = np.random.default_rng(stream)
            image[b] = rng.poisson(expected[b]) - sky[b]
    else:
        image = model.astype(np.float32)
    del expected

    # defects
    mask = np.zeros((n_bands, size, size), np.int32)
    header: dict[str, tuple[Any, str]] = {}
    total = flux.sum(axis=1)
    galaxy_inside = inside & ~star  # the level is the galaxies' (a bright star saturates more)
    if config.saturate and galaxy_inside.any():
        brightest = int(np.flatnonzero(galaxy_inside)[np.argmax(total[galaxy_inside])])
        floor = _star_saturation(survey, filters, psfs) if star.any() else np.zeros(n_bands)
        for b, band in enumerate(config.bands):
            level = max(SAT_FRACTION * peak[brightest, b], floor[b])
            if level <= 0:
                continue
            saturated = image[b] >= level
            image[b][saturated] = np.nan
            mask[b][saturated] |= 1 << MASK_PLANES["SAT"]
            header[f"SATLEV_{band.upper()}"] = (float(level), f"{band} saturation level, electron")
    column_x = np.random.default_rng(defect_stream).integers(0, size, n_bands)
    if config.bad_columns:
        for b, band in enumerate(config.bands):
            image[b, :, column_x[b]] = BAD_VALUE
            mask[b, :, column_x[b]] |= 1 << MASK_PLANES["BAD"]
            header[f"BADCOL_{band.upper()}"] = (int(column_x[b]), f"bad column x in band {band}")

    flagged = mask.any(axis=0)
    masked = np.array(
        [fp is not None and bool(flagged[fp[0], fp[1]][fp[2]].any()) for fp in footprints], bool
    )

    wcs = make_wcs(config)
    ra, dec = wcs.pixel_to_world_values(x, y) if n else (np.zeros(0), np.zeros(0))
    truth = _truth_table(config, cat, x, y, ra, dec, flux, flux_in, inside, masked, star)
    return Field(image, variance, mask, model, truth, wcs, header)


def _star_saturation(survey: Any, filters: list, psfs: list) -> np.ndarray:
    """Per band, the saturation level of a field with stars: the peak pixel of a point source
    of i = :data:`STAR_SATURATION_MAG` in every band (electrons)."""
    from surveycodex.utilities import mag2counts

    scale = survey.pixel_scale.to_value("arcsec")
    out = []
    for filt, psf in zip(filters, psfs):
        flux = mag2counts(STAR_SATURATION_MAG, survey, filt).to_value("electron")
        out.append(flux * psf.drawImage(nx=15, ny=15, scale=scale).array.max())
    return np.asarray(out, np.float64)


def _truth_table(config, cat, x, y, ra, dec, flux, flux_in, inside, masked, star) -> Any:
    from astropy.table import Table

    total = flux.sum(axis=1)
    order = np.argsort(-total, kind="stable")  # brightest first
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, flux_in.sum(axis=1) / np.where(total > 0, total, 1.0), 0.0)
    columns: dict[str, Any] = {
        "id": np.arange(len(cat), dtype=np.int64),
        "catalog_id": np.asarray(cat["galtileid"], np.int64)[order],
        "x": np.asarray(x, np.float64)[order],
        "y": np.asarray(y, np.float64)[order],
        "ra": np.asarray(ra, np.float64)[order] % 360.0,
        "dec": np.asarray(dec, np.float64)[order],
        "inside": inside[order],
        "frac_inside": frac[order],
        "masked": masked[order],
        "star": np.asarray(star, bool)[order],
    }
    for band in config.bands:
        columns[f"{band}_ab"] = np.asarray(cat[f"{band}_ab"], np.float64)[order]
    for b, band in enumerate(config.bands):
        columns[f"flux_{band}"] = flux[order, b]
    table = Table(columns)
    units = {"x": "pix", "y": "pix", "ra": "deg", "dec": "deg"}
    for name, unit in units.items():
        table[name].unit = unit
    for band in config.bands:
        table[f"{band}_ab"].unit = "mag"
    return table


# ------------------------------------------------------------------------------------ writing


def _common_header(config: FieldConfig, n_gal: int, n_inside: int, n_star: int) -> list[tuple]:
    return [
        ("SURVEY", config.survey, "BTK/surveycodex survey"),
        ("PIXSCALE", config.pixel_scale, "arcsec per pixel"),
        ("PSFSCALE", config.psf_scale, "atmospheric PSF FWHM x the survey's nominal"),
        ("EXPSCALE", config.exposure_scale, "exposure time x the survey's full (10-year) one"),
        *[(FieldConfig.psf_card(band), fwhm, f"{band} PSF FWHM, arcsec (atmosphere)")
          for band, fwhm in zip(config.bands, config.psf_fwhm)],
        ("SEED", config.seed, "field random seed"),
        (
            "CATSEED",
            catalog_seed(config.seed) if config.catalog is None else -1,
            "seed of the built-in catalog (-1: a file)",
        ),
        ("MAXMAG", config.max_mag, "faintest i-band AB magnitude drawn"),
        ("MARGIN", config.margin, "arcsec outside the field also drawn"),
        ("NOISE", config.noise, "Poisson noise of source and sky added"),
        ("NGAL", n_gal, "galaxies drawn (field and margin)"),
        ("NINSIDE", n_inside, "galaxies centred inside the field"),
        ("STARS", config.stars, "stars per arcmin^2 drawn"),
        ("NSTAR", n_star, "stars drawn (field and margin)"),
    ]


def _mask_header(header: Any) -> None:
    for name, bit in MASK_PLANES.items():
        key = f"MP_{name}" if len(f"MP_{name}") <= 8 else f"HIERARCH MP_{name}"
        header[key] = (bit, f"mask plane bit of {name}")


def write_field(field: Field, config: FieldConfig, folder: str | os.PathLike) -> None:
    """Write ``field`` into an existing folder (see :func:`simulate_field` for the layout)."""
    from astropy.io import fits

    folder = Path(folder)
    truth = field.truth
    star = np.asarray(truth["star"], bool)
    common = _common_header(config, int((~star).sum()), int(np.sum(truth["inside"] & ~star)),
                            int(star.sum()))
    wcs_header = field.wcs.to_header()

    primary = fits.PrimaryHDU(field.image)
    h = primary.header
    h["BANDS"] = (",".join(config.bands), "band of each channel")
    h["BUNIT"] = ("electron", "electrons per pixel, sky subtracted")
    for key, value, comment in common:
        h[key] = (value, comment)
    h["BADVAL"] = (BAD_VALUE, "value of the pixels of bad columns")
    for key, (value, comment) in field.header.items():
        h[key] = (value, comment)
    h.extend(wcs_header)
    variance = fits.ImageHDU(field.variance, name="VARIANCE")
    variance.header["BUNIT"] = ("electron**2", "expected variance: sky + model")
    variance.header.extend(wcs_header)
    mask = fits.ImageHDU(field.mask, name="MASK")
    _mask_header(mask.header)
    mask.header.extend(wcs_header)
    fits.HDUList([primary, variance, mask]).writeto(folder / "field.fits")

    table = fits.BinTableHDU(truth, name="TRUTH")
    th = table.header
    th["SIZE"] = (config.size, "field side, pixels (square field)")
    th["BANDS"] = (",".join(config.bands), "bands of the field")
    for key, value, comment in common:
        th[key] = (value, comment)
    th["FLUXUNIT"] = ("electron", "unit of flux_<band> (not a FITS unit: no TUNIT)")
    th["XYCONV"] = ("0-based", "x, y: pixel i spans i-0.5 to i+0.5")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(folder / "truth.fits")

    if config.per_band:
        for b, band in enumerate(config.bands):
            image = fits.ImageHDU(field.image[b], name="IMAGE")
            ih = image.header
            ih.extend(wcs_header)
            ih["FILTER"] = (band, "band")
            ih["BUNIT"] = ("electron", "electrons per pixel, sky subtracted")
            for key, value, comment in common:
                ih[key] = (value, comment)
            level = field.header.get(f"SATLEV_{band.upper()}")
            if level is not None:
                ih["SATURATE"] = (level[0], "saturation level, electron")
            mhdu = fits.ImageHDU(field.mask[b], name="MASK")
            _mask_header(mhdu.header)
            mhdu.header.extend(wcs_header)
            vhdu = fits.ImageHDU(field.variance[b], name="VARIANCE")
            vhdu.header["BUNIT"] = ("electron**2", "expected variance: sky + model")
            vhdu.header.extend(wcs_header)
            fits.HDUList([fits.PrimaryHDU(), image, mhdu, vhdu]).writeto(
                folder / f"field_{band}.fits"
            )
    config.to_yaml(folder / "config.yaml")


def simulate_field(
    config: FieldConfig,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    table: Any = None,
) -> Path:
    """Draw the field of ``config`` and write it into ``out_dir`` (atomically).

    Files:

    - ``field.fits``: primary HDU the image ``(C, H, W)`` float32 (header ``BANDS``,
      ``BUNIT = 'electron'``, ``PIXSCALE``, ``SURVEY``, ``SEED``, ``CATSEED``, ``MAXMAG``,
      ``MARGIN``, ``NOISE``, ``NGAL``, ``NINSIDE``, ``STARS``, ``NSTAR``, ``BADVAL``, ``SATLEV_<B>`` and
      ``BADCOL_<B>`` per band when used, and the TAN WCS); ``VARIANCE`` ``(C, H, W)`` float32;
      ``MASK`` ``(C, H, W)`` int32 with ``MP_BAD = 0``, ``MP_SAT = 1``, ``MP_NO_DATA = 8``.
    - ``truth.fits``: table HDU ``TRUTH``, one row per drawn galaxy, brightest (summed flux)
      first: ``id`` (row number), ``catalog_id`` (``galtileid``), ``x``, ``y`` (0-based pixel of
      the centre, as :mod:`tfdeblend.measure`), ``ra``, ``dec`` (deg, from the WCS),
      ``inside`` (centre in the field), ``frac_inside`` (fraction of its noiseless flux, summed
      over bands, that falls in the field), ``masked`` (a pixel where its noiseless light is
      above 1 sky sigma in some band is flagged in some band's mask), ``star`` (a star, not
      a galaxy: ``catalog_id`` -1, -2, ...), ``<band>_ab``,
      ``flux_<band>`` (electrons: the sum of its noiseless stamp, inside the field or not).
      Header: ``SIZE`` (side, pixels), ``FLUXUNIT = 'electron'``, ``BANDS``, ``PIXSCALE`` and the keys above.
    - ``config.yaml``: the :class:`FieldConfig`.
    - with ``per_band``: ``field_<band>.fits``: empty primary, ``IMAGE`` (WCS, ``FILTER``,
      ``BUNIT``, ``SATURATE``), ``MASK`` (``MP_*``), ``VARIANCE``.

    Args:
        config: the field.
        out_dir: output directory (refused if it exists, unless ``overwrite``).
        overwrite: replace an existing ``out_dir``.
        progress: tqdm progress bar over the galaxies.
        table: CatSim table to use instead of ``config.catalog`` (Python use).

    Returns:
        The output directory.
    """
    out = check_output_path(out_dir, overwrite)
    if out.exists() and not out.is_dir():
        raise TfdeblendError(f"{out} exists and is not a directory")
    field = render_field(config, table=table, progress=progress)
    try:
        with atomic_dir(out) as tmp:
            write_field(field, config, tmp)
    except OSError as err:
        raise TfdeblendError(f"cannot write {out}: {err.strerror or err}") from None
    return out
