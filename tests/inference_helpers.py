"""Shared pieces of the inference tests (test_export, test_run, test_btk_adapter).

Built on the project's fixtures: ``fits_testset`` (real BTK stamps) and
``tiny_deblender_run`` / ``tiny_classifier_run`` (tiny trained runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

BANDS = ("g", "r", "i")
_CACHE: dict = {}


def blend_images(request, n: int = 8) -> np.ndarray:
    """Real BTK stamps (N, 80, 80, 3) from the ``fits_testset`` data fixture."""
    if "images" not in _CACHE:
        from tfdeblend.data import load_testset

        path = request.getfixturevalue("fits_testset")
        _CACHE["images"] = load_testset(path)["blend"].astype("float32")
    return _CACHE["images"][:n]


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


def tiny_runs(request) -> tuple[Path, Path]:
    """(deblender run dir, classifier run dir): the tiny trained runs of fixtures_models.py."""
    return (
        Path(request.getfixturevalue("tiny_deblender_run")),
        Path(request.getfixturevalue("tiny_classifier_run")),
    )


def tiny_peel():
    """The peel of :func:`exported_model`: the shipped one with K = 4, ``prior_three`` 0 (the
    tiny classifier is barely trained; with the shipped prior it counts some of the test
    stamps 0 instead of 3 and leaves them unpeeled, which the hot-pixel test needs peeled)."""
    from tfdeblend.peel_config import PeelConfig

    # the separated split off: the tiny RDN's models are noise-like with many peaks, so it
    # cuts them anywhere and the sweeps then amplify the pieces (tested in test_deblend.py)
    return PeelConfig(max_iterations=4, prior_three=0.0, split_distance=0.0)


def exported_model(request, tmp_path_factory) -> Path:
    """A model base directory with version 1 exported from the tiny runs."""
    if "model" in _CACHE:
        return _CACHE["model"]
    from tfdeblend.export import export_model

    deblender_run, classifier_run = tiny_runs(request)
    base = tmp_path_factory.mktemp("models") / "tiny"
    export_model(
        None, base, deblender_run=deblender_run, classifier_run=classifier_run, peel=tiny_peel(),
    )
    _CACHE["model"] = base
    return base
