"""Tests of phase-1 training: pipelines, losses, run directories, the loop, resuming, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from tfdeblend.errors import DataError, ModelError, TfdeblendError
from tfdeblend.training.config import TrainConfig, paper_train_config
from tfdeblend.training.losses import (
    FLUX_EPS,
    WING_SOFTENING,
    L1Loss,
    SymmetricL1Loss,
    flux_error,
    get_deblender_loss,
    l1_loss,
    symmetric_l1_loss,
    wing_error,
)
from tfdeblend.training.pipelines import (
    check_manifest,
    classifier_example,
    deblender_example,
    make_dataset,
    prepare,
)
from tfdeblend.training.rundir import load_run, save_run
from tfdeblend.training.strategy import get_strategy


def blob(size, x0, y0, flux, sigma=2.0, bands=3):
    yy, xx = np.mgrid[:size, :size]
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    g = g / g.sum() * flux
    return np.stack([g * (1 + 0.1 * b) for b in range(bands)], -1).astype("float32")


def record(size=16, fluxes=(100.0, 40.0), max_sources=3, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    iso = np.zeros((max_sources, size, size, 3), "float32")
    for i, f in enumerate(fluxes):
        iso[i] = blob(size, 5 + 4 * i, 8, f)
    blend = iso.sum(0) + noise * rng.normal(size=(size, size, 3)).astype("float32")
    return {"blend": blend, "isolated": iso, "n_gal": np.int64(len(fluxes))}


# ---------------------------------------------------------------- pipelines


def test_deblender_example_scales_targets_by_the_blend():
    rec = record(noise=0.5)
    x, y = deblender_example({k: tf.constant(v) for k, v in rec.items()})
    scale = np.abs(rec["blend"]).max()
    assert x.shape == (16, 16, 3) and y.shape == (2, 16, 16, 3)
    assert np.isclose(np.abs(x.numpy()).max(), 1.0)
    np.testing.assert_allclose(y.numpy()[0], rec["isolated"][0] / scale, rtol=1e-6)
    np.testing.assert_allclose(y.numpy()[1], rec["isolated"][1] / scale, rtol=1e-6)
    # flux is preserved through the scale: sum(y * s) = true flux
    np.testing.assert_allclose((y.numpy()[0] * scale).sum(), rec["isolated"][0].sum(), rtol=1e-5)


def test_training_and_the_peel_share_one_normalization_that_a_hot_pixel_does_not_decide():
    """A 1e6 pixel (a cosmic ray) in a training blend: the network input and the targets' scale
    are those of the blend without it (the pixel is replaced by its neighbours' median), and the
    peel normalizes its residuals with the very same function."""
    from tfdeblend.deblend import Peeler  # noqa: F401 (the peel imports the same normalize)
    from tfdeblend.normalize import normalize

    rec = record(size=24, noise=0.5)
    hot = {**rec, "blend": rec["blend"].copy()}
    hot["blend"][20, 3, 1] = 1e6
    x, y = deblender_example({k: tf.constant(v) for k, v in rec.items()})
    x_hot, y_hot = deblender_example({k: tf.constant(v) for k, v in hot.items()})
    np.testing.assert_allclose(y_hot.numpy(), y.numpy(), rtol=1e-6)  # the same scale
    differ = np.argwhere(~np.isclose(x_hot.numpy(), x.numpy(), atol=1e-6))
    assert [tuple(map(int, d)) for d in differ] in ([], [(20, 3, 1)])
    assert abs(x_hot.numpy()[20, 3, 1]) < 0.1  # the sky around it, not 1e6 / scale
    np.testing.assert_array_equal(normalize(tf.constant(hot["blend"][None]))[0].numpy()[0],
                                  x_hot.numpy())
    import tfdeblend.deblend as peel_module

    assert peel_module.normalize is normalize


def test_deblender_example_pads_a_single_source():
    rec = record(fluxes=(100.0,), max_sources=1)
    ds = prepare(tf.data.Dataset.from_tensors(rec), "deblender", batch_size=1)
    x, y = next(iter(ds))
    assert y.shape == (1, 2, 16, 16, 3)
    assert np.all(y.numpy()[0, 1] == 0)


def test_classifier_example():
    rec = record(fluxes=(10.0, 5.0, 1.0))
    x, n = classifier_example({k: tf.constant(v) for k, v in rec.items()})
    assert n.dtype == tf.int32 and int(n) == 3
    assert np.isclose(np.abs(x.numpy()).max(), 1.0)


def test_check_manifest_mismatches():
    manifest = {"kind": "deblender", "bands": ["g", "r", "i"], "stamp_size": 80, "max_sources": 2}
    check_manifest(manifest, "deblender", ("g", "r", "i"), 80)
    with pytest.raises(DataError, match="'deblender' dataset; the classifier needs"):
        check_manifest(manifest, "classifier")
    with pytest.raises(DataError, match="bands g,r,i but the model was trained on r,i"):
        check_manifest(manifest, "deblender", ("r", "i"))
    with pytest.raises(DataError, match="stamp size 80 but the model expects 64"):
        check_manifest(manifest, "deblender", stamp_size=64)


def test_make_dataset_real_data_split(deblender_data_dir):
    from tfdeblend.data import load_manifest

    count = load_manifest(deblender_data_dir)["count"]
    train = list(
        make_dataset(deblender_data_dir, "deblender", validation_fraction=0.25, subset="train")
    )
    val = list(
        make_dataset(deblender_data_dir, "deblender", validation_fraction=0.25, subset="validation")
    )
    assert len(train) + len(val) == count and len(val) == count // 4
    x, y = train[0]
    assert x.shape == (80, 80, 3) and y.shape == (2, 80, 80, 3)
    assert np.isclose(np.abs(x.numpy()).max(), 1.0)
    # the brightest target is brighter than the second
    assert y.numpy()[0].sum() >= y.numpy()[1].sum() > 0
    with pytest.raises(DataError, match="stamp size"):
        make_dataset(deblender_data_dir, "deblender", stamp_size=64)


# ---------------------------------------------------------------- losses


def test_l1_loss_per_example():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(3, 2, 4, 4, 2)).astype("float32")
    p = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    expected = np.abs(y[:, 0] - p).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(l1_loss(y, p).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(l1_loss(y[:, 0], p).numpy(), expected, rtol=1e-6)


def test_symmetric_loss_rule():
    a, b = blob(16, 5, 8, 100.0), blob(16, 11, 8, 90.0)
    faint = blob(16, 11, 8, 30.0)
    close = np.stack([a, b])[None]  # second has 90% of the brightest's flux
    far = np.stack([a, faint])[None]  # 30%
    # predicting the second galaxy: free when the two are close, penalized otherwise
    assert symmetric_l1_loss(close, b[None]).numpy()[0] == 0.0
    assert l1_loss(close, b[None]).numpy()[0] > 0
    assert symmetric_l1_loss(far, faint[None]).numpy()[0] == pytest.approx(
        l1_loss(far, faint[None]).numpy()[0]
    )
    assert symmetric_l1_loss(far, faint[None]).numpy()[0] > 0
    # predicting the brightest is always free
    assert symmetric_l1_loss(close, a[None]).numpy()[0] == 0.0
    # Keras wrapper averages over the batch
    batch = np.concatenate([close, far])
    pred = np.stack([b, faint])
    per = symmetric_l1_loss(batch, pred).numpy()
    assert float(SymmetricL1Loss()(batch, pred)) == pytest.approx(per.mean(), rel=1e-6)


def test_flux_weight_adds_the_relative_band_flux_error():
    a = blob(16, 8, 8, 100.0, bands=2)  # (16, 16, 2), band 1 is 10 % brighter
    fluxes = a.sum(axis=(0, 1))
    # the same shape, 10 % too faint in band 0 and exact in band 1: a tiny pixel error
    p = a.copy()
    p[..., 0] *= 0.9
    expected = 0.5 * (0.1 * fluxes[0]) / (fluxes.mean() + FLUX_EPS)
    assert flux_error(a[None], p[None]).numpy()[0] == pytest.approx(expected, rel=1e-4)
    assert flux_error(a[None], a[None]).numpy()[0] == 0.0
    # an empty target (a peeled blend with nothing left) stays finite
    assert np.isfinite(flux_error(np.zeros_like(a)[None], p[None]).numpy()[0])
    l1 = l1_loss(a[None], p[None]).numpy()[0]
    assert l1_loss(a[None], p[None], flux_weight=0.01).numpy()[0] == pytest.approx(
        l1 + 0.01 * expected, rel=1e-4)
    # a uniform offset spread over the stamp barely moves the L1 but is a large flux error
    q = a + 0.05 * a.max()
    assert flux_error(a[None], q[None]).numpy()[0] > 10 * flux_error(a[None], p[None]).numpy()[0]
    # the symmetric loss adds it to both candidates; Keras wrappers keep the weight
    pair = np.stack([a, a[:, ::-1]])[None]
    assert symmetric_l1_loss(pair, p[None], flux_weight=0.01).numpy()[0] == pytest.approx(
        l1 + 0.01 * expected, rel=1e-4)
    for loss in (get_deblender_loss("l1", 0.01), get_deblender_loss("symmetric", 0.01)):
        clone = type(loss).from_config(loss.get_config())
        assert clone.flux_weight == 0.01
        assert float(clone(a[None], p[None])) == pytest.approx(l1 + 0.01 * expected, rel=1e-4)
    assert L1Loss().flux_weight == 0.0


def test_wing_weight_weighs_a_bright_galaxy_s_wings_by_their_relative_error():
    """Divided by its peak, a bright galaxy's wings are a few 1e-3: for the L1, missing a
    third of them is the same error as a core a few per cent too bright; the asinh-stretched
    error weighs the missing wings far more."""
    yy, xx = np.mgrid[:40, :40]
    r2 = (yy - 20.0) ** 2 + (xx - 20.0) ** 2
    a = (np.exp(-r2 / 8.0) + 5e-3 * np.exp(-r2 / 200.0))[..., None].astype(np.float32)
    wings = (r2 > 36)[..., None]
    short = np.where(wings, 0.67 * a, a).astype(np.float32)  # wings a third short
    l1_wings = l1_loss(a[None], short[None]).numpy()[0]
    excess = l1_wings * a.size / a[~wings].sum()  # the core this much too bright: same L1
    core = np.where(wings, a, (1 + excess) * a).astype(np.float32)
    assert l1_loss(a[None], core[None]).numpy()[0] == pytest.approx(l1_wings, rel=1e-3)
    w_wings, w_core = (wing_error(a[None], p[None]).numpy()[0] for p in (short, core))
    assert w_wings > 5 * w_core
    assert wing_error(a[None], a[None]).numpy()[0] == 0.0
    # linear below the softening: a faint pixel's error counts as (error / softening)
    tiny = np.zeros_like(a)
    tiny[0, 0, 0] = 1e-2 * WING_SOFTENING
    assert wing_error(np.zeros_like(a)[None], tiny[None]).numpy()[0] == pytest.approx(
        1e-2 / a.size, rel=1e-3)
    assert l1_loss(a[None], short[None], wing_weight=0.01).numpy()[0] == pytest.approx(
        l1_wings + 0.01 * w_wings, rel=1e-4)
    for loss in (get_deblender_loss("l1", 0.0, 0.01), get_deblender_loss("symmetric", 0.0, 0.01)):
        clone = type(loss).from_config(loss.get_config())
        assert clone.wing_weight == 0.01
        assert float(clone(a[None], short[None])) == pytest.approx(l1_wings + 0.01 * w_wings,
                                                                    rel=1e-4)
    with pytest.raises(TfdeblendError, match="wing weight"):
        TrainConfig(wing_weight=-1.0)


# ---------------------------------------------------------------- strategy, config


def test_get_strategy_errors(monkeypatch):
    assert get_strategy("default").num_replicas_in_sync == 1
    assert get_strategy("mirrored").num_replicas_in_sync >= 1
    with pytest.raises(TfdeblendError, match="unknown strategy"):
        get_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TfdeblendError, match="needs the TF_CONFIG"):
        get_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(TfdeblendError, match="TF_CONFIG is not valid"):
        get_strategy("multi-worker")


def test_train_config_layers(tmp_path):
    from tfdeblend.training.config import build_train_config

    config = build_train_config(1, "classifier")
    assert config == paper_train_config(1, "classifier")
    assert (config.optimizer, config.learning_rate, config.batch_size) == ("sgd", 0.1, 200)
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 16\nepochs: 3\nloss: symmetric\n")
    config = build_train_config(1, "deblender", str(path), epochs=5, seed=None)
    assert (config.batch_size, config.epochs, config.loss, config.learning_rate) == (
        16,
        5,
        "symmetric",
        1e-4,
    )
    path.write_text("batchsize: 16\n")
    with pytest.raises(TfdeblendError, match="unknown TrainConfig option"):
        build_train_config(1, "deblender", str(path))
    path.write_text("net: classifier\n")
    with pytest.raises(TfdeblendError, match="sets net='classifier'"):
        build_train_config(1, "deblender", str(path))
    with pytest.raises(TfdeblendError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    path.write_text("flux_weight: 0.002\n")
    assert build_train_config(1, "deblender", str(path)).flux_weight == 0.002
    assert build_train_config(1, "deblender").flux_weight == 0.0
    with pytest.raises(TfdeblendError, match="flux weight"):
        TrainConfig(flux_weight=-1.0)


def test_train_config_file_with_wrong_types_or_bytes_is_one_error(tmp_path):
    from tfdeblend.training.config import build_train_config

    path = tmp_path / "c.yaml"
    for text, message in [
        ("batch_size: abc\n", "option batch_size must be int, not 'abc'"),
        ("epochs: 2.5\n", "option epochs must be int"),
        ("jit_compile: maybe\n", "option jit_compile must be bool"),
        ("steps_per_epoch: many\n", "option steps_per_epoch must be int or null"),
    ]:
        path.write_text(text)
        with pytest.raises(TfdeblendError, match=message):
            build_train_config(1, "deblender", path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(TfdeblendError, match="not a text file"):
        build_train_config(1, "deblender", path)
    # PyYAML reads 1e-4 (no dot) as a string; a float field takes it as the number
    path.write_text("learning_rate: 1e-4\nsteps_per_epoch: null\n")
    config = build_train_config(1, "deblender", path)
    assert config.learning_rate == 1e-4 and config.steps_per_epoch is None


# ---------------------------------------------------------------- run directories


def test_save_and_load_run(tmp_path):
    from tfdeblend.models.presets import get_rdn_config
    from tfdeblend.models.rdn import build_rdn

    config = get_rdn_config("tiny", 2, 32)
    model = build_rdn(config)
    manifest = {"kind": "deblender", "bands": ["r", "i"], "stamp_size": 32, "count": 5}
    train = paper_train_config(1).replace(preset="tiny")
    save_run(tmp_path / "run", {"deblender": model}, train, {"deblender": config}, manifest)
    info = load_run(tmp_path / "run")
    assert info.bands == ("r", "i") and info.stamp_size == 32 and info.preset == "tiny"
    assert info.classifier is None
    assert info.model_config("deblender") == config.to_dict()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 2)).astype("float32")
    np.testing.assert_array_equal(np.asarray(info.deblender(x)), np.asarray(model(x)))
    assert TrainConfig.from_dict(info.config["train"]) == train


def test_load_run_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_run(tmp_path / "missing")
    with pytest.raises(ModelError, match="no config.yaml"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"kind": "something else"}))
    with pytest.raises(ModelError, match="foreign"):
        load_run(tmp_path)


# ---------------------------------------------------------------- training


def test_training_lowers_the_loss_on_real_data(deblender_data_dir, tmp_path):
    from fixtures_models import train_tiny

    history = train_tiny(
        deblender_data_dir, tmp_path / "run", "deblender", epochs=4, steps=3, learning_rate=2e-3
    )
    assert history["epoch"] == [0, 1, 2, 3]
    assert history["loss"][-1] < 0.9 * history["loss"][0]
    assert history["val_loss"][-1] < history["val_loss"][0]
    run = tmp_path / "run"
    for name in ("config.yaml", "deblender.keras", "history.json", "checkpoints/epoch-004.keras"):
        assert (run / name).exists(), name
    assert not (run / "backup").exists()  # removed after a completed run
    assert json.loads((run / "history.json").read_text())["loss"] == history["loss"]
    info = load_run(run)
    assert info.deblender.output_shape == (None, 80, 80, 3)


def test_dihedral_augmentation_moves_blend_and_targets_together():
    from tfdeblend.training.pipelines import dihedral

    rec = record(fluxes=(100.0, 40.0), noise=0.0)
    x, y = deblender_example({k: tf.constant(v) for k, v in rec.items()})
    tf.random.set_seed(3)
    seen = set()
    for _ in range(40):
        xa, ya = dihedral(x, y, "deblender")
        xa, ya = xa.numpy(), ya.numpy()
        # the blend is still the sum of its (transformed) galaxies, fluxes unchanged
        np.testing.assert_allclose(xa, ya.sum(0), atol=1e-6)
        np.testing.assert_allclose(ya.sum(axis=(1, 2)), y.numpy().sum(axis=(1, 2)), rtol=1e-5)
        seen.add(xa.tobytes())
    assert len(seen) == 8  # all of D4 on an asymmetric image
    xc, label = dihedral(x, tf.constant(2), "classifier")
    assert int(label) == 2 and xc.shape == x.shape


def test_peel_brightest_leaves_the_next_galaxy_and_the_noise(deblender_data_dir):
    from tfdeblend.training.pipelines import peel_brightest

    rec = record(fluxes=(100.0, 40.0, 10.0), noise=0.3)
    rec = {k: tf.constant(v) for k, v in rec.items()}
    never, always = peel_brightest(rec, 0.0), peel_brightest(rec, 0.999999)
    np.testing.assert_array_equal(never["blend"].numpy(), rec["blend"].numpy())
    np.testing.assert_allclose(always["blend"].numpy(),
                               (rec["blend"] - rec["isolated"][0]).numpy(), atol=1e-6)
    np.testing.assert_array_equal(always["isolated"].numpy()[:2], rec["isolated"].numpy()[1:])
    assert not always["isolated"].numpy()[2].any() and int(always["n_gal"]) == 2
    x, y = deblender_example(always)
    scale = np.abs(always["blend"].numpy()).max()
    np.testing.assert_allclose(y.numpy()[0], rec["isolated"].numpy()[1] / scale, rtol=1e-5)
    # a single galaxy is never removed
    single = {k: tf.constant(v) for k, v in record(fluxes=(50.0,)).items()}
    kept = peel_brightest(single, 0.999999)
    np.testing.assert_array_equal(kept["blend"].numpy(), single["blend"].numpy())
    # the share on real data, training part only
    tf.random.set_seed(0)
    kwargs = dict(validation_fraction=0.25, seed=0, peel_fraction=0.5)
    ys = np.concatenate([y.numpy() for _, y in make_dataset(
        deblender_data_dir, "deblender", 8, subset="train", **kwargs)])
    assert 0 < np.mean(~ys[:, 1].any(axis=(1, 2, 3))) < 1
    val = make_dataset(deblender_data_dir, "deblender", 8, subset="validation", **kwargs)
    assert all(y.numpy()[:, 1].any(axis=(1, 2, 3)).all() for _, y in val)


def test_augmentation_only_on_the_training_part(deblender_data_dir):
    kwargs = dict(validation_fraction=0.25, seed=0)
    val = [x.numpy() for x, _ in make_dataset(deblender_data_dir, "deblender", 4,
                                              subset="validation", augment=True, **kwargs)]
    plain = [x.numpy() for x, _ in make_dataset(deblender_data_dir, "deblender", 4,
                                                subset="validation", **kwargs)]
    np.testing.assert_array_equal(np.concatenate(val), np.concatenate(plain))
    tf.random.set_seed(0)
    aug = make_dataset(deblender_data_dir, "deblender", 8, subset="train", augment=True, **kwargs)
    ref = make_dataset(deblender_data_dir, "deblender", 8, subset="train", **kwargs)
    (xa, _), (xr, _) = next(iter(aug)), next(iter(ref))
    assert not np.array_equal(xa.numpy(), xr.numpy())
    # each augmented stamp is a rotation/flip of the plain one: same sorted pixel values
    np.testing.assert_allclose(np.sort(xa.numpy().ravel()), np.sort(xr.numpy().ravel()))


def test_seed_fixes_the_peels_and_rotations(deblender_data_dir):
    """--seed makes --augment and --peel-fraction reproducible (stateless draws per element)."""
    kwargs = dict(validation_fraction=0.25, subset="train", shuffle=True, repeat=True,
                  augment=True, peel_fraction=0.5)

    def first_batches(seed):
        data = make_dataset(deblender_data_dir, "deblender", 4, seed=seed, **kwargs)
        return [np.concatenate([x.numpy().ravel(), y.numpy().ravel()]) for x, y in data.take(3)]

    tf.random.set_seed(1)  # as keras.utils.set_random_seed(--seed) does for the shuffle
    a = first_batches(7)
    tf.random.set_seed(1)
    b = first_batches(7)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    tf.random.set_seed(1)
    c = first_batches(8)
    assert any(not np.array_equal(u, v) for u, v in zip(a, c))


def test_init_from_fine_tunes_the_given_network(
    deblender_data_dir, tiny_deblender_run, tiny_classifier_run, tmp_path
):
    from fixtures_models import train_tiny

    from tfdeblend.training.phase1 import init_weights, model_config_for

    source = load_run(tiny_deblender_run).deblender
    # zero steps of change: a run with lr ~0 starting from the source keeps its weights
    train_tiny(deblender_data_dir, tmp_path / "ft", "deblender", epochs=1, steps=1,
               learning_rate=1e-30, init_from=str(tiny_deblender_run), augment=True)
    tuned = load_run(tmp_path / "ft")
    assert tuned.config["train"]["init_from"] == str(tiny_deblender_run)
    assert tuned.config["train"]["augment"] is True
    for a, b in zip(source.get_weights(), tuned.deblender.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a classifier run cannot seed a deblender, nor a different architecture
    from tfdeblend.models.rdn import build_rdn

    other = build_rdn(model_config_for("deblender", "tiny", 3, 80).replace(num_blocks=2))
    with pytest.raises(ModelError, match="holds no deblender.keras"):
        init_weights(other, "deblender", tiny_classifier_run, ("g", "r", "i"), 80)
    with pytest.raises(ModelError, match="another architecture"):
        init_weights(other, "deblender", tiny_deblender_run, ("g", "r", "i"), 80)
    with pytest.raises(ModelError, match="bands"):
        init_weights(source, "deblender", tiny_deblender_run, ("u", "g"), 80)
    # a .keras checkpoint works too
    fresh = build_rdn(model_config_for("deblender", "tiny", 3, 80))
    init_weights(fresh, "deblender", tiny_deblender_run / "deblender.keras", ("g", "r", "i"), 80)
    for a, b in zip(source.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    # ... and its run directory's config.yaml is checked: bands that differ are refused
    with pytest.raises(ModelError, match="bands"):
        init_weights(fresh, "deblender", tiny_deblender_run / "deblender.keras", ("g",), 80)
    # a source inside the output is refused before anything is written or deleted
    from tfdeblend.training.phase1 import train_phase1

    config = paper_train_config(1).replace(
        preset="tiny", epochs=1, steps_per_epoch=1, batch_size=4,
        init_from=str(tiny_deblender_run / "deblender.keras"))
    with pytest.raises(TfdeblendError, match="inside the output"):
        train_phase1(deblender_data_dir, tiny_deblender_run, "deblender", config, overwrite=True)
    assert (tiny_deblender_run / "deblender.keras").is_file()


def test_options_of_the_wrong_phase_or_net_are_refused():
    with pytest.raises(TfdeblendError, match="phase-1 deblender option"):
        TrainConfig(phase=1, net="classifier", peel_fraction=0.3)
    with pytest.raises(TfdeblendError, match="phase-1 options"):
        TrainConfig(phase=2, net="joint", augment=True)
    with pytest.raises(TfdeblendError, match="peel fraction"):
        TrainConfig(peel_fraction=1.0)


def test_tiny_fixtures(tiny_deblender_run, tiny_classifier_run):
    assert load_run(tiny_deblender_run).deblender is not None
    info = load_run(tiny_classifier_run)
    assert info.classifier.output_shape == (None, 4)
    assert info.config["train"]["optimizer"] == "sgd"


def test_wrong_dataset_kind_fails_before_training(deblender_data_dir, tmp_path):
    from tfdeblend.training.phase1 import train_phase1

    with pytest.raises(DataError, match="the classifier needs a 'classifier' or 'residuals' dataset"):
        train_phase1(
            deblender_data_dir,
            tmp_path / "run",
            "classifier",
            paper_train_config(1, "classifier").replace(preset="tiny"),
        )
    assert not (tmp_path / "run").exists()


def test_existing_run_is_refused(tiny_deblender_run, deblender_data_dir):
    from tfdeblend.training.phase1 import train_phase1

    with pytest.raises(TfdeblendError, match="already exists; pass --overwrite"):
        train_phase1(
            deblender_data_dir,
            tiny_deblender_run,
            "deblender",
            paper_train_config(1).replace(preset="tiny"),
        )


def test_mixed_precision_model():
    import keras

    from tfdeblend.training.phase1 import build_phase1_model

    config = paper_train_config(1).replace(preset="tiny", mixed_precision=True)
    model, _ = build_phase1_model("deblender", config, 3, 80)
    assert keras.config.dtype_policy().name == "float32"  # global policy restored
    assert model.get_layer("rdb0_conv0").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def _train_cmd(data, out):
    return [
        sys.executable,
        "-m",
        "tfdeblend.cli.main",
        "train",
        "--phase",
        "1",
        "--net",
        "deblender",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--epochs",
        "6",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "4",
        "--validation-fraction",
        "0",
    ]


@pytest.mark.slow
def test_killed_run_resumes(deblender_data_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        _train_cmd(deblender_data_dir, out),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    metadata = out / "backup" / "training_metadata.json"
    previous = out / "backup" / "latest.weights.h5.bkp"  # the backup before the latest one
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metadata.exists() and previous.exists():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(metadata.read_text())["epoch"]
    assert 1 <= done < 6
    assert not (out / "config.yaml").exists()  # nothing final was written
    # a kill in the middle of writing the latest backup leaves it truncated: resume from the
    # previous one instead of failing
    latest = out / "backup" / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:100])
    second = subprocess.run(
        _train_cmd(deblender_data_dir, out), env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Resuming" in second.stderr
    assert "Epoch 1/6" not in second.stdout and "Epoch 6/6" in second.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == list(range(6))
    assert load_run(out).deblender is not None


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args,message",
    [
        (["data", "--out", "o"], "--phase 1 needs --net"),
        (["--phase", "2", "data", "--out", "o"], "needs --deblender RUN_DIR and --classifier"),
        (
            [
                "--phase",
                "2",
                "--net",
                "deblender",
                "data",
                "--out",
                "o",
                "--deblender",
                "a",
                "--classifier",
                "b",
            ],
            "--net is a phase-1 option",
        ),
        (["--net", "deblender", "{missing}", "--out", "o"], "is not a tfdeblend dataset"),
        (
            ["--net", "deblender", "data", "--out", "o", "--config", "{missing}.yaml"],
            "does not exist",
        ),
    ],
)
def test_cli_bad_inputs(args, message, tmp_path):
    from tfdeblend.cli.main import cli

    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_mismatch_and_existing_out(deblender_data_dir, tiny_deblender_run, tmp_path):
    from tfdeblend.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--net",
            "classifier",
            str(deblender_data_dir),
            "--out",
            str(tmp_path / "o"),
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 1 and "Error:" in result.output and "classifier" in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--net",
            "deblender",
            str(deblender_data_dir),
            "--out",
            str(tiny_deblender_run),
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = CliRunner().invoke(
        cli,
        ["train", "--net", "deblender", str(deblender_data_dir), "--out", "o", "--batch-size", "0"],
    )
    assert result.exit_code == 2  # click usage error


def test_cli_phase2_wiring(deblender_data_dir, tiny_deblender_run, tiny_classifier_run, tmp_path):
    from tfdeblend.cli.main import cli

    out = tmp_path / "joint"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--phase",
            "2",
            str(deblender_data_dir),
            "--deblender",
            str(tiny_deblender_run),
            "--classifier",
            str(tiny_classifier_run),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--batch-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.output
    info = load_run(out)
    assert info.deblender is not None and info.classifier is not None
    assert info.config["train"]["phase"] == 2 and info.config["train"]["batch_size"] == 4
