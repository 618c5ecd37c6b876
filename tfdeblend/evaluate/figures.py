"""The evaluation report's figures, drawn from already-computed results.

Every function here takes arrays (the test set, :func:`tfdeblend.evaluate.analysis.analyze_catalog`
results, the deblender's outputs kept by :mod:`tfdeblend.evaluate.pipeline`) and returns a
matplotlib figure; none runs a model or a baseline. matplotlib is imported when a figure is drawn
(Agg backend), not when this module is imported.

:func:`testset_figures` yields the figures of one test set in report order, keyed like
:data:`FIGURES`, and :func:`field_figures` those of one simulated field, keyed like
:data:`FIELD_FIGURES`; :func:`save_figure` writes one PNG and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from tfdeblend.config import QUALITY_NAMES
from tfdeblend.evaluate import fields as fd
from tfdeblend.evaluate import metrics as mt
from tfdeblend.evaluate.analysis import (
    GALAXIES,
    SEPARATION_BINS,
    missed_stamps,
    separation_bins,
    worst_deblends,
)

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

#: components per stamp the tfdeblend gallery (Fig. 13) shows
GALLERY_COMPONENTS = 2

_QUALITY_COLORS = {2: "tab:green", 1: "tab:orange", 0: "tab:red"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG (80 dpi) and close it."""
    fig.savefig(path, dpi=80)
    _plt().close(fig)


def rgb(image: np.ndarray, bands: Sequence[str], stretch: float, q: float = 8.0) -> np.ndarray:
    """Lupton RGB of a channels-last image (i, r, g as R, G, B when present)."""
    from astropy.visualization import make_lupton_rgb

    bands = list(bands)
    pick = [bands.index(b) if b in bands else min(k, len(bands) - 1)
            for k, b in enumerate(("i", "r", "g"))]
    chans = [np.asarray(image[..., c], dtype=np.float64) for c in pick]
    return make_lupton_rgb(*chans, stretch=stretch, Q=q)


