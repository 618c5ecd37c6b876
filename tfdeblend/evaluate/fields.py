"""Whole-field scoring: a method's catalog of a simulated field against the field's true galaxies.

Numbers in, numbers out, like :mod:`tfdeblend.evaluate.analysis`: nothing here draws, runs a
model or a baseline, or reads or writes files (:mod:`tfdeblend.evaluate.pipeline` does that;
:mod:`tfdeblend.evaluate.figures` and :mod:`tfdeblend.evaluate.report` present the results).

Inputs: the field's truth (``truth.fits`` of ``tfdeblend simulate field``, any mapping of column
name -> array: ``x, y`` 0-based pixels, ``inside``, ``<band>_ab``, ``flux_<band>``) and a
whole-image catalog (``x, y`` 0-based full-image pixels, ``flux_<band>``, ``flux_err_<band>``):
tfdeblend's ``CATALOG`` or a baseline's :meth:`~tfdeblend.evaluate.baselines.Baseline.run_image`.

Definitions (``docs/evaluation.md``, "Whole fields"):

- **Matching** (:func:`match_greedy`): one to one, greedy from the brightest true galaxy (i band)
  to the faintest; each takes the nearest detection not yet taken that lies closer than
  :data:`MATCH_RADIUS` (1 arcsec). Every drawn galaxy takes part, whatever its magnitude and
  whether it is centred in the field or in the margin around it (whose light enters the field),
  so that a detection of a real galaxy is never counted as false.
- **Completeness**: matched fraction of the *gold* galaxies (i < :data:`GOLD_MAG` = 25.3) centred
  in the field; also for those with another gold galaxy (in the field or its margin) closer
  than :data:`NEIGHBOUR_RADIUS` (2 arcsec). Binomial standard errors.
- **Purity**: matched detections / all detections (a detection matched to a galaxy fainter than
  the gold cut is not false). Binomial standard error.
- **Flux** per band on the matched gold galaxies in the field: relative error
  ``(f - f_true) / f_true``, ``f_true`` the galaxy's noiseless flux that falls in the field
  (``flux_<band> x frac_inside``; ``frac_inside``, summed over bands, is 1 but for galaxies
  near the border, whose light beyond it no method can measure), its median (bias), robust
  scatter (1.4826 MAD) and 3-sigma outlier fraction (:func:`metrics.robust_stats`); bootstrap
  standard errors of the median and the scatter, binomial of the outlier fraction.
- **Pulls** per band on the same galaxies: ``(f - f_true) / flux_err``: median and robust width
  (1.4826 MAD), bootstrap standard errors; 1 = errors that describe the scatter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfdeblend.errors import TfdeblendError
from tfdeblend.evaluate import metrics as mt

#: i-band AB magnitude of the gold sample: completeness and flux are scored brighter than this
GOLD_MAG: float = 25.3
#: matching radius, arcsec
MATCH_RADIUS: float = 1.0
#: a gold galaxy has a neighbour when another gold galaxy is closer than this, arcsec
NEIGHBOUR_RADIUS: float = 2.0
#: band whose magnitude orders the matching and defines the gold sample
REFERENCE_BAND: str = "i"
#: edges of the i-magnitude bins of the completeness curve
MAG_BINS: tuple[float, ...] = tuple(np.arange(18.0, 27.01, 0.5))
#: bootstrap resamples of the standard errors of medians and robust scatters
N_BOOTSTRAP: int = 200
#: the baseline whose r-band flux scatter the flux target refers to
SCATTER_REFERENCE: str = "sep"

#: the issue's targets: key -> (label, comparison text)
TARGETS: dict[str, tuple[str, str]] = {
    "completeness": ("completeness (i < 25.3)", ">= 0.90"),
    "completeness_neighbour": ('completeness, neighbour within 2"', ">= 0.85"),
    "purity": ("purity", ">= 0.95"),
    "flux_scatter_r": ("r flux robust scatter", "<= 0.5 x sep's"),
    "pull_width": ("pull width (each band)", "in [0.8, 1.25]"),
}


def match_greedy(
    true_x: np.ndarray,
    true_y: np.ndarray,
    det_x: np.ndarray,
    det_y: np.ndarray,
    radius: float,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """One-to-one greedy matching of detections to true positions.

    True positions are visited in ``order`` (brightest first); each takes the nearest detection
    not yet taken whose distance is strictly smaller than ``radius``. Non-finite positions
    never match.

    Args:
        true_x, true_y: ``(N,)`` true positions (pixels).
        det_x, det_y: ``(K,)`` detected positions (pixels).
        radius: matching radius, pixels.
        order: visiting order of the true positions (default: as given).

    Returns:
        ``(N,)`` int: the index of each true position's detection, ``-1`` for none.

    Example:
        >>> match_greedy([0.0, 1.0], [0.0, 0.0], [0.8, 5.0], [0.0, 0.0], 2.0).tolist()
        [0, -1]
    """
    from scipy.spatial import cKDTree

    true_xy = np.stack([np.asarray(true_x, np.float64), np.asarray(true_y, np.float64)], -1)
    det_xy = np.stack([np.asarray(det_x, np.float64), np.asarray(det_y, np.float64)], -1)
    true_xy, det_xy = true_xy.reshape(-1, 2), det_xy.reshape(-1, 2)
    result = np.full(len(true_xy), -1, dtype=np.int64)
    det_ok = np.flatnonzero(np.isfinite(det_xy).all(axis=1))
    if len(det_ok) == 0 or len(true_xy) == 0:
        return result
    order = np.arange(len(true_xy)) if order is None else np.asarray(order, dtype=np.int64)
    order = order[np.isfinite(true_xy[order]).all(axis=1)]
    tree = cKDTree(det_xy[det_ok])
    taken = np.zeros(len(det_ok), bool)
    for t, candidates in zip(order, tree.query_ball_point(true_xy[order], r=radius)):
        free = [c for c in candidates if not taken[c]]
        if not free:
            continue
        dist = np.hypot(*(det_xy[det_ok[free]] - true_xy[t]).T)
        best = int(np.argmin(dist))
        if dist[best] < radius:
            taken[free[best]] = True
            result[t] = det_ok[free[best]]
    return result


def has_neighbour(x: np.ndarray, y: np.ndarray, eligible: np.ndarray, radius: float) -> np.ndarray:
    """Whether each position has *another* eligible position closer than ``radius``.

    Args:
        x, y: ``(N,)`` positions (pixels).
        eligible: ``(N,)`` bool, the positions that count as neighbours.
        radius: pixels.

    Returns:
        ``(N,)`` bool.
    """
    from scipy.spatial import cKDTree

    xy = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], -1).reshape(-1, 2)
    finite = np.isfinite(xy).all(axis=1)
    index = np.flatnonzero(np.asarray(eligible, bool) & finite)
    out = np.zeros(len(xy), bool)
    if index.size == 0:
        return out
    tree = cKDTree(xy[index])
    for i in np.flatnonzero(finite):
        near = index[tree.query_ball_point(xy[i], r=radius)]
        near = near[near != i]
        out[i] = bool(near.size) and bool((np.hypot(*(xy[near] - xy[i]).T) < radius).any())
    return out


def binomial(k: int, n: int) -> dict[str, float]:
    """``{"value": k / n, "se": sqrt(p (1 - p) / n), "k", "n"}`` (``nan`` when ``n`` is 0)."""
    if n == 0:
        return {"value": float("nan"), "se": float("nan"), "k": int(k), "n": 0}
    p = k / n
    return {"value": float(p), "se": float(np.sqrt(p * (1.0 - p) / n)), "k": int(k), "n": int(n)}


def robust_with_errors(values: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """:func:`metrics.robust_stats` of ``values`` with standard errors.

    Returns:
        ``n``, ``median``, ``median_se``, ``scatter`` (1.4826 MAD), ``scatter_se`` (bootstrap,
        ``n_boot`` resamples), ``outlier_fraction`` (``|v - median| > 3 scatter``) and
        ``outlier_fraction_se`` (binomial), ``mean``.
    """
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    stats = mt.robust_stats(v)
    out = {"n": stats["n"], "median": stats["bias"], "median_se": float("nan"),
           "scatter": stats["scatter"], "scatter_se": float("nan"),
           "outlier_fraction": stats["outlier_fraction"], "outlier_fraction_se": float("nan"),
           "mean": stats["mean"]}
    if v.size >= 2:
        rng = np.random.default_rng(seed)
        samples = v[rng.integers(0, v.size, size=(n_boot, v.size))]
        medians = np.median(samples, axis=1)
        scatters = mt.MAD_TO_SIGMA * np.median(np.abs(samples - medians[:, None]), axis=1)
        out["median_se"] = float(np.std(medians, ddof=1))
        out["scatter_se"] = float(np.std(scatters, ddof=1))
        out["outlier_fraction_se"] = binomial(round(stats["outlier_fraction"] * v.size),
                                              v.size)["se"]
    return out


def _column(truth: Mapping[str, Any], name: str) -> np.ndarray:
    try:
        return np.asarray(truth[name])
    except KeyError:
        raise TfdeblendError(f"the field's truth has no column {name!r}") from None


def truth_masks(truth: Mapping[str, Any], pixel_scale: float) -> dict[str, np.ndarray]:
    """Per true source: ``mag`` (i band), ``inside``, ``star`` (the truth's ``star`` column;
    all false without one), ``gold`` (a galaxy inside with i < 25.3), ``neighbour`` (gold with
    another i < 25.3 source, galaxy or star, in the field or its margin, closer than 2 arcsec),
    ``star_gold`` (a star inside with i < 25.3), and the matching ``order`` (brightest i
    first). Stars are matched like galaxies (a detection of a star is not false) but scored
    apart."""
    mag = _column(truth, f"{REFERENCE_BAND}_ab").astype(np.float64)
    x, y = _column(truth, "x").astype(np.float64), _column(truth, "y").astype(np.float64)
    inside = _column(truth, "inside").astype(bool)
    star = (np.asarray(truth["star"], bool) if "star" in truth.keys()
            else np.zeros(len(mag), bool))
    bright = mag < GOLD_MAG
    gold = inside & bright & ~star
    neighbour = gold & has_neighbour(x, y, bright, NEIGHBOUR_RADIUS / pixel_scale)
    order = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    return {"mag": mag, "x": x, "y": y, "inside": inside, "star": star, "gold": gold,
            "neighbour": neighbour, "star_gold": inside & bright & star, "order": order}


def analyze_field_catalog(
    truth: Mapping[str, Any],
    catalog: Mapping[str, np.ndarray],
    bands: Sequence[str],
    pixel_scale: float,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole-field metrics of one method's catalog (module docstring).

    Args:
        truth: the field's true galaxies (columns ``x, y, inside, i_ab, flux_<band>``, and
            ``frac_inside`` when known).
        catalog: the method's catalog (``x, y, flux_<band>``, ``flux_err_<band>``).
        bands: bands scored.
        pixel_scale: arcsec per pixel.
        seed: bootstrap seed.

    Returns:
        ``{"summary": json-able metrics, "arrays": per-galaxy and per-detection arrays}``.
    """
    masks = truth_masks(truth, pixel_scale)
    det_x = np.asarray(catalog["x"], np.float64)
    det_y = np.asarray(catalog["y"], np.float64)
    radius = MATCH_RADIUS / pixel_scale
    match = match_greedy(masks["x"], masks["y"], det_x, det_y, radius, masks["order"])
    matched = match >= 0
    det_matched = np.zeros(len(det_x), bool)
    det_matched[match[matched]] = True
    gold, neighbour = masks["gold"], masks["neighbour"]
    n_true = len(match)
    true_flux = np.stack([_column(truth, f"flux_{b}").astype(np.float64) for b in bands], -1)
    if "frac_inside" in truth:  # the light in the field: what any method can measure
        true_flux = true_flux * np.asarray(truth["frac_inside"], np.float64)[:, None]
    meas = np.full((n_true, len(bands)), np.nan)
    err = np.full((n_true, len(bands)), np.nan)
    for c, band in enumerate(bands):
        meas[matched, c] = np.asarray(catalog[f"flux_{band}"], np.float64)[match[matched]]
        err[matched, c] = np.asarray(catalog[f"flux_err_{band}"], np.float64)[match[matched]]
    rel = mt.relative_error(meas, true_flux)
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(err > 0, (meas - true_flux) / np.where(err > 0, err, 1.0), np.nan)
    scored = gold & matched
    # detections nobody matched: near a true galaxy (a piece of one, or one matched elsewhere)
    # or far from all (noise, artefacts)
    false = ~det_matched
    near = _any_within(det_x[false], det_y[false], masks["x"], masks["y"],
                       NEIGHBOUR_RADIUS / pixel_scale)
    # missed gold galaxies that had a detection within the radius (taken by a brighter galaxy):
    # merged into another's detection
    merged = gold & ~matched & _any_within(masks["x"], masks["y"], det_x, det_y, radius)
    summary: dict[str, Any] = {
        "n_detections": int(len(det_x)),
        "n_matched_detections": int(det_matched.sum()),
        "completeness": binomial(int(scored.sum()), int(gold.sum())),
        "completeness_neighbour": binomial(int((neighbour & matched).sum()),
                                           int(neighbour.sum())),
        "purity": binomial(int(det_matched.sum()), int(len(det_x))),
        "false_detections": {"n": int(false.sum()), "near_true": int(near.sum()),
                             "isolated": int((~near).sum())},
        "missed": {"n": int((gold & ~matched).sum()), "merged": int(merged.sum())},
        "flux": {b: robust_with_errors(rel[scored, c], seed=seed) for c, b in enumerate(bands)},
        "pull": {b: robust_with_errors(pull[scored, c], seed=seed) for c, b in enumerate(bands)},
        "completeness_by_mag": completeness_by_mag(masks["mag"], masks["inside"] & ~masks["star"],
                                                   matched),
    }
    if masks["star"].any():
        summary["stars"] = binomial(int((masks["star_gold"] & matched).sum()),
                                    int(masks["star_gold"].sum()))
    arrays = {
        "match": match, "matched": matched, "gold": gold, "neighbour": neighbour,
        "inside": masks["inside"], "star": masks["star"], "mag": masks["mag"], "true_flux": true_flux,
        "meas_flux": meas, "flux_err": err, "rel": rel, "pull": pull,
        "det_x": det_x, "det_y": det_y, "det_matched": det_matched,
    }
    return {"summary": summary, "arrays": arrays}


