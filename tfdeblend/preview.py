"""PNG previews of deblended blends, like Fig. 3 of Wang et al. (2021).

One PNG per blend: the input, each peeled component, the residual (Lupton asinh RGB composites
with the same stretch for every panel of a blend), and the classifier count before each step with
the quality label in the title. Images are channels last ``(H, W, C)`` in any linear unit; with
3 bands the reddest band is red (``i, r, g`` -> R, G, B); with other numbers of bands the last,
middle and first bands are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfdeblend.config import QUALITY_NAMES


def lupton_rgb(image: np.ndarray, stretch: float, q: float = 8.0) -> np.ndarray:
    """Lupton et al. (2004) RGB of a channels-last image ``(H, W, C)``; uint8 ``(H, W, 3)``."""
    from astropy.visualization import make_lupton_rgb

    c = image.shape[-1]
    red, green, blue = image[..., c - 1], image[..., c // 2], image[..., 0]
    return make_lupton_rgb(red, green, blue, stretch=stretch, Q=q)


def save_preview(
    path: str | os.PathLike,
    blend: np.ndarray,
    components: np.ndarray,
    residual: np.ndarray,
    counts: np.ndarray,
    quality: int,
    n_components: int,
    bands: tuple[str, ...] = ("g", "r", "i"),
    title: str = "",
    split: bool = False,
) -> Path:
    """Write one blend's panel PNG.

    Args:
        path: PNG file.
        blend: ``(H, W, C)`` input.
        components: ``(K, H, W, C)`` peeled galaxies (only the first ``n_components`` are drawn).
        residual: ``(H, W, C)``.
        counts: ``(K + 1,)`` classifier counts, ``-1`` for steps not run.
        quality: 2 high, 1 medium, 0 low.
        n_components: number of real components.
        bands: band names (for the caption).
        title: prefix of the figure title.
        split: whether the peel split a merged component (its last component; noted in the
            title and on that panel).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("input", blend)]
    panels += [(f"component {j + 1}", components[j]) for j in range(int(n_components))]
    if split and n_components >= 2:
        panels[-1] = (f"component {int(n_components)} (split)", panels[-1][1])
    panels.append(("residual", residual))
    finite = np.abs(blend[np.isfinite(blend)])  # NaN/inf pixels (missing data) are drawn grey
    peak = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    stretch = 0.05 * peak
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        holes = ~np.isfinite(image).all(axis=-1)
        rgb = lupton_rgb(np.where(np.isfinite(image), image, 0.0), stretch).copy()
        rgb[holes] = 128
        ax.imshow(rgb, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    steps = [str(int(c)) for c in counts if c >= 0]
    fig.suptitle(
        f"{title}counts per step: {' -> '.join(steps) or '-'}; quality "
        f"{QUALITY_NAMES.get(int(quality), '?')}{'; split' if split else ''}; "
        f"bands {','.join(bands)}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_previews(
    directory: str | os.PathLike, results: dict, bands: tuple[str, ...], first_id: int = 0
) -> list[Path]:
    """One PNG per blend in ``results`` (lists or arrays keyed like the peel output + ``blend``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(results["blend"])):
        paths.append(
            save_preview(
                directory / f"blend_{first_id + i:05d}.png",
                results["blend"][i],
                results["components"][i],
                results["residual"][i],
                results["counts"][i],
                results["quality"][i],
                results["n_components"][i],
                bands,
                title=f"blend {first_id + i}: ",
                split=bool(results["split"][i]) if "split" in results else False,
            )
        )
    return paths


#: Marker colour of each quality in whole-image previews.
QUALITY_COLOURS: dict[int, str] = {2: "#2ca02c", 1: "#ff9f1c", 0: "#d62728"}
#: Largest side (pixels) of a whole-image preview; bigger images are binned down.
IMAGE_PREVIEW_SIDE: int = 1600


def save_image_preview(path, source, catalog, overwrite: bool = False) -> Path:
    """PNG of a whole image (Lupton RGB) with each galaxy of ``catalog`` marked by a circle
    coloured by its quality (green high, orange medium, red low); missing pixels grey.

    Args:
        path: PNG file (written atomically).
        source: the :class:`tfdeblend.image_io.ImageSource` that was deblended.
        catalog: its catalog (``x``, ``y``, ``mu20``, ``mu02``, ``quality``).
        overwrite: replace an existing file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from tfdeblend.utils import atomic_file

    height, width = source.shape
    step = max(1, int(np.ceil(max(height, width) / IMAGE_PREVIEW_SIDE)))
    bands = []
    holes = np.zeros(((height + step - 1) // step, (width + step - 1) // step), bool)
    for c in range(len(source.bands)):
        image, _, missing = source.read_band(c, 0, height)
        image = image[::step, ::step]
        holes |= missing[::step, ::step]
        bands.append(image)
    cube = np.stack(bands, axis=-1)
    finite = cube[~holes] if (~holes).any() else cube.reshape(-1, cube.shape[-1])
    stretch = 3.0 * float(np.median(np.abs(finite - np.median(finite)))) * 1.4826 or 1.0
    rgb = lupton_rgb(cube, stretch * 3.0, q=8.0).copy()
    rgb[holes] = 128
    scale = float(np.clip(max(width, height) / step / 100.0, 6.0, 14.0))
    fig, ax = plt.subplots(figsize=(scale * width / max(width, height) + 1.5,
                                    scale * height / max(width, height) + 0.6))
    ax.imshow(rgb, origin="lower", extent=(-0.5, width - 0.5, -0.5, height - 0.5))
    size = np.sqrt(np.clip(np.nan_to_num(catalog["mu20"] + catalog["mu02"]), 1.0, 400.0))
    for code, colour in QUALITY_COLOURS.items():
        pick = np.asarray(catalog["quality"]) == code
        ax.scatter(np.asarray(catalog["x"])[pick], np.asarray(catalog["y"])[pick],
                   s=(2.5 * size[pick] / step) ** 2, facecolors="none", edgecolors=colour,
                   linewidths=0.7)
    ax.legend(
        handles=[Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                        markeredgecolor=QUALITY_COLOURS[c], label=QUALITY_NAMES[c])
                 for c in (2, 1, 0)],
        loc="upper right", fontsize=7, framealpha=0.6,
    )
    ax.set_title(f"{len(catalog)} galaxies; bands {','.join(source.bands)}", fontsize=9)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
