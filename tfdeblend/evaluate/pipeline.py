"""The evaluation pipeline: test sets and a model in, a report directory out.

:func:`evaluate` (what ``tfdeblend evaluate`` runs) loads the test sets and the model and calls
:func:`evaluate_loaded`, which for each test set

1. measures the sky noise (:func:`analysis.sky_noise`),
2. runs the model over the test set once (:func:`deblend_testset`, batch by batch), keeping the
   catalog of the flux-conserving components, the image metrics and what the Fig. 13 gallery
   shows (the first components and the residual),
3. runs the chosen baselines (:data:`tfdeblend.evaluate.baselines.BASELINES`),
4. computes the metrics (:mod:`tfdeblend.evaluate.analysis`) and draws the figures
   (:mod:`tfdeblend.evaluate.figures`),

then renders ``report.md`` and ``metrics.json`` (:mod:`tfdeblend.evaluate.report`). The report
directory is built in a temporary directory and renamed when complete:

- ``report.md``: Table I (quality fractions), Table II (PSNR / SSIM per deblend index, paper and
  BTK definitions), flux and moment recovery, the truth-based metrics of tfdeblend and each
  baseline side by side, the paper's numbers beside ours, links to the figures;
- ``metrics.json``: every number of the report (``NaN`` written as ``null``);
- PNG figures ``<testset>_fig6_flux_x.png`` ... (see :data:`figures.FIGURES`).

When the test sets were drawn under different observing conditions (read from the conditions
stored with their stamps, :func:`analysis.conditions_summary`), the report opens with the
conditions grid (:func:`analysis.conditions_grid`: one row per test set, every method side by
side, the issue's targets) and ``conditions.png`` (:func:`figures.conditions_figure`);
``metrics.json`` holds it as ``conditions_grid``.

**Simulated fields** (directories of ``tfdeblend simulate field``: ``field.fits`` +
``truth.fits``) go to :func:`evaluate_fields` instead: per field, tfdeblend deblends the whole
image once (:func:`tfdeblend.run.run_image`, output ``<field>_tfdeblend.fits`` in the report
directory), each baseline runs on the same image (:meth:`Baseline.run_image`), and the catalogs
are scored against the true galaxies (:mod:`tfdeblend.evaluate.fields`). Stamp test sets and
fields are not mixed in one report: :func:`evaluate` refuses a mix with one line.

This is the only module of :mod:`tfdeblend.evaluate` that runs a model or a baseline or writes
files; analysis, figures and report never import it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tfdeblend.errors import TfdeblendError
from tfdeblend.evaluate import analysis, figures, report
from tfdeblend.evaluate import baselines as bl
from tfdeblend.evaluate import fields as fd
from tfdeblend.evaluate.match import DEFAULT_MAX_SEP
from tfdeblend.peel_config import POST_PEEL_COUNTS
from tfdeblend.utils import atomic_dir, check_output_path

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


def testset_names(dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Report names of test-set directories: the directory name, made unique with ``_2``, ..."""
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
# inference


def _first_components(components: np.ndarray, k: int) -> np.ndarray:
    """``components[:, :k]``, zero padded to ``k`` components."""
    components = np.asarray(components)
    first = components[:, :k]
    if first.shape[1] < k:
        pad = [(0, 0)] * first.ndim
        pad[1] = (0, k - first.shape[1])
        first = np.pad(first, pad)
    return first