def _any_within(x, y, other_x, other_y, radius: float) -> np.ndarray:
    """Whether each ``(x, y)`` has one of the ``(other_x, other_y)`` closer than ``radius``."""
    from scipy.spatial import cKDTree

    ok = np.isfinite(other_x) & np.isfinite(other_y)
    if not ok.any() or len(x) == 0:
        return np.zeros(len(x), bool)
    dist, _ = cKDTree(np.stack([other_x[ok], other_y[ok]], -1)).query(np.stack([x, y], -1))
    return dist < radius


def completeness_by_mag(mag: np.ndarray, inside: np.ndarray, matched: np.ndarray,
                        edges: Sequence[float] = MAG_BINS) -> dict[str, Any]:
    """Matched fraction of the galaxies in the field per i-magnitude bin.

    Returns:
        ``{"edges": [...], "n": [...], "k": [...], "fraction": [...], "se": [...]}``.
    """
    edges = np.asarray(edges, np.float64)
    which = np.digitize(mag, edges) - 1
    rows = [binomial(int((inside & matched & (which == b)).sum()),
                     int((inside & (which == b)).sum())) for b in range(len(edges) - 1)]
    return {"edges": edges.tolist(), "n": [r["n"] for r in rows], "k": [r["k"] for r in rows],
            "fraction": [r["value"] for r in rows], "se": [r["se"] for r in rows]}


