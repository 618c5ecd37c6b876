"""The evaluation report: the paper's tables and figures, truth-based metrics, baselines.

:func:`evaluate` loads test sets and a model, deblends, runs the baselines and writes a report
directory atomically (built in a temporary directory, then renamed):

- ``report.md``: Table I (quality fractions), Table II (PSNR / SSIM per deblend index, paper and
  BTK definitions), flux and moment recovery, the truth-based metrics of tfdeblend and each
  baseline side by side, the paper's numbers beside ours, links to the figures;
- ``metrics.json``: every number of the report (``NaN`` written as ``null``);
- PNG figures ``<testset>_fig6_flux_x.png`` ... (see :data:`FIGURES`).

Conventions: galaxy ``x`` is the brighter and ``y`` the fainter true galaxy (``isolated[:, 0]``
and ``isolated[:, 1]``, brightness order of the data). Components (peel order) and baseline
detections are matched to the true galaxies by centroid with a Hungarian assignment and a
maximum separation (:mod:`tfdeblend.evaluate.match`, 5 px). For the image metrics (Table II)
the ``k``-th component of a blend is compared with the true galaxy it is assigned to by the same
Hungarian assignment without the distance cut. Images are channels last ``(N, H, W, C)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tfdeblend import measure
from tfdeblend.config import QUALITY_NAMES
from tfdeblend.errors import TfdeblendError
from tfdeblend.evaluate import baselines as bl
from tfdeblend.evaluate import metrics as mt
from tfdeblend.evaluate.match import DEFAULT_MAX_SEP, match_batch, match_positions
from tfdeblend.utils import atomic_dir, check_output_path

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

#: figure key -> (file suffix, caption)
FIGURES = {
    "fig6": ("fig6_flux_x.png", "Fig. 6: flux recovery of the brighter galaxy x"),
    "fig7": ("fig7_flux_y.png", "Fig. 7: flux recovery of the fainter galaxy y"),
    "fig8": ("fig8_mu11.png", "Fig. 8: mu11 recovery"),
    "fig9": ("fig9_moment_plane.png", "Fig. 9: the (mu11, mu20 - mu02) plane"),
    "fig10": ("fig10_mu2_hist.png", "Fig. 10: |mu2| histogram"),
    "fig11": ("fig11_flux_vs_baselines.png", "Fig. 11: flux errors, tfdeblend vs baselines"),
    "fig12": ("fig12_moments_vs_baselines.png", "Fig. 12: moment errors, tfdeblend vs baselines"),
    "fig13": ("fig13_failures_tfdeblend.png", "Fig. 13: tfdeblend's worst deblends"),
    "fig14": ("fig14_failures_baselines.png", "Fig. 14: baselines' missed galaxies"),
    "fig15": ("fig15_found_vs_separation.png",
              "Fig. 15: found fraction vs separation from the nearest other galaxy"),
}

GALAXIES = {"x": 0, "y": 1}


# --------------------------------------------------------------------------------------------
# checks and loading


def check_compatible(testset: dict[str, Any], bands: Sequence[str], stamp_size: int, name: str):
    """Raise :class:`TfdeblendError` when a test set does not fit the model's bands or stamps."""
    data_bands = [str(b) for b in np.asarray(testset["bands"]).ravel()]
    if data_bands != [str(b) for b in bands]:
        raise TfdeblendError(
            f"test set {name} has bands {','.join(data_bands)} but the model expects "
            f"{','.join(bands)}"
        )
    shape = np.asarray(testset["blend"]).shape
    if len(shape) != 4 or shape[1] != stamp_size or shape[2] != stamp_size:
        raise TfdeblendError(
            f"test set {name} has stamps of shape {shape[1:3]} but the model expects "
            f"{stamp_size}x{stamp_size}"
        )


def _testset_names(dirs: Sequence[str | os.PathLike]) -> list[str]:
    names: list[str] = []
    for d in dirs:
        path = Path(d)
        base = (path.parent if path.name == "blends.fits" else path).resolve().name or "testset"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# analysis


def _deblend_with_progress(model, blends, batch_size, progress):
    parts = []
    for start in tqdm(
        range(0, len(blends), batch_size), desc="deblend", unit="batch", disable=not progress
    ):
        parts.append(model.deblend(blends[start : start + batch_size], batch_size=batch_size))
    return parts


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
            "isolated_snr": _snr_summary(true_flux, sigma_f, present),
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