def flux_recovery(ours: dict[str, Any], label: str, quality: np.ndarray):
    """Fig. 6 / 7: recovered vs true band-sum flux of galaxy ``label`` per quality bin, with the
    least-squares line and its 95% band, and the relative errors' histograms.

    Args:
        ours: the ``"arrays"`` of tfdeblend's :func:`analyze_catalog`.
        label: ``"x"`` or ``"y"``.
        quality: ``(N,)`` quality per stamp.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    if label in ours:
        a = ours[label]
        t, m = a["true_flux"].sum(-1), a["meas_flux"].sum(-1)
        for q, qname in QUALITY_NAMES.items():
            sel = a["found"] & (quality == q)
            axes[0].scatter(t[sel], m[sel], s=6, c=_QUALITY_COLORS[q], label=qname)
            rel = a["rel_sum"][sel]
            rel = rel[np.isfinite(rel)]
            if rel.size:
                axes[1].hist(np.clip(rel, -1, 1), bins=40, range=(-1, 1), histtype="step",
                             color=_QUALITY_COLORS[q], label=qname)
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
    axes[0].set(xlabel="true flux (band sum)", ylabel="recovered flux", title=f"galaxy {label}")
    axes[1].set(xlabel="(f_rec - f_true) / f_true (clipped to +-1)", ylabel="galaxies")
    _legend(axes[0])
    _legend(axes[1])
    fig.tight_layout()
    return fig


def mu11_recovery(ours: dict[str, Any]):
    """Fig. 8: recovered vs true ``mu11`` of x and y."""
    plt = _plt()
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
    return fig


def moment_plane(ours: dict[str, Any]):
    """Fig. 9: the (``mu11``, ``mu20 - mu02``) plane, true and recovered."""
    plt = _plt()
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
    return fig


def mu2_histogram(ours: dict[str, Any]):
    """Fig. 10: histograms of ``|mu2|``, true and recovered."""
    plt = _plt()
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
    return fig


def errors_vs_baselines(methods: dict[str, dict[str, Any]], what: str):
    """Fig. 11 (``what="flux"``: relative band-sum flux errors) or Fig. 12 (``"mu11"``: ``mu11``
    errors), one histogram per method.

    Args:
        methods: method name -> :func:`analyze_catalog`.
        what: ``"flux"`` or ``"mu11"``.
    """
    plt = _plt()
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
    return fig


def found_vs_separation(methods: dict[str, dict[str, Any]]):
    """Fig. 15: found fraction of x and y per separation bin, one line per method."""
    plt = _plt()
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
    return fig


def gallery_deblends(
    testset: dict[str, np.ndarray],
    gallery: dict[str, np.ndarray],
    rows: np.ndarray,
    quality: np.ndarray,
    bands: Sequence[str],
    stretch: float,
):
    """Fig. 13: blend, true x, component 1, true y, component 2 and residual of some stamps.

    Args:
        testset: the test-set dict (``blend``, ``isolated``).
        gallery: the deblender's outputs for every stamp: ``components (N, 2, H, W, C)`` (the
            first :data:`GALLERY_COMPONENTS` in peel order, zero padded), ``residual
            (N, H, W, C)``, ``n_components (N,)``.
        rows: the stamps to show.
        quality: ``(N,)`` quality per stamp.
        bands: band names.
        stretch: Lupton stretch.
    """
    plt = _plt()
    rows = np.asarray(rows, dtype=np.int64)
    n_rows = max(len(rows), 1)
    cols = ["blend", "true x", "component 1", "true y", "component 2", "residual"]
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(2 * len(cols), 2 * n_rows), squeeze=False)
    for r, i in enumerate(rows):
        iso = np.asarray(testset["isolated"][i])
        comp = gallery["components"][i]
        panels = [testset["blend"][i], iso[0], comp[0],
                  iso[1] if iso.shape[0] > 1 else iso[0] * 0, comp[1], gallery["residual"][i]]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(rgb(np.asarray(panel), bands, stretch), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r][0].set_ylabel(f"#{i} q={QUALITY_NAMES.get(int(quality[i]), '?')} "
                              f"n={int(gallery['n_components'][i])}", fontsize=7)
    fig.tight_layout()
    return fig


def gallery_baselines(
    testset: dict[str, np.ndarray],
    methods: dict[str, dict[str, Any]],
    others: Sequence[str],
    gallery_size: int,
    bands: Sequence[str],
    stretch: float,
):
    """Fig. 14: per baseline, the first stamps where it missed x or y; true positions ``+``,
    detections ``x``."""
    plt = _plt()
    n_cols = max(len(others), 1)
    fig, axes = plt.subplots(gallery_size, n_cols, figsize=(3 * n_cols, 3 * gallery_size),
                             squeeze=False)
    for c, method in enumerate(others or [None]):
        rows = []
        if method is not None:
            rows = list(missed_stamps(methods[method]["arrays"], len(testset["blend"]),
                                      gallery_size))
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
            ax.imshow(rgb(np.asarray(testset["blend"][i]), bands, stretch), origin="lower")
            n = int(testset["n_gal"][i])
            ax.plot(testset["x"][i, :n], testset["y"][i, :n], "c+", ms=10, label="true")
            det_x = methods[method]["arrays"]["cat_x"][i]
            det_y = methods[method]["arrays"]["cat_y"][i]
            ax.plot(det_x, det_y, "rx", ms=7, label=method)
            if r == 0:
                ax.legend(fontsize=6)
            match = methods[method]["arrays"]["match"][i]
            ax.set_title(f"{method} #{i}: found {int((match[:n] >= 0).sum())}/{n}", fontsize=8)
    fig.tight_layout()
    return fig


def testset_figures(
    testset: dict[str, np.ndarray],
    methods: dict[str, dict[str, Any]],
    quality: np.ndarray,
    gallery: dict[str, np.ndarray],
    bands: Sequence[str],
    gallery_size: int = 6,
) -> Iterator[tuple[str, Any]]:
    """The figures of one test set, drawn one at a time in report order.

    Args:
        testset: the test-set dict.
        methods: method name -> :func:`analyze_catalog`, ``tfdeblend`` first.
        quality: ``(N,)`` the peel's quality per stamp.
        gallery: the deblender's outputs for Fig. 13 (see :func:`gallery_deblends`).
        bands: band names.
        gallery_size: stamps per failure gallery.

    Yields:
        ``(key of FIGURES, matplotlib figure)``; the caller saves and closes each one.
    """
    ours = methods["tfdeblend"]["arrays"]
    yield "fig6", flux_recovery(ours, "x", quality)
    yield "fig7", flux_recovery(ours, "y", quality)
    yield "fig8", mu11_recovery(ours)
    yield "fig9", moment_plane(ours)
    yield "fig10", mu2_histogram(ours)
    yield "fig11", errors_vs_baselines(methods, "flux")
    yield "fig12", errors_vs_baselines(methods, "mu11")
    yield "fig15", found_vs_separation(methods)
    stretch = float(np.nanpercentile(np.asarray(testset["blend_noiseless"]).max(axis=(1, 2, 3)), 50)
                    or 1.0) / 10.0
    rows = worst_deblends(ours, len(testset["blend"]), gallery_size)
    yield "fig13", gallery_deblends(testset, gallery, rows, quality, bands, stretch)
    others = [m for m in methods if m != "tfdeblend"]
    yield "fig14", gallery_baselines(testset, methods, others, gallery_size, bands, stretch)


# --------------------------------------------------------------------------------------------
# whole fields

#: figure key -> (file suffix, caption) of a field's figures
FIELD_FIGURES = {
    "completeness": ("completeness_vs_mag.png", "Completeness vs true i magnitude"),
    "flux": ("flux_error_vs_mag.png", "Relative flux error vs true i magnitude"),
    "pulls": ("pulls.png", "Flux pulls (f - f_true) / flux_err"),
    "cutout": ("cutout.png", "Cut-out: image, tfdeblend's model, residual, with detections"),
}

_METHOD_STYLE = {"tfdeblend": ("tab:blue", "x"), "sep": ("tab:orange", "o"),
                 "source-extractor": ("tab:green", "s")}


def _style(method: str, k: int) -> tuple[str, str]:
    return _METHOD_STYLE.get(method, (f"C{3 + k}", "^"))


def field_completeness(methods: dict[str, dict[str, Any]]):
    """Completeness of the galaxies in the field per bin of true i magnitude, one line per
    method, binomial error bars; the gold cut and the 90 % target marked.

    Args:
        methods: method name -> :func:`fields.analyze_field_catalog`.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, (method, result) in enumerate(methods.items()):
        curve = result["summary"]["completeness_by_mag"]
        edges = np.asarray(curve["edges"])
        centres = 0.5 * (edges[:-1] + edges[1:])
        frac = np.asarray(curve["fraction"], np.float64)
        ok = np.asarray(curve["n"]) > 0
        color, _ = _style(method, k)
        ax.errorbar(centres[ok] + 0.04 * k, frac[ok], yerr=np.asarray(curve["se"])[ok],
                    marker="o", ms=3, color=color, label=method, capsize=2)
    ax.axvline(fd.GOLD_MAG, color="k", ls=":", lw=1, label=f"i = {fd.GOLD_MAG:g}")
    ax.axhline(0.9, color="grey", ls="--", lw=1, label="target 0.90")
    ax.set(xlabel="true i (AB mag)", ylabel="completeness", ylim=(-0.02, 1.05))
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return fig