def field_summary(truth: Mapping[str, Any], pixel_scale: float, shape: Sequence[int]) -> dict:
    """What the field holds: shape, pixel scale, true galaxies drawn / inside / gold / with a
    neighbour."""
    masks = truth_masks(truth, pixel_scale)
    return {
        "shape": [int(s) for s in shape],
        "pixel_scale": float(pixel_scale),
        "n_true": int((~masks["star"]).sum()),
        "n_inside": int((masks["inside"] & ~masks["star"]).sum()),
        "n_gold": int(masks["gold"].sum()),
        "n_gold_neighbour": int(masks["neighbour"].sum()),
        "n_stars": int(masks["star_gold"].sum()),
    }


def _at_least(value: float, bound: float) -> bool | None:
    return None if not np.isfinite(value) else bool(value >= bound)


def field_targets(methods: Mapping[str, Mapping[str, Any]], bands: Sequence[str]) -> dict:
    """Whether each method meets each of :data:`TARGETS`.

    Args:
        methods: method name -> the ``summary`` of :func:`analyze_field_catalog`.
        bands: the bands of the pull target.

    Returns:
        ``{method: {target key: True / False / None (not measurable)}}``; the flux target needs
        :data:`SCATTER_REFERENCE` among the methods (``None`` without it).
    """
    ref = methods.get(SCATTER_REFERENCE)
    ref_scatter = ref["flux"]["r"]["scatter"] if ref is not None and "r" in ref["flux"] else None
    out: dict[str, dict[str, bool | None]] = {}
    for name, m in methods.items():
        scatter = m["flux"]["r"]["scatter"] if "r" in m["flux"] else float("nan")
        widths = [m["pull"][b]["scatter"] for b in bands]
        out[name] = {
            "completeness": _at_least(m["completeness"]["value"], 0.90),
            "completeness_neighbour": _at_least(m["completeness_neighbour"]["value"], 0.85),
            "purity": _at_least(m["purity"]["value"], 0.95),
            "flux_scatter_r": None if ref_scatter is None or not np.isfinite(scatter)
            or not np.isfinite(ref_scatter) else bool(scatter <= 0.5 * ref_scatter),
            "pull_width": None if not all(np.isfinite(widths))
            else bool(all(0.8 <= w <= 1.25 for w in widths)),
        }
    return out


