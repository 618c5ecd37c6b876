"""Evaluation analysis: numbers in, numbers out.

Matching results and test-set arrays become metric dicts here; nothing in this module draws, runs
a model or a baseline, or reads or writes files (:mod:`tfdeblend.evaluate.pipeline` does that, and
:mod:`tfdeblend.evaluate.figures` / :mod:`tfdeblend.evaluate.report` present the results). The
low-level metric functions are in :mod:`tfdeblend.evaluate.metrics`.

Conventions: galaxy ``x`` is the brighter and ``y`` the fainter true galaxy (``isolated[:, 0]``
and ``isolated[:, 1]``, brightness order of the data). Components (peel order) and baseline
detections are matched to the true galaxies by centroid with a Hungarian assignment and a
maximum separation (:mod:`tfdeblend.evaluate.match`, 5 px). For the image metrics (Table II)
the ``k``-th component of a blend is compared with the true galaxy it is assigned to by the same
Hungarian assignment without the distance cut. Images are channels last ``(N, H, W, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tfdeblend import measure
from tfdeblend.config import QUALITY_NAMES
from tfdeblend.evaluate import metrics as mt
from tfdeblend.evaluate.match import DEFAULT_MAX_SEP, match_batch, match_positions
from tfdeblend.simulate import BAND_CONDITION_FIELDS, CONDITION_FIELDS

#: The paper's numbers (Wang et al. 2021), for the side-by-side columns.
PAPER = {
    "table1": {
        2: {"high": 0.773, "medium": 0.153, "low": 0.074},
        3: {"high": 0.504, "medium": 0.369, "low": 0.127},
    },
    "table2_psnr": {  # n_gal -> [(mean, median) per deblend index]
        2: [(56.51, 57.93), (58.18, 59.02)],
        3: [(54.66, 57.19), (55.96, 58.77), (57.71, 59.29)],
    },
    "ssim": "mean ~0.993-0.997, median ~0.9997",
    "sextractor_found": {"x": 979 / 1000, "y": 729 / 1000},
}


#: galaxy label -> index of the true galaxy (brightness order)
GALAXIES = {"x": 0, "y": 1}


def image_metrics(
    components: np.ndarray, n_components: np.ndarray, testset: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """PSNR / SSIM (paper and BTK) of each component against its assigned true galaxy.

    Args:
        components: ``(N, K, H, W, C)`` in peel order.
        n_components: ``(N,)``.
        testset: the test-set dict (``isolated``, ``x``, ``y``, ``n_gal``).

    Returns:
        Dict of ``(N, K)`` arrays ``psnr``, ``ssim``, ``psnr_btk``, ``ssim_btk`` and the assigned
        true index ``truth`` (``-1`` none), ``nan`` where a component has no true galaxy.
    """
    n_stamps, k_max = components.shape[:2]
    out = {k: np.full((n_stamps, k_max), np.nan) for k in ("psnr", "ssim", "psnr_btk", "ssim_btk")}
    out["truth"] = np.full((n_stamps, k_max), -1, dtype=np.int64)
    mom = measure.moments(components)
    for i in range(n_stamps):
        n_true, n_comp = int(testset["n_gal"][i]), int(n_components[i])
        if n_true == 0 or n_comp == 0:
            continue
        true_xy = np.stack([testset["x"][i, :n_true], testset["y"][i, :n_true]], axis=-1)
        pred_xy = np.stack([mom["x"][i, :n_comp], mom["y"][i, :n_comp]], axis=-1)
        pred_xy = np.nan_to_num(pred_xy, nan=1e6)  # empty components pair last
        assign = match_positions(true_xy, pred_xy, max_sep=np.inf)
        for j, k in enumerate(assign):
            if k < 0:
                continue
            comp, truth = components[i, k], testset["isolated"][i, j]
            out["truth"][i, k] = j
            out["psnr"][i, k] = mt.psnr(comp, truth)
            out["ssim"][i, k] = mt.ssim(comp, truth)
            out["psnr_btk"][i, k] = mt.psnr_btk(comp, truth)
            out["ssim_btk"][i, k] = mt.ssim_btk(comp, truth)
    return out


def analyze_catalog(
    catalog: dict[str, np.ndarray],
    testset: dict[str, np.ndarray],
    sky_std: np.ndarray,
    max_sep: float = DEFAULT_MAX_SEP,
) -> dict[str, Any]:
    """Truth-based metrics of one method's catalog (deblender or baseline).

    Args:
        catalog: catalog dict (see :mod:`tfdeblend.evaluate.baselines`).
        testset: the test-set dict.
        sky_std: ``(C,)`` sky noise std per band.
        max_sep: matching radius, pixels.

    Returns:
        ``{"summary": json-able metrics, "arrays": per-galaxy arrays for the figures}``.
    """
    n_gal = np.asarray(testset["n_gal"], dtype=np.int64)
    match = match_batch(testset["x"], testset["y"], catalog["x"], catalog["y"], max_sep)
    bands = [str(b) for b in np.asarray(testset["bands"]).ravel()]
    summary: dict[str, Any] = {"detection": mt.detection_stats(match, n_gal, catalog["n"])}
    summary["detection_by_n_gal"] = {
        str(g): mt.detection_stats(match[n_gal == g], n_gal[n_gal == g], catalog["n"][n_gal == g])
        for g in np.unique(n_gal)
    }
    sky_var = np.asarray(sky_std, dtype=np.float64) ** 2
    arrays: dict[str, Any] = {"match": match, "cat_x": catalog["x"], "cat_y": catalog["y"]}
    for label, j in GALAXIES.items():
        if testset["isolated"].shape[1] <= j:
            continue
        present = n_gal > j
        idx = match[:, j]
        found = present & (idx >= 0)
        rows = np.flatnonzero(found)
        cols = idx[found]
        true_flux = np.asarray(testset["flux"][:, j], dtype=np.float64)  # (N, C)
        meas_flux = np.full_like(true_flux, np.nan)
        meas_flux[rows] = catalog["flux"][rows, cols]
        mom_meas = {k: np.full(len(n_gal), np.nan) for k in ("mu20", "mu02", "mu11")}
        for k in mom_meas:
            mom_meas[k][rows] = catalog[k][rows, cols]
        true_shape = mt.shape_moments(testset["mu20"][:, j], testset["mu02"][:, j],
                                      testset["mu11"][:, j])
        meas_shape = mt.shape_moments(mom_meas["mu20"], mom_meas["mu02"], mom_meas["mu11"])
        sigma_f = mt.noise_limited_flux_error(testset["isolated"][:, j], sky_var)  # (N, C)
        snr = isolated_snr(true_flux, sigma_f)
        rel = mt.relative_error(meas_flux, true_flux)
        rel_sum = mt.relative_error(meas_flux.sum(-1), true_flux.sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            pull = (meas_flux - true_flux) / sigma_f
        gal: dict[str, Any] = {
            "n_true": int(present.sum()),
            "n_found": int(found.sum()),
            "found_fraction": float(found.sum() / max(present.sum(), 1)),
            "flux_band_sum": mt.flux_stats(meas_flux.sum(-1), true_flux.sum(-1)),
            "flux": {b: mt.flux_stats(meas_flux[:, c], true_flux[:, c]) for c, b in enumerate(bands)},
            "flux_error_over_noise_limit": {
                b: mt.robust_stats(pull[:, c]) for c, b in enumerate(bands)
            },
            "noise_limited_relative_error_median": {
                b: float(np.nanmedian(sigma_f[present, c] / true_flux[present, c]))
                if present.any() else float("nan")
                for c, b in enumerate(bands)
            },
            "flux_fit": mt.linear_fit(true_flux.sum(-1)[found], meas_flux.sum(-1)[found]),
            "moments": {
                key: mt.robust_stats(meas_shape[key] - true_shape[key])
                for key in ("mu11", "mu20_minus_mu02", "mu2_abs")
            },
            "mu11_fit": mt.linear_fit(true_shape["mu11"][found], meas_shape["mu11"][found]),
            "found_by_separation": found_by_separation(
                present, found, nearest_separation(testset, j)
            ),
            "isolated_snr": _snr_summary(snr, present),
            "found_by_snr": found_by_snr(present, found, snr),
        }
        summary[label] = gal
        arrays[label] = {
            "present": present, "found": found, "true_flux": true_flux, "meas_flux": meas_flux,
            "rel": rel, "rel_sum": rel_sum, "true_shape": true_shape, "meas_shape": meas_shape,
        }
    return {"summary": summary, "arrays": arrays}


#: edges (pixels) of the bins of separation to the nearest other true galaxy
SEPARATION_BINS: tuple[float, ...] = (0.0, 4.0, 8.0, 12.0, 20.0, np.inf)


def nearest_separation(testset: dict[str, np.ndarray], j: int) -> np.ndarray:
    """Distance (pixels) from true galaxy ``j`` to the nearest other true galaxy of its stamp.

    Returns:
        ``(N,)``; ``inf`` where the stamp has no other galaxy, ``nan`` where it has no galaxy ``j``.
    """
    x = np.asarray(testset["x"], dtype=np.float64)
    y = np.asarray(testset["y"], dtype=np.float64)
    n_gal = np.asarray(testset["n_gal"])
    slots = np.arange(x.shape[1])
    other = (slots[None, :] < n_gal[:, None]) & (slots[None, :] != j)
    dist = np.hypot(x - x[:, j : j + 1], y - y[:, j : j + 1])
    nearest = np.where(other, dist, np.inf).min(axis=1)
    return np.where(n_gal > j, nearest, np.nan)


def isolated_snr(true_flux: np.ndarray, sigma_f: np.ndarray) -> np.ndarray:
    """``(N,)`` matched-filter S/N of each galaxy alone, bands in quadrature (its detectability
    without blending); ``true_flux`` and ``sigma_f`` are ``(N, C)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.nansum((true_flux / sigma_f) ** 2, axis=-1))