def field_flux_errors(methods: dict[str, dict[str, Any]], bands: Sequence[str]):
    """Relative flux error of the matched galaxies in the field vs true i magnitude, one panel
    per band, points per method with the running median."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(bands), figsize=(4.2 * len(bands), 3.8), sharey=True,
                             squeeze=False)
    edges = np.arange(18.0, 27.01, 1.0)
    for c, (ax, band) in enumerate(zip(axes[0], bands)):
        for k, (method, result) in enumerate(methods.items()):
            a = result["arrays"]
            sel = a["matched"] & a["inside"] & ~a["star"] & np.isfinite(a["rel"][:, c])
            color, marker = _style(method, k)
            ax.scatter(a["mag"][sel], np.clip(a["rel"][sel, c], -1, 1), s=5, color=color,
                       marker=marker, alpha=0.5, label=method)
            which = np.digitize(a["mag"][sel], edges)
            med = [np.median(a["rel"][sel, c][which == b]) if (which == b).sum() >= 3 else np.nan
                   for b in range(1, len(edges))]
            ax.plot(0.5 * (edges[:-1] + edges[1:]), med, color=color, lw=1.5)
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(fd.GOLD_MAG, color="k", ls=":", lw=1)
        ax.set(xlabel="true i (AB mag)", title=f"{band} band", ylim=(-1.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("(f - f_true) / f_true (clipped to +-1)")
    _legend(axes[0][0])
    fig.tight_layout()
    return fig


def field_pulls(methods: dict[str, dict[str, Any]], bands: Sequence[str]):
    """Histograms of the pulls ``(f - f_true) / flux_err`` of the matched gold galaxies per band
    and method, with the unit normal."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(bands), figsize=(4.2 * len(bands), 3.8), squeeze=False)
    grid = np.linspace(-10, 10, 201)
    for c, (ax, band) in enumerate(zip(axes[0], bands)):
        for k, (method, result) in enumerate(methods.items()):
            a = result["arrays"]
            v = a["pull"][a["gold"] & a["matched"], c]
            v = v[np.isfinite(v)]
            if v.size:
                width = result["summary"]["pull"][band]["scatter"]
                ax.hist(np.clip(v, -10, 10), bins=40, range=(-10, 10), density=True,
                        histtype="step", color=_style(method, k)[0],
                        label=f"{method} (width {width:.2f})")
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k:", lw=1, label="N(0, 1)")
        ax.set(xlabel="pull (clipped to +-10)", title=f"{band} band")
        _legend(ax)
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    return fig


