"""Whole survey images: detect, group, cut stamps, peel, and stitch the galaxies back.

The peel (:mod:`tfdeblend.deblend`) works on stamps of the model's size with a blend in the
middle. This module turns an image of any size into such stamps and the peel's components back
into an image and a catalog. It knows nothing of how the peel works: it is handed a function
``deblend(stamps (B, S, S, C)) -> dict`` (:func:`tfdeblend.outliers.deblend_batch` of a loaded model).

**Per tile** (:func:`deblend_tile`; a large image is cut into overlapping tiles, :func:`plan_tiles`,
each deblended on its own, in this process or on a Dask worker, with the same result):

1. *noise*: per pixel from the variance plane, else a robust sigma per band (:func:`noise_sigma`);
   with ``background`` > 0, the sky is first estimated and subtracted (sep's mesh background);
2. *detection* with sep (``detect_threshold`` sigmas, ``detect_fwhm`` Gaussian filter) on the
   coadd of the bands weighted for the tile's typical galaxy (unit noise per pixel;
   :func:`detect_galaxies`: its colour is measured on a first detection on the
   inverse-variance coadd), each band's missing pixels first filled from their neighbours
   (:func:`diffusion_fill`; a saturated core whole, which would otherwise be a ring of
   detections);
3. *groups*: the detected footprints, grown by ``group_grow`` pixels, that touch form one blend;
   a tile deblends every group with a detection in its core and catalogues (and models) only
   the galaxies whose position lies in its core (:attr:`Tile.owns`), so that a group that
   crosses a tile border, seen by both tiles, is catalogued once (crowded fields' groups are
   larger than the tiles' overlap);
4. *stamps*: one ``S x S`` stamp per group centred on its detections when they all lie within
   :data:`WINDOW_REACH` pixels of the centre (the networks were trained on galaxies at most
   12 px from the stamp's centre), else one window per brightest detection not yet covered,
   each passing its residual on to the next. A window of a group with several sees only its own
   detections' light: the sep segments of the detections another window owns are replaced by
   noise (so a stamp holds the few galaxies the networks were trained on, not a crowd of
   which the peel models only the brightest). Windows move inward at the image's edge. In a
   stamp, other groups' pixels are replaced by noise, missing pixels (NaN, masked) are filled
   from their surroundings plus noise (a saturated core whole), and pixels outside the image
   are noise (:func:`fill_missing`); a band with no data in the window is made from the
   others (:func:`fill_absent_bands`; its fluxes are NaN);
5. *peel* of all stamps of a round in batches; a window whose first count is the classifier's
   largest (it cannot count more) is peeled again on its residual, up to ``max_rounds`` times;
6. *keep*: a component is kept when its centroid (near its model's peak,
   :func:`tfdeblend.measure.peak_moments`) lies in its group's footprint, less the segments
   other windows own (or just outside it: a galaxy the detection missed), its model-matched
   S/N is at least ``min_snr``, and it is not a piece of a brighter galaxy of the group (within
   ``duplicate_size`` times that galaxy's size, or :data:`DUPLICATE_RADIUS`, or on the same
   saturated core, :func:`_holes`: then its flux is added to that galaxy). A kept galaxy is
   added to the model image, subtracted from what the next window sees, and measured on its
   flux-conserving component: flux and flux error per band (:func:`flux_errors`), moments;
7. *recovery*: each detection that no kept galaxy explains gets one more RDN pass on a small disc
   of the residual around it (:func:`_recover_detections`); at the detection limit, where the
   RDN's model lies below the noise everywhere, its shape is fitted to the data
   (:func:`_fit_faint`);
8. *residual detection* (``residual_detection``): the residual is searched once more, the models'
   own error counted as noise and the pixels next to missing ones left out, and each new
   detection gets the recovery pass (a galaxy found within :data:`RESIDUAL_PIECE_SIZE` sizes
   of a brighter one is a piece of it). In crowded fields the first detection merges galaxies
   into the segments of brighter ones.

**Catalog** columns (one row per galaxy; :func:`catalog_columns`): ``id, x, y`` (0-based pixels
of the full image, measured near the model's peak), ``ra, dec`` (degrees, with a WCS),
``flux_<band>``, ``flux_err_<band>`` (input units), ``snr`` (matched-filter S/N over all bands,
the model as template), ``mu20, mu02, mu11`` (pixels^2), ``blend_id, n_in_blend, quality``
(2 high, 1 medium, 0 low: the peel's of its window), and flags ``edge`` (its light reaches
pixels past the image, or past the tile it was deblended in), ``masked`` (missing pixels under its light), ``masked_core``
(it lies within 2 px of a blob of 16-2,500 missing pixels, a saturated core: its peak was
not measured and its flux is a lower limit; also ``masked``), ``big_group`` (its group needed several
windows or peels, or had more detections than the classifier counts), ``split``,
``recovered`` (the peel split a merged component / found one in the residual in the galaxy's
window: set on every galaxy of that window; or the galaxy was found at a detection nothing
else explained),
``outliers`` (single-pixel outliers were ignored in its stamp).

Axis order: channels first ``(C, H, W)`` for images, as in the files; stamps handed to
``deblend`` are channels last ``(B, S, S, C)``, as the networks take them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from tfdeblend import measure
from tfdeblend.config import DETECT_THRESHOLD, MAD_TO_SIGMA, MAX_COUNT, YamlConfig
from tfdeblend.errors import TfdeblendError

#: Flags of the catalog, in column order.
FLAGS: tuple[str, ...] = ("edge", "masked", "masked_core", "big_group", "split", "recovered",
                          "outliers")
#: A window covers the detections within this many pixels of its centre along x and y: the
#: networks were trained on galaxies at most 12 px (2.4") from the stamp's centre, and a few
#: pixels more still deblend well (a detection's centre is itself off by a pixel or two).
WINDOW_REACH: int = 16
#: Missing pixels are filled from valid neighbours up to this many pixels into a hole...
FILL_REACH: int = 4
#: ...and holes enclosed by data up to this many pixels whole (a saturated galaxy's core: the
#: simulated fields' are 50-250 pixels; a detection or a stamp that sees a ring around a hole
#: splits the galaxy into pieces).
MAX_HOLE_AREA: int = 2500
#: Components centred this far (pixels) outside their group's footprint are still kept (galaxies
#: the detection missed or merged into the sky).
OUTSIDE_REACH: float = 4.0
#: A component of a later window or round of a group centred closer than this (pixels) to a
#: galaxy the group already kept is a piece of it (a core error the repeated peel modelled):
#: its flux is added to that galaxy's.
DUPLICATE_RADIUS: float = 3.0
#: Flux errors (:func:`flux_errors`). A galaxy's flux is that of its conserved component: its
#: share of the data where the summed models are significant (its footprint), its model elsewhere.
#: Beside the pixel noise of that share, three errors of the networks are added in quadrature,
#: calibrated (``scripts/calibrate_flux_errors.py``) on the validation fields of every observing
#: condition and a crowded one (seeds 3001-3005, 4301: nominal, year 1, HSC, PSF x1.5, four
#: times the usual density; ``docs/model_card.md``): this fraction of the light of its neighbours
#: handed to it in its footprint (how the data are shared out, and the light of the neighbours
#: nobody detected)...
NEIGHBOUR_FLUX_ERROR: float = 1.7
#: ...this fraction of its model's flux outside the footprint (wings the data do not check)...
WING_FLUX_ERROR: float = 0.32
#: ...and this fraction of its flux.
MODEL_FLUX_ERROR: float = 0.01
#: A galaxy the recovery pass finds (:func:`_recover_detections`) adds this fraction of its
#: flux to its error, in quadrature: the peel missed it, its model is the one the networks
#: are least sure of (at the limit its flux is a fit, high by a median 23 % on the validation
#: fields, selected on the noise; beside brighter galaxies, low by 22 %). Chosen on the 99
#: recovered galaxies brighter than i = 25.3 of the 12 validation fields (pull widths 1.33
#: and 1.85 without it, 1.04 and 1.14 with it; ``docs/model_card.md``).
RECOVERED_FLUX_ERROR: float = 0.3
#: A detection with no kept galaxy this close (pixels) is tried once more
#: (:func:`_recover_detections`), and the galaxy found must lie this close to it.
RECOVER_RADIUS: float = 3.0
#: Radius (pixels) of the disc around such a detection that the RDN sees (the shipped peel's
#: residual-detection window).
RECOVER_WINDOW: float = 5.0
#: The second detection, on the residual (``SceneConfig.residual_detection``), counts this
#: fraction of the models as noise (the scene's own setting; 3 %, as the peel counts its models'
#: error on a stamp)...
RESIDUAL_MODEL_ERROR: float = 0.03
#: ...and a galaxy it finds closer to a brighter galaxy of its group than this many times that
#: galaxy's size is a piece of it (the wings its model missed): its flux is added to it. Chosen
#: on the validation fields (seeds 3001-3005 and a crowded one, ``docs/model_card.md``).
RESIDUAL_PIECE_SIZE: float = 3.0
#: ...and it leaves out the pixels this close to missing ones (a saturated core's rim, where
#: the models are unchecked and the residual is their error, not galaxies).
RESIDUAL_HOLE_MARGIN: int = 3
#: :func:`bound_outskirts`: a component's outskirts (below this fraction of its peak)...
OUTSKIRT_FRACTION: float = 0.01
#: ...hold at most the data smoothed over this many pixels (Gaussian sigma)...
OUTSKIRT_SMOOTH: float = 2.0
#: ...plus this many noise sigmas.
OUTSKIRT_SIGMA: float = 1.0
#: Galaxies centred within this many pixels of the same masked core (a saturated one) are one
#: galaxy (:func:`_holes`): the peel models the ring of light around a missing core as several.
HOLE_REACH: int = 2
#: A hole of at least this many pixels that fills half its bounding box is a core (saturated,
#: :func:`_holes`): the galaxies on it are one, placed at its centre.
CORE_AREA: int = 16
#: A galaxy whose RDN model lies below the noise everywhere is fitted to the data
#: (:func:`_fit_faint`) only up to this S/N: the networks model real galaxies far fainter
#: (on the validation fields every kept fit has S/N 5-20 and matches a galaxy); brighter light
#: they return nothing for is a piece of a neighbour's halo (the real HSC cut-out: S/N 89).
FAINT_MAX_SNR: float = 30.0
#: The typical galaxy's colour (:func:`galaxy_colour`), which weights the bands for detection,
#: is the median over the first detections of their flux per band within this radius (pixels)...
COLOUR_RADIUS: float = 3.0
#: ...over at least this many detections (else the bands are weighted by inverse variance).
COLOUR_MIN_OBJECTS: int = 10
#: A typical galaxy's share of its flux per band (LSST fields, electrons; ``docs/model_card.md``,
#: "Detection weighted for the image's own galaxies"): the colour :func:`fill_absent_bands`
#: gives a band with no data. Other bands: the mean share.
TYPICAL_COLOUR: dict[str, float] = {"g": 0.12, "r": 0.41, "i": 0.47}
#: Pixels added around a footprint's bounding box.
FOOTPRINT_PAD: int = 2
#: A galaxy's light "touches" a pixel where its model is above this many noise sigmas.
TOUCH_SIGMA: float = 0.5


@dataclasses.dataclass(frozen=True)
class SceneConfig(YamlConfig):
    """How a whole image is cut into blends and put back together.

    Attributes:
        detect_threshold: detection threshold, in noise sigmas per pixel of the coadd, applied
            to the coadd filtered with the ``detect_fwhm`` Gaussian (sep's ``thresh`` on a
            unit-noise image with ``filter_type="conv"``; 0.8, DES Y6's value, is about S/N 4 of
            the filtered image). Chosen on validation fields (seeds 3001-3004): at LSST year-1
            depth and on HSC, 1.5 (the default before 2026-12-07) missed a sixth of the
            galaxies brighter than i = 25.3 that sep finds.
        detect_min_area: fewest pixels above the threshold for a detection (4, DES Y6's).
        detect_fwhm: FWHM (pixels) of the Gaussian detection filter (3, DES Y6's). Before
            2026-12-07 3.5, and ``detect_min_area`` 5: with the faint-galaxy fit of the
            recovery pass, 3 and 4 find more galaxies at the detection limit at the same purity
            on the validation fields (a filter of the PSF's size finds fewer).
        deblend_cont: sep's deblending contrast for the detections that place windows in wide
            groups and that the recovery pass tries once more (the peel, not sep, decides what
            is a galaxy). DES Y6's 0.001 (0.005 before 2026-12-07: on the validation fields,
            seeds 3001-3005, 10 more of 1,255 galaxies i < 25.3 found, 4 more of 249 with a
            neighbour within 2").
        group_grow: footprints grown by this many pixels before touching ones are grouped.
        background: sep background mesh size in pixels, subtracted per band before anything
            else; 0 when the image is already sky subtracted.
        tile_size: side of a tile's core, pixels.
        tile_overlap: pixels a tile reads beyond its core on each side.
        max_rounds: most peels of one window (repeated while the classifier's first count is
            its largest, :data:`tfdeblend.config.MAX_COUNT`).
        min_snr: a component whose matched-filter S/N (its model as the template) is below this
            is not a galaxy: it is dropped and its light stays in the residual.
        footprints: keep each galaxy's model as a cut-out of its bounding box (the pixels where
            its model is above :data:`TOUCH_SIGMA` noise sigmas in some band, plus
            :data:`FOOTPRINT_PAD` pixels), returned in the catalog's ``footprint`` entry.
        duplicate_size: a component closer to a brighter galaxy of its group than this many
            times that galaxy's size (``sqrt((mu20 + mu02) / 2)``), or than
            :data:`DUPLICATE_RADIUS`, is a piece of it and is added to it.
        residual_detection: detect once more on the residual, after every window and the
            recovery pass, with :data:`RESIDUAL_MODEL_ERROR` of the models counted as noise;
            each new detection in a group that no kept galaxy explains gets the recovery pass
            (:func:`_recover_detections`). In crowded fields the first detection merges
            galaxies into the segments of brighter ones.
        seed: seed of the noise that replaces other groups' and missing pixels.
    """

    detect_threshold: float = DETECT_THRESHOLD
    detect_min_area: int = 4
    detect_fwhm: float = 3.0
    deblend_cont: float = 0.001
    group_grow: int = 3
    background: int = 0
    tile_size: int = 1024
    tile_overlap: int = 96
    max_rounds: int = 3
    min_snr: float = 5.0
    duplicate_size: float = 1.0
    footprints: bool = False
    residual_detection: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "detect_threshold": self.detect_threshold > 0,
            "detect_min_area": self.detect_min_area >= 1,
            "detect_fwhm": self.detect_fwhm > 0,
            "deblend_cont": 0 < self.deblend_cont <= 1,
            "group_grow": self.group_grow >= 0,
            "background": self.background >= 0,
            "tile_size": self.tile_size >= 16,
            "tile_overlap": self.tile_overlap >= 0,
            "max_rounds": self.max_rounds >= 1,
            "min_snr": self.min_snr >= 0,
            "duplicate_size": self.duplicate_size >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise TfdeblendError(f"scene option {name} is out of range: {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Tile:
    """A tile: its index, the region it reads (``ext``) and its ``core``, each
    ``(y0, y1, x0, x1)`` in full-image pixels. It deblends every group with a detection in its
    core and keeps the galaxies whose position lies in ``owns``: the core, reaching out to
    infinity on the image's edges (a galaxy centred just outside the image is kept)."""

    index: int
    ext: tuple[int, int, int, int]
    core: tuple[int, int, int, int]
    owns: tuple[float, float, float, float] = (-np.inf, np.inf, -np.inf, np.inf)

    def owned(self, y, x):
        """Whether full-image positions ``(y, x)`` are this tile's (arrays or floats)."""
        y0, y1, x0, x1 = self.owns
        return (y >= y0) & (y < y1) & (x >= x0) & (x < x1)


def plan_tiles(shape: tuple[int, int], tile_size: int, overlap: int) -> list[Tile]:
    """Cover an ``(H, W)`` image with cores of ``tile_size`` read with ``overlap`` around."""
    height, width = shape
    tiles = []
    for y0 in range(0, height, tile_size):
        for x0 in range(0, width, tile_size):
            y1, x1 = min(height, y0 + tile_size), min(width, x0 + tile_size)
            ext = (max(0, y0 - overlap), min(height, y1 + overlap),
                   max(0, x0 - overlap), min(width, x1 + overlap))
            owns = (y0 if y0 > 0 else -np.inf, y1 if y1 < height else np.inf,
                    x0 if x0 > 0 else -np.inf, x1 if x1 < width else np.inf)
            tiles.append(Tile(len(tiles), ext, (y0, y1, x0, x1), owns))
    return tiles


def noise_sigma(image: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Robust noise sigma per band of a ``(C, H, W)`` image over its valid pixels ``(C,)``.

    ``1.4826 x`` the median absolute deviation of the pixels below the median plus 3 MADs
    (sources pull a plain MAD up in crowded fields).
    """
    sigma = np.zeros(len(image), np.float32)
    for c in range(len(image)):
        values = image[c][~missing[c]]
        if values.size == 0:
            continue
        for _ in range(3):
            median = np.median(values)
            mad = np.median(np.abs(values - median))
            if mad == 0:
                break
            values = values[values < median + 3 * MAD_TO_SIGMA * mad]
        sigma[c] = MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))
    return sigma


def fill_missing(stamp: np.ndarray, missing: np.ndarray, sigma: np.ndarray,
                 rng: np.random.Generator, outside: np.ndarray | None = None) -> np.ndarray:
    """Fill missing pixels of a ``(C, H, W)`` stamp from their surroundings, plus noise.

    Missing pixels take the mean of their valid neighbours, ring after ring inward (a diffusion
    fill, :func:`diffusion_fill`: smooth across a bad column, and across a saturated core
    enclosed by data, which would otherwise show the networks a ring); pixels farther than
    :data:`FILL_REACH` from data in a hole that is not enclosed, and the pixels ``outside`` the
    image (``(H, W)`` bool), hold 0 (empty sky: extending an edge inward would invent light).
    Then every filled pixel gets noise of its ``sigma`` (``(C, H, W)``).
    """
    out = np.array(stamp, dtype=np.float32, copy=True)
    outside = np.zeros(stamp.shape[1:], bool) if outside is None else outside
    for c in range(len(out)):
        hole = missing[c] | outside
        if not hole.any():
            continue
        values, _ = diffusion_fill(out[c], ~hole, outside)
        out[c] = np.where(hole, values + rng.normal(0.0, 1.0, values.shape) * sigma[c], out[c])
    return out


def band_shares(bands) -> np.ndarray:
    """:data:`TYPICAL_COLOUR` for ``bands`` ``(C,)`` (a band it does not name: the mean)."""
    shares = np.array([TYPICAL_COLOUR.get(b, np.nan) for b in bands], np.float64)
    known = np.isfinite(shares)
    return np.where(known, shares, shares[known].mean() if known.any() else 1.0)


def fill_absent_bands(stamp: np.ndarray, absent: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` stamp with each ``absent`` band (``(C,)`` bool: no data at all) made
    from the others, each divided by its share of a typical galaxy's flux (``shares``,
    :func:`band_shares`), averaged, and scaled by the absent band's share. The networks need
    all their bands: shown an empty one, the shipped networks count no galaxy at all. What is
    made is never measured (a band with no data gets NaN fluxes)."""
    present = ~np.asarray(absent, bool)
    if present.all() or not present.any():
        return stamp
    out = np.array(stamp, dtype=np.float32, copy=True)
    mean = (out[present] / shares[present][:, None, None]).mean(axis=0)
    for c in np.flatnonzero(~present):
        out[c] = shares[c] * mean
    return out


def diffusion_fill(image: np.ndarray, known: np.ndarray,
                   outside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image, filled)``: an ``(H, W)`` image with its unknown pixels (``known`` False) filled
    by diffusion, and where it now has values.

    Ring after ring inward, each pixel takes the mean of its filled or known neighbours. Holes
    enclosed by known pixels (touching neither the array's border nor ``outside``) of at most
    :data:`MAX_HOLE_AREA` pixels are filled whole (a saturated core, a masked cosmic ray); other
    unknown pixels within :data:`FILL_REACH` of data are filled (a bad column, a chip edge), the
    rest hold 0. ``outside`` pixels are never filled."""
    outside = np.zeros(image.shape, bool) if outside is None else outside
    hole = ~known & ~outside
    if not hole.any() or not known.any():
        return np.where(known, image, 0.0).astype(np.float32), known.copy()
    labels, n = ndimage.label(hole)
    border = np.zeros(image.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    open_ = np.unique(labels[(border | ndimage.binary_dilation(outside)) & hole])
    area = np.bincount(labels.ravel(), minlength=n + 1)
    whole = (area <= MAX_HOLE_AREA)
    whole[0] = False
    whole[open_] = False
    enclosed = whole[labels]
    kernel = np.ones((3, 3), np.float32)
    filled = known.copy()
    values = np.where(known, image, 0.0).astype(np.float32)
    step = 0
    while True:
        growable = hole & ~filled & (enclosed if step >= FILL_REACH else True)
        if not growable.any():
            break
        total = ndimage.convolve(values, kernel, mode="constant")
        count = ndimage.convolve(filled.astype(np.float32), kernel, mode="constant")
        ring = growable & (count > 0)
        if not ring.any():
            break
        values = np.where(ring, total / np.maximum(count, 1), values)
        filled |= ring
        step += 1
    return np.where(filled, values, 0.0).astype(np.float32), filled


def _gaussian_kernel(fwhm: float) -> np.ndarray:
    sigma = fwhm / 2.3548
    half = max(1, int(np.ceil(2.5 * sigma)))
    x = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return np.outer(g, g).astype(np.float32)


def detect(image: np.ndarray, sigma: np.ndarray, missing: np.ndarray, config: SceneConfig,
           fill: bool = True, colour: np.ndarray | None = None):
    """Detections on the coadd of the bands weighted for a galaxy of ``colour``:
    ``(objects, segmentation map)``.

    Each band ``b`` is weighted by ``colour_b / sigma_b^2`` (the matched filter, across bands,
    of a source with that spectrum) and the coadd is divided by its noise, so that the
    threshold is in sigmas. Without ``colour`` the spectrum is flat: the inverse-variance
    weighted coadd (:func:`detect_galaxies` measures the colour on the image first).

    Args:
        image: ``(C, H, W)`` sky-subtracted, missing pixels 0.
        sigma: ``(C, H, W)`` noise sigma per pixel (0 where missing).
        missing: ``(C, H, W)`` bool.
        fill: fill the missing pixels first (:func:`diffusion_fill`: a bad column or a saturated
            core would split a galaxy into several detections); else they are left out.
        colour: ``(C,)`` the share of a typical galaxy's flux in each band, in the image's units.

    Returns:
        sep's object array (``x, y, flux, xpeak, ypeak``...) and its int32 segmentation map.
    """
    if fill:
        image, sigma, missing = _filled(image, sigma, missing)
    return _extract(image, sigma, missing, config, colour)


def detect_galaxies(image: np.ndarray, sigma: np.ndarray, missing: np.ndarray,
                    config: SceneConfig, colour: np.ndarray | None = None):
    """:func:`detect` with the bands weighted for the image's own typical galaxy: a first
    detection on the inverse-variance coadd measures its colour (:func:`galaxy_colour`), a
    second finds the galaxies. Returns ``(objects, segmentation map, colour or None)``. A
    ``colour`` given (the whole image's, :func:`image_colour`) is used as it is.

    The inverse-variance weights alone favour the band with the darkest sky (LSST's and DES's
    g, 68-76 % of the weight), where galaxies are faintest (12-16 % of their flux). Chosen on
    the validation fields (seeds 3001-3008 and five with other catalogs, ``docs/model_card.md``):
    the colour-weighted coadd's first detection finds 1,602 of their 2,146 galaxies brighter
    than i = 25.3 against 1,568, with 20 detections of noise against 18; the scene's catalog
    then holds 10 more of them, 15 more at DES depth and a third of year 1's exposure.
    """
    unfilled = missing
    image, sigma, missing = _filled(image, sigma, missing)
    if colour is None:
        colour = galaxy_colour(image, _extract(image, sigma, missing, config, None)[0], unfilled)
    return (*_extract(image, sigma, missing, config, colour), colour)


def colour_shares(image: np.ndarray, sigma: np.ndarray, missing: np.ndarray,
                  config: SceneConfig, core: tuple[int, int, int, int] | None = None
                  ) -> np.ndarray:
    """The flux shares ``(N, C)`` that :func:`galaxy_colour` takes the median of: one row per
    first detection (inverse-variance coadd) with flux in every band that has data; with
    ``core`` ``(y0, y1, x0, x1)`` (array pixels), only those centred in it (so that tiles,
    whose regions overlap, each give their own galaxies: :func:`image_colour`)."""
    unfilled = missing
    image, sigma, missing = _filled(image, sigma, missing)
    objects = _extract(image, sigma, missing, config, None)[0]
    if core is not None:
        y0, y1, x0, x1 = core
        objects = objects[(objects["y"] >= y0) & (objects["y"] < y1)
                          & (objects["x"] >= x0) & (objects["x"] < x1)]
    return _shares(image, objects, unfilled)


def image_colour(shares: list[np.ndarray]) -> np.ndarray | None:
    """The typical galaxy's colour of a whole image from its tiles' :func:`colour_shares`: the
    median share per band over all their galaxies (``None`` with fewer than
    :data:`COLOUR_MIN_OBJECTS`). Every tile then detects with the same weights, so the catalog
    does not depend on how the image is cut into tiles, and a tile with few galaxies of its
    own still weights the bands for the image's (:func:`deblend_tile`'s ``colour``)."""
    shares = [s for s in shares if len(s)]
    return _median_colour(np.concatenate(shares) if shares else np.zeros((0, 0)))


def _filled(image, sigma, missing):
    """The planes with each band's missing pixels diffusion-filled (bridging bad columns and
    saturated cores: a ring, or a dip where one band's core is missing, would be several
    detections); unchanged without missing pixels."""
    if not missing.any():
        return image, sigma, missing
    image, sigma, missing = (np.array(a, copy=True) for a in (image, sigma, missing))
    for c in range(len(image)):
        if missing[c].any() and (~missing[c]).any():
            image[c], filled = diffusion_fill(image[c], ~missing[c])
            typical = np.median(sigma[c][~missing[c]])
            sigma[c] = np.where(missing[c], typical, sigma[c])
            missing[c] = ~filled
    return image, sigma, missing


def _extract(image, sigma, missing, config: SceneConfig, colour):
    """sep on the coadd weighted for ``colour`` (flat when ``None``), in units of its noise."""
    import sep

    spectrum = np.ones(len(image)) if colour is None else np.asarray(colour, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(missing | (sigma <= 0), 0.0, spectrum[:, None, None]
                          / np.square(sigma, dtype=np.float64))
    norm = np.sqrt((np.square(weight) * np.square(sigma, dtype=np.float64)).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        coadd = np.where(norm > 0, (weight * image).sum(axis=0) / np.where(norm > 0, norm, 1), 0.0)
    coadd = np.ascontiguousarray(coadd, dtype=np.float32)
    dead = np.ascontiguousarray(norm == 0)
    sep.set_extract_pixstack(max(300_000, 4 * coadd.size))
    sep.set_sub_object_limit(4096)
    try:
        objects, segmap = sep.extract(
            coadd, config.detect_threshold, err=1.0, mask=dead, minarea=config.detect_min_area,
            filter_kernel=_gaussian_kernel(config.detect_fwhm), filter_type="conv",
            deblend_nthresh=32, deblend_cont=config.deblend_cont, segmentation_map=True,
        )
    except Exception as err:  # noqa: BLE001  (sep's limits: report, do not crash)
        raise TfdeblendError(f"detection failed on a {coadd.shape} tile: {err}") from err
    return objects, segmap.astype(np.int32)


def galaxy_colour(image: np.ndarray, objects, missing: np.ndarray | None = None
                  ) -> np.ndarray | None:
    """The typical galaxy's share of its flux in each band ``(C,)``, in the image's units: the
    median over ``objects`` (first detections, :func:`detect`) of each band's flux within
    :data:`COLOUR_RADIUS` pixels over their sum; ``None`` with fewer than
    :data:`COLOUR_MIN_OBJECTS` objects with flux in every band (then :func:`detect` weights the
    bands by their inverse variance alone). Measured on the image's own data, so a survey's
    zero points and a field's galaxies need no configuration. With ``missing`` ``(C, H, W)``
    (before any fill), a band missing throughout gets no share."""
    return _median_colour(_shares(image, objects, missing))


def _shares(image: np.ndarray, objects, missing: np.ndarray | None = None) -> np.ndarray:
    """Per object, its flux within :data:`COLOUR_RADIUS` per band over their sum, ``(N, C)``:
    the objects with flux in every band that has data in ``image`` (``missing`` not True
    throughout; the missing pixels diffusion-filled by the caller); NaN in a band with none
    (a chip gap), which then gets no share (:func:`_median_colour`)."""
    import sep

    if missing is None:
        missing = np.zeros(image.shape, bool)
    present = np.array([bool(np.any(band)) for band in image]) & (~missing).any(axis=(1, 2))
    if len(objects) == 0 or present.sum() < 2:
        return np.zeros((0, len(image)))
    flux = np.array([sep.sum_circle(np.ascontiguousarray(band, dtype=np.float64),
                                    objects["x"], objects["y"], COLOUR_RADIUS)[0]
                     for band in image[present]])
    usable = (flux > 0).all(axis=0)
    share = np.full((int(usable.sum()), len(image)), np.nan)
    share[:, present] = (flux[:, usable] / flux[:, usable].sum(axis=0)).T
    return share


def _median_colour(shares: np.ndarray) -> np.ndarray | None:
    """The median per band of ``shares`` ``(N, C)``, normalised; ``None`` below
    :data:`COLOUR_MIN_OBJECTS` rows. Rows with a NaN (from a tile without that band) are left
    out when enough complete rows remain; else a band NaN in every row gets no share."""
    complete = np.isfinite(shares).all(axis=1)
    if complete.sum() >= COLOUR_MIN_OBJECTS:
        shares = shares[complete]
    if len(shares) < COLOUR_MIN_OBJECTS:
        return None
    seen = np.isfinite(shares).any(axis=0)
    colour = np.zeros(shares.shape[1])
    colour[seen] = np.nanmedian(shares[:, seen], axis=0)
    return colour / colour.sum()


@dataclasses.dataclass
class _Group:
    label: int
    windows: list[tuple[int, int]]  # window centres (y, x), tile pixels
    n_detected: int
    # with several windows: the detections (indices into the tile's objects) each one owns
    by_window: list[np.ndarray] = dataclasses.field(default_factory=list)
    next_window: int = 0
    rounds_left: int = 0
    rounds: int = 0
    kept: int = 0
    rows: list = dataclasses.field(default_factory=list)  # indices of its catalog rows


def _windows(members: np.ndarray, shape: tuple[int, int], size: int
             ) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """Window centres (tile pixels) for a group's detections ``members``: the middle of their
    box when they all lie within :data:`WINDOW_REACH` of it, else one window per brightest
    detection not yet covered. Centres are moved inward, while the detections stay covered, so
    that little of a stamp falls outside the ``(H, W)`` tile. Also returns, per window, the
    bool mask of the members it owns (those it was placed to cover)."""
    ys, xs = members["y"], members["x"]
    if max(np.ptp(ys), np.ptp(xs)) <= 2 * WINDOW_REACH:
        spots = [((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2, np.ones(len(ys), bool))]
    else:
        spots = []
        covered = np.zeros(len(members), bool)
        for i in np.argsort(-members["flux"], kind="stable"):
            if covered[i]:
                continue
            near = (np.abs(ys - ys[i]) <= WINDOW_REACH) & (np.abs(xs - xs[i]) <= WINDOW_REACH)
            spots.append((ys[i], xs[i], near & ~covered))
            covered |= near
    centres = []
    for cy, cx, mine in spots:
        centre = []
        for value, lo_m, hi_m, length in ((cy, ys[mine].min(), ys[mine].max(), shape[0]),
                                          (cx, xs[mine].min(), xs[mine].max(), shape[1])):
            lo = max(hi_m - WINDOW_REACH, size / 2)  # inside the tile when possible
            hi = min(lo_m + WINDOW_REACH, length - size / 2)
            centre.append(int(round(np.clip(value, lo, hi) if lo <= hi else value)))
        centres.append((centre[0], centre[1]))
    return centres, [mine for _, _, mine in spots]


def _cut(array: np.ndarray, cy: int, cx: int, size: int, fill) -> tuple[np.ndarray, np.ndarray]:
    """``(C, size, size)`` cut of ``array`` ``(C, H, W)`` centred on ``(cy, cx)``, and the bool
    map of its pixels that lie outside ``array``."""
    c, height, width = array.shape
    y0, x0 = cy - size // 2, cx - size // 2
    out = np.full((c, size, size), fill, dtype=array.dtype)
    outside = np.ones((size, size), bool)
    sy0, sy1 = max(0, y0), min(height, y0 + size)
    sx0, sx1 = max(0, x0), min(width, x0 + size)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[:, sy0:sy1, sx0:sx1]
        outside[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = False
    return out, outside


def _add(array: np.ndarray, patch: np.ndarray, cy: int, cx: int, sign: float = 1.0) -> None:
    """Add ``sign * patch`` ``(C, S, S)`` centred on ``(cy, cx)`` into ``array`` (clipped)."""
    _, height, width = array.shape
    size = patch.shape[-1]
    y0, x0 = cy - size // 2, cx - size // 2
    sy0, sy1 = max(0, y0), min(height, y0 + size)
    sx0, sx1 = max(0, x0), min(width, x0 + size)
    if sy1 > sy0 and sx1 > sx0:
        array[:, sy0:sy1, sx0:sx1] += sign * patch[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]


@dataclasses.dataclass
class TileResult:
    """What a tile returns: catalog rows (full-image pixels), the model of its region, counts.

    Attributes:
        rows: dict of 1-d arrays, one entry per catalog column (no ``id``/``ra``/``dec`` yet;
            ``blend_id`` is unique within the tile: the caller makes it unique over tiles).
        ext: the region ``(y0, y1, x0, x1)`` the model covers.
        model: float32 ``(C, y1 - y0, x1 - x0)``, the sum of the tile's galaxies.
        stats: ``groups``, ``stamps`` (windows peeled), ``detections``, ``colour`` (the
            typical galaxy's share of its flux per band that weighted the detection,
            :func:`galaxy_colour`; ``None``: inverse-variance weights), ``sky`` (per band,
            the median of the tile's pixels in noise sigmas: about 0-1.5 on a sky-subtracted
            image, far more where the sky was left in).
    """

    rows: dict[str, np.ndarray]
    ext: tuple[int, int, int, int]
    model: np.ndarray
    stats: dict[str, Any]


def tile_planes(image: np.ndarray, variance: np.ndarray | None, missing: np.ndarray,
                config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """A tile's image (a float32 copy, the sky subtracted when ``config.background`` > 0) and
    its noise sigma per pixel ``(C, h, w)``: from ``variance``, else a robust sigma per band
    (:func:`noise_sigma`); 0 where ``missing``."""
    image = np.array(image, dtype=np.float32, copy=True)
    if config.background > 0:
        image = _subtract_background(image, missing, config.background)
    if variance is not None:
        sigma_map = np.sqrt(np.where(missing, 0.0, variance)).astype(np.float32)
    else:
        sigma_map = np.broadcast_to(
            noise_sigma(image, missing)[:, None, None], image.shape
        ).astype(np.float32)
        sigma_map = np.where(missing, 0.0, sigma_map)
    return image, sigma_map


def deblend_tile(
    image: np.ndarray,
    variance: np.ndarray | None,
    missing: np.ndarray,
    deblend: Callable[[np.ndarray], dict[str, np.ndarray]],
    tile: Tile,
    config: SceneConfig,
    stamp_size: int,
    bands: tuple[str, ...],
    batch_size: int = 32,
    progress: Callable[[int], Any] | None = None,
    deblend_one: Callable[[np.ndarray], np.ndarray] | None = None,
    colour: np.ndarray | None = None,
) -> TileResult:
    """Deblend the groups a tile owns (see the module docstring).

    Args:
        image: ``(C, h, w)`` the tile's ``ext`` region, missing pixels 0.
        variance: ``(C, h, w)`` or ``None``.
        missing: ``(C, h, w)`` bool.
        deblend: the peel of a batch of channels-last stamps ``(B, S, S, C)``, returning
            :meth:`tfdeblend.export.DeblendModel.deblend`'s dict (plus ``outliers``).
        tile: the tile (its ``ext`` must match the arrays).
        config: the scene options.
        stamp_size: the model's stamp side ``S``.
        bands: band names, channel order.
        batch_size: stamps per ``deblend`` call.
        progress: called with the number of stamps peeled, after each batch.
        deblend_one: the RDN alone on a batch of stamps ``(B, S, S, C) -> (B, S, S, C)`` (the
            brightest galaxy of each, input units); with it, detections that no kept galaxy
            explains are tried once more (:func:`_recover_detections`).
        colour: ``(C,)`` the whole image's typical galaxy colour (:func:`image_colour`), which
            weights the bands for detection; ``None``: measured on the tile.
    """
    y0, y1, x0, x1 = tile.ext
    image, sigma_map = tile_planes(image, variance, missing, config)
    band_sigma = np.array(
        [np.median(s[~m]) if (~m).any() else 0.0 for s, m in zip(sigma_map, missing)], np.float32
    )
    typical = band_shares(bands)
    absent = band_sigma <= 0
    if absent.any() and not absent.all():  # the noise of a band made from the others
        band_sigma = np.where(absent, typical * np.mean(band_sigma[~absent] / typical[~absent]),
                              band_sigma).astype(np.float32)
    objects, segmap, colour = detect_galaxies(image, sigma_map, missing, config, colour)
    shares = None if colour is None else [float(v) for v in colour]
    sky = [float(np.median(im[~m]) / sg) if sg > 0 and (~m).any() else 0.0
           for im, m, sg in zip(image, missing, band_sigma)]
    valid = ~missing.all(axis=0)
    # the share of the tile's pixels with data that its largest group covers (run.sky_note)
    covered = {"covered": 0.0, "pixels": int(valid.sum())}
    model = np.zeros_like(image)
    empty = TileResult(_empty_rows(bands), tile.ext, model, {"groups": 0, "stamps": 0,
                                                              "detections": len(objects),
                                                              "colour": shares, "sky": sky,
                                                              **covered})
    if len(objects) == 0:
        return empty
    grown = segmap > 0
    if config.group_grow:
        grown = ndimage.binary_dilation(grown, iterations=config.group_grow)
    labels, _ = ndimage.label(grown)
    if valid.any():
        covered["covered"] = float(np.bincount(labels[valid])[1:].max(initial=0) / valid.sum())
    obj_label = labels[objects["ypeak"], objects["xpeak"]]
    groups: list[_Group] = []
    for label in np.unique(obj_label[obj_label > 0]):
        members = objects[obj_label == label]
        if not tile.owned(members["y"] + y0, members["x"] + x0).any():
            continue  # other tiles deblend it
        centres, by_window = _windows(members, labels.shape, stamp_size)
        index = np.flatnonzero(obj_label == label)
        group = _Group(int(label), centres, len(members),
                       [index[mine] for mine in by_window] if len(centres) > 1 else [])
        group.rounds_left = config.max_rounds
        groups.append(group)
    working = np.where(missing, 0.0, image).astype(np.float32)
    holes = _holes(missing)
    rows: list[dict[str, Any]] = []
    stamps_done = 0
    round_index = 0
    pending = [g for g in groups if g.windows]
    while pending:
        jobs = []
        for group in pending:
            cy, cx = group.windows[group.next_window]
            jobs.append((group, cy, cx))
        stamps, cuts = [], []
        for group, cy, cx in jobs:
            rng = np.random.default_rng(
                np.random.SeedSequence([config.seed, tile.index, group.label, round_index])
            )
            stamp, cut = _group_stamp(working, labels, missing, sigma_map, band_sigma,
                                      group.label, cy, cx, stamp_size, rng,
                                      _foreign(segmap, obj_label, group, cy, cx, stamp_size),
                                      shares=typical)
            stamps.append(np.transpose(stamp, (1, 2, 0)))
            cuts.append(cut)
        results = _in_batches(deblend, stamps, batch_size, progress, band_sigma)
        result = {key: np.concatenate([r[key] for r in results]) for key in results[0]}
        stamps_done += len(stamps)
        for k, (group, cy, cx) in enumerate(jobs):
            kept = _keep(result, k, group, cy, cx, cuts[k], stamp_size, bands, working, model,
                         tile, rows, config, holes)
            group.rounds += 1
            group.rounds_left -= 1
            first = int(result["counts"][k, 0])
            if first >= MAX_COUNT and group.rounds_left > 0 and kept > 0:
                continue  # peel this window again on what is left
            group.next_window += 1
            group.rounds_left = config.max_rounds
        pending = [g for g in pending if g.next_window < len(g.windows)]
        round_index += 1
    if deblend_one is not None:
        stamps_done += _recover_detections(
            objects, obj_label, groups, labels, working, missing, sigma_map, band_sigma, model,
            rows, deblend_one, tile, config, stamp_size, bands, batch_size, progress, holes,
        )
        if config.residual_detection:
            # what the first detection merged into others' segments (crowded groups): detect
            # again on the residual, the models' own error counted as noise (every galaxy
            # subtracted, also those another tile catalogues); not next to missing pixels,
            # where no model is checked by data (a saturated core's rim)
            subtracted = np.where(missing, 0.0, image) - working
            near = missing if RESIDUAL_HOLE_MARGIN < 1 else ndimage.binary_dilation(
                missing, np.ones((1, 3, 3), bool), iterations=RESIDUAL_HOLE_MARGIN)
            noise = np.where(near, 0.0, np.hypot(sigma_map, RESIDUAL_MODEL_ERROR * subtracted))
            extra, _ = detect(working, noise, near, config, fill=False, colour=colour)
            if len(extra):
                stamps_done += _recover_detections(
                    extra, labels[extra["ypeak"], extra["xpeak"]], groups, labels, working,
                    missing, sigma_map, band_sigma, model, rows, deblend_one, tile, config,
                    stamp_size, bands, batch_size, progress, holes,
                    piece_size=RESIDUAL_PIECE_SIZE,
                )
    table = _rows_to_columns(_owned_rows(rows), bands)
    big = {_blend_id(tile, g) for g in groups
           if len(g.windows) > 1 or g.rounds > len(g.windows) or g.n_detected > MAX_COUNT}
    kept_per_group = {_blend_id(tile, g): g.kept for g in groups}
    if len(table["blend_id"]):
        table["n_in_blend"] = np.array([kept_per_group[b] for b in table["blend_id"]], np.int16)
        table["big_group"] = np.isin(table["blend_id"], list(big))
    return TileResult(table, tile.ext, model,
                      {"groups": len(groups), "stamps": stamps_done, "detections": len(objects),
                       "colour": shares, "sky": sky, **covered})


def _recover_detections(objects, obj_label, groups, labels, working, missing, sigma_map,
                        band_sigma, model, rows, deblend_one, tile, config, size, bands,
                        batch_size, progress, holes, piece_size: float = 0.0) -> int:
    """Try once more every detection of an owned group that no kept galaxy explains.

    The classifier sometimes counts a faint galaxy beside a brighter one as nothing, and the
    peel's own residual detection needs S/N 10. Here each detection with no kept galaxy within
    :data:`RECOVER_RADIUS` pixels gets a stamp of the residual centred on it, of which the RDN
    sees only a disc of :data:`RECOVER_WINDOW` pixels; its galaxy is kept (flag ``recovered``,
    quality medium) when it lies at the detection and passes the ``min_snr`` test; with
    ``piece_size`` > 0, one closer to a brighter galaxy of its group than ``piece_size`` times
    that galaxy's size is a piece of it and is added to it, and in any case one on the same
    masked core as a kept galaxy (:func:`_twin`); so is a faint fit (:func:`_fit_faint`) within
    :data:`RESIDUAL_PIECE_SIZE` sizes of a brighter galaxy. Returns the number of stamps run.
    """
    by_label = {g.label: g for g in groups}
    done = np.array([[r["y"] - tile.ext[0], r["x"] - tile.ext[2]] for r in rows]).reshape(-1, 2)
    jobs = []
    for index in np.flatnonzero(np.isin(obj_label, list(by_label))):
        oy, ox = float(objects["y"][index]), float(objects["x"][index])
        if len(done) and np.hypot(done[:, 0] - oy, done[:, 1] - ox).min() < RECOVER_RADIUS:
            continue
        jobs.append((by_label[int(obj_label[index])], oy, ox))
    if not jobs:
        return 0
    yy, xx = np.mgrid[:size, :size]
    shares = band_shares(bands)
    stamps, cuts = [], []
    for group, oy, ox in jobs:
        cy, cx = int(round(oy)), int(round(ox))
        rng = np.random.default_rng(
            np.random.SeedSequence([config.seed, tile.index, group.label, 10_000 + cy * 7919 + cx])
        )
        stamp, cut = _group_stamp(working, labels, missing, sigma_map, band_sigma, group.label,
                                  cy, cx, size, rng, shares=shares)
        dy, dx = oy - (cy - size // 2), ox - (cx - size // 2)
        disc = np.hypot(yy - dy, xx - dx) < RECOVER_WINDOW
        stamps.append(np.transpose(stamp * disc[None], (1, 2, 0)))
        cuts.append({**cut, "stamp": stamp, "at": (dy, dx)})
    galaxies = [np.asarray(g) for g in _in_batches(deblend_one, stamps, batch_size, progress,
                                                   band_sigma)]
    galaxies = np.transpose(np.concatenate(galaxies), (0, 3, 1, 2))  # (J, C, S, S)
    y0, _, x0, _ = tile.ext
    for (group, oy, ox), galaxy, cut in zip(jobs, galaxies, cuts):
        moments = measure.peak_moments(np.transpose(galaxy, (1, 2, 0)))
        x, y = float(moments["x"]), float(moments["y"])
        dy, dx = cut["at"]
        if not (np.isfinite(x) and np.hypot(x - dx, y - dy) < RECOVER_RADIUS):
            continue  # the RDN modelled something else
        footprint = galaxy > measure.FOOTPRINT_SIGMA * cut["sig"]
        faint = not footprint.any()
        if faint:  # at the detection limit: the RDN's shape, the data's flux
            galaxy = _fit_faint(galaxy, cut["stamp"], cut["var"])
            footprint = galaxy > measure.FOOTPRINT_SIGMA * cut["sig"]
        conserved = galaxy + np.where(footprint, cut["stamp"] - galaxy, 0.0)
        snr = _model_snr(galaxy, conserved, cut["var"])
        if snr < config.min_snr or (faint and snr > FAINT_MAX_SNR):
            continue
        cy, cx = int(round(oy)), int(round(ox))
        flux = conserved.sum(axis=(1, 2))
        terms = flux_error_terms(galaxy[None], cut["var"])
        near = _cut(model, cy, cx, size, 0.0)[0]  # the galaxies kept around it
        pair = flux_error_terms(np.stack([galaxy, near]), cut["var"])
        terms["neighbours"] = pair["neighbours"][:1]
        error = np.hypot(combine_flux_errors(terms, flux[None])[0],
                         RECOVERED_FLUX_ERROR * np.abs(flux))
        if faint:  # its flux is a fit to noisy data: add the fit's own noise
            error = np.hypot(error, _fit_noise(galaxy, cut["var"]))
        row = _kept_galaxy(
            galaxy, {key: float(value) for key, value in moments.items()}, snr, flux, error,
            cut, (cy - size // 2 + y0, cx - size // 2 + x0), cy, cx, working, bands,
            config.footprints, data=cut["stamp"], blend_id=_blend_id(tile, group), quality=1,
            split=False, recovered=True, outliers=False,
        )
        _on_hole(holes, row, tile)
        # a faint fit next to a brighter galaxy is its model's error, not a galaxy
        reach = piece_size if piece_size > 0 else RESIDUAL_PIECE_SIZE if faint else None
        twin = _twin(rows, group, row, reach)
        _settle(row, twin, galaxy, cy, cx, group, rows, model, tile, bands)
    return len(stamps)


def _template(model: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(template, inverse variance)`` of a model ``(C, S, S)`` as a matched filter: the model
    clipped at 0, and ``1 / v`` where there are data (``v > 0``), else 0."""
    good = variance > 0
    inverse = np.where(good, 1.0 / np.where(good, variance, 1.0), 0.0)
    return np.clip(model, 0.0, None).astype(np.float64), inverse


def _amplitude(model: np.ndarray, data: np.ndarray, variance: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(template, amplitude (C,))``: the least-squares scale in each band of a model
    ``(C, S, S)`` (:func:`_template`) to ``data``, 0 in a band without data under it."""
    template, inverse = _template(model, variance)
    norm = (np.square(template) * inverse).sum(axis=(1, 2))
    amplitude = np.where(norm > 0, (template * data * inverse).sum(axis=(1, 2))
                         / np.where(norm > 0, norm, 1.0), 0.0)
    return template, amplitude


def _fit_faint(galaxy: np.ndarray, data: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """The RDN's model ``(C, S, S)`` of a galaxy at the detection limit, which lies below the
    noise everywhere (the networks dim what they are unsure of), scaled in each band to the
    data by least squares (its shape as a matched filter; a negative amplitude is 0)."""
    template, amplitude = _amplitude(galaxy, data, variance)
    return (template * np.clip(amplitude, 0.0, None)[:, None, None]).astype(np.float32)


def _fit_noise(galaxy: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Per band ``(C,)``: the noise of the flux of a model ``(C, S, S)`` fitted to the data by
    least squares (:func:`_fit_faint`), ``sum(m) / sqrt(sum(m^2 / v))`` over the pixels with
    data (``v > 0``)."""
    template, inverse = _template(galaxy, variance)
    norm = np.sqrt((np.square(template) * inverse).sum(axis=(1, 2)))
    return np.where(norm > 0, template.sum(axis=(1, 2)) / np.where(norm > 0, norm, 1.0), 0.0)


def _settle(row, twin, galaxy, cy, cx, group, rows, model, tile, bands) -> int:
    """Put a kept galaxy ``(C, S, S)`` (its stamp centred on ``(cy, cx)``, tile pixels) where it
    belongs: into ``twin``, the brighter galaxy of the group it is a piece of, if any, else
    into ``rows``. Its model joins the tile's ``model`` when the galaxy it ends in lies in the
    tile's own region (:attr:`Tile.owns`); a row outside it stays (flag ``_foreign``) only so
    that the tile's later windows know of it, and leaves with :func:`_owned_rows`: the tile that
    owns its position catalogues it. Returns 1 for a new row, else 0."""
    row["_foreign"] = not bool(tile.owned(row["y"], row["x"]))
    if not (twin if twin is not None else row)["_foreign"]:
        _add(model, galaxy, cy, cx)
    if twin is not None:  # a piece of a brighter galaxy the group already kept
        _absorb(twin, row, bands)
        return 0
    group.rows.append(len(rows))
    rows.append(row)
    group.kept += 0 if row["_foreign"] else 1
    return 1


def _owned_rows(rows: list[dict]) -> list[dict]:
    """The rows a tile catalogues (:func:`_settle`)."""
    return [r for r in rows if not r.get("_foreign", False)]


def _blend_id(tile: Tile, group: _Group) -> int:
    """A group's id, unique over tiles (:func:`merge_tiles` renumbers them from 1)."""
    return tile.index * 1_000_000 + group.label


def _subtract_background(image: np.ndarray, missing: np.ndarray, mesh: int) -> np.ndarray:
    import sep

    out = np.empty_like(image)
    for c in range(len(image)):
        data = np.ascontiguousarray(image[c], dtype=np.float32)
        size = min(mesh, *data.shape)
        background = sep.Background(data, mask=np.ascontiguousarray(missing[c]), bw=size, bh=size)
        out[c] = data - background.back()
    return out


def _keep(result, k, group, cy, cx, cut, size, bands, working, model, tile, rows, config,
          holes):
    """Keep the window's components that belong to its group; return how many are new."""
    y0, _, x0, _ = tile.ext
    n = int(result["n_components"][k])
    if n == 0:
        return 0
    components = np.transpose(result["components"][k, :n], (0, 3, 1, 2))  # (n, C, S, S)
    conserved = np.transpose(result["conserved"][k, :n], (0, 3, 1, 2))
    residual = np.transpose(result["residual"][k], (2, 0, 1))
    components, residual = bound_outskirts(components, residual, cut["sig"], cut["miss"])
    fluxes = conserved.sum(axis=(2, 3))
    errors = flux_errors(components, fluxes, cut["var"])  # (n, C)
    moments = measure.peak_moments(np.transpose(components, (0, 2, 3, 1)))
    distance = ndimage.distance_transform_edt(cut["lab"] != group.label)
    kept = 0
    sy0, sx0 = cy - size // 2, cx - size // 2  # stamp origin, tile pixels
    for j in range(n):
        x, y = float(moments["x"][j]), float(moments["y"][j])
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < size and 0 <= ix < size):
            continue
        if distance[iy, ix] > OUTSIDE_REACH:
            continue  # another group's or window's (or nobody's) light
        snr = _model_snr(components[j], conserved[j], cut["var"])
        if snr < config.min_snr:
            continue  # nothing in the data supports it: its light stays in the residual
        row = _kept_galaxy(
            components[j], {key: float(value[j]) for key, value in moments.items()}, snr,
            fluxes[j], errors[j], cut, (sy0 + y0, sx0 + x0), cy, cx, working, bands,
            config.footprints, data=components[j] + residual, blend_id=_blend_id(tile, group),
            quality=int(result["quality"][k]), split=bool(result["split"][k]),
            recovered=bool(result["recovered"][k]),
            outliers=bool(result.get("outliers", np.zeros(k + 1))[k]),
        )
        _on_hole(holes, row, tile)
        twin = _twin(rows, group, row, config.duplicate_size)
        kept += _settle(row, twin, components[j], cy, cx, group, rows, model, tile, bands)
    return kept


def bound_outskirts(components: np.ndarray, residual: np.ndarray, sigma: np.ndarray,
                    missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(components, residual)`` of a stamp with each component's outskirts bounded by the
    data: where a component is below :data:`OUTSKIRT_FRACTION` of its peak (per band), it
    holds at most the data smoothed over :data:`OUTSKIRT_SMOOTH` px plus
    :data:`OUTSKIRT_SIGMA` noise sigmas (no galaxy holds more light than the image); the light
    taken off goes back to the residual, so components + residual is unchanged. Missing pixels
    are left alone (no data to bound them). The networks' model of a star 10^4-10^5 times
    brighter than the sky rose toward its stamp's border, 5-8 sigma above the data."""
    data = components.sum(axis=0) + residual  # (C, S, S)
    smooth = np.stack([ndimage.gaussian_filter(d, OUTSKIRT_SMOOTH) for d in data])
    bound = np.clip(smooth, 0.0, None) + OUTSKIRT_SIGMA * sigma
    peak = components.max(axis=(2, 3), keepdims=True)
    outskirt = (components < OUTSKIRT_FRACTION * peak) & ~missing[None]
    bounded = np.where(outskirt, np.minimum(components, bound[None]), components)
    if np.array_equal(bounded, components):
        return components, residual
    return bounded, residual + (components - bounded).sum(axis=0)


def _foreign(segmap, obj_label, group: _Group, cy: int, cx: int, size: int):
    """The ``(S, S)`` pixels of the window's stamp that belong to the detections other windows
    of its group own (their sep segments), or ``None`` for a group of one window."""
    if not group.by_window:
        return None
    segment = _cut(segmap[None], cy, cx, size, 0)[0][0] - 1  # detection index, -1 none
    mine = np.zeros(len(obj_label) + 1, bool)
    mine[group.by_window[group.next_window]] = True
    in_group = np.append(obj_label == group.label, False)
    return in_group[segment] & ~mine[segment]


def _group_stamp(working, labels, missing, sigma_map, band_sigma, label, cy, cx, size, rng,
                 foreign=None, shares=None):
    """The stamp ``(C, S, S)`` a group's window at ``(cy, cx)`` sees, and what it is made of.

    Cut from the tile's ``working`` residual; missing pixels filled and pixels outside the
    tile made noise (:func:`fill_missing`); other groups' pixels, and the ``foreign`` ones
    (``(S, S)`` bool: the segments of detections another window of the group owns), replaced by
    noise; with ``shares``, a band with no data in the window made from the others
    (:func:`fill_absent_bands`). Returns ``(stamp, cut)`` with ``cut``: ``lab`` (group labels; foreign pixels 0),
    ``miss`` (missing data), ``outside``, ``sig`` (noise sigma per pixel) and ``var`` (variance
    where the stamp holds the window's own data, 0 elsewhere).
    """
    stamp, outside = _cut(working, cy, cx, size, 0.0)
    lab = _cut(labels[None], cy, cx, size, 0)[0][0]
    if foreign is not None:
        lab = np.where(foreign, -1, lab)
    miss = _cut(missing, cy, cx, size, True)[0] & ~outside[None]
    sig = _cut(sigma_map, cy, cx, size, 0.0)[0]
    sig = np.where(sig > 0, sig, band_sigma[:, None, None])
    other = (lab != label) & (lab != 0)
    stamp = fill_missing(stamp, miss, sig, rng, outside)
    stamp = np.where(other[None], rng.normal(0.0, 1.0, stamp.shape) * sig, stamp)
    if shares is not None:  # a band with no data in the window: made from the others
        stamp = fill_absent_bands(stamp, (miss | outside[None]).all(axis=(1, 2)), shares)
    unknown = miss | outside[None] | other[None]
    return stamp, {"lab": lab, "miss": miss, "outside": outside, "sig": sig,
                   "var": np.square(sig) * ~unknown}


def _in_batches(function, stamps: list, batch_size: int, progress, band_sigma=None) -> list:
    """``function`` on the stamps ``(S, S, C)``, ``batch_size`` at a time; its outputs in order.
    With ``band_sigma`` ``(C,)``, the stamps' noise sigma per band goes along (``noise_sigma=``)."""
    out = []
    for start in range(0, len(stamps), batch_size):
        batch = np.stack(stamps[start : start + batch_size]).astype(np.float32)
        if band_sigma is None:
            out.append(function(batch))
        else:
            sigma = np.broadcast_to(np.asarray(band_sigma, np.float32), (len(batch), batch.shape[-1]))
            out.append(function(batch, noise_sigma=sigma))
        if progress is not None:
            progress(len(batch))
    return out


def _kept_galaxy(galaxy, moments, snr, flux, error, cut, origin, cy, cx, working, bands,
                 footprints, data=None, **fields) -> dict:
    """Keep a galaxy ``(C, S, S)`` of the stamp at ``(cy, cx)`` (tile pixels) whose first pixel
    is full-image pixel ``origin`` ``(y, x)``: subtract it from what later windows see, and
    return its catalog row (position, moments, S/N, flux and error per band, NaN in a band with
    no data under it, ``edge``/``masked`` flags, footprint, and the given ``fields``). The
    caller adds it to the tile's model (:func:`_settle`). ``data`` ``(C, S, S)``: the galaxy
    plus the stamp's residual, for the bands where it is too faint for its own light to reach
    the data (:func:`_faint_band_fluxes`)."""
    _add(working, galaxy, cy, cx, sign=-1.0)
    light = _light(galaxy, cut["sig"])
    row = {
        "x": origin[1] + moments["x"], "y": origin[0] + moments["y"], "snr": snr,
        "mu20": moments["mu20"], "mu02": moments["mu02"], "mu11": moments["mu11"],
        "edge": bool((light.any(axis=0) & cut["outside"]).any()),
        "masked": bool((light & cut["miss"]).any()), **fields,
    }
    seen = _has_data(light, cut["var"])
    if data is not None:
        flux, error, seen = _faint_band_fluxes(galaxy, data, light, cut["var"], flux, error,
                                               seen)
    for c, band in enumerate(bands):
        row[f"flux_{band}"] = float(flux[c]) if seen[c] else np.nan
        row[f"flux_err_{band}"] = float(error[c]) if seen[c] else np.nan
    if footprints:
        row["footprint"] = _footprint(galaxy, light, origin[0], origin[1])
    return row


def _faint_band_fluxes(galaxy, data, light, variance, flux, error, seen):
    """``(flux, error, seen)`` per band ``(C,)`` with the bands where the galaxy's light
    (:func:`_light`) touches no pixel with data, though its light in the other bands lies on
    that band's data, measured: there its model is below half the noise everywhere (a red
    galaxy in g), its conserved flux would be the networks' guess alone, so the model's shape
    in that band (or, where it is 0, its shape over all bands) is fitted to ``data`` by least
    squares, the flux free to be negative, its error the fit's noise (:func:`_fit_noise`)."""
    under = light.any(axis=0)
    faint = ~seen & ((variance > 0) & under[None]).any(axis=(1, 2))
    if not faint.any():
        return flux, error, seen
    model = np.clip(galaxy, 0.0, None).astype(np.float64)
    model = np.where(model.sum(axis=(1, 2))[:, None, None] > 0, model, model.sum(axis=0)[None])
    template, amplitude = _amplitude(model, data, variance)
    noise = _fit_noise(template, variance)
    ok = faint & (noise > 0)  # the template has data under it
    flux, error = np.array(flux, np.float64, copy=True), np.array(error, np.float64, copy=True)
    flux[ok] = (amplitude * template.sum(axis=(1, 2)))[ok]
    error[ok] = noise[ok]
    return flux, error, seen | ok


def _has_data(light: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Per band ``(C,)``: whether any pixel under a galaxy's light has data. A band without
    gets a NaN flux and error (its model there is the networks' guess, not a measurement)."""
    return ((variance > 0) & light).any(axis=(1, 2))


def _light(model: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Where a galaxy's light "touches" a stamp ``(C, S, S)``: its model above
    :data:`TOUCH_SIGMA` noise sigmas. A band with no data in the tile (``sig`` 0) shows no
    noise to compare with: there, its light is where the other bands see it."""
    seen = (model > TOUCH_SIGMA * sig) & (sig > 0)
    return np.where(sig > 0, seen, seen.any(axis=0))


def flux_error_terms(models: np.ndarray, variance: np.ndarray) -> dict[str, np.ndarray]:
    """The parts ``(K, C)`` of the flux errors (:func:`flux_errors`) of one stamp's galaxies.

    ``noise``: the pixel noise of each galaxy's conserved flux, ``sqrt(sum(w_k^2 v))`` over the
    footprint, where it takes the share ``w_k = m_k / sum(m)`` of the data (the footprint: the
    summed models above :data:`~tfdeblend.measure.FOOTPRINT_SIGMA` noise sigmas, as in
    :func:`tfdeblend.deblend.conserve_flux`); ``neighbours``: the neighbours' light handed to it
    there, ``sum(w_k (sum(m) - m_k))``; ``wings``: its model's flux outside the footprint or on
    pixels with no data, which only the model gives.

    Args:
        models: ``(K, C, H, W)`` noiseless models.
        variance: ``(C, H, W)`` pixel variance, 0 where there are no data.
    """
    good = variance > 0
    var = np.where(good, variance, 0.0).astype(np.float64)
    models = np.clip(models, 0.0, None).astype(np.float64)
    total = models.sum(axis=0)  # (C, H, W)
    footprint = good & (total > measure.FOOTPRINT_SIGMA * np.sqrt(var))
    share = np.where(footprint[None], models / np.where(total > 0, total, 1.0)[None], 0.0)
    return {
        "noise": np.sqrt((share**2 * var[None]).sum(axis=(2, 3))),
        "neighbours": (share * (total[None] - models)).sum(axis=(2, 3)),
        "wings": np.where(footprint[None], 0.0, models).sum(axis=(2, 3)),
    }


def flux_errors(models: np.ndarray, fluxes: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Flux errors ``(K, C)`` of the galaxies of one stamp: in quadrature, the pixel noise of
    each one's conserved flux, :data:`NEIGHBOUR_FLUX_ERROR` times the neighbours' light handed
    to it, :data:`WING_FLUX_ERROR` times its model-only flux and :data:`MODEL_FLUX_ERROR` times
    its flux (the terms: :func:`flux_error_terms`). They follow the conditions: a shallower
    image has a smaller footprint (more of the flux is the model's), a wider PSF more light
    shared with neighbours.

    Args:
        models: ``(K, C, H, W)`` noiseless models.
        fluxes: ``(K, C)`` their fluxes.
        variance: ``(C, H, W)`` pixel variance, 0 where there are no data.
    """
    return combine_flux_errors(flux_error_terms(models, variance), fluxes)


def combine_flux_errors(terms: dict[str, np.ndarray], fluxes: np.ndarray,
                        neighbour: float | None = None, wing: float | None = None,
                        model: float | None = None) -> np.ndarray:
    """:func:`flux_errors` from its ``terms`` (:func:`flux_error_terms`) and the ``fluxes``,
    with the weights given (default: :data:`NEIGHBOUR_FLUX_ERROR`, :data:`WING_FLUX_ERROR`,
    :data:`MODEL_FLUX_ERROR`; ``scripts/calibrate_flux_errors.py`` fits them)."""
    neighbour = NEIGHBOUR_FLUX_ERROR if neighbour is None else neighbour
    wing = WING_FLUX_ERROR if wing is None else wing
    model = MODEL_FLUX_ERROR if model is None else model
    return np.sqrt(terms["noise"] ** 2 + (neighbour * terms["neighbours"]) ** 2
                   + (wing * terms["wings"]) ** 2 + (model * np.abs(fluxes)) ** 2)


def _model_snr(model: np.ndarray, data: np.ndarray, variance: np.ndarray) -> float:
    """Matched-filter S/N of a galaxy over all bands, its model as the template:
    ``sum(m d / v) / sqrt(sum(m^2 / v))`` over the pixels with data (``v > 0``)."""
    template, inverse = _template(model, variance)
    norm = float(np.sqrt((np.square(template) * inverse).sum()))
    return float((template * data * inverse).sum() / norm) if norm > 0 else 0.0


def _footprint(model: np.ndarray, light: np.ndarray, y0: int, x0: int):
    """``(x0, y0, cut-out (C, h, w))`` of a model ``(C, S, S)`` whose stamp starts at full-image
    pixel ``(y0, x0)``: its bounding box where ``light`` ``(C, S, S)`` is set, padded."""
    where = np.argwhere(light.any(axis=0))
    if len(where) == 0:
        where = np.argwhere(model.sum(axis=0) == model.sum(axis=0).max())
    (a, b), (c, d) = where.min(axis=0) - FOOTPRINT_PAD, where.max(axis=0) + FOOTPRINT_PAD + 1
    a, b = max(a, 0), max(b, 0)
    c, d = min(c, model.shape[1]), min(d, model.shape[2])
    return (int(x0 + b), int(y0 + a), np.array(model[:, a:c, b:d], dtype=np.float32))


@dataclasses.dataclass
class _Holes:
    """A tile's masked cores (:func:`_holes`): ``labels`` ``(H, W)`` (0: none), grown by
    :data:`HOLE_REACH` pixels, and per label its ``centre`` ``(y, x)`` (tile pixels)."""

    labels: np.ndarray
    centre: np.ndarray


def _holes(missing: np.ndarray) -> _Holes:
    """The masked cores of a tile (saturated ones): the missing pixels of any band, at least
    3 px wide, that form a blob of :data:`CORE_AREA` to :data:`MAX_HOLE_AREA` pixels filling
    half of a bounding box at most 4 times as long as it is wide (also a core cut by the
    image's edge; not a bad column, a cosmic ray's track or a strip along an edge). Galaxies
    centred on the same core are one (:func:`_twin`), placed at its centre (its peak is
    missing; the peel's models of it peak at its rim)."""
    # thin structures opened away: a bad column or a bleed trail through a core is not part of it
    hole = ndimage.binary_opening(missing.any(axis=0), np.ones((3, 3), bool))
    labels, n = ndimage.label(hole)
    if n == 0:
        return _Holes(labels.astype(np.int32), np.full((1, 2), np.nan))
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(labels)
    sides = np.array([sorted((b[0].stop - b[0].start, b[1].stop - b[1].start)) for b in boxes])
    filled = area[1:] / sides.prod(axis=1)
    core = ((area[1:] >= CORE_AREA) & (area[1:] <= MAX_HOLE_AREA) & (filled >= 0.5)
            & (sides[:, 1] <= 4 * sides[:, 0]))
    centre = np.full((n + 1, 2), np.nan)
    centre[1:][core] = np.array(ndimage.center_of_mass(hole, labels, index))[core]
    labels = np.where(np.append(False, core)[labels], labels, 0)
    grown = ndimage.grey_dilation(labels, footprint=np.ones((2 * HOLE_REACH + 1,) * 2, bool))
    return _Holes(np.where(labels > 0, labels, grown).astype(np.int32), centre)


def _on_hole(holes: _Holes, row: dict, tile: Tile) -> None:
    """Set ``row["_hole"]``, the masked core its position lies on (0: none), and the flag
    ``masked_core``, and move a galaxy on a core to the core's centre."""
    iy, ix = int(round(row["y"])) - tile.ext[0], int(round(row["x"])) - tile.ext[2]
    inside = 0 <= iy < holes.labels.shape[0] and 0 <= ix < holes.labels.shape[1]
    row["_hole"] = int(holes.labels[iy, ix]) if inside else 0
    row["masked_core"] = bool(row["_hole"])
    row["masked"] = bool(row["masked"]) or row["masked_core"]
    if row["_hole"] and np.isfinite(holes.centre[row["_hole"]]).all():
        row["y"] = float(holes.centre[row["_hole"], 0]) + tile.ext[0]
        row["x"] = float(holes.centre[row["_hole"], 1]) + tile.ext[2]


def _absorb(twin: dict, piece: dict, bands) -> None:
    """Add a piece's flux (errors in quadrature), flags and footprint to the galaxy it is of."""
    for band in bands:  # a band with no data under the piece (NaN) adds nothing
        if np.isfinite(piece[f"flux_{band}"]):
            twin[f"flux_{band}"] = float(np.nansum([twin[f"flux_{band}"], piece[f"flux_{band}"]]))
            twin[f"flux_err_{band}"] = float(np.hypot(np.nan_to_num(twin[f"flux_err_{band}"]),
                                                      piece[f"flux_err_{band}"]))
    # a piece's masked core is not the galaxy's: its own centre decides ``masked_core``
    # (:func:`_on_hole`); the missing pixels under the piece still make it ``masked``
    for flag in ("edge", "masked", "outliers"):
        twin[flag] = twin[flag] or piece[flag]
    if "footprint" in twin and "footprint" in piece:
        (ax, ay, a), (bx, by, b) = twin["footprint"], piece["footprint"]
        x0, y0 = min(ax, bx), min(ay, by)
        x1 = max(ax + a.shape[2], bx + b.shape[2])
        y1 = max(ay + a.shape[1], by + b.shape[1])
        union = np.zeros((a.shape[0], y1 - y0, x1 - x0), np.float32)
        union[:, ay - y0 : ay - y0 + a.shape[1], ax - x0 : ax - x0 + a.shape[2]] += a
        union[:, by - y0 : by - y0 + b.shape[1], bx - x0 : bx - x0 + b.shape[2]] += b
        twin["footprint"] = (x0, y0, union)


def _brightness(row: dict) -> float:
    """A galaxy's summed flux over the bands with data (a saturated galaxy has NaN fluxes in
    the bands where its light is missing)."""
    return float(np.nansum([v for key, v in row.items()
                            if key.startswith("flux_") and "err" not in key]))


def _twin(rows: list[dict], group: _Group, row: dict, size_factor: float | None) -> dict | None:
    """The group's kept galaxy of which ``row`` is a piece, if any: the first one centred on the
    same hole (:func:`_holes`: the pieces of a saturated core, whose ring of light the peel
    models as several galaxies); else (with a ``size_factor``) the nearest brighter one (summed
    flux) closer than :data:`DUPLICATE_RADIUS`, or than ``size_factor`` times its size
    (``sqrt((mu20 + mu02) / 2)``: a bright galaxy's core error, modelled apart by a later
    step, lies within it)."""
    if row.get("_hole", 0) > 0:
        for index in group.rows:
            if rows[index].get("_hole", 0) == row["_hole"]:
                return rows[index]
    if size_factor is None:
        return None
    brightness = _brightness(row)
    best, best_distance = None, np.inf
    for index in group.rows:
        other = rows[index]
        distance = float(np.hypot(other["x"] - row["x"], other["y"] - row["y"]))
        reach = DUPLICATE_RADIUS
        if _brightness(other) > brightness:
            size = np.sqrt(max(0.0, (other["mu20"] + other["mu02"]) / 2))
            reach = max(reach, size_factor * size)
        if distance < reach and distance < best_distance:
            best, best_distance = other, distance
    return best


def catalog_columns(bands: tuple[str, ...]) -> list[str]:
    """The catalog's columns, in order (``ra, dec`` only with a WCS)."""
    return [
        "id", "x", "y", "ra", "dec",
        *[f"flux_{b}" for b in bands], *[f"flux_err_{b}" for b in bands], "snr",
        "mu20", "mu02", "mu11", "blend_id", "n_in_blend", "quality", *FLAGS,
    ]


_DTYPES = {"x": np.float64, "y": np.float64, "snr": np.float32, "mu20": np.float32, "mu02": np.float32,
           "mu11": np.float32, "blend_id": np.int64, "n_in_blend": np.int16,
           "quality": np.int16, **dict.fromkeys(FLAGS, bool)}


def _empty_rows(bands) -> dict[str, np.ndarray]:
    out = {key: np.zeros(0, dtype) for key, dtype in _DTYPES.items()}
    for band in bands:
        out[f"flux_{band}"] = np.zeros(0, np.float64)
        out[f"flux_err_{band}"] = np.zeros(0, np.float64)
    return out


def _rows_to_columns(rows: list[dict], bands) -> dict[str, np.ndarray]:
    out = _empty_rows(bands)
    if not rows:
        return out
    if "footprint" in rows[0]:
        out["footprint"] = np.empty(len(rows), dtype=object)
        out["footprint"][:] = [r["footprint"] for r in rows]
    for key in out:
        if key == "footprint":
            continue
        if key == "n_in_blend":
            out[key] = np.zeros(len(rows), np.int16)
            continue
        out[key] = np.asarray([r.get(key, False) for r in rows], dtype=out[key].dtype)
    return out


def merge_tiles(results: list[TileResult], bands: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One catalog from the tiles' rows: sorted by ``(y, x)``, ``id`` from 1, and ``blend_id``
    renumbered from 1 in order of first appearance."""
    parts = [r.rows for r in results]
    columns = _empty_rows(bands)
    if any("footprint" in p for p in parts):
        columns["footprint"] = np.empty(0, dtype=object)
        for p in parts:
            p.setdefault("footprint", np.empty(0, dtype=object))
    if parts:
        columns = {key: np.concatenate([p[key] for p in parts]) for key in columns}
    order = np.lexsort((columns["x"], columns["y"]))
    columns = {key: value[order] for key, value in columns.items()}
    _, first, inverse = np.unique(columns["blend_id"], return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
    columns["blend_id"] = rank[inverse] if len(first) else columns["blend_id"]
    columns["id"] = np.arange(1, len(order) + 1, dtype=np.int64)
    return columns
