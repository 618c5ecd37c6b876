"""Networks that take the observing conditions (noise and PSF per band) as input.

Real pieces throughout: BTK-rendered stamps and datasets (``fixtures_data``), tiny trained runs
widened to conditioned networks, real SavedModels loaded by a process without tfdeblend, GalSim
PSFs and the real HSC cut-out's PSF images.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from astropy.io import fits
from click.testing import CliRunner
from fixtures_models import train_tiny
from inference_helpers import blend_images, exported_model, tiny_runs, write_blends_fits
from tfdeblend.cli.main import cli

from tfdeblend.conditioning import (
    NOISE_OFFSET,
    PSF_REFERENCE,
    condition_features,
    is_conditioned,
    pack,
)
from tfdeblend.deblend import Peeler, noise_std
from tfdeblend.errors import ModelError, TfdeblendError
from tfdeblend.models.classifier import build_classifier
from tfdeblend.models.presets import get_classifier_config, get_rdn_config
from tfdeblend.models.rdn import build_rdn
from tfdeblend.peel_config import PeelConfig
from tfdeblend.psf import measure_fwhm, psf_fwhm_pixels

HSC = Path(__file__).parent / "data" / "hsc_cosmos_35.npz"  # the real HSC cut-out (tests/data)


def _random_networks(seed: int = 0):
    """Conditioned tiny networks with random (non-zero) weights on the condition channels."""
    keras.utils.set_random_seed(seed)
    rdn = build_rdn(get_rdn_config("tiny", conditioned=True))
    classifier = build_classifier(get_classifier_config("tiny", conditioned=True))
    return rdn, classifier


def test_features_are_the_documented_encoding():
    sigma = np.array([[2.0, 4.0, 8.0]], np.float32)
    fwhm = np.array([[4.0, 6.0, 2.0]], np.float32)
    scale = np.full((1, 1, 1, 1), 200.0, np.float32)
    features = condition_features(pack(sigma, fwhm), scale).numpy()
    np.testing.assert_allclose(features[0, :3], np.log10(sigma[0] / 200.0) + NOISE_OFFSET, rtol=1e-5)
    np.testing.assert_allclose(features[0, 3:], fwhm[0] / PSF_REFERENCE - 1.0, rtol=1e-6)


def test_conditioned_networks_save_and_load_in_safe_mode(tmp_path):
    rdn, classifier = _random_networks()
    images = np.random.default_rng(0).normal(size=(2, 80, 80, 3)).astype("float32")
    features = np.random.default_rng(1).normal(size=(2, 6)).astype("float32")
    for model in (rdn, classifier):
        assert is_conditioned(model)
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(
            loaded([images, features]).numpy(), model([images, features]).numpy(), atol=1e-5
        )
    # the conditions reach the output
    other = rdn([images, features + 1.0]).numpy()
    assert np.abs(other - rdn([images, features]).numpy()).max() > 1e-4


@pytest.fixture(scope="module")
def conditioned_runs(request, tmp_path_factory, deblender_data_dir, classifier_data_dir):
    """The tiny runs widened to conditioned networks (``--init-from``) and trained 2 steps."""
    rdn_run, vgg_run = tiny_runs(request)
    base = tmp_path_factory.mktemp("conditioned")
    train_tiny(deblender_data_dir, base / "rdn", "deblender", conditioned=True,
               init_from=str(rdn_run), learning_rate=1e-4, peel_fraction=0.3, augment=True)
    train_tiny(classifier_data_dir, base / "vgg", "classifier", conditioned=True,
               init_from=str(vgg_run), learning_rate=1e-4, augment=True)
    return base / "rdn", base / "vgg"


@pytest.fixture(scope="module")
def conditioned_model(conditioned_runs, tmp_path_factory) -> Path:
    """The conditioned runs exported once (version 1 of a model base directory; the tests
    only read it)."""
    from tfdeblend.export import export_model

    rdn_run, vgg_run = conditioned_runs
    return export_model(None, tmp_path_factory.mktemp("cond_model") / "cond",
                        deblender_run=rdn_run, classifier_run=vgg_run,
                        peel=PeelConfig(max_iterations=3))


def test_widening_starts_from_the_same_network(request, deblender_data_dir):
    """An image-only network's weights in a conditioned one: the same output whatever the
    conditions, because the new input weights start at zero."""
    from tfdeblend.training.phase1 import apply_init_weights, load_network

    rdn_run, _ = tiny_runs(request)
    source = load_network(rdn_run / "deblender.keras", "deblender")[0]
    widened = build_rdn(get_rdn_config("tiny", conditioned=True))
    apply_init_weights(widened, source.get_weights(), rdn_run, "tiny")
    images = blend_images(request, 3)
    normalized = images / np.abs(images).max(axis=(1, 2, 3), keepdims=True)
    for features in (np.zeros((3, 6)), np.random.default_rng(2).normal(size=(3, 6)) * 3):
        np.testing.assert_allclose(
            widened([normalized, features.astype("float32")]).numpy(),
            source(normalized).numpy(), atol=1e-6,
        )


def test_conditioned_training_reads_the_stored_conditions(deblender_data_dir):
    from tfdeblend.data import load_manifest, read_dataset
    from tfdeblend.training.pipelines import make_dataset

    assert "psf_fwhm" in load_manifest(deblender_data_dir)["conditions"]
    (image, features), _ = next(iter(make_dataset(deblender_data_dir, "deblender", 4,
                                                  conditioned=True)))
    assert image.shape == (4, 80, 80, 3) and features.shape == (4, 6)
    record = next(iter(read_dataset(deblender_data_dir)))
    fwhm_px = record["psf_fwhm"].numpy() / record["pixel_scale"].numpy()
    np.testing.assert_allclose(features[0, 3:], fwhm_px / PSF_REFERENCE - 1.0, rtol=1e-5)
    scale = np.abs(record["blend"].numpy()).max()
    noise = np.log10(record["noise_sigma"].numpy() / scale) + NOISE_OFFSET
    np.testing.assert_allclose(features[0, :3], noise, rtol=1e-4, atol=1e-5)


def test_conditioned_training_runs_and_phase_2_refuses_it(conditioned_runs):
    from tfdeblend.training.config import TrainConfig

    rdn_run, vgg_run = conditioned_runs
    for run, net in ((rdn_run, "deblender"), (vgg_run, "classifier")):
        model = keras.saving.load_model(run / f"{net}.keras", safe_mode=True, compile=False)
        assert is_conditioned(model)
    assert TrainConfig(phase=2, net="joint", conditioned=True).conditioned  # phase 2 takes them


def test_phase_2_trains_conditioned_networks_with_the_stored_conditions(
    conditioned_runs, deblender_data_dir, tmp_path, request
):
    """Phase 2 on conditioned networks: each network gets the blend's conditions at the scale
    of every image it sees (d1, the residuals, the truths), both networks change, and the run
    says it was conditioned. Image-only networks with --conditioned are one clear error."""
    from tfdeblend.conditioning import conditions_from_features
    from tfdeblend.training.config import paper_train_config
    from tfdeblend.training.joint import train_phase2
    from tfdeblend.training.rundir import load_run

    # the features at scale 1 turn back into the conditions, which give any scale's features
    conditions = tf.constant([[[3.0, 0.5, 40.0], [4.3, 4.0, 3.9]]])
    scale = tf.constant([[[[250.0]]]])
    features = condition_features(conditions / tf.constant([[[250.0], [1.0]]]), 1.0)
    np.testing.assert_allclose(
        condition_features(conditions_from_features(features), 1.0 / 250.0 * scale).numpy(),
        condition_features(conditions, scale).numpy(), rtol=1e-5, atol=1e-5,
    )
    rdn_run, vgg_run = conditioned_runs
    config = paper_train_config(2).replace(
        epochs=1, steps_per_epoch=2, batch_size=4, validation_fraction=0.25,
        learning_rate=1e-3, classifier_learning_rate=1e-3,
    )
    history = train_phase2(deblender_data_dir, rdn_run, vgg_run, tmp_path / "joint", config,
                           verbose=0)
    assert np.isfinite(history["rdn_loss"]).all() and np.isfinite(history["val_rdn_loss"]).all()
    run = load_run(tmp_path / "joint", load_models=True)
    assert run.config["train"]["conditioned"] is True
    before = load_run(rdn_run, load_models=True).deblender
    for new, old in ((run.deblender, before), (run.classifier,
                                               load_run(vgg_run, load_models=True).classifier)):
        assert is_conditioned(new)
        changed = [np.abs(a - b).max() for a, b in zip(new.get_weights(), old.get_weights())]
        assert max(changed) > 0
    plain_rdn, plain_vgg = tiny_runs(request)
    with pytest.raises(ModelError, match="neither of these does"):
        train_phase2(deblender_data_dir, plain_rdn, plain_vgg, tmp_path / "plain",
                     config.replace(conditioned=True), verbose=0)


def test_peel_uses_the_conditions_and_conserves_flux(request):
    rdn, classifier = _random_networks(3)
    peeler = Peeler(rdn, classifier, PeelConfig(max_iterations=3), default_psf=[4.3, 4.0, 3.9])
    images = tf.constant(blend_images(request, 4))
    out = peeler(images)
    total = out["components"].numpy().sum(axis=1) + out["residual"].numpy()
    # float32 rounding of the (random, large) components
    atol = 1e-5 * np.abs(out["components"].numpy()).sum(axis=1).max()
    np.testing.assert_allclose(total, images.numpy(), rtol=1e-5, atol=atol)
    # NaN or no noise: estimated from the images; no PSF: the default
    estimated = noise_std(images).numpy()
    nan = np.full((4, 3), np.nan, np.float32)
    same = peeler(images, noise_sigma=estimated, psf_fwhm=nan)
    np.testing.assert_allclose(same["components"].numpy(), out["components"].numpy(), atol=1e-5)
    wider = peeler.deblend_one(images, psf_fwhm=np.full(3, 8.0, np.float32)).numpy()
    assert np.abs(wider - peeler.deblend_one(images).numpy()).max() > 1e-3


def test_a_conditioned_savedmodel_serves_with_and_without_conditions(
    conditioned_model, request, tmp_path
):
    from tfdeblend.export import CONDITION_SIGNATURES, load_model

    path = conditioned_model
    model = load_model(path)
    assert model.conditioned and model.conditions["survey"] == "LSST"
    assert len(model.conditions["psf_fwhm"]) == 3
    images = blend_images(request, 3)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(path)!r})
        x = tf.constant(np.load({str(tmp_path / "images.npy")!r}))
        nan = tf.fill([3, 3], float("nan"))
        a = m.signatures["serving_default"](images=x)
        b = m.signatures["peel_conditions"](images=x, noise_sigma=nan, psf_fwhm=nan)
        c = m.signatures["count_conditions"](images=x, noise_sigma=nan, psf_fwhm=nan)
        assert not any(k.startswith("tfdeblend") for k in sys.modules)
        np.savez({str(tmp_path / "out.npz")!r}, a=a["components"].numpy(),
                 b=b["components"].numpy(), count=c["count"].numpy(),
                 first=a["counts"].numpy()[:, 0])
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["a"], out["b"], atol=1e-4)  # NaN = the defaults
    np.testing.assert_array_equal(out["count"], out["first"])
    assert set(CONDITION_SIGNATURES.values()) <= set(model.metadata["signatures"])
    # the Python loader picks the conditions signature when conditions are given
    given = model.deblend(images, psf_fwhm=np.array(model.conditions["psf_fwhm"]))
    np.testing.assert_allclose(given["components"], out["a"], atol=1e-4)
    with pytest.raises(TfdeblendError, match="psf_fwhm has shape"):
        model.deblend(images, psf_fwhm=np.ones(5))


@pytest.mark.parametrize("fwhm", [0.6, 0.9, 1.2])
def test_measured_psf_fwhm_matches_galsim(fwhm):
    import galsim

    for size, offset in ((41, (0, 0)), (42, (0.3, 0.1)), (43, (0.5, 0.5))):
        psf = galsim.Kolmogorov(fwhm=fwhm).drawImage(nx=size, ny=size, scale=0.2, offset=offset)
        assert measure_fwhm(psf.array) * 0.2 == pytest.approx(fwhm, rel=0.01)


def test_psf_option_reads_numbers_cubes_and_files(tmp_path):
    bands = ("g", "r", "i")
    np.testing.assert_allclose(psf_fwhm_pixels(["0.8,0.6,0.4"], bands, 0.2), [4.0, 3.0, 2.0])
    np.testing.assert_allclose(psf_fwhm_pixels(["0.7"], bands, 0.2), [3.5] * 3)
    hsc = np.load(HSC)
    fits.PrimaryHDU(hsc["psfs"][:3]).writeto(tmp_path / "cube.fits")
    for band, plane in zip(bands, hsc["psfs"][:3]):
        fits.PrimaryHDU(plane).writeto(tmp_path / f"psf_{band}.fits")
    cube = psf_fwhm_pixels([str(tmp_path / "cube.fits")], bands, None)
    files = psf_fwhm_pixels([str(tmp_path / f"psf_{b}.fits") for b in bands], bands, None)
    np.testing.assert_allclose(cube, files)
    # a cube of all five HSC bands with BANDS: the model's are picked by name
    fits.PrimaryHDU(hsc["psfs"], header=fits.Header([("BANDS", "g,r,i,z,y")])).writeto(
        tmp_path / "five.fits")
    np.testing.assert_allclose(psf_fwhm_pixels([str(tmp_path / "five.fits")], bands, None), cube)
    with pytest.raises(TfdeblendError, match="has 5 planes"):
        fits.PrimaryHDU(hsc["psfs"]).writeto(tmp_path / "five_unnamed.fits")
        psf_fwhm_pixels([str(tmp_path / "five_unnamed.fits")], bands, None)
    assert 2.5 < cube.min() and cube.max() < 5.0  # HSC: 0.5-0.75" at 0.168"/px
    for values, message in (
        (["0.7,0.7"], "gives 2 FWHMs"),
        (["-1"], "between 0.01 and 10"),
        (["1e9"], r"between 0.01 and 10 \(got 1e9\)"),  # pixels, or a typo: not a seeing
        (["1e-9"], r"between 0.01 and 10 \(got 1e-9\)"),
        (["0.009"], r"between 0.01 and 10"),
        (["nope.fits"], "no such file"),
    ):
        with pytest.raises(TfdeblendError, match=message):
            psf_fwhm_pixels(values, bands, 0.2)
    # a PSF image with a NaN, or with no positive peak: refused, the file named
    broken = hsc["psfs"][0].copy()
    broken[20, 20] = np.nan
    fits.PrimaryHDU(broken).writeto(tmp_path / "psf_nan.fits")
    fits.PrimaryHDU(np.zeros((21, 21))).writeto(tmp_path / "psf_zero.fits")
    for name, message in (("psf_nan.fits", "psf_nan.fits has 1 pixel"),
                          ("psf_zero.fits", "psf_zero.fits: a PSF image must be 2-d")):
        with pytest.raises(TfdeblendError, match=message):
            psf_fwhm_pixels([str(tmp_path / name)], bands, None)
    with pytest.raises(TfdeblendError, match="pixel scale"):
        psf_fwhm_pixels(["0.7"], bands, None)


def test_run_takes_psf_for_a_conditioned_model_and_notes_it_for_others(
    conditioned_model, request, tmp_path_factory, tmp_path
):
    conditioned = conditioned_model
    plain = exported_model(request, tmp_path_factory)
    src = write_blends_fits(tmp_path / "blends.fits", blend_images(request, 3), PIXSCALE=0.2)
    runner = CliRunner()
    outputs = {}
    for name, model, psf in (("plain", plain, "0.7"), ("narrow", conditioned, "0.5"),
                             ("wide", conditioned, "1.4")):
        out = tmp_path / f"{name}.fits"
        result = runner.invoke(cli, ["run", str(src), "-o", str(out), "--model", str(model),
                                     "--psf", psf, "--quiet"])
        assert result.exit_code == 0, result.output
        assert ("takes no observing conditions" in result.output) == (name == "plain")
        outputs[name] = fits.getdata(out, "COMPONENTS")
    assert not np.allclose(outputs["narrow"], outputs["wide"])
    bad = runner.invoke(cli, ["run", str(src), "-o", str(tmp_path / "bad.fits"), "--model",
                              str(conditioned), "--psf", "0.7,0.7", "--quiet"])
    assert bad.exit_code != 0 and bad.output.count("\n") == 1 and "Error:" in bad.output
    assert not (tmp_path / "bad.fits").exists()


def test_btk_adapter_passes_btk_noise_and_psf(conditioned_model):
    import btk

    from tfdeblend.btk_adapter import RDNDeblender
    from tfdeblend.export import load_model
    from tfdeblend.simulate import band_conditions

    model = load_model(conditioned_model)
    from tfdeblend.catalog import load_default_catalog

    table = load_default_catalog()
    table = table[table["i_ab"] < 24.0]
    survey = btk.survey.get_surveys("LSST")
    survey.available_filters = ["z", "g", "r", "i"]  # BTK's order, not the model's
    sampling = btk.sampling_functions.DefaultSampling(
        max_number=2, min_number=2, stamp_size=24.0, max_shift=2.0, seed=5, max_mag=24.0
    )
    generator = btk.draw_blends.CatsimGenerator(
        btk.catalog.CatsimCatalog(table), sampling, survey, batch_size=2, njobs=1, seed=5
    )
    batch = next(generator)
    deblender = RDNDeblender(3, model=model)
    conditions = deblender._conditions(batch)
    nominal = band_conditions("LSST", model.bands, 1.0, 1.0)
    np.testing.assert_allclose(conditions["noise_sigma"], nominal["noise_sigma"], rtol=1e-4)
    # BTK's PSF adds the telescope's optics to the atmosphere: a little wider
    ratio = conditions["psf_fwhm"] * 0.2 / nominal["psf_fwhm"]
    assert np.all((ratio > 0.995) & (ratio < 1.04)), ratio
    out = deblender.batch_call(batch)
    assert len(out.catalog_list) == 2


def test_a_real_hsc_image_runs_with_its_own_psfs_and_variance(conditioned_model, tmp_path):
    """The HSC cut-out with its PSF images (one cube, BANDS g..y) through tfdeblend run."""
    from tfdeblend.image_io import LSST_MASK_PLANES, write_cube

    model = conditioned_model
    data = np.load(HSC)
    write_cube(tmp_path / "hsc.fits", data["images"], ",".join(data["filters"]),
               variance=data["variance"], mask=data["mask"], mask_planes=LSST_MASK_PLANES,
               header={"PIXSCALE": 0.168})
    fits.PrimaryHDU(data["psfs"], header=fits.Header([("BANDS", "g,r,i,z,y")])).writeto(
        tmp_path / "psf.fits")
    runner = CliRunner()
    models = {}
    for name, extra in (("own", ["--psf", str(tmp_path / "psf.fits")]),
                        ("nominal", []), ("arcsec", ["--psf", "1.5"])):
        out = tmp_path / f"{name}.fits"
        result = runner.invoke(cli, ["run", str(tmp_path / "hsc.fits"), "-o", str(out),
                                     "--model", str(model), "--quiet", *extra])
        assert result.exit_code == 0, result.output
        assert "takes no observing conditions" not in result.output
        models[name] = fits.getdata(out, "MODEL")
        residual = fits.getdata(out, "RESIDUAL")
        image = data["images"][:3]
        ok = np.isfinite(residual)
        np.testing.assert_allclose((models[name] + residual)[ok], image[ok], atol=1e-4)