def _snr_summary(snr: np.ndarray, present: np.ndarray) -> dict:
    """Median and share above 10 of the present galaxies' S/N alone (:func:`isolated_snr`)."""
    snr = snr[present]
    if not snr.size:
        return {"median": float("nan"), "above_10": float("nan")}
    return {"median": float(np.median(snr)), "above_10": float(np.mean(snr > 10))}


#: edges of the bins of a galaxy's matched-filter S/N alone (:func:`isolated_snr`)
SNR_BINS: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 50.0, np.inf)


def _bins(edges: Sequence[float]) -> list[tuple[str, float, float]]:
    return [(f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}", lo, hi)
            for lo, hi in zip(edges[:-1], edges[1:])]


def separation_bins() -> list[tuple[str, float, float]]:
    """``(key, lo, hi)`` of each bin of :data:`SEPARATION_BINS` (keys ``"0-4"``, ..., ``">=20"``)."""
    return _bins(SEPARATION_BINS)


def _found_in_bins(present: np.ndarray, found: np.ndarray, values: np.ndarray,
                   bins: list[tuple[str, float, float]]) -> dict:
    out = {}
    for key, lo, hi in bins:
        sel = present & (values >= lo) & (values < hi)
        n = int(sel.sum())
        out[key] = {"n": n, "found_fraction": float(found[sel].mean()) if n else float("nan")}
    return out


