"""Shared pieces of the inference tests (test_export, test_run, test_btk_adapter).

Uses the project's fixtures when they exist (``fits_testset``: real BTK stamps;
``tiny_deblender_run`` / ``tiny_classifier_run``: tiny trained runs) and otherwise builds the
same kind of thing here: the ``tiny`` preset networks trained for a few steps and saved as a real
run directory with :func:`tfdeblend.training.rundir.save_run`, on analytic 2-galaxy blends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

BANDS = ("g", "r", "i")
_CACHE: dict = {}


def gaussian_blends(n: int, size: int = 80, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Analytic 2-galaxy blends with LSST-like noise, channels last (N, H, W, C), electrons."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size, bands), "float32")
    for i in range(n):
        for _ in range(2):
            x0, y0 = rng.uniform(30, 50, 2)
            sigma = rng.uniform(2, 5)
            amp = rng.uniform(2000, 20000)
            g = amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
            out[i] += g[..., None] * rng.uniform(0.5, 1.5, bands)
    return out + rng.normal(0, 300, out.shape).astype("float32")


def blend_images(request, n: int = 8) -> np.ndarray:
    """Real BTK stamps (N, 80, 80, 3) from the data fixture when available."""
    if "images" in _CACHE:
        return _CACHE["images"][:n]
    try:
        path = request.getfixturevalue("fits_testset")
    except pytest.FixtureLookupError:
        images = gaussian_blends(max(n, 8))
    else:
        from tfdeblend.data import load_testset

        images = load_testset(path)["blend"].astype("float32")
    _CACHE["images"] = images
    return images[:n]


def write_blends_fits(path, images_nhwc: np.ndarray, bands=BANDS, bunit="electron", **header):
    """Write a blends FITS file like ``tfdeblend simulate --format fits`` does."""
    hdr = fits.Header()
    if bands is not None:
        hdr["BANDS"] = ",".join(bands)
    if bunit is not None:
        hdr["BUNIT"] = bunit
    for key, value in header.items():
        hdr[key] = value
    data = np.transpose(np.asarray(images_nhwc, "float32"), (0, 3, 1, 2))
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return Path(path)


def _train_tiny_run(run_dir: Path, images: np.ndarray) -> Path:
    import keras

    from tfdeblend.models.classifier import build_classifier
    from tfdeblend.models.presets import get_classifier_config, get_rdn_config
    from tfdeblend.models.rdn import build_rdn
    from tfdeblend.normalize import normalize
    from tfdeblend.training.config import TrainConfig
    from tfdeblend.training.rundir import save_run

    keras.utils.set_random_seed(0)
    rdn_config = get_rdn_config("tiny", channels=3, stamp_size=80)
    cls_config = get_classifier_config("tiny", channels=3, stamp_size=80)
    deblender, classifier = build_rdn(rdn_config), build_classifier(cls_config)
    x, _ = normalize(images)
    x = np.asarray(x)
    deblender.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    deblender.fit(x, 0.5 * x, batch_size=4, epochs=1, steps_per_epoch=2, verbose=0)
    classifier.compile(
        optimizer=keras.optimizers.SGD(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    labels = np.full(len(x), 2)
    classifier.fit(x, labels, batch_size=4, epochs=1, steps_per_epoch=2, verbose=0)
    return save_run(
        run_dir,
        {"deblender": deblender, "classifier": classifier},
        TrainConfig(phase=2, net="joint", preset="tiny", batch_size=4, epochs=1),
        {"deblender": rdn_config, "classifier": cls_config},
        dataset_manifest={"bands": list(BANDS), "stamp_size": 80},
    )


def tiny_runs(request, tmp_path_factory) -> tuple[Path, Path]:
    """(deblender run dir, classifier run dir) of tiny trained networks."""
    if "runs" in _CACHE:
        return _CACHE["runs"]
    try:
        runs = (
            Path(request.getfixturevalue("tiny_deblender_run")),
            Path(request.getfixturevalue("tiny_classifier_run")),
        )
    except pytest.FixtureLookupError:
        run = _train_tiny_run(tmp_path_factory.mktemp("run") / "joint", blend_images(request))
        runs = (run, run)
    _CACHE["runs"] = runs
    return runs


def exported_model(request, tmp_path_factory) -> Path:
    """A model base directory with version 1 exported from the tiny runs."""
    if "model" in _CACHE:
        return _CACHE["model"]
    from tfdeblend.export import export_model

    deblender_run, classifier_run = tiny_runs(request, tmp_path_factory)
    base = tmp_path_factory.mktemp("models") / "tiny"
    export_model(
        None, base, deblender_run=deblender_run, classifier_run=classifier_run, max_iterations=4
    )
    _CACHE["model"] = base
    return base