def _snr_summary(true_flux: np.ndarray, sigma_f: np.ndarray, present: np.ndarray) -> dict:
    """Matched-filter S/N of each galaxy alone (bands in quadrature): median, share above 10."""
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.sqrt(np.nansum((true_flux / sigma_f) ** 2, axis=-1))[present]
    if not snr.size:
        return {"median": float("nan"), "above_10": float("nan")}
    return {"median": float(np.median(snr)), "above_10": float(np.mean(snr > 10))}


def separation_bins() -> list[tuple[str, float, float]]:
    """``(key, lo, hi)`` of each bin of :data:`SEPARATION_BINS` (keys ``"0-4"``, ..., ``">=20"``)."""
    edges = SEPARATION_BINS
    return [(f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}", lo, hi)
            for lo, hi in zip(edges[:-1], edges[1:])]


def found_by_separation(present: np.ndarray, found: np.ndarray, sep: np.ndarray) -> dict:
    """Found fraction per bin of :data:`SEPARATION_BINS`: ``{"lo-hi": {"n", "found_fraction"}}``,
    plus ``"no neighbour"`` for galaxies alone in their stamp (when there are any)."""
    out = {}
    alone = present & np.isinf(sep)
    for key, lo, hi in separation_bins():
        sel = present & ~alone & (sep >= lo) & (sep < hi)
        n = int(sel.sum())
        out[key] = {"n": n, "found_fraction": float(found[sel].mean()) if n else float("nan")}
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


def _quality_breakdown(analysis: dict[str, Any], quality: np.ndarray) -> dict[str, Any]:
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


def _table2(img: dict[str, np.ndarray], n_gal: np.ndarray, n_comp: np.ndarray) -> dict[str, Any]:
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