def found_by_snr(present: np.ndarray, found: np.ndarray, snr: np.ndarray) -> dict:
    """Found fraction per bin of :data:`SNR_BINS` of the galaxy's S/N alone:
    ``{"lo-hi": {"n", "found_fraction"}}`` (how much of what a method misses could be found at
    all: below S/N 5 a galaxy alone is at the detection limit)."""
    return _found_in_bins(present, found, snr, _bins(SNR_BINS))


def found_by_separation(present: np.ndarray, found: np.ndarray, sep: np.ndarray) -> dict:
    """Found fraction per bin of :data:`SEPARATION_BINS`: ``{"lo-hi": {"n", "found_fraction"}}``,
    plus ``"no neighbour"`` for galaxies alone in their stamp (when there are any)."""
    alone = present & np.isinf(sep)
    out = _found_in_bins(present & ~alone, found, sep, separation_bins())
    if alone.any():
        out["no neighbour"] = {"n": int(alone.sum()), "found_fraction": float(found[alone].mean())}
    return out


def same_galaxies(ours: dict[str, Any], theirs: dict[str, Any], bands: Sequence[str]) -> dict:
    """Flux errors of two methods on the galaxies *both* found (x and y separately).

    A method that finds more galaxies is otherwise measured on a harder sample (the close pairs
    the other one misses); this compares the two on the same galaxies.

    Args:
        ours, theirs: the ``"arrays"`` of :func:`analyze_catalog` for the two methods.
        bands: band names, in the order of the flux arrays.

    Returns:
        ``{label: {"n": galaxies found by both, "ours"/"theirs": {"flux_band_sum": stats,
        "flux": {band: stats}}}}`` with :func:`metrics.robust_stats` of the relative errors.
    """
    out: dict[str, Any] = {}
    for label in GALAXIES:
        if label not in ours or label not in theirs:
            continue
        both = ours[label]["found"] & theirs[label]["found"]
        entry: dict[str, Any] = {"n": int(both.sum())}
        for key, arrays in (("ours", ours[label]), ("theirs", theirs[label])):
            entry[key] = {
                "flux_band_sum": mt.robust_stats(arrays["rel_sum"][both]),
                "flux": {b: mt.robust_stats(arrays["rel"][both, c]) for c, b in enumerate(bands)},
            }
        out[label] = entry
    return out