def field_cutout(
    image: np.ndarray,
    model: np.ndarray,
    residual: np.ndarray,
    sigma: np.ndarray,
    window: tuple[int, int, int, int],
    truth: dict[str, np.ndarray],
    methods: dict[str, dict[str, Any]],
    bands: Sequence[str],
):
    """Image, tfdeblend's model and the residual of one window of a field, with the true gold
    galaxies (``+``; fainter ones small) and each method's detections.

    Args:
        image, model, residual: ``(C, h, w)`` of the window (missing pixels NaN in ``image``
            and ``residual``), as written by the run (never recomputed here).
        sigma: ``(C, h, w)`` noise std (for the residual in sigmas of the band sum).
        window: ``(y0, y1, x0, x1)`` full-image pixels.
        truth: ``x``, ``y``, ``gold``, ``star`` (bool; stars are marked apart) of every true
            source (:func:`fields.truth_masks`), full-image pixels.
        methods: method name -> :func:`fields.analyze_field_catalog`.
        bands: band names.
    """
    plt = _plt()
    y0, y1, x0, x1 = window
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    shown = np.nan_to_num(np.moveaxis(image, 0, -1))
    # noise a dark grey: the linear part of the stretch spans a few noise sigmas
    stretch = max(float(np.nanmedian(sigma)) * 8.0, 1e-12) if np.isfinite(sigma).any() else 1.0
    axes[0].imshow(rgb(shown, bands, stretch), origin="lower")
    axes[1].imshow(rgb(np.moveaxis(model, 0, -1), bands, stretch), origin="lower")
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nansum(residual, axis=0) / np.sqrt(np.nansum(sigma**2, axis=0))
    im = axes[2].imshow(norm, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
    fig.colorbar(im, ax=axes[2], fraction=0.046, label="band-sum residual / sigma")
    inside = ((truth["x"] >= x0 - 0.5) & (truth["x"] < x1 - 0.5)
              & (truth["y"] >= y0 - 0.5) & (truth["y"] < y1 - 0.5))
    star = truth["star"]
    for ax, title in zip(axes, ("image", "tfdeblend model", "residual")):
        for gold, ms in ((True, 12), (False, 6)):
            sel = inside & (truth["gold"] == gold) & ~star
            ax.plot(truth["x"][sel] - x0, truth["y"][sel] - y0, "w+" if ax is not axes[2]
                    else "k+", ms=ms, mew=1.2, label="true, i < 25.3" if gold else "true, fainter")
        if (inside & star).any():
            ax.plot(truth["x"][inside & star] - x0, truth["y"][inside & star] - y0,
                    "*", mfc="none", mec="w" if ax is not axes[2] else "k", ms=10, mew=1.0,
                    label="true star")
        for k, (method, result) in enumerate(methods.items()):
            if ax is not axes[0] and method != "tfdeblend":
                continue
            a = result["arrays"]
            sel = ((a["det_x"] >= x0 - 0.5) & (a["det_x"] < x1 - 0.5)
                   & (a["det_y"] >= y0 - 0.5) & (a["det_y"] < y1 - 0.5))
            color, marker = _style(method, k)
            ax.scatter(a["det_x"][sel] - x0, a["det_y"][sel] - y0, s=90 if marker != "x" else 50,
                       marker=marker, linewidths=1.5, label=method,
                       **({"color": color} if marker == "x"
                          else {"facecolors": "none", "edgecolors": color}))
        ax.set(title=f"{title} (x {x0}-{x1}, y {y0}-{y1})", xlim=(-0.5, x1 - x0 - 0.5),
               ylim=(-0.5, y1 - y0 - 0.5))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def field_figures(
    methods: dict[str, dict[str, Any]],
    bands: Sequence[str],
    cutout: dict[str, Any] | None = None,
) -> Iterator[tuple[str, Any]]:
    """The figures of one field, drawn one at a time in report order.

    Args:
        methods: method name -> :func:`fields.analyze_field_catalog`, ``tfdeblend`` first.
        bands: band names.
        cutout: the keyword arguments of :func:`field_cutout` but ``methods`` and ``bands``
            (``image``, ``model``, ``residual``, ``sigma``, ``window``, ``truth``), or ``None``
            for no cut-out.

    Yields:
        ``(key of FIELD_FIGURES, matplotlib figure)``; the caller saves and closes each one.
    """
    yield "completeness", field_completeness(methods)
    yield "flux", field_flux_errors(methods, bands)
    yield "pulls", field_pulls(methods, bands)
    if cutout is not None:
        yield "cutout", field_cutout(methods=methods, bands=bands, **cutout)


# --------------------------------------------------------------------------------------------
# observing conditions

#: file name and caption of the observing-conditions figure (one per report)
CONDITIONS_FIGURE = ("conditions.png",
                     "Key metrics against PSF FWHM and depth, tfdeblend and the baselines")

#: (key, label, the target's threshold or None) of each metric panel row
_CONDITION_METRICS = (
    ("y_recall", "fainter-galaxy recall", None),
    ("precision", "precision", 0.95),
    ("exact_count", "exact-count fraction", 0.80),
    ("flux_scatter_x", "flux robust scatter, x", None),
    ("flux_scatter_y", "flux robust scatter, y", None),
    ("high", "high-quality fraction", 0.75),
)


def _condition_value(row: dict[str, Any], method: str, key: str) -> float:
    m = row["methods"].get(method)
    if m is None:
        return float("nan")
    if key == "high":
        return row["quality"]["high"] if method == "tfdeblend" else float("nan")
    if key.startswith("flux_scatter_"):
        return m["flux"][key[-1]]["scatter"]
    return m[key]


def conditions_figure(grid: dict[str, Any]):
    """Each key metric of the conditions grid against the PSF FWHM (left) and the depth
    (right) of the grid's flux band, one point per test set and method, labelled by test set.

    Args:
        grid: :func:`tfdeblend.evaluate.analysis.conditions_grid`.
    """
    plt = _plt()
    band = grid["band"]
    rows = [r for r in grid["rows"] if r["conditions"].get("known")]
    methods = list(grid["rows"][0]["methods"]) if grid["rows"] else []
    axes_x = (("psf_fwhm", f"atmospheric PSF FWHM in {band} (arcsec)"),
              ("depth", f"depth in {band}: 5-sigma AB limit of the sky in 1 arcsec^2"))
    fig, axes = plt.subplots(len(_CONDITION_METRICS), 2, figsize=(10, 2.6 * len(_CONDITION_METRICS)),
                             squeeze=False)
    for r, (key, label, threshold) in enumerate(_CONDITION_METRICS):
        for c, (xkey, xlabel) in enumerate(axes_x):
            ax = axes[r, c]
            xs = np.array([row["conditions"][xkey][band]["median"] for row in rows])
            for k, method in enumerate(methods):
                ys = np.array([_condition_value(row, method, key) for row in rows], float)
                if not np.isfinite(ys).any():
                    continue
                color, marker = _style(method, k)
                ax.scatter(xs, ys, color=color, marker=marker, s=40, label=method)
            for row, x in zip(rows, xs):
                y = _condition_value(row, "tfdeblend", key)
                if np.isfinite(y):
                    ax.annotate(row["testset"], (x, y), fontsize=7, xytext=(4, 3),
                                textcoords="offset points")
            if threshold is not None:
                ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"target {threshold:g}")
            ax.set(xlabel=xlabel if r == len(_CONDITION_METRICS) - 1 else "",
                   ylabel=label.replace("flux", f"{band} flux"))
            ax.grid(alpha=0.3)
            if r == 0:
                _legend(ax)
    fig.tight_layout()
    return fig