def evaluate_loaded(
    testsets: dict[str, dict[str, np.ndarray]],
    model,
    out_dir: str | os.PathLike,
    baselines: Sequence[str] = ("sep",),
    batch_size: int = 32,
    max_sep: float = DEFAULT_MAX_SEP,
    overwrite: bool = False,
    progress: bool = True,
    gallery_size: int = 6,
) -> dict[str, Any]:
    """Evaluate already-loaded test sets with a loaded model and write the report.

    Args:
        testsets: name -> test-set dict (as :func:`tfdeblend.data.load_testset` returns).
        model: an object with ``bands``, ``stamp_size``, ``name`` and
            ``deblend(images (N, H, W, C), batch_size) -> dict`` (:class:`export.DeblendModel`).
        out_dir: the report directory (written atomically).
        baselines: names among ``sep``, ``source-extractor``.
        batch_size: blends per model call.
        max_sep: matching radius, pixels.
        overwrite: replace an existing ``out_dir``.
        progress: tqdm bars.
        gallery_size: stamps per failure gallery.

    Returns:
        The metrics dict also written to ``metrics.json``.
    """
    out_dir = check_output_path(out_dir, overwrite)
    for name in baselines:
        if name not in bl.BASELINES:
            raise TfdeblendError(
                f"unknown baseline {name!r}; choose from {', '.join(bl.BASELINES)}"
            )
    if not testsets:
        raise TfdeblendError("no test set given")
    for name, ts in testsets.items():
        check_compatible(ts, model.bands, model.stamp_size, name)
    if batch_size < 1:
        raise TfdeblendError(f"batch size must be >= 1, got {batch_size}")

    notes: list[str] = []
    results: dict[str, Any] = {
        "model": {"name": str(getattr(model, "name", "model")), "bands": list(model.bands),
                  "stamp_size": int(model.stamp_size), "path": str(getattr(model, "path", ""))},
        "definitions": {
            "x": "brighter true galaxy (isolated[0])", "y": "fainter true galaxy (isolated[1])",
            "match": f"Hungarian on centroids, max separation {max_sep} px",
            "psnr": "10 log10(max(truth)^2 / MSE), dB", "ssim": "per band, data_range of truth",
            "psnr_btk/ssim_btk": "each image / its own max, data_range 1, band mean",
            "outlier_fraction": "|err - median| > 3 * 1.4826 MAD",
            "catastrophic_fraction": "|err| > 0.1",
            "flux_error_over_noise_limit": "(f_meas - f_true) / sigma_f, sigma_f^2 = "
            "1 / sum(p^2 / (sky_var + f p)) per band",
        },
        "paper": {"table1": {str(k): v for k, v in PAPER["table1"].items()},
                  "table2_psnr": {str(k): v for k, v in PAPER["table2_psnr"].items()},
                  "ssim": PAPER["ssim"], "sextractor_found": PAPER["sextractor_found"]},
        "baselines": list(baselines),
        "testsets": {},
        "notes": notes,
    }
    if "source-extractor" in baselines and bl.source_extractor_binary() is None:
        notes.append("Source Extractor is not installed (no 'source-extractor' or 'sex' on PATH): "
                     "its column is left out; install it with apt-get install source-extractor")

    with atomic_dir(out_dir) as tmp:
        figure_blocks: dict[str, list[tuple[str, str]]] = {}
        for name, ts in testsets.items():
            blends = np.asarray(ts["blend"], dtype=np.float32)
            n_gal = np.asarray(ts["n_gal"], dtype=np.int64)
            noisy = np.asarray(ts.get("noisy", np.ones(len(blends))), dtype=bool)
            sky_std = mt.sky_noise_std(
                blends[noisy] if noisy.any() else blends,
                np.asarray(ts["blend_noiseless"])[noisy] if noisy.any() else ts["blend_noiseless"],
            )
            if np.any(sky_std <= 0):
                floor = 1e-6 * float(np.abs(blends).max() or 1.0)
                notes.append(f"{name}: no sky noise measurable (noiseless test set); the baselines "
                             f"use a noise floor of {floor:.3g}")
                sky_std = np.maximum(sky_std, floor)

            # --- tfdeblend
            n_stamps = len(blends)
            quality = np.zeros(n_stamps, dtype=np.int64)
            n_comp = np.zeros(n_stamps, dtype=np.int64)
            # blends changed by the post-peel steps, and the components merged away
            added = {"split": 0, "recovered": 0, "merged": 0}
            img_parts, cat_parts = [], []
            for start, part in zip(
                range(0, n_stamps, batch_size),
                _deblend_with_progress(model, blends, batch_size, progress),
            ):
                stop = start + len(part["quality"])
                quality[start:stop] = part["quality"]
                n_comp[start:stop] = part["n_components"]
                for key in added:
                    added[key] += int(np.sum(part.get(key, 0)))
                sub = {k: np.asarray(ts[k])[start:stop] for k in
                       ("isolated", "x", "y", "n_gal")}
                img_parts.append(image_metrics(part["components"], part["n_components"], sub))
                # photometry and moments from the flux-conserving components; PSNR/SSIM above
                # compare the RDN's noiseless models with the noiseless truth
                cat_parts.append(bl.catalog_from_components(
                    part.get("conserved", part["components"]), part["n_components"]))
            img = {k: _concat_padded([p[k] for p in img_parts]) for k in img_parts[0]}
            catalog = {k: _concat_padded([p[k] for p in cat_parts]) for k in cat_parts[0]}
            methods = {"tfdeblend": analyze_catalog(catalog, ts, sky_std, max_sep)}

            # --- baselines
            for base in baselines:
                if base == "source-extractor" and bl.source_extractor_binary() is None:
                    continue
                cat = bl.run_baseline(base, blends, sky_std, list(model.bands), progress=progress)
                methods[base] = analyze_catalog(cat, ts, sky_std, max_sep)

            entry: dict[str, Any] = {
                "n_stamps": n_stamps,
                "n_gal_counts": {str(int(g)): int((n_gal == g).sum()) for g in np.unique(n_gal)},
                "sky_noise_std": {str(b): float(s) for b, s in zip(model.bands, sky_std)},
                "table1_quality": {
                    "all": mt.quality_fractions(quality),
                    **{str(int(g)): mt.quality_fractions(quality[n_gal == g])
                       for g in np.unique(n_gal)},
                },
                "table2_image_metrics": _table2(img, n_gal, n_comp),
                "post_peel_blends": added,
                "n_components_histogram": {
                    str(int(k)): int((n_comp == k).sum()) for k in np.unique(n_comp)
                },
                "methods": {m: a["summary"] for m, a in methods.items()},
                "tfdeblend_by_quality": _quality_breakdown(methods["tfdeblend"], quality),
                # each baseline against tfdeblend on the galaxies both found
                "same_galaxies": {
                    base: same_galaxies(methods["tfdeblend"]["arrays"], methods[base]["arrays"],
                                        list(model.bands))
                    for base in methods if base != "tfdeblend"
                },
            }
            results["testsets"][name] = entry
            figure_blocks[name] = _figures(
                tmp, name, ts, methods, quality, model, img, catalog, gallery_size, progress,
                batch_size,
            )
        results["figures"] = {n: [f for f, _ in blocks] for n, blocks in figure_blocks.items()}
        (tmp / "metrics.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
        (tmp / "report.md").write_text(render_markdown(results, figure_blocks))
    return results


def _concat_padded(parts: list[np.ndarray]) -> np.ndarray:
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


def evaluate(
    testset_dirs: Sequence[str | os.PathLike],
    model_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    baselines: Sequence[str] = ("sep",),
    batch_size: int = 32,
    max_sep: float = DEFAULT_MAX_SEP,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on test sets against baselines and write the report directory.

    Args:
        testset_dirs: test-set directories (``blends.fits`` + ``truth.fits``, or TFRecords), e.g.
            the 2-galaxy and 3-galaxy sets.
        model_dir: exported model (``None``: :func:`tfdeblend.export.default_model_dir`).
        out_dir: report directory: ``report.md``, ``metrics.json``, PNG figures.
        baselines: ``sep`` and/or ``source-extractor``.
        batch_size: blends per model call.
        max_sep: matching radius, pixels.
        overwrite: replace an existing ``out_dir``.
        progress: tqdm bars.

    Returns:
        The metrics dict (also in ``metrics.json``).

    Raises:
        TfdeblendError: missing/mismatched test set or model, existing output, bad option.
    """
    check_output_path(out_dir, overwrite)
    if not testset_dirs:
        raise TfdeblendError("no test set given")
    from tfdeblend.data import load_testset
    from tfdeblend.export import load_model

    testsets = {}
    for name, path in zip(_testset_names(testset_dirs), testset_dirs):
        if not Path(path).exists():
            raise TfdeblendError(f"test set {path} does not exist")
        testsets[name] = load_testset(path)
    model = load_model(model_dir)
    return evaluate_loaded(testsets, model, out_dir, baselines=baselines, batch_size=batch_size,
                           max_sep=max_sep, overwrite=overwrite, progress=progress)


# --------------------------------------------------------------------------------------------
# JSON and markdown


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _num(v: float, fmt: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, fmt)


def _stats_cell(stats: dict[str, float]) -> str:
    """``bias / scatter / outliers (%)`` of a :func:`metrics.robust_stats` dict."""
    return f"{_num(stats['bias'])} / {_num(stats['scatter'])} / {_pct(stats['outlier_fraction'])}"


def _side_row(lines, methods, names, label, getter, fmt=_num, paper=""):
    vals = []
    for n in names:
        try:
            vals.append(fmt(getter(methods[n])))
        except (KeyError, TypeError):
            vals.append("n/a")
    lines.append(f"| {label} | " + " | ".join(vals) + f" | {paper} |")


def render_markdown(results: dict[str, Any], figure_blocks: dict[str, list[tuple[str, str]]]) -> str:
    """The ``report.md`` text for a metrics dict."""
    m = results["model"]
    lines = [
        "# tfdeblend evaluation report",
        "",
        f"Model: `{m['name']}` (bands {','.join(m['bands'])}, stamps {m['stamp_size']} px). "
        f"Baselines: {', '.join(results['baselines']) or 'none'}.",
        "",
        "x = brighter, y = fainter true galaxy; objects matched to true galaxies by centroid "
        f"({results['definitions']['match']}). Definitions: `docs/evaluation.md`.",
        "",
    ]
    for note in results["notes"]:
        lines += [f"> Note: {note}", ""]
    for name, ts in results["testsets"].items():
        lines += [f"## Test set `{name}`", "",
                  f"{ts['n_stamps']} stamps; galaxies per stamp: "
                  + ", ".join(f"{k}: {v}" for k, v in ts["n_gal_counts"].items())
                  + "; sky noise std per band: "
                  + ", ".join(f"{b} {s:.1f}" for b, s in ts["sky_noise_std"].items()), ""]
        post = ts.get("post_peel_blends")
        if post:
            lines += [f"After the peel, {post['split']} blend(s) had a merged component split "
                      f"and {post['recovered']} gained a galaxy from the residual detection; "
                      f"{post.get('merged', 0)} component(s) were merged into a brighter one.",
                      ""]
        # Table I
        lines += ["### Table I: quality of the deblends (%)", "",
                  "| galaxies | stamps | high | medium | low | paper high | paper medium | "
                  "paper low |", "|---|---|---|---|---|---|---|---|"]
        for g, q in ts["table1_quality"].items():
            paper = PAPER["table1"].get(int(g)) if g != "all" else None
            p = [_pct(paper[k]) if paper else "" for k in ("high", "medium", "low")]
            lines.append(f"| {g} | {q['n']} | {_pct(q['high'])} | {_pct(q['medium'])} | "
                         f"{_pct(q['low'])} | {p[0]} | {p[1]} | {p[2]} |")
        # Table II
        lines += ["", "### Table II: PSNR (dB) and SSIM per deblend index", "",
                  "| galaxies | deblend | n | PSNR mean | PSNR median | paper mean | paper median "
                  "| SSIM mean | SSIM median | BTK PSNR mean | BTK SSIM mean |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for g, rows in ts["table2_image_metrics"].items():
            paper = PAPER["table2_psnr"].get(int(g), [])
            for row in rows:
                k = row["deblend_index"]
                pm, pmed = paper[k - 1] if k - 1 < len(paper) else ("", "")
                lines.append(
                    f"| {g} | {k} | {row['psnr']['n']} | {_num(row['psnr']['mean'], '.2f')} | "
                    f"{_num(row['psnr']['median'], '.2f')} | {pm} | {pmed} | "
                    f"{_num(row['ssim']['mean'], '.4f')} | {_num(row['ssim']['median'], '.4f')} | "
                    f"{_num(row['psnr_btk']['mean'], '.2f')} | "
                    f"{_num(row['ssim_btk']['mean'], '.4f')} |")
        lines += ["", f"Paper SSIM: {PAPER['ssim']}.", ""]
        # side by side
        methods = ts["methods"]
        names = list(methods)
        lines += ["### Truth-based metrics, side by side", "",
                  "| metric | " + " | ".join(names) + " | paper (SExtractor) |",
                  "|---|" + "---|" * (len(names) + 1)]

        def row(label, getter, fmt=_num, paper="", _lines=lines, _methods=methods, _names=names):
            _side_row(_lines, _methods, _names, label, getter, fmt, paper)

        row("recall", lambda s: s["detection"]["recall"])
        row("precision", lambda s: s["detection"]["precision"])
        row("exact-count fraction", lambda s: s["detection"]["exact_count_fraction"])
        for label in GALAXIES:
            if label not in methods[names[0]]:
                continue
            paper_found = _pct(PAPER["sextractor_found"][label]) + " %"
            row(f"{label}: found (%)", lambda s, lb=label: s[lb]["found_fraction"], _pct,
                paper_found)
            row(f"{label}: flux bias (band sum)", lambda s, lb=label: s[lb]["flux_band_sum"]["bias"])
            row(f"{label}: flux scatter (band sum)",
                lambda s, lb=label: s[lb]["flux_band_sum"]["scatter"])
            row(f"{label}: flux outliers (%)",
                lambda s, lb=label: s[lb]["flux_band_sum"]["outlier_fraction"], _pct)
            row(f"{label}: |flux err| > 10% (%)",
                lambda s, lb=label: s[lb]["flux_band_sum"]["catastrophic_fraction"], _pct)
            for band in results["model"]["bands"]:
                row(f"{label}: {band} flux bias",
                    lambda s, lb=label, b=band: s[lb]["flux"][b]["bias"])
                row(f"{label}: {band} error / noise limit (scatter)",
                    lambda s, lb=label, b=band: s[lb]["flux_error_over_noise_limit"][b]["scatter"],
                    lambda v: _num(v, ".2f"))
            for key in ("mu11", "mu20_minus_mu02", "mu2_abs"):
                row(f"{label}: {key} error median (px^2)",
                    lambda s, lb=label, k=key: s[lb]["moments"][k]["bias"])
                row(f"{label}: {key} error scatter (px^2)",
                    lambda s, lb=label, k=key: s[lb]["moments"][k]["scatter"])
        # found fraction by separation
        first = methods[names[0]]
        labels = [lb for lb in GALAXIES if lb in first and "found_by_separation" in first[lb]]
        if labels:
            snr = "; ".join(
                f"{lb}: median {first[lb]['isolated_snr']['median']:.0f}, "
                f"{_pct(first[lb]['isolated_snr']['above_10'])} % above 10" for lb in labels)
            lines += ["", "### Found (%) by separation from the nearest other galaxy (pixels)", "",
                      "Matched-filter S/N of each galaxy alone, bands in quadrature "
                      f"(detectability without blending): {snr}.", "",
                      "| galaxy | separation (px) | galaxies | " + " | ".join(names) + " |",
                      "|---|---|---|" + "---|" * len(names)]
            for label in labels:
                for key, cell in first[label]["found_by_separation"].items():
                    vals = [_pct(methods[m][label]["found_by_separation"][key]["found_fraction"])
                            for m in names]
                    lines.append(f"| {label} | {key} | {cell['n']} | " + " | ".join(vals) + " |")
        # the same galaxies
        same = ts.get("same_galaxies") or {}
        if any(same.values()):
            lines += ["", "### Flux on the same galaxies: tfdeblend against each baseline", "",
                      "Relative flux error on the galaxies that both tfdeblend and the baseline "
                      "found (a method that finds more galaxies is otherwise measured on a "
                      "harder sample). Bias / robust scatter / 3-sigma outliers (%).", "",
                      "| baseline | galaxy | flux | galaxies | tfdeblend | baseline |",
                      "|---|---|---|---|---|---|"]
            fluxes = [("band sum", lambda d: d["flux_band_sum"])] + [
                (b, lambda d, b=b: d["flux"][b]) for b in results["model"]["bands"]]
            for base, by_label in same.items():
                for label, entry in by_label.items():
                    for flux_name, pick in fluxes:
                        lines.append(f"| {base} | {label} | {flux_name} | {entry['n']} | "
                                     f"{_stats_cell(pick(entry['ours']))} | "
                                     f"{_stats_cell(pick(entry['theirs']))} |")
        # by quality
        lines += ["", "### tfdeblend flux recovery by quality bin (band sum)", "",
                  "| galaxy | quality | stamps | found (%) | bias | scatter | fit slope |",
                  "|---|---|---|---|---|---|---|"]
        for label, bins in ts["tfdeblend_by_quality"].items():
            for qname, s in bins.items():
                lines.append(
                    f"| {label} | {qname} | {s['n_stamps']} | {_pct(s['found_fraction'])} | "
                    f"{_num(s['flux_band_sum']['bias'])} | {_num(s['flux_band_sum']['scatter'])} | "
                    f"{_num(s['flux_fit']['slope'])} |")
        lines += ["", "### Figures", ""]
        for fname, caption in figure_blocks.get(name, []):
            lines += [f"**{caption}**", "", f"![{caption}]({fname})", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, tmp: Path, name: str, key: str, blocks: list[tuple[str, str]]):
    suffix, caption = FIGURES[key]
    fname = f"{name}_{suffix}"
    fig.savefig(tmp / fname, dpi=80)
    _plt().close(fig)
    blocks.append((fname, caption))


def _rgb(image: np.ndarray, bands: Sequence[str], stretch: float, q: float = 8.0) -> np.ndarray:
    """Lupton RGB of a channels-last image (i, r, g as R, G, B when present)."""
    from astropy.visualization import make_lupton_rgb

    bands = list(bands)
    pick = [bands.index(b) if b in bands else min(k, len(bands) - 1)
            for k, b in enumerate(("i", "r", "g"))]
    chans = [np.asarray(image[..., c], dtype=np.float64) for c in pick]
    return make_lupton_rgb(*chans, stretch=stretch, Q=q)


def _figures(tmp, name, ts, methods, quality, model, img, catalog, gallery_size, progress,
             batch_size) -> list[tuple[str, str]]:
    plt = _plt()
    blocks: list[tuple[str, str]] = []
    ours = methods["tfdeblend"]["arrays"]
    others = [m for m in methods if m != "tfdeblend"]
    colors = {2: "tab:green", 1: "tab:orange", 0: "tab:red"}
    steps = tqdm(total=10, desc="figures", disable=not progress)

    # Fig. 6 and 7: flux recovery of x and y, per quality bin
    for key, label in (("fig6", "x"), ("fig7", "y")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        if label in ours:
            a = ours[label]
            t, m = a["true_flux"].sum(-1), a["meas_flux"].sum(-1)
            for q, qname in QUALITY_NAMES.items():
                sel = a["found"] & (quality == q)
                axes[0].scatter(t[sel], m[sel], s=6, c=colors[q], label=qname)
                rel = a["rel_sum"][sel]
                rel = rel[np.isfinite(rel)]
                if rel.size:
                    axes[1].hist(np.clip(rel, -1, 1), bins=40, range=(-1, 1), histtype="step",
                                 color=colors[q], label=qname)
            fit = mt.linear_fit(t[a["found"]], m[a["found"]])
            if np.isfinite(fit["slope"]):
                grid = np.linspace(np.nanmin(t[a["found"]]), np.nanmax(t[a["found"]]), 50)
                yh, lo, hi = mt.fit_band(fit, grid)
                axes[0].plot(grid, yh, "k-", lw=1,
                             label=f"fit {fit['slope']:.2f} x + {fit['intercept']:.3g}")
                axes[0].fill_between(grid, lo, hi, color="k", alpha=0.2, label="95% band")
            finite = t[np.isfinite(t)]
            if finite.size:
                axes[0].plot([0, finite.max()], [0, finite.max()], "b:", lw=1, label="y = x")
        axes[0].set(xlabel="true flux (band sum)", ylabel="recovered flux",
                    title=f"galaxy {label}")
        axes[1].set(xlabel="(f_rec - f_true) / f_true (clipped to +-1)", ylabel="galaxies")
        _legend(axes[0])
        _legend(axes[1])
        fig.tight_layout()
        _save(fig, tmp, name, key, blocks)
        steps.update()

    # Fig. 8: mu11 recovery
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, label in zip(axes, GALAXIES):
        if label in ours:
            a = ours[label]
            t, m = a["true_shape"]["mu11"], a["meas_shape"]["mu11"]
            ax.scatter(t[a["found"]], m[a["found"]], s=6)
            lim = np.nanmax(np.abs(t[a["found"]])) if a["found"].any() else 1.0
            ax.plot([-lim, lim], [-lim, lim], "k:", lw=1)
        ax.set(xlabel="true mu11 (px^2)", ylabel="recovered mu11 (px^2)", title=f"galaxy {label}")
    fig.tight_layout()
    _save(fig, tmp, name, "fig8", blocks)
    steps.update()

    # Fig. 9: (mu11, mu20 - mu02) plane
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, label in zip(axes, GALAXIES):
        if label in ours:
            a = ours[label]
            sel = a["found"]
            ax.scatter(a["true_shape"]["mu11"][sel], a["true_shape"]["mu20_minus_mu02"][sel], s=6,
                       label="true")
            ax.scatter(a["meas_shape"]["mu11"][sel], a["meas_shape"]["mu20_minus_mu02"][sel], s=6,
                       label="tfdeblend", alpha=0.7)
        ax.set(xlabel="mu11 (px^2)", ylabel="mu20 - mu02 (px^2)", title=f"galaxy {label}")
        _legend(ax)
    fig.tight_layout()
    _save(fig, tmp, name, "fig9", blocks)
    steps.update()

    # Fig. 10: |mu2| histogram
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, label in zip(axes, GALAXIES):
        if label in ours:
            a = ours[label]
            sel = a["found"]
            vals = [a["true_shape"]["mu2_abs"][sel], a["meas_shape"]["mu2_abs"][sel]]
            vals = [v[np.isfinite(v)] for v in vals]
            top = max([np.percentile(v, 99) for v in vals if v.size] + [1.0])
            for v, lab in zip(vals, ("true", "tfdeblend")):
                if v.size:
                    ax.hist(v, bins=30, range=(0, top), histtype="step", label=lab)
        ax.set(xlabel="|mu2| (px^2)", ylabel="galaxies", title=f"galaxy {label}")
        _legend(ax)
    fig.tight_layout()
    _save(fig, tmp, name, "fig10", blocks)
    steps.update()

    # Fig. 11: flux errors vs baselines; Fig. 12: moment errors vs baselines
    for key, what in (("fig11", "flux"), ("fig12", "mu11")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, label in zip(axes, GALAXIES):
            for method, arrays in methods.items():
                a = arrays["arrays"].get(label)
                if a is None:
                    continue
                if what == "flux":
                    v = a["rel_sum"]
                    rng = (-1.0, 1.0)
                else:
                    v = a["meas_shape"]["mu11"] - a["true_shape"]["mu11"]
                    rng = (-10.0, 10.0)
                v = v[np.isfinite(v)]
                if v.size:
                    ax.hist(np.clip(v, *rng), bins=40, range=rng, histtype="step",
                            label=f"{method} ({v.size} found)")
            xlabel = ("(f_rec - f_true) / f_true" if what == "flux"
                      else "mu11 recovered - true (px^2)")
            ax.set(xlabel=xlabel, ylabel="galaxies", title=f"galaxy {label}")
            _legend(ax)
        fig.tight_layout()
        _save(fig, tmp, name, key, blocks)
        steps.update()

    # Fig. 15: found fraction vs separation (completeness of each method in close pairs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), sharey=True)
    edges = np.asarray(SEPARATION_BINS, dtype=np.float64)
    finite = np.where(np.isfinite(edges), edges, edges[-2] + 10.0)
    centres = 0.5 * (finite[:-1] + finite[1:])
    keys = [key for key, _, _ in separation_bins()]
    for ax, label in zip(axes, GALAXIES):
        for method, result in methods.items():
            bins = result["summary"].get(label, {}).get("found_by_separation")
            if not bins:
                continue
            frac = np.array([bins[key]["found_fraction"] for key in keys], dtype=np.float64)
            ax.plot(centres, 100 * frac, marker="o", label=method)
        ax.set_xticks(centres)
        ax.set_xticklabels(keys)
        ax.set(xlabel="separation from the nearest other galaxy (px)", ylim=(0, 102),
               title=f"galaxy {label}")
        ax.grid(alpha=0.3)
        _legend(ax)
    axes[0].set_ylabel("found (%)")
    fig.tight_layout()
    _save(fig, tmp, name, "fig15", blocks)
    steps.update()

    # Fig. 13: tfdeblend failures (largest |flux error| of x, unfound first)
    bands = list(model.bands)
    stretch = float(np.nanpercentile(np.asarray(ts["blend_noiseless"]).max(axis=(1, 2, 3)), 50)
                    or 1.0) / 10.0
    if "x" in ours:
        a = ours["x"]
        score = np.where(a["found"], np.abs(np.nan_to_num(a["rel_sum"], nan=np.inf)), np.inf)
        score = np.where(a["present"], score, -1)
        worst = np.argsort(-score, kind="stable")[: min(gallery_size, len(score))]
    else:
        worst = np.arange(min(gallery_size, len(ts["blend"])))
    fig = _gallery_model(plt, ts, model, worst, quality, bands, stretch, batch_size)
    _save(fig, tmp, name, "fig13", blocks)
    steps.update()

    # Fig. 14: baselines' failures (stamps with a missed true galaxy)
    fig = _gallery_baselines(plt, ts, methods, others, gallery_size, bands, stretch)
    _save(fig, tmp, name, "fig14", blocks)
    steps.update()
    steps.close()
    return blocks


def _gallery_model(plt, ts, model, rows, quality, bands, stretch, batch_size):
    rows = np.asarray(rows, dtype=np.int64)
    n_rows = max(len(rows), 1)
    out = model.deblend(np.asarray(ts["blend"])[rows], batch_size=batch_size) if len(rows) else None
    cols = ["blend", "true x", "component 1", "true y", "component 2", "residual"]
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(2 * len(cols), 2 * n_rows), squeeze=False)
    for r, i in enumerate(rows):
        iso = np.asarray(ts["isolated"][i])
        comp = out["components"][r]
        panels = [ts["blend"][i], iso[0], comp[0] if comp.shape[0] > 0 else iso[0] * 0,
                  iso[1] if iso.shape[0] > 1 else iso[0] * 0,
                  comp[1] if comp.shape[0] > 1 else iso[0] * 0, out["residual"][r]]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(_rgb(np.asarray(panel), bands, stretch), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r][0].set_ylabel(f"#{i} q={QUALITY_NAMES.get(int(quality[i]), '?')} "
                              f"n={int(out['n_components'][r])}", fontsize=7)
    fig.tight_layout()
    return fig


def _gallery_baselines(plt, ts, methods, others, gallery_size, bands, stretch):
    n_cols = max(len(others), 1)
    fig, axes = plt.subplots(gallery_size, n_cols, figsize=(3 * n_cols, 3 * gallery_size),
                             squeeze=False)
    for c, method in enumerate(others or [None]):
        rows = []
        if method is not None:
            arr = methods[method]["arrays"]
            missed = np.zeros(len(ts["blend"]), dtype=bool)
            for label in GALAXIES:
                if label in arr:
                    missed |= arr[label]["present"] & ~arr[label]["found"]
            rows = list(np.flatnonzero(missed)[:gallery_size])
        for r in range(gallery_size):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r >= len(rows):
                ax.axis("off")
                if r == 0:
                    ax.set_title(f"{method}: no missed galaxy" if method else "no baseline",
                                 fontsize=8)
                continue
            i = rows[r]
            ax.imshow(_rgb(np.asarray(ts["blend"][i]), bands, stretch), origin="lower")
            n = int(ts["n_gal"][i])
            ax.plot(ts["x"][i, :n], ts["y"][i, :n], "c+", ms=10, label="true")
            det_x = methods[method]["arrays"]["cat_x"][i]
            det_y = methods[method]["arrays"]["cat_y"][i]
            ax.plot(det_x, det_y, "rx", ms=7, label=method)
            if r == 0:
                ax.legend(fontsize=6)
            match = methods[method]["arrays"]["match"][i]
            ax.set_title(f"{method} #{i}: found {int((match[:n] >= 0).sum())}/{n}", fontsize=8)
    fig.tight_layout()
    return fig