def quality_breakdown(analysis: dict[str, Any], quality: np.ndarray) -> dict[str, Any]:
    """tfdeblend's found fraction and band-sum flux recovery per quality bin of the peel.

    Args:
        analysis: :func:`analyze_catalog` of the deblender's catalog.
        quality: ``(N,)`` quality per stamp (2 high, 1 medium, 0 low).

    Returns:
        ``{label: {quality name: {"n_stamps", "found_fraction", "flux_band_sum", "flux_fit"}}}``.
    """
    out: dict[str, Any] = {}
    for label in GALAXIES:
        if label not in analysis["arrays"]:
            continue
        arr = analysis["arrays"][label]
        out[label] = {}
        for q, qname in QUALITY_NAMES.items():
            sel = quality == q
            out[label][qname] = {
                "n_stamps": int(sel.sum()),
                "found_fraction": float(arr["found"][sel & arr["present"]].mean())
                if (sel & arr["present"]).any() else float("nan"),
                "flux_band_sum": mt.robust_stats(arr["rel_sum"][sel]),
                "flux_fit": mt.linear_fit(arr["true_flux"][sel].sum(-1),
                                          arr["meas_flux"][sel].sum(-1)),
            }
    return out


def table2(img: dict[str, np.ndarray], n_gal: np.ndarray) -> dict[str, Any]:
    """Table II: PSNR / SSIM summaries per number of galaxies and deblend index.

    Args:
        img: :func:`image_metrics` of all stamps.
        n_gal: ``(N,)`` true number of galaxies per stamp.

    Returns:
        ``{str(n_gal): [{"deblend_index": k + 1, "psnr": summary, ...} for k < n_gal]}``.
    """
    out: dict[str, Any] = {}
    for g in np.unique(n_gal):
        if g < 1:
            continue
        sel = n_gal == g
        rows = []
        for k in range(min(int(g), img["psnr"].shape[1])):
            entry = {"deblend_index": k + 1}
            for key in ("psnr", "ssim", "psnr_btk", "ssim_btk"):
                entry[key] = mt.summarize(img[key][sel, k])
            rows.append(entry)
        out[str(int(g))] = rows
    return out



def paper_numbers() -> dict[str, Any]:
    """:data:`PAPER` with string keys, as ``metrics.json`` holds it."""
    return {"table1": {str(k): v for k, v in PAPER["table1"].items()},
            "table2_psnr": {str(k): v for k, v in PAPER["table2_psnr"].items()},
            "ssim": PAPER["ssim"], "sextractor_found": PAPER["sextractor_found"]}


def definitions(max_sep: float) -> dict[str, str]:
    """The definitions of the metrics (``metrics.json``'s ``definitions``)."""
    return {
        "x": "brighter true galaxy (isolated[0])", "y": "fainter true galaxy (isolated[1])",
        "match": f"Hungarian on centroids, max separation {max_sep} px",
        "psnr": "10 log10(max(truth)^2 / MSE), dB", "ssim": "per band, data_range of truth",
        "psnr_btk/ssim_btk": "each image / its own max, data_range 1, band mean",
        "outlier_fraction": "|err - median| > 3 * 1.4826 MAD",
        "catastrophic_fraction": "|err| > 0.1",
        "flux_error_over_noise_limit": "(f_meas - f_true) / sigma_f, sigma_f^2 = "
        "1 / sum(p^2 / (sky_var + f p)) per band",
    }


