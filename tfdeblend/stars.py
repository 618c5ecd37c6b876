"""Stars: point sources drawn as CatSim rows whose only component is the AGN one (BTK draws it
as the band's PSF), with colours along a stellar locus.

One home for the star model of the simulated fields (:mod:`tfdeblend.field`, ``--stars``) and
of the training and test stamps (:mod:`tfdeblend.simulate`, ``star_fraction``).

Example:
    >>> import numpy as np
    >>> mags = star_magnitudes(np.random.default_rng(0), np.array([18.0, 22.0]))
    >>> bool(np.all(mags["g"] >= mags["r"]))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The brightest i-band magnitude drawn (fields: with number counts up to ``max_mag``; stamps:
#: uniform in magnitude up to ``max_mag``).
STAR_BRIGHTEST: float = 15.0
#: Fields: slope of the number counts, dN/dm ~ 10^(slope m) (about 0.1 at high Galactic
#: latitude for 16 < i < 25: a tenth of the stars brighter than i = 18).
STAR_COUNT_SLOPE: float = 0.1
#: The stellar locus, (g - r, r - i) points (SDSS-like main sequence, halo turn-off to
#: M dwarfs); a star's r - i is interpolated at its g - r, plus :data:`STAR_LOCUS_SCATTER`.
STAR_LOCUS: tuple[tuple[float, float], ...] = (
    (0.2, 0.05), (0.4, 0.12), (0.6, 0.2), (0.8, 0.28), (1.0, 0.37), (1.2, 0.5), (1.35, 0.7),
    (1.45, 1.0), (1.5, 1.5),
)
STAR_LOCUS_SCATTER: float = 0.03
#: Fractions of halo turn-off stars (g - r about 0.35), K dwarfs (g - r 0.6-1.2) and
#: M dwarfs (g - r 1.2-1.5).
STAR_POPULATIONS: tuple[float, float, float] = (0.55, 0.2, 0.25)


def star_magnitudes(rng: np.random.Generator, i_mag: np.ndarray) -> dict[str, np.ndarray]:
    """AB magnitudes in u, g, r, i, z, y of stars of i-band magnitudes ``i_mag``: a population
    (:data:`STAR_POPULATIONS`), its g - r, r - i on :data:`STAR_LOCUS` plus scatter. Draws, in
    order: the populations, the turn-off and K-dwarf colours, the M-dwarf colours, the scatter
    (the fields' bytes depend on this order)."""
    i_mag = np.asarray(i_mag, float)
    n = len(i_mag)
    locus = np.asarray(STAR_LOCUS)
    population = np.searchsorted(np.cumsum(STAR_POPULATIONS), rng.uniform(size=n))
    g_r = np.select([population == 0, population == 1],
                    [rng.normal(0.35, 0.08, n), rng.uniform(0.6, 1.2, n)],
                    rng.uniform(1.2, 1.5, n))
    g_r = np.clip(g_r, locus[0, 0], locus[-1, 0])
    r_i = np.interp(g_r, locus[:, 0], locus[:, 1]) + rng.normal(0.0, STAR_LOCUS_SCATTER, n)
    mags = {"i": i_mag, "r": i_mag + r_i, "g": i_mag + r_i + g_r}
    mags["u"] = mags["g"] + 0.6 + 1.35 * g_r  # u - g along the locus: ~1 at the turn-off
    mags["z"] = i_mag - 0.5 * r_i
    mags["y"] = mags["z"] - 0.3 * r_i
    return mags


def star_columns(like: Any, mags: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns of CatSim rows (those of the table ``like``) for stars of magnitudes ``mags``:
    every galaxy column zero, ``fluxnorm_agn`` 1, the ``<band>_ab`` magnitudes from ``mags``."""
    n = len(mags["i"])
    columns = {name: np.zeros(n, like[name].dtype) for name in like.colnames}
    columns["fluxnorm_agn"] = np.ones(n, like["fluxnorm_agn"].dtype)
    for name in like.colnames:
        if name.endswith("_ab"):
            columns[name] = np.asarray(mags[name[:-3]]).astype(like[name].dtype)
    return columns
