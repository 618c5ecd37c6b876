"""CatSim-format galaxy catalogs: reading, validation and the built-in synthesizer.

The paper (Wang et al. 2021) drew its galaxies from the LSST CatSim catalog ``OneDegSq.fits``,
which cannot be downloaded here. :func:`synthesize_catalog` builds a catalog with the same
columns and units, so ``btk.catalog.CatsimCatalog`` and ``btk.draw_blends.CatsimGenerator`` draw
it unchanged. The galaxy population is an empirical model calibrated to the OneDegSq reference
numbers (:data:`ONEDEGSQ_TARGETS`), with colours computed from the kcorrect SED templates shipped
with SkyPy through the LSST filter curves shipped with speclite. See ``docs/catalog.md``.

Columns (one row per galaxy, see :data:`CATSIM_COLUMNS`):

=================  =======  ==========================================================
column             unit     meaning
=================  =======  ==========================================================
``galtileid``               unique int64 identifier
``ra``, ``dec``    deg      position, uniform over a square patch centred on (0, 0)
``redshift``                redshift
``fluxnorm_*``              SED scale factors of bulge, disk and AGN; BTK uses only their
                            ratios (bulge-to-total ``B/T``, identical in every band)
``a_b``, ``b_b``   arcsec   semi-major / semi-minor axis of the bulge's 50%-light ellipse
``a_d``, ``b_d``   arcsec   the same for the disk; 0 for an absent component
``pa_bulge``,      deg      position angle of each component (equal, as BTK requires)
``pa_disk``
``u_ab`` ...       mag      total AB magnitudes in the LSST u, g, r, i, z, y bands
``y_ab``
=================  =======  ==========================================================

BTK draws the disk as an exponential profile and the bulge as a de Vaucouleurs profile, each
with half-light radius ``sqrt(a * b)`` and axis ratio ``q = b / a``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from astropy.table import Table

from tfdeblend.errors import CatalogError, TfdeblendError
from tfdeblend.utils import atomic_file, check_output_path

#: Version of the synthesizer's model; part of the cache key of :func:`load_default_catalog`.
SYNTHESIZER_VERSION = "1"

#: LSST bands, in order.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")

#: The columns a CatSim catalog must have for BTK's ``CatsimGenerator``.
CATSIM_COLUMNS: tuple[str, ...] = (
    "galtileid",
    "ra",
    "dec",
    "redshift",
    "fluxnorm_bulge",
    "fluxnorm_disk",
    "fluxnorm_agn",
    "a_b",
    "b_b",
    "a_d",
    "b_d",
    "pa_bulge",
    "pa_disk",
    "u_ab",
    "g_ab",
    "r_ab",
    "i_ab",
    "z_ab",
    "y_ab",
)

# ra/dec carry no unit: BTK's samplers overwrite them in place with offsets in arcsec, and a
# "deg" unit left on those columns would mislabel them downstream.
_UNITS = {
    "a_b": "arcsec",
    "b_b": "arcsec",
    "a_d": "arcsec",
    "b_d": "arcsec",
    "pa_bulge": "deg",
    "pa_disk": "deg",
    **{f"{band}_ab": "mag" for band in BANDS},
}

_DESCRIPTIONS = {
    "galtileid": "unique galaxy id",
    "ra": "right ascension (deg)",
    "dec": "declination (deg)",
    "redshift": "redshift",
    "fluxnorm_bulge": "bulge SED scale factor (only ratios used)",
    "fluxnorm_disk": "disk SED scale factor (only ratios used)",
    "fluxnorm_agn": "AGN SED scale factor (only ratios used)",
    "a_b": "bulge 50% light semi-major axis (arcsec)",
    "b_b": "bulge 50% light semi-minor axis (arcsec)",
    "a_d": "disk 50% light semi-major axis (arcsec)",
    "b_d": "disk 50% light semi-minor axis (arcsec)",
    "pa_bulge": "bulge position angle (deg)",
    "pa_disk": "disk position angle (deg)",
    **{f"{band}_ab": f"LSST {band} AB magnitude" for band in BANDS},
}

#: Reference statistics of CatSim's OneDegSq.fits for the gold sample i < 25.3
#: (see /work/shared/FACTS.md). Densities in galaxies per arcmin^2, sizes in arcsec.
ONEDEGSQ_TARGETS: dict[str, float] = {
    "density": 53.7,
    "rms_ellipticity": 0.237,
    "frac_disk_only": 0.381,
    "frac_small_bulge": 0.414,
    "frac_large_bulge": 0.205,
    "median_a_disk": 0.37,
}

#: Tolerances used by the tests and quoted in docs/catalog.md (absolute for ellipticity and
#: fractions, relative for density and size).
TOLERANCES: dict[str, float] = {
    "density": 0.10,
    "rms_ellipticity": 0.03,
    "frac_disk_only": 0.05,
    "frac_small_bulge": 0.05,
    "frac_large_bulge": 0.05,
    "median_a_disk": 0.20,
}

GOLD_MAX_MAG = 25.3  #: BTK's default magnitude cut (i band), the "gold sample"
BRIGHT_MAG = 16.0  #: brightest i-band magnitude synthesized
FAINT_MAG = 26.5  #: faintest i-band magnitude synthesized (CatSim goes deeper; see docs)

# --- model parameters -----------------------------------------------------------------------
# Differential number counts d log10 N / dm: steeper at bright magnitudes, ~0.31 at the faint
# end (deep i-band counts, e.g. HSC / CFHTLS), broken at i = 21; normalised so that the density
# at i < 25.3 is the OneDegSq value.
_COUNT_SLOPE_BRIGHT = 0.45
_COUNT_SLOPE_FAINT = 0.31
_COUNT_BREAK = 21.0
# Redshift given i magnitude: p(z) ~ z^2 exp(-z / z0), z0 = 0.0417 i - 0.744 (LSST Science Book,
# eq. 3.8, from DEEP2 / Coil et al. 2004), floored for bright galaxies.
_Z0_SLOPE, _Z0_INTERCEPT, _Z0_FLOOR = 0.0417, -0.744, 0.05
_Z_MAX = 4.0
# Fraction of red (early-type) galaxies versus i magnitude: linear, clipped.
_RED_AT_20, _RED_SLOPE, _RED_MIN, _RED_MAX = 0.40, -0.065, 0.08, 0.45
# Red galaxies: probability of a small bulge (0 < B/T <= 0.1), otherwise B/T > 0.1, of which a
# fraction are pure bulges (B/T = 1).
_RED_P_SMALL, _RED_P_PURE_BULGE = 0.05, 0.25
# Disk semi-major axis: log-normal, log10 a = log10(0.355) - 0.1 (i - 24.3) +- 0.2 dex (sizes
# shrink by ~0.1 dex per magnitude in deep HST fields); bulges are smaller than their disks.
_SIZE_A0, _SIZE_IREF, _SIZE_SLOPE, _SIZE_SCATTER = 0.355, 24.3, -0.10, 0.20
_BULGE_TO_DISK_SIZE, _BULGE_SIZE_SCATTER = 0.45, 0.10
_PURE_BULGE_SIZE = 0.6  # pure bulges: this times the disk relation
_SIZE_MIN, _SIZE_MAX = 0.05, 6.0
# Intrinsic ellipticity e = (1 - q) / (1 + q): each component of (e1, e2) Gaussian with this
# dispersion (|e| Rayleigh, RMS |e| = sqrt(2) * sigma = 0.237), truncated at |e| < 0.8.
_ELLIPTICITY_SIGMA = 0.237 / np.sqrt(2.0)
_ELLIPTICITY_MAX = 0.8
# Herbel et al. (2017) Dirichlet parameters for the five kcorrect templates (as in SkyPy's
# optical photometry example): alpha(z) = alpha0^(1 - z) * alpha1^z, coefficients * weight.
_HERBEL = {
    "blue": (
        np.array([2.079, 3.524, 1.917, 1.992, 2.536]),
        np.array([2.265, 3.862, 1.921, 1.685, 2.480]),
        np.array([3.47e09, 3.31e06, 2.13e09, 1.64e10, 1.01e09]),
    ),
    "red": (
        np.array([2.461, 2.358, 2.568, 2.268, 2.402]),
        np.array([2.410, 2.340, 2.200, 2.540, 2.464]),
        np.array([3.84e09, 1.57e06, 3.91e08, 4.66e10, 3.03e07]),
    ),
}
_Z_GRID = np.linspace(0.0, _Z_MAX, 401)


def _count_cumulative(mag: np.ndarray) -> np.ndarray:
    """Un-normalised cumulative counts N(< mag) of the broken power law (0 at BRIGHT_MAG)."""
    mag = np.asarray(mag, dtype=float)
    # integrate dN/dm = 10^(s (m - break)) piecewise, continuous at the break
    bright = 10 ** (_COUNT_SLOPE_BRIGHT * (np.minimum(mag, _COUNT_BREAK) - _COUNT_BREAK))
    bright = (bright - 10 ** (_COUNT_SLOPE_BRIGHT * (BRIGHT_MAG - _COUNT_BREAK))) / (
        _COUNT_SLOPE_BRIGHT * np.log(10)
    )
    faint = (10 ** (_COUNT_SLOPE_FAINT * (np.maximum(mag, _COUNT_BREAK) - _COUNT_BREAK)) - 1) / (
        _COUNT_SLOPE_FAINT * np.log(10)
    )
    return bright + faint


def _red_fraction(i_mag: np.ndarray) -> np.ndarray:
    """Fraction of red (early-type) galaxies at i-band magnitude ``i_mag``."""
    return np.clip(_RED_AT_20 + _RED_SLOPE * (np.asarray(i_mag) - 20.0), _RED_MIN, _RED_MAX)


@functools.lru_cache(maxsize=1)
def _bulge_probabilities() -> dict[str, float]:
    """Per-type probabilities of disk only / small bulge / large bulge.

    The red-galaxy probabilities are fixed; the blue ones are solved so that the gold sample
    (i < 25.3) matches the OneDegSq mix exactly in expectation, given the number counts and
    the red fraction versus magnitude.
    """
    mags = np.linspace(BRIGHT_MAG, GOLD_MAX_MAG, 4001)
    density = np.gradient(_count_cumulative(mags), mags)
    red = float(np.sum(_red_fraction(mags) * density) / np.sum(density))
    blue = 1.0 - red
    t = ONEDEGSQ_TARGETS
    p_disk = t["frac_disk_only"] / blue
    p_small = (t["frac_small_bulge"] - _RED_P_SMALL * red) / blue
    return {
        "mean_red": red,
        "blue_disk_only": p_disk,
        "blue_small_bulge": p_small,
        "blue_large_bulge": 1.0 - p_disk - p_small,
    }


@functools.lru_cache(maxsize=1)
def _template_maggies() -> np.ndarray:
    """AB maggies of the five kcorrect templates through the LSST filters on a redshift grid.

    The template (rest-frame ``f_lambda``) is moved to redshift z by stretching its wavelengths
    by ``1 + z``; the AB maggies are ``int f_lambda R lambda dlambda / int c f0 R / lambda
    dlambda`` with ``f0`` = 3631 Jy (photon-counting filter response ``R``, as speclite does).
    The common factor ``1 / (1 + z)`` (and distance) is dropped: only colours are used.

    Returns:
        Array (5 templates, len(_Z_GRID), 6 bands).
    """
    from importlib import resources

    import speclite.filters
    from astropy.io import fits

    path = resources.files("skypy") / "data/kcorrect/k_nmf_derived.default.fits"
    with fits.open(str(path)) as hdul:
        templates = np.asarray(hdul[1].data, dtype=float)  # (5, nwave) erg/s/cm^2/A
        wavelength = np.asarray(hdul[11].data, dtype=float)  # Angstrom, rest frame
    c_f0 = 2.99792458e18 * 3631e-23  # Angstrom/s * erg/s/cm^2/Hz
    out = np.empty((templates.shape[0], _Z_GRID.size, len(BANDS)))
    for b, band in enumerate(BANDS):
        response = speclite.filters.load_filter(f"lsst2023-{band}")
        lam_f = np.asarray(response.wavelength, dtype=float)
        r_f = np.asarray(response.response, dtype=float)
        norm = c_f0 * np.trapezoid(r_f / lam_f, lam_f)
        # restrict the rest-frame grid to what can fall in the filter at some redshift
        keep = (wavelength * (1 + _Z_GRID[-1]) >= lam_f[0]) & (wavelength <= lam_f[-1])
        lam_rest, f_rest = wavelength[keep], templates[:, keep]
        lam_obs = lam_rest[None, :] * (1.0 + _Z_GRID[:, None])  # (nz, nw)
        weight = np.interp(lam_obs, lam_f, r_f, left=0.0, right=0.0) * lam_obs
        dlam = np.gradient(lam_obs, axis=1)
        out[:, :, b] = np.einsum("kw,zw->kz", f_rest, weight * dlam) / norm
    return out


def _positions(rng: np.random.Generator, n: int, area_deg2: float) -> tuple[np.ndarray, ...]:
    """Uniform positions (deg) on a square patch of ``area_deg2`` centred on (0, 0)."""
    side = np.sqrt(area_deg2)
    return rng.uniform(-side / 2, side / 2, n), rng.uniform(-side / 2, side / 2, n)


def _ellipticity(rng: np.random.Generator, n: int) -> np.ndarray:
    """|e| = (1 - q) / (1 + q) for ``n`` components: 2D Gaussian, truncated at |e| < 0.8."""
    e = np.hypot(*rng.normal(0.0, _ELLIPTICITY_SIGMA, (2, n)))
    bad = e >= _ELLIPTICITY_MAX
    while np.any(bad):
        e[bad] = np.hypot(*rng.normal(0.0, _ELLIPTICITY_SIGMA, (2, int(bad.sum()))))
        bad = e >= _ELLIPTICITY_MAX
    return e


def synthesize_catalog(area_deg2: float = 0.1, seed: int = 0, max_mag: float = FAINT_MAG) -> Table:
    """Synthesize a CatSim-format galaxy catalog.

    The model, in order: i-band magnitudes from broken power-law number counts (Poisson total),
    redshift given magnitude, red/blue type given magnitude, kcorrect SED coefficients given
    type and redshift (Herbel et al. 2017), colours through the LSST filters, bulge-to-total
    ratio given type, log-normal sizes given magnitude, Gaussian intrinsic ellipticities and
    uniform position angles. Deterministic for a given ``(area_deg2, seed, max_mag)``.

    Args:
        area_deg2: area of the square patch in deg^2 (centred on ra = dec = 0).
        seed: random seed.
        max_mag: faintest i-band AB magnitude (at most 26.5; BTK draws only i < 25.3 by default).

    Returns:
        Table with :data:`CATSIM_COLUMNS` (units in the column metadata), ``meta['AREA']`` in
        deg^2, ``meta['SEED']`` and ``meta['SYNTHVER']``.

    Raises:
        TfdeblendError: ``area_deg2`` is not positive or above 10 deg^2, or ``max_mag`` is out
            of range.

    Example:
        >>> cat = synthesize_catalog(area_deg2=0.001, seed=1)
        >>> bool((cat["i_ab"] < 26.5).all())
        True
    """
    try:
        area_deg2 = float(area_deg2)
        max_mag = float(max_mag)
    except (TypeError, ValueError) as err:
        raise TfdeblendError(f"area and max_mag must be numbers: {err}") from None
    if not np.isfinite(area_deg2) or area_deg2 <= 0:
        raise TfdeblendError(f"catalog area must be positive, got {area_deg2} deg^2")
    if area_deg2 > 10:
        raise TfdeblendError(
            f"catalog area {area_deg2} deg^2 is too large (at most 10, ~4.6 million galaxies)"
        )
    if not BRIGHT_MAG < max_mag <= FAINT_MAG:
        raise TfdeblendError(f"max_mag must be in ({BRIGHT_MAG}, {FAINT_MAG}], got {max_mag}")

    rng = np.random.default_rng(seed)
    area_arcmin2 = area_deg2 * 3600.0

    # 1. i-band magnitudes: inverse-CDF sampling of the number counts.
    norm = ONEDEGSQ_TARGETS["density"] / _count_cumulative(GOLD_MAX_MAG)
    n_total = int(rng.poisson(norm * _count_cumulative(max_mag) * area_arcmin2))
    mag_grid = np.linspace(BRIGHT_MAG, max_mag, 20001)
    cdf = _count_cumulative(mag_grid)
    i_mag = np.interp(rng.uniform(0.0, cdf[-1], n_total), cdf, mag_grid)

    # 2. redshift | i: Gamma(3, z0(i)).
    z0 = np.maximum(_Z0_SLOPE * i_mag + _Z0_INTERCEPT, _Z0_FLOOR)
    redshift = rng.gamma(3.0, z0)
    high = redshift > _Z_MAX - 0.01
    while np.any(high):
        redshift[high] = rng.gamma(3.0, z0[high])
        high = redshift > _Z_MAX - 0.01

    # 3. type | i, SED coefficients | type, z (Dirichlet, Herbel et al. 2017).
    red = rng.uniform(size=n_total) < _red_fraction(i_mag)
    coeffs = np.empty((n_total, 5))
    for name, mask in (("red", red), ("blue", ~red)):
        alpha0, alpha1, weight = _HERBEL[name]
        z = redshift[mask, None]
        alpha = alpha0 ** (1.0 - z) * alpha1**z
        c = rng.gamma(alpha) * weight
        coeffs[mask] = c / c.sum(axis=1, keepdims=True)

    # 4. colours: template maggies interpolated in redshift, magnitudes relative to i.
    grid = _template_maggies()  # (5, nz, 6)
    pos = np.interp(redshift, _Z_GRID, np.arange(_Z_GRID.size))
    lo = np.minimum(pos.astype(int), _Z_GRID.size - 2)
    frac = (pos - lo)[:, None, None]
    per_template = (
        grid[:, lo, :].transpose(1, 0, 2) * (1 - frac)
        + grid[:, lo + 1, :].transpose(1, 0, 2) * frac
    )  # (n, 5, 6)
    maggies = np.einsum("nk,nkb->nb", coeffs, per_template)
    i_index = BANDS.index("i")
    mags = i_mag[:, None] - 2.5 * np.log10(maggies / maggies[:, i_index : i_index + 1])

    # 5. bulge-to-total ratio | type.
    probs = _bulge_probabilities()
    u = rng.uniform(size=n_total)
    bt = np.zeros(n_total)
    small_red = red & (u < _RED_P_SMALL)
    large_red = red & ~small_red
    small_blue = (
        ~red
        & (u >= probs["blue_disk_only"])
        & (u < probs["blue_disk_only"] + probs["blue_small_bulge"])
    )
    large_blue = ~red & (u >= probs["blue_disk_only"] + probs["blue_small_bulge"])
    small = small_red | small_blue
    bt[small] = rng.uniform(0.0, 0.1, int(small.sum()))
    bt[small] = np.maximum(bt[small], 1e-3)
    bt[large_blue] = rng.uniform(0.1, 0.5, int(large_blue.sum()))
    pure = large_red & (rng.uniform(size=n_total) < _RED_P_PURE_BULGE)
    bt[large_red] = rng.uniform(0.1, 1.0, int(large_red.sum()))
    bt[pure] = 1.0
    bt[(bt > 0.1) & (bt < 0.1 + 1e-6)] = 0.1 + 1e-6  # keep the classes unambiguous

    # 6. sizes (arcsec): log-normal disk semi-major axis | i; bulges smaller.
    log_a = np.log10(_SIZE_A0) + _SIZE_SLOPE * (i_mag - _SIZE_IREF)
    a_disk = 10 ** (log_a + rng.normal(0.0, _SIZE_SCATTER, n_total))
    a_bulge = a_disk * 10 ** (
        np.log10(_BULGE_TO_DISK_SIZE) + rng.normal(0.0, _BULGE_SIZE_SCATTER, n_total)
    )
    a_bulge[pure] = _PURE_BULGE_SIZE * a_disk[pure]
    a_disk = np.clip(a_disk, _SIZE_MIN, _SIZE_MAX)
    a_bulge = np.clip(a_bulge, _SIZE_MIN, _SIZE_MAX)

    # 7. shapes: axis ratios from |e|, one position angle per galaxy (BTK requires equal ones).
    e_disk, e_bulge = _ellipticity(rng, n_total), _ellipticity(rng, n_total)
    b_disk = a_disk * (1 - e_disk) / (1 + e_disk)
    b_bulge = a_bulge * (1 - e_bulge) / (1 + e_bulge)
    has_disk, has_bulge = bt < 1.0, bt > 0.0
    a_disk, b_disk = np.where(has_disk, a_disk, 0.0), np.where(has_disk, b_disk, 0.0)
    a_bulge, b_bulge = np.where(has_bulge, a_bulge, 0.0), np.where(has_bulge, b_bulge, 0.0)
    pa = rng.uniform(0.0, 180.0, n_total)

    ra, dec = _positions(rng, n_total, area_deg2)
    # SED scale factors: ~1e-18 at i = 25 like CatSim's; only the ratios matter to BTK.
    fluxnorm = 10 ** (-0.4 * (i_mag + 20.0))

    columns = {
        "galtileid": np.arange(1, n_total + 1, dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "redshift": redshift,
        "fluxnorm_bulge": fluxnorm * bt,
        "fluxnorm_disk": fluxnorm * (1.0 - bt),
        "fluxnorm_agn": np.zeros(n_total),
        "a_b": a_bulge,
        "b_b": b_bulge,
        "a_d": a_disk,
        "b_d": b_disk,
        "pa_bulge": pa,
        "pa_disk": pa.copy(),
        **{f"{band}_ab": mags[:, k] for k, band in enumerate(BANDS)},
    }
    table = Table(columns)
    for name, unit in _UNITS.items():
        table[name].unit = unit
    for name, text in _DESCRIPTIONS.items():
        table[name].description = text
    table.meta["AREA"] = area_deg2
    table.meta["SEED"] = int(seed)
    table.meta["MAXMAG"] = max_mag
    table.meta["SYNTHVER"] = SYNTHESIZER_VERSION
    table.meta["COMMENT"] = ["Synthetic CatSim-format catalog made by tfdeblend.catalog"]
    return table


def validate_catalog(table: Table, name: str = "catalog") -> Table:
    """Check that ``table`` has every CatSim column and at least one row.

    Args:
        table: the catalog.
        name: how to call it in error messages (e.g. its path).

    Returns:
        The same table.

    Raises:
        CatalogError: missing columns (all named) or an empty table.
    """
    missing = [column for column in CATSIM_COLUMNS if column not in table.colnames]
    if missing:
        raise CatalogError(f"catalog {name} is missing columns: {', '.join(missing)}")
    if len(table) == 0:
        raise CatalogError(f"catalog {name} is empty")
    return table


def read_catalog(path: str | os.PathLike) -> Table:
    """Read and validate a CatSim catalog (FITS, or any format astropy reads).

    Args:
        path: catalog file.

    Returns:
        The table (all columns of the file).

    Raises:
        CatalogError: the file is missing or unreadable, lacks CatSim columns, or is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog {path} does not exist")
    try:
        table = Table.read(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad user file
        try:
            table = Table.read(path, format="ascii.basic")
        except Exception:  # noqa: BLE001
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CatalogError(f"cannot read catalog {path}: {first}") from None
    return validate_catalog(table, str(path))


def write_catalog(table: Table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a validated catalog atomically (FITS when the name ends in ``.fits``).

    Note that ``btk.catalog.CatsimCatalog.from_file`` reads FITS only from files ending in
    ``.fits`` (anything else is read as whitespace-separated ASCII).

    Args:
        table: the catalog.
        path: output file.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        CatalogError: the table is not a valid catalog.
        TfdeblendError: the file exists (without ``overwrite``) or cannot be written.
    """
    validate_catalog(table, "to write")
    path = check_output_path(path, overwrite)
    suffix = path.name.lower()
    fmt = "fits" if suffix.endswith((".fits", ".fit", ".fits.gz")) else None
    try:
        with atomic_file(path) as tmp:
            if fmt is None:
                table.write(
                    tmp,
                    format="ascii.ecsv" if suffix.endswith(".ecsv") else "ascii.basic",
                    overwrite=True,
                )
            else:
                table.write(tmp, format=fmt, overwrite=True)
    except OSError as err:
        raise TfdeblendError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def _cache_dir() -> Path:
    base = os.environ.get("TFDEBLEND_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tfdeblend"


def load_default_catalog(area_deg2: float = 0.1, seed: int = 0) -> Table:
    """The built-in catalog, used when no ``--catalog`` is given.

    Synthesized with :func:`synthesize_catalog` and cached as FITS under
    ``~/.cache/tfdeblend/`` (or ``$TFDEBLEND_CACHE``, or ``$XDG_CACHE_HOME/tfdeblend``), keyed
    by synthesizer version, area and seed. An unwritable cache is ignored.

    Args:
        area_deg2: area in deg^2.
        seed: random seed.

    Returns:
        The catalog table.
    """
    name = f"catalog-v{SYNTHESIZER_VERSION}-area{float(area_deg2):g}-seed{int(seed)}.fits"
    path = _cache_dir() / name
    if path.is_file():
        try:
            return read_catalog(path)
        except CatalogError:
            pass  # corrupt cache: rebuild below
    table = synthesize_catalog(area_deg2=area_deg2, seed=seed)
    try:
        with atomic_file(path) as tmp:
            table.write(tmp, format="fits", overwrite=True)
    except OSError:
        pass
    return table


def _ellipticity_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q = np.where(a > 0, b / np.where(a > 0, a, 1.0), 1.0)
    return (1.0 - q) / (1.0 + q)


def _area_deg2(table: Table) -> float:
    area = table.meta.get("AREA")
    if area is not None:
        return float(area)
    ra, dec = np.asarray(table["ra"], float), np.asarray(table["dec"], float)
    ra = (ra + 180.0) % 360.0 - 180.0 if np.ptp(ra) > 180 else ra
    return float(np.ptp(ra) * np.cos(np.deg2rad(np.mean(dec))) * np.ptp(dec))


def catalog_statistics(table: Table, max_mag: float = GOLD_MAX_MAG) -> dict[str, float]:
    """Summary statistics of the galaxies with ``i_ab < max_mag``.

    Definitions: a galaxy's ellipticity is that of its brighter component,
    ``|e| = (1 - q) / (1 + q)`` with ``q = b / a`` (GalSim's reduced shear ``|g|`` for
    ``shear(q=...)``, which BTK uses), and the RMS is ``sqrt(mean(|e|^2))``. ``B/T`` is
    ``fluxnorm_bulge / (fluxnorm_bulge + fluxnorm_disk + fluxnorm_agn)``. The area is
    ``meta['AREA']`` when present, else the ra/dec bounding box.

    Args:
        table: a CatSim catalog.
        max_mag: i-band magnitude cut.

    Returns:
        Dict with ``n`` (galaxies kept: ``i_ab < max_mag``), ``n_all``, ``max_mag``,
        ``area_deg2``, ``density`` (per arcmin^2), ``density_all``, ``rms_ellipticity``,
        ``frac_disk_only``, ``frac_small_bulge`` (0 < B/T <= 0.1), ``frac_large_bulge``
        (B/T > 0.1), ``median_a_disk`` (arcsec, over galaxies with a disk), ``median_hlr``
        (arcsec, flux-weighted sqrt(a b) of the components), ``median_redshift``,
        ``median_g_r``, ``median_r_i``, ``median_i``.

    Raises:
        CatalogError: the table is not a CatSim catalog or no galaxy passes the cut.
    """
    validate_catalog(table)
    cut = np.asarray(table["i_ab"], float) < max_mag
    t = table[cut]
    if len(t) == 0:
        raise CatalogError(f"no galaxy in the catalog has i_ab < {max_mag}")
    area = _area_deg2(table)
    fb, fd, fa = (
        np.asarray(t[c], float) for c in ("fluxnorm_bulge", "fluxnorm_disk", "fluxnorm_agn")
    )
    bt = fb / (fb + fd + fa)
    a_d, b_d = np.asarray(t["a_d"], float), np.asarray(t["b_d"], float)
    a_b, b_b = np.asarray(t["a_b"], float), np.asarray(t["b_b"], float)
    disk_dominant = fd >= fb
    e = np.where(disk_dominant, _ellipticity_of(a_d, b_d), _ellipticity_of(a_b, b_b))
    hlr = (fd * np.sqrt(a_d * b_d) + fb * np.sqrt(a_b * b_b)) / (fd + fb)
    has_disk = (fd > 0) & (a_d > 0)
    mag = {band: np.asarray(t[f"{band}_ab"], float) for band in ("g", "r", "i")}
    return {
        "n": int(len(t)),
        "n_all": int(len(table)),
        "max_mag": float(max_mag),
        "area_deg2": area,
        "density": len(t) / (area * 3600.0) if area > 0 else float("nan"),
        "density_all": len(table) / (area * 3600.0) if area > 0 else float("nan"),
        "rms_ellipticity": float(np.sqrt(np.mean(e**2))),
        "frac_disk_only": float(np.mean(fb == 0)),
        "frac_small_bulge": float(np.mean((bt > 0) & (bt <= 0.1))),
        "frac_large_bulge": float(np.mean(bt > 0.1)),
        "median_a_disk": float(np.median(a_d[has_disk])) if has_disk.any() else float("nan"),
        "median_hlr": float(np.median(hlr)),
        "median_redshift": float(np.median(np.asarray(t["redshift"], float))),
        "median_g_r": float(np.median(mag["g"] - mag["r"])),
        "median_r_i": float(np.median(mag["r"] - mag["i"])),
        "median_i": float(np.median(mag["i"])),
    }


_LABELS = {
    "density": "density i<{cut} (/arcmin^2)",
    "rms_ellipticity": "RMS ellipticity |e|",
    "frac_disk_only": "disk only",
    "frac_small_bulge": "0 < B/T <= 0.1",
    "frac_large_bulge": "B/T > 0.1",
    "median_a_disk": "median disk a (arcsec)",
    "median_redshift": "median redshift",
    "median_g_r": "median g-r",
    "median_r_i": "median r-i",
    "density_all": "density, all (/arcmin^2)",
}


def format_statistics(stats: dict[str, float], max_mag: float = GOLD_MAX_MAG) -> str:
    """A small text table of :func:`catalog_statistics` next to the OneDegSq targets.

    The last two lines say which galaxies the rows describe: those brighter than the cut
    (``stats['max_mag']``, else ``max_mag``), except ``density, all``, which counts every one.
    """
    cut = stats.get("max_mag", max_mag)
    lines = [f"{'quantity':<30} {'catalog':>9} {'OneDegSq':>9}", "-" * 50]
    for key, label in _LABELS.items():
        target = ONEDEGSQ_TARGETS.get(key)
        if key == "density_all" and cut == GOLD_MAX_MAG:
            target = None
        target_text = f"{target:9.3f}" if target is not None else f"{'':>9}"
        lines.append(f"{label.format(cut=cut):<30} {stats[key]:9.3f} {target_text}")
    sample = "the gold sample that tfdeblend simulate draws from" if cut == GOLD_MAX_MAG else ""
    lines.append(
        f"The rows above describe the {stats['n']} of the {stats['n_all']} galaxies "
        f"({stats['area_deg2']:g} deg^2) brighter than i = {cut:g}{',' if sample else ';'}"
    )
    lines.append(f"{sample}{'; ' if sample else ''}'density, all' counts all {stats['n_all']}.")
    return "\n".join(lines)