def sky_noise(testset: dict[str, np.ndarray]) -> tuple[np.ndarray, float | None]:
    """Sky noise std per band of a test set, measured on its noisy stamps.

    Returns:
        ``(C,)`` std (:func:`metrics.sky_noise_std`) and ``None``; for a test set without
        measurable noise (noiseless) the std is raised to a floor of ``1e-6`` times the largest
        pixel, returned second so that the caller can say so.
    """
    blends = np.asarray(testset["blend"], dtype=np.float32)
    noisy = np.asarray(testset.get("noisy", np.ones(len(blends))), dtype=bool)
    noiseless = testset["blend_noiseless"]
    sky_std = mt.sky_noise_std(
        blends[noisy] if noisy.any() else blends,
        np.asarray(noiseless)[noisy] if noisy.any() else noiseless,
    )
    if np.any(sky_std <= 0):
        floor = 1e-6 * float(np.abs(blends).max() or 1.0)
        return np.maximum(sky_std, floor), floor
    return sky_std, None


def concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0, padding axis 1 (with nan or -1) to the widest part."""
    if parts[0].ndim < 2:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    fill = -1 if np.issubdtype(parts[0].dtype, np.integer) else np.nan
    padded = []
    for p in parts:
        pad = [(0, 0)] * p.ndim
        pad[1] = (0, width - p.shape[1])
        padded.append(np.pad(p, pad, constant_values=fill))
    return np.concatenate(padded)


def testset_summary(
    testset: dict[str, np.ndarray],
    bands: Sequence[str],
    sky_std: np.ndarray,
    quality: np.ndarray,
    n_components: np.ndarray,
    img: dict[str, np.ndarray],
    post_peel: dict[str, int],
    methods: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Every number of one test set (its entry in ``metrics.json``'s ``testsets``).

    Args:
        testset: the test-set dict.
        bands: band names.
        sky_std: ``(C,)`` sky noise std per band.
        quality: ``(N,)`` the peel's quality per stamp.
        n_components: ``(N,)`` components per stamp.
        img: :func:`image_metrics` of all stamps.
        post_peel: blends changed by the post-peel steps (``split``, ``recovered``, ``merged``,
            ``pruned``).
        methods: method name -> :func:`analyze_catalog`, ``tfdeblend`` first, then the baselines.
    """
    n_gal = np.asarray(testset["n_gal"], dtype=np.int64)
    bands = list(bands)
    return {
        "n_stamps": len(n_gal),
        "n_gal_counts": {str(int(g)): int((n_gal == g).sum()) for g in np.unique(n_gal)},
        "sky_noise_std": {str(b): float(s) for b, s in zip(bands, sky_std)},
        "table1_quality": {
            "all": mt.quality_fractions(quality),
            **{str(int(g)): mt.quality_fractions(quality[n_gal == g]) for g in np.unique(n_gal)},
        },
        "table2_image_metrics": table2(img, n_gal),
        "post_peel_blends": post_peel,
        "n_components_histogram": {
            str(int(k)): int((n_components == k).sum()) for k in np.unique(n_components)
        },
        "conditions": conditions_summary(testset),
        "methods": {m: a["summary"] for m, a in methods.items()},
        "tfdeblend_by_quality": quality_breakdown(methods["tfdeblend"], quality),
        # each baseline against tfdeblend on the galaxies both found
        "same_galaxies": {
            base: same_galaxies(methods["tfdeblend"]["arrays"], methods[base]["arrays"], bands)
            for base in methods if base != "tfdeblend"
        },
    }


def worst_deblends(ours: dict[str, Any], n_stamps: int, count: int) -> np.ndarray:
    """Stamps of tfdeblend's worst deblends: galaxy x not found first, then the largest
    ``|relative band-sum flux error|`` of x (stable order); the first stamps without an x.

    Args:
        ours: the ``"arrays"`` of :func:`analyze_catalog` for tfdeblend.
        n_stamps: stamps in the test set.
        count: at most this many.
    """
    if "x" not in ours:
        return np.arange(min(count, n_stamps))
    a = ours["x"]
    score = np.where(a["found"], np.abs(np.nan_to_num(a["rel_sum"], nan=np.inf)), np.inf)
    score = np.where(a["present"], score, -1)
    return np.argsort(-score, kind="stable")[: min(count, len(score))]


