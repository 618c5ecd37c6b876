"""Figures and timings of the built-in CatSim-format catalog (docs/catalog.md).

Usage::

    python benchmarks/catalog_plots.py [--area 1.0] [--seed 0] [--out docs/figures]

Writes ``catalog_counts.png``, ``catalog_sizes.png``, ``catalog_ellipticity.png``,
``catalog_colours.png`` and ``catalog_bt.png`` and prints the statistics table and the time the
synthesizer took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfdeblend import catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", type=float, default=1.0, help="deg^2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    catalog.synthesize_catalog(area_deg2=0.001, seed=0)  # first call: template grid
    first = time.perf_counter() - start
    for area in (0.1, args.area):
        start = time.perf_counter()
        table = catalog.synthesize_catalog(area_deg2=area, seed=args.seed)
        print(f"{area:g} deg^2: {len(table)} galaxies in {time.perf_counter() - start:.2f} s")
    print(f"(template grid, once per process: {first:.2f} s)")
    stats = catalog.catalog_statistics(table)
    print(catalog.format_statistics(stats))

    i = np.asarray(table["i_ab"])
    z = np.asarray(table["redshift"])
    fb, fd = np.asarray(table["fluxnorm_bulge"]), np.asarray(table["fluxnorm_disk"])
    bt = fb / (fb + fd)
    gold = i < catalog.GOLD_MAX_MAG
    area_arcmin2 = args.area * 3600

    # magnitude counts
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bins = np.arange(16, 26.75, 0.25)
    for band, colour in (("g", "tab:green"), ("r", "tab:red"), ("i", "k")):
        counts, edges = np.histogram(table[f"{band}_ab"], bins)
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax.semilogy(centres, counts / area_arcmin2 / 0.25 * 3600, color=colour, label=band)
    ax.axvline(catalog.GOLD_MAX_MAG, ls=":", color="grey")
    ax.set(xlabel="AB magnitude", ylabel="N / deg$^2$ / mag", title="Differential counts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "catalog_counts.png", dpi=90)
    plt.close(fig)

    # size vs magnitude
    fig, ax = plt.subplots(figsize=(5, 3.6))
    has_disk = (fd > 0) & gold
    sel = np.flatnonzero(has_disk)[:20000]
    ax.scatter(i[sel], table["a_d"][sel], s=1, alpha=0.2, color="tab:blue", label="disk a")
    sel_b = np.flatnonzero((bt > 0.1) & gold)[:5000]
    ax.scatter(i[sel_b], table["a_b"][sel_b], s=1, alpha=0.3, color="tab:red", label="bulge a")
    mbins = np.arange(18, 25.31, 0.5)
    med = [np.median(table["a_d"][has_disk & (i >= lo) & (i < lo + 0.5)]) for lo in mbins[:-1]]
    ax.plot(mbins[:-1] + 0.25, med, color="k", label="median disk a")
    ax.axhline(0.37, ls=":", color="grey", label='OneDegSq median (0.37")')
    ax.set(xlabel="i AB", ylabel="semi-major axis (arcsec)", yscale="log", ylim=(0.03, 5))
    ax.set_title("Size vs magnitude (i < 25.3)")
    ax.legend(markerscale=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "catalog_sizes.png", dpi=90)
    plt.close(fig)

    # ellipticity
    a = np.where(fd >= fb, table["a_d"], table["a_b"])
    b = np.where(fd >= fb, table["b_d"], table["b_b"])
    e = (1 - b / a) / (1 + b / a)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.hist(e[gold], bins=np.linspace(0, 0.8, 41), color="tab:blue", alpha=0.8)
    ax.set(xlabel="|e| = (1 - q) / (1 + q)", ylabel="galaxies (i < 25.3)")
    ax.set_title(f"Ellipticity: RMS {stats['rms_ellipticity']:.3f} (OneDegSq 0.237)")
    fig.tight_layout()
    fig.savefig(out / "catalog_ellipticity.png", dpi=90)
    plt.close(fig)

    # colours vs redshift
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    sel = np.flatnonzero(gold)[:30000]
    for ax, (b1, b2) in zip(axes, (("g", "r"), ("r", "i")), strict=True):
        colour = np.asarray(table[f"{b1}_ab"] - table[f"{b2}_ab"])
        ax.scatter(
            z[sel], colour[sel], s=1, alpha=0.15, c=bt[sel], cmap="coolwarm", vmin=0, vmax=0.6
        )
        ax.set(xlabel="redshift", ylabel=f"{b1} - {b2}", xlim=(0, 3), ylim=(-0.5, 2.2))
    axes[0].set_title("colour vs z (colour: B/T, red = bulgy)")
    fig.tight_layout()
    fig.savefig(out / "catalog_colours.png", dpi=90)
    plt.close(fig)

    # B/T
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.hist(bt[gold & (bt > 0)], bins=np.linspace(0, 1, 41), color="tab:orange")
    ax.set_yscale("log")
    ax.set(xlabel="B/T (galaxies with a bulge)", ylabel="galaxies (i < 25.3)")
    ax.set_title(
        f"disk only {stats['frac_disk_only']:.1%}, 0<B/T<=0.1 {stats['frac_small_bulge']:.1%}, "
        f">0.1 {stats['frac_large_bulge']:.1%}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "catalog_bt.png", dpi=90)
    plt.close(fig)
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