def busiest_window(x: np.ndarray, y: np.ndarray, shape: Sequence[int], size: int) -> tuple:
    """The ``size x size`` window (on a grid of quarter-window steps) holding the most of the
    positions ``(x, y)``: ``(y0, y1, x0, x1)``."""
    height, width = (int(s) for s in shape)
    size_y, size_x = min(size, height), min(size, width)
    step_y, step_x = max(1, size_y // 4), max(1, size_x // 4)
    best, best_n = (0, size_y, 0, size_x), -1
    for y0 in range(0, height - size_y + 1, step_y):
        for x0 in range(0, width - size_x + 1, step_x):
            n = int(((x >= x0) & (x < x0 + size_x) & (y >= y0) & (y < y0 + size_y)).sum())
            if n > best_n:
                best, best_n = (y0, y0 + size_y, x0, x0 + size_x), n
    return best


def field_definitions() -> dict[str, str]:
    """The definitions of the whole-field metrics (``metrics.json``'s ``definitions``)."""
    return {
        "match": f"one to one, greedy from the brightest true galaxy ({REFERENCE_BAND} band) to "
                 f"the faintest, each taking the nearest free detection closer than "
                 f"{MATCH_RADIUS:g} arcsec; all drawn galaxies (field and margin, any magnitude)",
        "gold": f"true galaxies centred in the field with {REFERENCE_BAND} < {GOLD_MAG:g}",
        "completeness": "matched gold galaxies / gold galaxies (binomial se)",
        "completeness_neighbour": f"the same for gold galaxies with another {REFERENCE_BAND} < "
                                  f"{GOLD_MAG:g} galaxy closer than {NEIGHBOUR_RADIUS:g} arcsec",
        "purity": "matched detections / all detections (binomial se)",
        "false_detections": f"unmatched detections; near_true: within {NEIGHBOUR_RADIUS:g} arcsec "
                            "of a true galaxy (a piece of a galaxy, or a second detection of one)",
        "missed.merged": "unmatched gold galaxies with a detection within the matching radius "
                         "that a brighter galaxy took",
        "flux": "(f - f_true) / f_true on matched gold galaxies, f_true = flux_<band> x "
                "frac_inside (the true light in the field): median, 1.4826 MAD scatter, "
                "|err - median| > 3 scatter outliers (bootstrap / binomial se)",
        "pull": "(f - f_true) / flux_err on the same galaxies: median, 1.4826 MAD width",
    }