def missed_stamps(arrays: dict[str, Any], n_stamps: int, count: int) -> np.ndarray:
    """The first ``count`` stamps where a method missed galaxy x or y.

    Args:
        arrays: the ``"arrays"`` of :func:`analyze_catalog` for the method.
        n_stamps: stamps in the test set.
        count: at most this many.
    """
    missed = np.zeros(n_stamps, dtype=bool)
    for label in GALAXIES:
        if label in arrays:
            missed |= arrays[label]["present"] & ~arrays[label]["found"]
    return np.flatnonzero(missed)[:count]


# --------------------------------------------------------------------------------------------
# observing conditions


#: the targets of issue 27 for a test set under other observing conditions:
#: key -> (label, goal); judged against :data:`CONDITION_REFERENCE` where they name it
CONDITION_TARGETS: dict[str, tuple[str, str]] = {
    "y_recall": ("fainter-galaxy recall", ">= sep's + 0.15"),
    "precision": ("precision", ">= 0.95"),
    "exact_count": ("exact-count fraction", ">= 0.80"),
    "flux_scatter_x": ("r flux scatter, brighter x", "< sep's"),
    "flux_scatter_y": ("r flux scatter, fainter y", "< sep's"),
    "high": ("high-quality fraction", ">= 0.75"),
}
#: the baseline the condition targets compare with
CONDITION_REFERENCE = "sep"


def _spread(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(values)), "min": float(values.min()),
            "max": float(values.max())}


def conditions_summary(testset: dict[str, np.ndarray]) -> dict[str, Any]:
    """The observing conditions of a test set, from the conditions stored with its stamps.

    Returns:
        ``{"known": bool, "survey": str | None}``, and when known (every
        :data:`tfdeblend.simulate.CONDITION_FIELDS` present): ``psf_fwhm``, ``noise_sigma``,
        ``depth`` as ``{band: {"median", "min", "max"}}`` and ``pixel_scale``, ``psf_scale``,
        ``exposure_scale`` as ``{"median", "min", "max"}`` over the stamps.
    """
    survey = str(np.asarray(testset["survey"])) if "survey" in testset else None
    out: dict[str, Any] = {"known": all(k in testset for k in CONDITION_FIELDS),
                           "survey": survey or None}
    if not out["known"] or not len(np.asarray(testset["n_gal"])):
        out["known"] = False
        return out
    bands = [str(b) for b in np.asarray(testset["bands"]).ravel()]
    for key in BAND_CONDITION_FIELDS:
        values = np.asarray(testset[key], dtype=np.float64).reshape(-1, len(bands))
        out[key] = {b: _spread(values[:, c]) for c, b in enumerate(bands)}
    for key in ("pixel_scale", "psf_scale", "exposure_scale"):
        out[key] = _spread(testset[key])
    return out


def _conditions_key(cond: dict[str, Any]) -> tuple:
    """What makes two test sets' conditions the same (rounded)."""
    if not cond.get("known"):
        return (cond.get("survey"),)
    key: list[Any] = [cond.get("survey"), round(cond["pixel_scale"]["median"], 4)]
    for name in ("psf_scale", "exposure_scale"):
        key += [round(cond[name]["min"], 3), round(cond[name]["max"], 3)]
    for name, digits in (("psf_fwhm", 3), ("depth", 2)):
        key += [round(v["median"], digits) for v in cond[name].values()]
    return tuple(key)


def conditions_differ(summaries: Sequence[dict[str, Any]]) -> bool:
    """Whether test sets with known conditions were drawn under different conditions."""
    known = [_conditions_key(c) for c in summaries if c and c.get("known")]
    return len(set(known)) > 1


def is_nominal(cond: dict[str, Any]) -> bool:
    """LSST at 10-year depth with BTK's PSF (the paper's conditions)."""
    return bool(
        cond.get("known") and cond.get("survey") == "LSST"
        and all(np.isclose(cond[k][e], 1.0) for k in ("psf_scale", "exposure_scale")
                for e in ("min", "max"))
    )


