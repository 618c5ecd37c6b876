"""SavedModel export in the TF Serving layout (tfdeblend.export, ``tfdeblend export``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from inference_helpers import (
    blend_images,
    exported_model,
    tiny_peel,
    tiny_runs,
    write_blends_fits,
)
from tfdeblend.cli.main import cli

from tfdeblend.errors import ModelError, TfdeblendError
from tfdeblend.export import (
    default_model_dir,
    export_model,
    load_model,
    next_version,
    rest_request_body,
)
from tfdeblend.peel_config import PeelConfig


@pytest.fixture(scope="module")
def model_dir(request, tmp_path_factory):
    return exported_model(request, tmp_path_factory)


@pytest.fixture(scope="module")
def images(request):
    return blend_images(request, 6)


def test_layout_and_metadata(model_dir):
    version = model_dir / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables").is_dir()
    meta = yaml.safe_load((version / "assets.extra" / "tfdeblend.yaml").read_text())
    assert meta["bands"] == ["g", "r", "i"]
    assert meta["stamp_size"] == 80
    # the peel is stored as one mapping: the shipped peel by default, here with K = 4
    assert meta["peel"] == tiny_peel().to_dict()
    assert PeelConfig.from_metadata(meta) == tiny_peel()
    # each network's training curves travel with the model
    for role in ("deblender", "classifier"):
        history = meta["configs"][f"{role}_train"]["history"]
        assert history["loss"] and all(np.isfinite(history["loss"]))
    assert meta["version"] == 1 and meta["name"] == "tiny"
    assert meta["signatures"] == ["serving_default", "deblend_one", "count"]
    assert meta["configs"]["deblender"]["num_blocks"] >= 1
    for name in ("deblender.keras", "classifier.keras"):
        assert (version / "assets.extra" / name).stat().st_size > 0
    assert next_version(model_dir) == 2
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]  # no temp left


def test_plain_tensorflow_loads_and_serves_every_signature(model_dir, images, tmp_path):
    """TF Serving's view: a fresh interpreter with TensorFlow only (no tfdeblend import). The
    last stamp is the first one with a 1e6 pixel (a cosmic ray): the served peel keeps it out of
    the networks and the components, and gives it back in the residual."""
    hot = images[:1].copy()
    hot[0, 12, 60, 1] = 1e6
    images = np.concatenate([images, hot])
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(model_dir / "1")!r})
        x = tf.constant(np.load({str(tmp_path / "images.npy")!r}))
        out = {{}}
        for name in ("serving_default", "deblend_one", "count"):
            fn = m.signatures[name]
            for key, value in fn(images=x).items():
                out[name + "/" + key] = value.numpy()
        assert not any(k.startswith("tfdeblend") for k in sys.modules), "tfdeblend was imported"
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = dict(np.load(tmp_path / "out.npz"))
    n = len(images)
    assert out["serving_default/components"].shape == (n, 4, 80, 80, 3)
    assert out["serving_default/residual"].shape == (n, 80, 80, 3)
    assert out["serving_default/counts"].shape == (n, 5)
    assert out["serving_default/counts"].dtype == np.int32
    assert out["serving_default/quality"].dtype == np.int32
    assert out["deblend_one/component"].shape == (n, 80, 80, 3)
    assert out["count/probabilities"].shape == (n, 4)
    total = out["serving_default/components"].sum(axis=1) + out["serving_default/residual"]
    scale = np.abs(images[:-1]).max()
    np.testing.assert_allclose(total / scale, images / scale, atol=1e-5)
    assert out["serving_default/outliers"].tolist() == [0] * (n - 1) + [1]
    assert out["serving_default/residual"][-1, 12, 60, 1] > 0.99e6
    for key in ("components", "conserved"):  # as without the pixel (its neighbours' median)
        hot_flux, flux = (out[f"serving_default/{key}"][i].sum() for i in (-1, 0))
        assert flux != 0 and abs(hot_flux - flux) < 0.02 * abs(flux)
        assert np.abs(out[f"serving_default/{key}"][-1]).max() < 2 * scale
    np.testing.assert_array_equal(out["count/count"][-1], out["count/count"][0])
    np.testing.assert_allclose(out["deblend_one/component"][-1] / scale,
                               out["deblend_one/component"][0] / scale, atol=1e-2)
    # the same numbers as the in-process loader and as the Keras networks themselves
    model = load_model(model_dir)
    mine = model.deblend(images, batch_size=4)
    for key in ("components", "residual", "counts", "quality", "outliers"):
        np.testing.assert_allclose(mine[key], out[f"serving_default/{key}"], rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(model.count(images)["count"], out["count/count"])
    first = out["serving_default/counts"][:, 0]
    np.testing.assert_array_equal(first, out["count/count"])


def test_keras_files_and_networks_agree(model_dir, images):
    import keras

    import tfdeblend.models.layers  # noqa: F401
    from tfdeblend.normalize import normalize

    model = load_model(model_dir / "1")
    rdn = keras.saving.load_model(
        model.path / "assets.extra" / "deblender.keras", compile=False, safe_mode=True
    )
    x, scale = normalize(images)
    expected = np.asarray(rdn(x, training=False)) * np.asarray(scale)
    np.testing.assert_allclose(model.deblend_one(images), expected, rtol=1e-4, atol=1e-2)
    # the served peel is the in-process peel of the same networks, refinement included
    from peel_helpers import make_peeler, peel_numpy

    classifier = keras.saving.load_model(
        model.path / "assets.extra" / "classifier.keras", compile=False, safe_mode=True
    )
    assert model.peel_config == tiny_peel()  # the shipped peel, K = 4, no count prior
    local = peel_numpy(make_peeler(rdn, classifier, **model.peel_config.to_dict()), images)
    served = model.deblend(images)
    for key in ("counts", "n_components", "split", "recovered", "merged", "pruned"):
        np.testing.assert_array_equal(served[key], local[key])
    scale = np.abs(images).max()
    np.testing.assert_allclose(served["components"] / scale, local["components"] / scale, atol=1e-4)


def test_versions_and_overwrite(request, tmp_path_factory, tmp_path):
    deblender_run, classifier_run = tiny_runs(request)
    base = tmp_path / "m"
    first = export_model(None, base, deblender_run=deblender_run, classifier_run=classifier_run)
    second = export_model(None, base, deblender_run=deblender_run, classifier_run=classifier_run)
    assert (first.name, second.name) == ("1", "2")
    assert load_model(base).version == 2  # the base dir serves the highest version
    assert load_model(first).version == 1
    with pytest.raises(TfdeblendError, match="already exists"):
        export_model(
            None, base, version=1, deblender_run=deblender_run, classifier_run=classifier_run
        )


def test_export_takes_a_network_from_an_earlier_export(request, model_dir, images, tmp_path):
    """Swap one network of a shipped model: the other comes from the export, with its
    provenance, and the new model peels exactly like one built from the runs."""
    deblender_run, classifier_run = tiny_runs(request)
    old = model_dir / "1"
    for deblender in (model_dir, old / "assets.extra" / "deblender.keras"):
        new = export_model(None, tmp_path / "m", deblender_run=deblender,
                           classifier_run=classifier_run,
                           peel=tiny_peel())
        meta = yaml.safe_load((new / "assets.extra" / "tfdeblend.yaml").read_text())
        old_meta = yaml.safe_load((old / "assets.extra" / "tfdeblend.yaml").read_text())
        assert meta["configs"]["deblender_export"] == str(deblender.resolve())
        assert meta["configs"]["deblender_run"] == old_meta["configs"]["deblender_run"]
        assert meta["configs"]["deblender"] == old_meta["configs"]["deblender"]
        assert meta["configs"]["deblender_train"]["train"] == (
            old_meta["configs"]["deblender_train"]["train"])
        assert meta["configs"]["deblender_train"]["history"] == (
            old_meta["configs"]["deblender_train"]["history"])
    ours, theirs = load_model(new).deblend(images), load_model(old).deblend(images)
    for key in ("components", "counts", "quality"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-3)
    with pytest.raises(ModelError, match="not the classifier of an exported model"):
        export_model(None, tmp_path / "x", deblender_run=model_dir,
                     classifier_run=old / "assets.extra" / "deblender.keras")
    with pytest.raises(ModelError, match="is a file"):
        export_model(None, tmp_path / "y", deblender_run=deblender_run,
                     classifier_run=tmp_path / "m" / "1" / "saved_model.pb")


def test_load_model_errors(tmp_path, model_dir):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model directory"):
        load_model(tmp_path / "empty")
    # a SavedModel that is not ours
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None])])
    tf.saved_model.save(module, str(tmp_path / "foreign" / "1"))
    with pytest.raises(ModelError, match="not a tfdeblend model"):
        load_model(tmp_path / "foreign")
    model = load_model(model_dir)
    with pytest.raises(TfdeblendError, match="batch size must be positive"):
        model.deblend(np.zeros((1, model.stamp_size, model.stamp_size, 3), "float32"), 0)


def test_a_non_finite_peel_option_is_a_clear_error():
    """int(nan) / int(inf) ran before the finiteness check: PeelConfig(max_iterations=nan)
    raised a bare ValueError (OverflowError for inf) instead of TfdeblendError."""
    for value in (float("nan"), float("inf")):
        with pytest.raises(TfdeblendError, match="max_iterations must be finite"):
            PeelConfig(max_iterations=value)


def test_default_model_dir(monkeypatch, model_dir, tmp_path):
    monkeypatch.setenv("TFDEBLEND_MODEL", str(model_dir))
    assert default_model_dir() == model_dir
    assert load_model().bands == ("g", "r", "i")
    monkeypatch.setenv("TFDEBLEND_MODEL", str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="does not exist"):
        default_model_dir()


def test_rest_body_is_accepted_by_the_signature(model_dir, images, tmp_path):
    import tensorflow as tf

    fits_path = write_blends_fits(tmp_path / "blends.fits", images[:2])
    body = json.loads(json.dumps(rest_request_body(fits_path)))  # what goes over the wire
    assert body["signature_name"] == "serving_default"
    assert np.asarray(body["instances"]).shape == (2, 80, 80, 3)
    saved = tf.saved_model.load(str(model_dir / "1"))
    out = saved.signatures[body["signature_name"]](
        images=tf.constant(body["instances"], tf.float32)
    )
    expected = load_model(model_dir).deblend(images[:2])
    np.testing.assert_allclose(out["residual"].numpy(), expected["residual"], rtol=1e-5, atol=1e-2)
    count_body = rest_request_body(fits_path, signature_name="count", first=1)
    assert len(count_body["instances"]) == 1


def test_cli_export(request, tmp_path_factory, tmp_path):
    deblender_run, classifier_run = tiny_runs(request)
    runner = CliRunner()
    out = tmp_path / "cli_model"
    result = runner.invoke(
        cli,
        [
            "export",
            "--deblender",
            str(deblender_run),
            "--classifier",
            str(classifier_run),
            "--out",
            str(out),
            "--peel",
            "paper",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "1" / "saved_model.pb").is_file()
    assert "Exported" in result.output
    paper = load_model(out)  # the paper's peel and count, recorded in the metadata
    assert paper.peel_config == PeelConfig.preset("paper")
    # a negative S/N threshold is refused before anything is written
    result = runner.invoke(cli, ["export", "--deblender", str(deblender_run), "--classifier",
                                 str(classifier_run), "--out", str(tmp_path / "neg"),
                                 "--detect-snr", "-1"])
    assert result.exit_code == 2 and "--detect-snr" in result.output
    assert not (tmp_path / "neg").exists()
    result = runner.invoke(cli, ["export", "--deblender", str(deblender_run), "--classifier",
                                 str(classifier_run), "--out", str(tmp_path / "neg"),
                                 "--merge-radius", "-3"])
    assert result.exit_code == 2 and "--merge-radius" in result.output
    assert not (tmp_path / "neg").exists()
    # again, with an explicit existing version: refused, nothing changed
    args = ["--deblender", str(deblender_run), "--classifier", str(classifier_run)]
    result = runner.invoke(cli, ["export", *args, "--out", str(out), "--version", "1"])
    assert result.exit_code == 1
    assert "already exists" in result.output and "Traceback" not in result.output
    # a missing and a foreign run directory
    result = runner.invoke(cli, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.startswith("Error:")
    assert not (tmp_path / "x").exists()
    (tmp_path / "foreign").mkdir()
    result = runner.invoke(cli, ["export", str(tmp_path / "foreign"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "not a tfdeblend run directory" in result.output
    assert not (tmp_path / "y").exists()


def test_the_shipped_default_model_deblends_rendered_blends(monkeypatch, fits_testset):
    """A fresh clone's default model (saved_models/tfdeblend_cpu) on real rendered 2-galaxy
    BTK blends: it loads (the .keras files with safe_mode), peels, and finds the galaxies."""
    import keras

    import tfdeblend.models.layers  # noqa: F401
    from tfdeblend.data import load_testset

    monkeypatch.delenv("TFDEBLEND_MODEL", raising=False)
    model = load_model()
    assert model.path.parent.name == "tfdeblend_cpu" and model.bands == ("g", "r", "i")
    assert model.peel_config == PeelConfig.preset("shipped")  # read from the model's metadata
    # version 10 on: its networks take the observing conditions, with LSST's PSF as default;
    # version 11 on: its peel keeps single-pixel outliers out of the networks itself
    assert model.conditioned and model.conditions["survey"] == "LSST"
    assert model.removes_outliers
    for name in ("deblender.keras", "classifier.keras"):
        keras.saving.load_model(model.path / "assets.extra" / name, safe_mode=True)
    testset = load_testset(fits_testset)
    images = testset["blend"].astype("float32")
    out = model.deblend(images)
    np.testing.assert_allclose(
        out["components"].sum(axis=1) + out["residual"], images, atol=1e-3 * np.abs(images).max()
    )
    assert (out["n_components"] >= 1).all() and np.median(out["n_components"]) == 2
    # the first component sits on the brighter galaxy (flux-weighted centroid within 2 px)
    first = np.clip(out["conserved"][:, 0].sum(axis=-1), 0, None)
    yy, xx = np.mgrid[: first.shape[1], : first.shape[2]]
    cx = (first * xx).sum(axis=(1, 2)) / first.sum(axis=(1, 2))
    cy = (first * yy).sum(axis=(1, 2)) / first.sum(axis=(1, 2))
    distance = np.hypot(cx - testset["x"][:, 0], cy - testset["y"][:, 0])
    assert np.mean(distance < 2.0) >= 0.75, distance