def _known_conditions(model, testset: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """What a user of a conditioned model knows of each stamp: its PSF FWHM in pixels (from the
    test set's conditions). The noise is left to the model (estimated from the stamp)."""
    if not getattr(model, "conditioned", False) or "psf_fwhm" not in testset:
        return {}
    fwhm = np.asarray(testset["psf_fwhm"], np.float32)[start:stop]
    scale = np.asarray(testset["pixel_scale"], np.float32)[start:stop]
    return {"psf_fwhm": fwhm / scale[:, None]}


def deblend_testset(
    model, testset: dict[str, np.ndarray], batch_size: int = 32, progress: bool = True
) -> dict[str, Any]:
    """Run the model over a test set once, batch by batch, and keep what the report needs.

    Each stamp goes through ``model.deblend`` exactly once (one call per batch of
    ``batch_size`` stamps). The outputs are reduced batch by batch to the catalog of the
    flux-conserving components, the image metrics of the noiseless components and the arrays
    the Fig. 13 gallery shows.

    Args:
        model: an object with ``deblend(images (N, H, W, C), batch_size) -> dict``
            (:class:`tfdeblend.export.DeblendModel`); a conditioned model is also given each
            stamp's PSF FWHM (``psf_fwhm``) from the test set's conditions.
        testset: the test-set dict.
        batch_size: stamps per model call.
        progress: a tqdm bar.

    Returns:
        ``quality (N,)``, ``n_components (N,)``, ``post_peel`` (blends changed by the post-peel
        steps: ``split``, ``recovered``, ``merged``, ``pruned``), ``img`` (:func:`analysis.image_metrics`),
        ``catalog`` (:func:`baselines.catalog_from_components` of ``conserved``) and
        ``gallery`` (``components (N, 2, H, W, C)``, the first two in peel order, zero padded;
        ``residual (N, H, W, C)``; ``n_components``).
    """
    blends = np.asarray(testset["blend"], dtype=np.float32)
    n_stamps = len(blends)
    quality = np.zeros(n_stamps, dtype=np.int64)
    n_comp = np.zeros(n_stamps, dtype=np.int64)
    # blends changed by the post-peel steps, and the components merged away
    added = dict.fromkeys(POST_PEEL_COUNTS, 0)
    img_parts, cat_parts, comp_parts, residual_parts = [], [], [], []
    for start in tqdm(
        range(0, n_stamps, batch_size), desc="deblend", unit="batch", disable=not progress
    ):
        part = model.deblend(blends[start : start + batch_size], batch_size=batch_size,
                             **_known_conditions(model, testset, start, start + batch_size))
        stop = start + len(part["quality"])
        quality[start:stop] = part["quality"]
        n_comp[start:stop] = part["n_components"]
        for key in added:
            added[key] += int(np.sum(part.get(key, 0)))
        sub = {k: np.asarray(testset[k])[start:stop] for k in ("isolated", "x", "y", "n_gal")}
        img_parts.append(analysis.image_metrics(part["components"], part["n_components"], sub))
        # photometry and moments from the flux-conserving components; PSNR/SSIM above compare
        # the RDN's noiseless models with the noiseless truth
        cat_parts.append(bl.catalog_from_components(
            part.get("conserved", part["components"]), part["n_components"]))
        comp_parts.append(_first_components(part["components"], figures.GALLERY_COMPONENTS))
        residual_parts.append(np.asarray(part["residual"]))
    return {
        "quality": quality,
        "n_components": n_comp,
        "post_peel": added,
        "img": {k: analysis.concat_padded([p[k] for p in img_parts]) for k in img_parts[0]},
        "catalog": {k: analysis.concat_padded([p[k] for p in cat_parts]) for k in cat_parts[0]},
        "gallery": {"components": np.concatenate(comp_parts),
                    "residual": np.concatenate(residual_parts), "n_components": n_comp},
    }


# --------------------------------------------------------------------------------------------
# the report


def _write_figures(tmp: Path, name: str, testset, methods, deblended, bands, gallery_size,
                   progress) -> list[tuple[str, str]]:
    blocks: list[tuple[str, str]] = []
    steps = tqdm(total=len(figures.FIGURES), desc="figures", disable=not progress)
    for key, fig in figures.testset_figures(testset, methods, deblended["quality"],
                                            deblended["gallery"], bands, gallery_size):
        suffix, caption = figures.FIGURES[key]
        fname = f"{name}_{suffix}"
        figures.save_figure(fig, tmp / fname)
        blocks.append((fname, caption))
        steps.update()
    steps.close()
    return blocks


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
        baselines: names in :data:`tfdeblend.evaluate.baselines.BASELINES`.
        batch_size: blends per model call.
        max_sep: matching radius, pixels.
        overwrite: replace an existing ``out_dir``.
        progress: tqdm bars.
        gallery_size: stamps per failure gallery.

    Returns:
        The metrics dict also written to ``metrics.json``.

    Raises:
        TfdeblendError: existing output, unknown or unavailable baseline, no test set, a test set
            that does not fit the model, bad batch size.
    """
    out_dir = check_output_path(out_dir, overwrite)
    chosen = {name: bl.get_baseline(name) for name in baselines}
    if not testsets:
        raise TfdeblendError("no test set given")
    for name, ts in testsets.items():
        check_compatible(ts, model.bands, model.stamp_size, name)
    if batch_size < 1:
        raise TfdeblendError(f"batch size must be >= 1, got {batch_size}")

    bands = list(model.bands)
    notes: list[str] = []
    results: dict[str, Any] = {
        "model": {"name": str(getattr(model, "name", "model")), "bands": bands,
                  "stamp_size": int(model.stamp_size), "path": str(getattr(model, "path", ""))},
        "definitions": analysis.definitions(max_sep),
        "paper": analysis.paper_numbers(),
        "baselines": list(baselines),
        "testsets": {},
        "notes": notes,
    }
    with atomic_dir(out_dir) as tmp:
        figure_blocks: dict[str, list[tuple[str, str]]] = {}
        for name, ts in testsets.items():
            sky_std, floor = analysis.sky_noise(ts)
            if floor is not None:
                notes.append(f"{name}: no sky noise measurable (noiseless test set); the baselines "
                             f"use a noise floor of {floor:.3g}")
            deblended = deblend_testset(model, ts, batch_size, progress)
            methods = {"tfdeblend": analysis.analyze_catalog(deblended["catalog"], ts, sky_std,
                                                             max_sep)}
            blends = np.asarray(ts["blend"], dtype=np.float32)
            for base, baseline in chosen.items():
                cat = baseline.run(blends, sky_std, bands, progress=progress)
                methods[base] = analysis.analyze_catalog(cat, ts, sky_std, max_sep)
            results["testsets"][name] = analysis.testset_summary(
                ts, bands, sky_std, deblended["quality"], deblended["n_components"],
                deblended["img"], deblended["post_peel"], methods,
            )
            figure_blocks[name] = _write_figures(tmp, name, ts, methods, deblended, bands,
                                                 gallery_size, progress)
        results["figures"] = {n: [f for f, _ in blocks] for n, blocks in figure_blocks.items()}
        conditions = [ts["conditions"] for ts in results["testsets"].values()]
        if analysis.conditions_differ(conditions):
            grid = analysis.conditions_grid(results["testsets"], bands)
            fname = figures.CONDITIONS_FIGURE[0]
            figures.save_figure(figures.conditions_figure(grid), tmp / fname)
            grid["figure"] = fname
            results["conditions_grid"] = grid
        (tmp / "metrics.json").write_text(report.render_json(results))
        (tmp / "report.md").write_text(report.render_markdown(results, figure_blocks))
    return results


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
            the 2-galaxy and 3-galaxy sets; or simulated field directories (``field.fits`` +
            ``truth.fits``), evaluated by :func:`evaluate_fields` (not both kinds at once).
        model_dir: exported model (``None``: :func:`tfdeblend.export.default_model_dir`).
        out_dir: report directory: ``report.md``, ``metrics.json``, PNG figures.
        baselines: names in :data:`tfdeblend.evaluate.baselines.BASELINES` (``sep``,
            ``source-extractor``).
        batch_size: blends per model call.
        max_sep: matching radius, pixels (stamp test sets; fields match within
            :data:`fields.MATCH_RADIUS` arcsec).
        overwrite: replace an existing ``out_dir``.
        progress: tqdm bars.

    Returns:
        The metrics dict (also in ``metrics.json``).

    Raises:
        TfdeblendError: missing/mismatched test set or model, stamp test sets mixed with
            fields, existing output, unknown or unavailable baseline, bad option.
    """
    check_output_path(out_dir, overwrite)
    if not testset_dirs:
        raise TfdeblendError("no test set given")
    kinds = [is_field_dir(d) for d in testset_dirs]
    if any(kinds):
        if not all(kinds):
            field = testset_dirs[kinds.index(True)]
            other = testset_dirs[kinds.index(False)]
            raise TfdeblendError(
                f"{field} is a simulated field and {other} is not: evaluate stamp test sets and "
                "fields (field.fits + truth.fits) in separate reports"
            )
        return evaluate_fields(testset_dirs, model_dir, out_dir, baselines=baselines,
                               batch_size=batch_size, overwrite=overwrite, progress=progress)
    for name in baselines:  # before the (slow) loading
        bl.get_baseline(name)
    from tfdeblend.data import load_testset
    from tfdeblend.export import load_model

    testsets = {}
    for name, path in zip(testset_names(testset_dirs), testset_dirs):
        if not Path(path).exists():
            raise TfdeblendError(f"test set {path} does not exist")
        testsets[name] = load_testset(path)
    model = load_model(model_dir)
    return evaluate_loaded(testsets, model, out_dir, baselines=baselines, batch_size=batch_size,
                           max_sep=max_sep, overwrite=overwrite, progress=progress)


# --------------------------------------------------------------------------------------------
# whole fields

#: the files that make a directory a simulated field
FIELD_FILES: tuple[str, ...] = ("field.fits", "truth.fits")
#: side (pixels) of the field cut-out figure
CUTOUT_SIZE = 128


def is_field_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a simulated field directory (``field.fits`` + ``truth.fits``)."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in FIELD_FILES)


def load_truth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The ``TRUTH`` table of a field's ``truth.fits`` as a dict of numpy arrays."""
    from astropy.table import Table

    try:
        table = Table.read(Path(path), hdu="TRUTH")
    except (OSError, KeyError, ValueError) as err:
        raise TfdeblendError(f"cannot read the TRUTH table of {path}: {err}") from None
    return {name: np.asarray(table[name]) for name in table.colnames}


def _open_field(path: Path, bands: Sequence[str]):
    """``(ImageSource, truth dict, pixel scale, header text, PSF)`` of a field, checked.

    PSF: the ``--psf`` values a user of a conditioned model would give (each band's FWHM in
    arcsec from the field's ``PSF_<BAND>`` cards, as the stamp evaluation gives each stamp's),
    or ``None`` for a field written without them (the model's nominal PSF is used)."""
    from tfdeblend.field import FieldConfig
    from tfdeblend.image_io import open_image, sky_to_pixel_scale

    source = open_image(path / "field.fits", tuple(bands))
    scale = sky_to_pixel_scale(source)
    if scale is None:
        raise TfdeblendError(f"{path / 'field.fits'} has no PIXSCALE keyword or WCS: the "
                             "matching radius (arcsec) needs the pixel scale")
    truth = load_truth(path / "truth.fits")
    fd.field_summary(truth, scale, source.shape)  # the reference band's magnitudes are there
    missing = [f"flux_{b}" for b in bands if f"flux_{b}" not in truth]
    if missing:
        raise TfdeblendError(f"{path / 'truth.fits'} has no column(s) {', '.join(missing)}")
    header = source.header
    described = ", ".join(f"{key.lower()} {header[key]}"
                          for key in ("SURVEY", "SEED", "PSFSCALE", "EXPSCALE") if key in header)
    cards = [FieldConfig.psf_card(b) for b in bands]
    psf = (",".join(f"{float(header[c]):g}" for c in cards),) if all(
        c in header for c in cards) else None
    return source, truth, scale, described, psf


def _read_catalog(path: Path) -> dict[str, np.ndarray]:
    from astropy.table import Table

    table = Table.read(path, hdu="CATALOG")
    return {name: np.asarray(table[name]) for name in table.colnames}


def _cutout(source, run_path: Path, truth, masks) -> dict[str, Any]:
    """The arrays of the cut-out figure, read from the input and the run's output (no
    inference): the window of :data:`CUTOUT_SIZE` px holding the most gold galaxies."""
    from astropy.io import fits

    gold = masks["gold"]  # fields.truth_masks
    window = fd.busiest_window(truth["x"][gold], truth["y"][gold], source.shape, CUTOUT_SIZE)
    y0, y1, x0, x1 = window
    image, variance, missing = source.read(y0, y1, x0, x1)
    with fits.open(run_path, memmap=True) as hdul:
        model = np.array(hdul["MODEL"].data[:, y0:y1, x0:x1], dtype=np.float32)
        residual = np.array(hdul["RESIDUAL"].data[:, y0:y1, x0:x1], dtype=np.float32)
    if variance is None:
        from tfdeblend.scene import noise_sigma

        sigma = np.broadcast_to(noise_sigma(image, missing)[:, None, None], image.shape)
    else:
        sigma = np.sqrt(variance)
    return {"image": np.where(missing, np.nan, image), "model": model, "residual": residual,
            "sigma": np.where(missing, np.nan, sigma), "window": window,
            "truth": {"x": truth["x"], "y": truth["y"], "gold": gold, "star": masks["star"]}}


def evaluate_fields(
    field_dirs: Sequence[str | os.PathLike],
    model_dir,
    out_dir: str | os.PathLike,
    baselines: Sequence[str] = ("sep",),
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    scene=None,
) -> dict[str, Any]:
    """Score whole-image deblending on simulated fields against baselines; write the report.

    For each field (a ``tfdeblend simulate field`` directory): tfdeblend deblends the whole
    image once with :func:`tfdeblend.run.run_image` (its output FITS, ``MODEL``, ``RESIDUAL``,
    ``CATALOG``, is kept as ``<field>_tfdeblend.fits`` in the report directory); each baseline
    runs on the same image with :meth:`Baseline.run_image`; every catalog is scored against
    the true galaxies (:func:`fields.analyze_field_catalog`); the figures are drawn from these
    results and the run's output file. Written atomically: ``report.md``, ``metrics.json``,
    ``<field>_*.png``, ``<field>_tfdeblend.fits``.

    Args:
        field_dirs: field directories (``field.fits`` + ``truth.fits``).
        model_dir: exported model directory, a loaded
            :class:`tfdeblend.export.DeblendModel`, or ``None`` for the default model.
        out_dir: the report directory.
        baselines: names in :data:`tfdeblend.evaluate.baselines.BASELINES` that run on whole
            images.
        batch_size: stamps per model call.
        overwrite: replace an existing ``out_dir``.
        progress: progress bars.
        scene: a :class:`tfdeblend.scene.SceneConfig` for tfdeblend (default options when
            ``None``).

    Returns:
        The metrics dict (also in ``metrics.json``): ``kind = "fields"``, ``model``,
        ``definitions``, ``targets``, ``baselines``, ``baseline_settings``, ``fields`` (name ->
        ``field``, ``path``, ``header``, ``tfdeblend_run``, ``methods`` (name -> metrics),
        ``targets`` (method -> target -> met)), ``notes``, ``figures``.

    Raises:
        TfdeblendError: no field, a directory that is not a field, a field without the model's
            bands, pixel scale or truth columns, an unknown baseline or one that does not run on
            whole images, existing output.
    """
    from tfdeblend.export import DeblendModel, load_model, read_model_metadata
    from tfdeblend.run import run_image

    out_dir = check_output_path(out_dir, overwrite)
    if not field_dirs:
        raise TfdeblendError("no field given")
    if int(batch_size) < 1:
        raise TfdeblendError(f"batch size must be >= 1, got {batch_size}")
    chosen = {name: bl.get_baseline(name) for name in baselines}
    for name, baseline in chosen.items():
        if not baseline.runs_on_images:
            raise TfdeblendError(f"baseline {name} does not run on whole images")
    for path in field_dirs:
        if not is_field_dir(path):
            raise TfdeblendError(f"{path} is not a simulated field directory (field.fits + "
                                 "truth.fits)")
    # the fields are checked against the model's bands before TensorFlow loads
    bands = list(model_dir.bands if isinstance(model_dir, DeblendModel)
                 else read_model_metadata(model_dir)[1]["bands"])
    opened = {name: _open_field(Path(path), bands)
              for name, path in zip(testset_names(field_dirs), field_dirs)}
    model = model_dir if isinstance(model_dir, DeblendModel) else load_model(model_dir)
    notes: list[str] = []
    results: dict[str, Any] = {
        "kind": "fields",
        "model": {"name": str(getattr(model, "name", "model")), "bands": bands,
                  "stamp_size": int(model.stamp_size), "path": str(getattr(model, "path", ""))},
        "definitions": fd.field_definitions(),
        "targets": {key: {"label": label, "target": text}
                    for key, (label, text) in fd.TARGETS.items()},
        "baselines": list(baselines),
        "baseline_settings": {name: b.image_description for name, b in chosen.items()},
        "fields": {},
        "notes": notes,
    }
    if fd.SCATTER_REFERENCE not in chosen:
        notes.append(f"the r-band flux target compares with {fd.SCATTER_REFERENCE}, which was "
                     "not run: not judged")
    figure_blocks: dict[str, list[tuple[str, str]]] = {}
    with atomic_dir(out_dir) as tmp:
        for (name, (source, truth, scale, described, psf)), path in zip(opened.items(),
                                                                         field_dirs):
            run_name = f"{name}_tfdeblend.fits"
            run = run_image(source.paths[0], tmp / run_name, model=model, scene=scene,
                            batch_size=batch_size, progress=progress, psf=psf)
            catalogs = {"tfdeblend": _read_catalog(tmp / run_name)}
            seconds = {"tfdeblend": run["seconds"]}
            for base, baseline in chosen.items():
                started = time.perf_counter()
                catalogs[base] = baseline.run_image(source, progress=progress)
                seconds[base] = time.perf_counter() - started
            methods = {m: fd.analyze_field_catalog(truth, cat, bands, scale)
                       for m, cat in catalogs.items()}
            summaries = {m: {**result["summary"], "seconds": seconds[m]}
                         for m, result in methods.items()}
            results["fields"][name] = {
                "path": str(path),
                "header": described,
                "field": fd.field_summary(truth, scale, source.shape),
                "tfdeblend_run": {key: run[key] for key in ("n_objects", "n_blends", "n_stamps",
                                                            "quality", "flags", "seconds")}
                | {"output": run_name},
                "methods": summaries,
                "targets": fd.field_targets(summaries, bands),
            }
            cut = _cutout(source, tmp / run_name, truth, fd.truth_masks(truth, scale))
            blocks = []
            for key, fig in figures.field_figures(methods, bands, cut):
                suffix, caption = figures.FIELD_FIGURES[key]
                fname = f"{name}_{suffix}"
                figures.save_figure(fig, tmp / fname)
                blocks.append((fname, caption))
            figure_blocks[name] = blocks
        results["figures"] = {n: [f for f, _ in blocks] for n, blocks in figure_blocks.items()}
        (tmp / "metrics.json").write_text(report.render_json(results))
        (tmp / "report.md").write_text(report.render_fields_markdown(results, figure_blocks))
    return results