def _flux_band(bands: Sequence[str]) -> str:
    """The band of the grid's flux columns: r where there is one, else the middle band."""
    bands = list(bands)
    return "r" if "r" in bands else bands[len(bands) // 2]


def _method_row(summary: dict[str, Any], band: str) -> dict[str, Any]:
    nan = float("nan")

    def get(fn) -> Any:
        try:
            return fn()
        except (KeyError, TypeError):
            return nan

    row = {
        "x_recall": get(lambda: summary["x"]["found_fraction"]),
        "y_recall": get(lambda: summary["y"]["found_fraction"]),
        "recall": get(lambda: summary["detection"]["recall"]),
        "precision": get(lambda: summary["detection"]["precision"]),
        "exact_count": get(lambda: summary["detection"]["exact_count_fraction"]),
        "flux": {},
    }
    for label in GALAXIES:
        stats = get(lambda lb=label: summary[lb]["flux"][band])
        row["flux"][label] = {k: (stats[k] if isinstance(stats, dict) else nan)
                              for k in ("bias", "scatter", "outlier_fraction")}
    return row


def _judge(ours: dict[str, Any], ref: dict[str, Any] | None, high: float) -> dict[str, Any]:
    """:data:`CONDITION_TARGETS` met (True/False), or None where not judgeable."""

    def check(value: float, passed) -> bool | None:
        return None if value is None or not np.isfinite(value) else bool(passed(value))

    out: dict[str, Any] = {
        "precision": check(ours["precision"], lambda v: v >= 0.95),
        "exact_count": check(ours["exact_count"], lambda v: v >= 0.80),
        "high": check(high, lambda v: v >= 0.75),
        "y_recall": None, "flux_scatter_x": None, "flux_scatter_y": None,
    }
    if ref is not None:
        if np.isfinite(ref["y_recall"]):
            out["y_recall"] = check(ours["y_recall"], lambda v: v >= ref["y_recall"] + 0.15)
        for label in GALAXIES:
            theirs = ref["flux"][label]["scatter"]
            if np.isfinite(theirs):
                out[f"flux_scatter_{label}"] = check(ours["flux"][label]["scatter"],
                                                     lambda v, t=theirs: v < t)
    return out


def conditions_grid(testsets: dict[str, dict[str, Any]], bands: Sequence[str]) -> dict[str, Any]:
    """One row per test set: its conditions and the key metrics of every method, side by side.

    Args:
        testsets: name -> :func:`testset_summary` (``metrics.json``'s ``testsets``).
        bands: the model's bands.

    Returns:
        ``{"band": flux band, "reference": baseline the targets compare with (or None),
        "targets": {key: {"label", "goal"}}, "rows": [{"testset", "n_stamps", "n_gal_counts",
        "conditions", "nominal", "methods": {method: {"x_recall", "y_recall", "recall",
        "precision", "exact_count", "flux": {"x"/"y": {"bias", "scatter",
        "outlier_fraction"}}}}, "quality": {"high", "medium", "low"}, "targets": {key: met}}]}``.
    """
    band = _flux_band(bands)
    rows = []
    reference = None
    for name, ts in testsets.items():
        methods = {m: _method_row(s, band) for m, s in ts["methods"].items()}
        ref = methods.get(CONDITION_REFERENCE)
        if ref is not None:
            reference = CONDITION_REFERENCE
        quality = {k: ts["table1_quality"]["all"][k] for k in ("high", "medium", "low")}
        cond = ts.get("conditions") or {"known": False, "survey": None}
        rows.append({
            "testset": name,
            "n_stamps": ts["n_stamps"],
            "n_gal_counts": ts["n_gal_counts"],
            "conditions": cond,
            "nominal": is_nominal(cond),
            "methods": methods,
            "quality": quality,
            "targets": _judge(methods["tfdeblend"], ref, quality["high"]),
        })
    return {
        "band": band,
        "reference": reference,
        "targets": {k: {"label": label, "goal": goal}
                    for k, (label, goal) in CONDITION_TARGETS.items()},
        "rows": rows,
    }
