"""One small end-to-end run of the whole tool through its command line.

catalog -> simulate (deblender, classifier, FITS test set) -> train phase 1 (both networks) ->
train phase 2 -> export (TF Serving layout) -> run (FITS in, FITS out) -> evaluate (report).
Everything is real (BTK renderings, trained tiny networks, a SavedModel) and tiny.
"""

from __future__ import annotations

import json

import numpy as np
from astropy.io import fits
from click.testing import CliRunner
from tfdeblend.cli.main import cli


def invoke(args: list[str]) -> str:
    """Run one ``tfdeblend`` command; fail the test with its output when it fails."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"tfdeblend {' '.join(map(str, args))}\n{result.output}"
    return result.output


def test_simulate_train_export_run_evaluate(tmp_path):
    cat = tmp_path / "cat.fits"
    invoke(["catalog", "--area", "0.01", "--seed", "5", "--out", cat])
    assert cat.exists()

    data = tmp_path / "data"
    common = ["--catalog", cat, "--quiet", "--jobs", "1"]
    invoke(["simulate", "deblender", "--count", 16, "--seed", 1, "--out", data / "deb", *common])
    invoke(["simulate", "classifier", "--count", 16, "--seed", 2, "--out", data / "cls", *common])
    invoke(["simulate", "test", "--n-gal", 2, "--count", 4, "--format", "fits", "--seed", 3,
            "--out", data / "test", *common])
    assert (data / "test" / "blends.fits").exists() and (data / "test" / "truth.fits").exists()

    runs = tmp_path / "runs"
    quick = ["--preset", "tiny", "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 4,
             "--validation-fraction", 0]
    invoke(["train", "--phase", 1, "--net", "deblender", data / "deb", "--out", runs / "rdn",
            "--learning-rate", "1e-3", *quick])
    invoke(["train", "--phase", 1, "--net", "classifier", data / "cls", "--out", runs / "vgg",
            "--learning-rate", "1e-2", *quick])
    invoke(["train", "--phase", 2, data / "deb", "--deblender", runs / "rdn", "--classifier",
            runs / "vgg", "--out", runs / "joint", *quick])
    for name in ("deblender.keras", "classifier.keras", "config.yaml"):
        assert (runs / "joint" / name).exists(), name

    model = tmp_path / "models" / "e2e"
    invoke(["export", runs / "joint", "--out", model])
    assert (model / "1" / "saved_model.pb").exists()

    out = tmp_path / "deblended.fits"
    invoke(["run", data / "test" / "blends.fits", "-o", out, "--model", model, "--quiet",
            "--preview", tmp_path / "preview"])
    with fits.open(data / "test" / "blends.fits") as hdul:
        blends = hdul[0].data.astype(np.float64)
    with fits.open(out) as hdul:
        components = hdul["COMPONENTS"].data.astype(np.float64)
        residual = hdul["RESIDUAL"].data.astype(np.float64)
        assert len(hdul["BLENDS"].data) == 4
        assert hdul["COMPONENTS"].header["BUNIT"] == "electron"
    assert components.shape[0] == 4 and components.shape[2:] == blends.shape[1:]
    # components + residual == input, in the input's units
    np.testing.assert_allclose(components.sum(axis=1) + residual, blends,
                               atol=1e-3 * np.abs(blends).max())
    assert any((tmp_path / "preview").glob("*.png"))

    report = tmp_path / "report"
    invoke(["evaluate", data / "test", "--out", report, "--model", model, "--quiet"])
    assert (report / "report.md").exists()
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics
