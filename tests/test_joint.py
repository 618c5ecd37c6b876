"""Phase 2 (tfdeblend.training.joint): the JointModel step against Eq. 3/4 computed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdeblend.errors import TfdeblendError
from tfdeblend.models.classifier import build_classifier
from tfdeblend.models.presets import get_classifier_config, get_rdn_config
from tfdeblend.models.rdn import build_rdn
from tfdeblend.training.joint import JointModel

SIZE, BANDS, BATCH = 32, 3, 4
ADAM_EPS = 1e-7 / np.sqrt(1 - 0.999)  # Keras Adam's epsilon at step 1, in gradient units


def galaxies(seed: int, n: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Two elliptical Gaussian galaxies per stamp, brightest first, plus noise: (x, truths)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype("float64")
    truths = np.zeros((n, 2, SIZE, SIZE, BANDS))
    for i in range(n):
        fluxes = sorted(rng.uniform(2e3, 2e4, 2), reverse=True)
        for k, flux in enumerate(fluxes):
            cx, cy = rng.uniform(10, 22, 2)
            sx, sy = rng.uniform(1.5, 4, 2)
            profile = np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
            colour = rng.uniform(0.5, 1.5, BANDS)
            truths[i, k] = flux * profile[..., None] * colour / profile.sum()
    blend = truths.sum(axis=1) + rng.normal(0, 5.0, (n, SIZE, SIZE, BANDS))
    return blend.astype("float32"), truths.astype("float32")


def tiny_nets(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(seed)
    rdn = build_rdn(get_rdn_config("tiny", BANDS, SIZE))
    classifier = build_classifier(get_classifier_config("tiny", BANDS, SIZE))
    return rdn, classifier


def joint(seed: int = 0, **kwargs) -> JointModel:
    rdn, classifier = tiny_nets(seed)
    model = JointModel(rdn, classifier, **kwargs)
    model.compile()
    return model


# ----------------------------------------------------------------------------- by hand


def np_normalize(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(images).max(axis=(1, 2, 3), keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    return images / scale, scale


def np_ce(logits: np.ndarray, label: int) -> np.ndarray:
    logits = logits.astype("float64")
    shifted = logits - logits.max(axis=1, keepdims=True)
    return -(shifted[:, label] - np.log(np.exp(shifted).sum(axis=1)))


def by_hand(model: JointModel, x: np.ndarray, truths: np.ndarray, alpha=0.2, lam=1e-4) -> dict:
    """Eq. 3 and Eq. 4 in numpy, calling the networks only as plain functions."""
    rdn = lambda a: model.deblender(a.astype("float32"), training=False).numpy()  # noqa: E731
    clf = lambda a: model.classifier(a.astype("float32"), training=False).numpy()  # noqa: E731
    t1, t2 = truths[:, 0], truths[:, 1]
    xn, s = np_normalize(x)
    d1n = rdn(xn)
    d1 = d1n * s
    r1 = x - d1
    r1n, s1 = np_normalize(r1)
    d2 = rdn(r1n) * s1
    r2 = r1 - d2
    l1 = np.abs(d1n - t1 / s).mean(axis=(1, 2, 3))
    ce_rdn = np_ce(clf(np_normalize(d1)[0]), 1)
    images = {"x": (x, 2), "d1": (d1, 1), "d2": (d2, 1), "r1": (r1, 1), "r2": (r2, 0),
              "t1": (t1, 1), "t2": (t2, 1)}
    clf_loss = np.zeros(len(x))
    correct = []
    for image, label in images.values():
        logits = clf(np_normalize(image)[0])
        clf_loss += (alpha if label == 1 else 1.0) * np_ce(logits, label)
        correct.append(logits.argmax(axis=1) == label)
    return {
        "d1": d1, "r1": r1, "d2": d2, "r2": r2, "l1": l1.mean(), "ce_rdn": ce_rdn.mean(),
        "rdn_loss": (l1 + lam * ce_rdn).mean(), "classifier_loss": clf_loss.mean(),
        "classifier_accuracy": np.mean(correct),
    }


def adam_first_step(gradient: np.ndarray, lr: float) -> np.ndarray:
    """The change Keras Adam makes to a variable at its first step."""
    return -lr * gradient / (np.abs(gradient) + ADAM_EPS)


# ----------------------------------------------------------------------------- tests


def test_peel_renormalizes_the_residual_with_normalize():
    model = joint()
    x, truths = galaxies(1)
    out = {k: v.numpy() for k, v in model.peel(x).items()}
    hand = by_hand(model, x, truths)
    for name in ("d1", "r1", "d2", "r2"):
        np.testing.assert_allclose(out[name], hand[name], rtol=1e-4, atol=1e-3 * np.abs(x).max())
    # d2 is in flux units: scaling the blend scales every output by the same factor.
    scaled = model.peel(1000.0 * x)
    np.testing.assert_allclose(scaled["d2"].numpy(), 1000.0 * out["d2"], rtol=1e-3,
                               atol=1e-2 * np.abs(out["d2"]).max())
    assert np.abs(out["d2"]).max() > 1.0  # not a normalized (~1) image


def test_losses_equal_eq3_and_eq4_by_hand():
    model = joint(learning_rate=0.0, classifier_learning_rate=0.0)
    x, truths = galaxies(2)
    hand = by_hand(model, x, truths)
    logs = {k: float(v) for k, v in model.train_step((x, truths)).items()}
    for name in ("l1", "ce_rdn", "rdn_loss", "classifier_loss", "classifier_accuracy"):
        assert logs[name] == pytest.approx(hand[name], rel=1e-4), name
    for metric in model.metrics:
        metric.reset_state()
    logs = {k: float(v) for k, v in model.test_step({"blend": x, "isolated": truths}).items()}
    for name in ("l1", "ce_rdn", "rdn_loss", "classifier_loss"):
        assert logs[name] == pytest.approx(hand[name], rel=1e-4), name
    # The weights are those of the paper: lambda and alpha change the reported losses.
    other = joint(learning_rate=0.0, classifier_learning_rate=0.0, ce_weight=0.5,
                  single_weight=1.0)
    logs = {k: float(v) for k, v in other.train_step((x, truths)).items()}
    hand = by_hand(other, x, truths, alpha=1.0, lam=0.5)
    assert logs["rdn_loss"] == pytest.approx(hand["rdn_loss"], rel=1e-4)
    assert logs["classifier_loss"] == pytest.approx(hand["classifier_loss"], rel=1e-4)


def test_symmetric_loss_takes_the_closer_truth_of_equally_bright_galaxies():
    model = joint(loss="symmetric", learning_rate=0.0, classifier_learning_rate=0.0)
    plain = joint(learning_rate=0.0, classifier_learning_rate=0.0)
    x, truths = galaxies(3)
    t1, t2 = truths[:, 0], truths[:, 1]
    ratio = t1.sum(axis=(1, 2, 3)) / t2.sum(axis=(1, 2, 3))
    equal = np.stack([t1, t2 * ratio[:, None, None, None]], axis=1)  # same flux per blend
    x_equal = equal.sum(axis=1)
    s = np.abs(x_equal).max(axis=(1, 2, 3), keepdims=True)
    d1n = model.deblender(x_equal / s).numpy()
    l1 = [np.abs(d1n - equal[:, k] / s).mean(axis=(1, 2, 3)) for k in (0, 1)]
    logs = model.train_step((x_equal, equal))
    assert float(logs["l1"]) == pytest.approx(np.minimum(*l1).mean(), rel=1e-5)
    assert np.minimum(*l1).mean() < l1[0].mean()  # the test batch can tell the two apart
    # Very different brightness (ratio < 0.8): the plain L1 to the brightest.
    faint = np.stack([t1, 0.1 * t2], axis=1)
    for m in model.metrics:
        m.reset_state()
    a = float(model.train_step((faint.sum(axis=1), faint))["l1"])
    b = float(plain.train_step((faint.sum(axis=1), faint))["l1"])
    assert a == pytest.approx(b, rel=1e-6)


def test_fit_on_a_dataset_of_unknown_length_counts_each_batch_once():
    # A static batch size and an unknown length (TFRecord shards after skip/filter) make Keras
    # call the step once more at the end of each epoch; it must change nothing.
    model = joint(learning_rate=1e-3, classifier_learning_rate=1e-3)
    x, truths = galaxies(9, n=6)
    data = (tf.data.Dataset.from_tensor_slices((x, truths)).filter(lambda a, b: True)
            .batch(BATCH, drop_remainder=True))
    assert data.element_spec[0].shape[0] == BATCH
    frozen = joint(learning_rate=0.0, classifier_learning_rate=0.0)
    hand = by_hand(frozen, x[:BATCH], truths[:BATCH])
    history = model.fit(data, epochs=2, verbose=0).history
    assert int(model.rdn_optimizer.iterations) == 2
    assert int(model.classifier_optimizer.iterations) == 2
    for name in ("ce_rdn", "classifier_loss", "l1"):
        assert history[name][0] == pytest.approx(hand[name], rel=1e-4), name


def test_each_loss_updates_only_its_network_with_an_adam_step_of_its_gradient():
    x, truths = galaxies(4)
    lr = 1e-3

    # Gradients of Eq. 3 (RDN variables) and Eq. 4 (classifier variables), written out again.
    model = joint(learning_rate=lr, classifier_learning_rate=lr)
    rdn_before = [v.numpy().copy() for v in model.deblender.trainable_variables]
    clf_before = [v.numpy().copy() for v in model.classifier.trainable_variables]
    xs = tf.constant(x)
    t1 = tf.constant(truths[:, 0])
    s = tf.reduce_max(tf.abs(xs), axis=[1, 2, 3], keepdims=True)
    with tf.GradientTape() as tape:
        d1n = model.deblender(xs / s, training=True)
        d1 = d1n * s
        l1 = tf.reduce_mean(tf.abs(d1n - t1 / s), axis=[1, 2, 3])
        logits = model.classifier(d1 / tf.reduce_max(tf.abs(d1), axis=[1, 2, 3], keepdims=True))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.ones(BATCH, tf.int32), logits)
        eq3 = tf.reduce_mean(l1 + 1e-4 * ce)
    rdn_grads = tape.gradient(eq3, model.deblender.trainable_variables)
    hand = by_hand(model, x, truths)
    with tf.GradientTape() as tape:
        eq4 = 0.0
        for name, label in (("x", 2), ("d1", 1), ("d2", 1), ("r1", 1), ("r2", 0)):
            image = x if name == "x" else hand[name]
            logits = model.classifier(np_normalize(image)[0].astype("float32"))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.fill([BATCH], label), logits)
            eq4 += (0.2 if label == 1 else 1.0) * ce
        for k in (0, 1):
            logits = model.classifier(np_normalize(truths[:, k])[0].astype("float32"))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.ones(BATCH, tf.int32), logits)
            eq4 += 0.2 * ce
        eq4 = tf.reduce_mean(eq4)
    clf_grads = tape.gradient(eq4, model.classifier.trainable_variables)

    model.train_step((x, truths))
    for before, grad, var in zip(rdn_before, rdn_grads, model.deblender.trainable_variables):
        np.testing.assert_allclose(var.numpy() - before, adam_first_step(grad.numpy(), lr),
                                   atol=lr * 2e-2)
    for before, grad, var in zip(clf_before, clf_grads, model.classifier.trainable_variables):
        np.testing.assert_allclose(var.numpy() - before, adam_first_step(grad.numpy(), lr),
                                   atol=lr * 2e-2)
    assert sum(np.abs(v.numpy() - b).sum()
               for v, b in zip(model.deblender.trainable_variables, rdn_before)) > 0
    assert sum(np.abs(v.numpy() - b).sum()
               for v, b in zip(model.classifier.trainable_variables, clf_before)) > 0
    # Phase-1 batch-norm statistics are not touched in phase 2.
    clf_fixed = joint().classifier.non_trainable_variables
    for a, b in zip(model.classifier.non_trainable_variables, clf_fixed):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("frozen", ["deblender", "classifier"])
def test_a_zero_learning_rate_freezes_exactly_that_network(frozen):
    rates = {"learning_rate": 1e-3, "classifier_learning_rate": 1e-3}
    rates["learning_rate" if frozen == "deblender" else "classifier_learning_rate"] = 0.0
    model = joint(**rates)
    x, truths = galaxies(5)
    before = {n: [w.copy() for w in getattr(model, n).get_weights()]
              for n in ("deblender", "classifier")}
    model.train_step((x, truths))
    for name in ("deblender", "classifier"):
        changed = any(not np.array_equal(a, b)
                      for a, b in zip(before[name], getattr(model, name).get_weights()))
        assert changed == (name != frozen), name


@pytest.mark.slow
def test_fit_and_backup_and_restore_resume_a_killed_run(tmp_path):
    x, truths = galaxies(6, n=8)
    data = tf.data.Dataset.from_tensor_slices((x, truths)).batch(BATCH)
    initial = joint(seed=0).get_weights()

    def fresh(seed: int) -> JointModel:
        model = joint(seed=seed, learning_rate=1e-3, classifier_learning_rate=1e-3)
        if seed == 0:
            model.set_weights(initial)
        return model

    reference = fresh(0)
    reference.fit(data, epochs=2, verbose=0)

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("killed")

    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fresh(0).fit(data, epochs=2, verbose=0,
                     callbacks=[keras.callbacks.BackupAndRestore(backup), Kill()])
    assert os.path.exists(os.path.join(backup, "latest.weights.h5"))

    resumed = fresh(seed=7)  # other initial weights: everything must come from the backup
    history = resumed.fit(data, epochs=2, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["rdn_loss"]) == 1  # only the second epoch ran
    assert int(resumed.rdn_optimizer.iterations) == 4
    assert int(resumed.classifier_optimizer.iterations) == 4
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(resumed.classifier_optimizer.variables,
                    reference.classifier_optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-9)


def test_constructor_checks():
    rdn, classifier = tiny_nets()
    with pytest.raises(TfdeblendError, match="loss"):
        JointModel(rdn, classifier, loss="l2")
    other = build_classifier(get_classifier_config("tiny", BANDS, 64))
    with pytest.raises(TfdeblendError, match="differ"):
        JointModel(rdn, other)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, sys.argv[1])
    from test_joint import galaxies, tiny_nets
    from tfdeblend.training.joint import JointModel

    x, truths = galaxies(8)
    data = tf.data.Dataset.from_tensor_slices((x, truths)).batch(len(x))
    initial = [n.get_weights() for n in tiny_nets(0)]

    def run(strategy):
        with strategy.scope():
            nets = tiny_nets(1)
            for net, weights in zip(nets, initial):
                net.set_weights(weights)
            model = JointModel(*nets, learning_rate=1e-3, classifier_learning_rate=1e-3)
            model.compile()
        logs = model.fit(data, epochs=1, verbose=0).history
        slots = [v.numpy() for opt in (model.rdn_optimizer, model.classifier_optimizer)
                 for v in opt.variables]
        return model.get_weights(), {k: v[-1] for k, v in logs.items()}, slots

    from tfdeblend.training.strategy import get_strategy

    mirrored = get_strategy("mirrored")
    w1, logs1, m1 = run(tf.distribute.get_strategy())
    w2, logs2, m2 = run(mirrored)
    w0 = [w for ws in initial for w in ws]
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
        "max_change": max(float(np.abs(a - b).max()) for a, b in zip(w1, w0)),
        # Adam's moments hold the gradient's scale (its first step does not).
        "max_moment_rel_diff": max(
            float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(m1, m2)),
        "logs_single": logs1, "logs_mirrored": logs2,
    }))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_step_equals_single_device_step():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, tests_dir], capture_output=True, text=True,
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["max_change"] > 1e-4  # the step did something ...
    assert out["max_weight_diff"] < 1e-5  # ... and the same thing on two replicas
    assert out["max_moment_rel_diff"] < 1e-3  # gradients summed over replicas, not averaged
    for name, value in out["logs_single"].items():
        assert out["logs_mirrored"][name] == pytest.approx(value, rel=1e-4), name


# ----------------------------------------------------------------------------- train_phase2


def test_check_phase2_dataset_names_the_mismatch():
    from tfdeblend.errors import DataError
    from tfdeblend.training.joint import check_phase2_dataset

    good = {"kind": "deblender", "bands": ["g", "r", "i"], "stamp_size": 80, "max_sources": 2}
    check_phase2_dataset(good, ("g", "r", "i"), 80)
    check_phase2_dataset({**good, "kind": "test", "config": {"n_gal": 2}}, ("g", "r", "i"), 80)
    cases = [
        ({**good, "kind": "classifier"}, "2-galaxy blends"),
        ({**good, "kind": "test", "config": {"n_gal": 3}}, "3-galaxy"),
        ({**good, "bands": ["r", "i"]}, "bands r,i"),
        ({**good, "stamp_size": 64}, "stamp size 64"),
    ]
    for manifest, message in cases:
        with pytest.raises(DataError, match=message):
            check_phase2_dataset(manifest, ("g", "r", "i"), 80)


def phase2_config(**changes):
    from tfdeblend.training.config import paper_train_config

    return paper_train_config(2).replace(
        preset="tiny", batch_size=4, epochs=2, validation_fraction=0.25, learning_rate=1e-3,
        classifier_learning_rate=1e-3, **changes,
    )


def test_train_phase2_writes_a_run_with_both_fine_tuned_networks(
    deblender_data_dir, tiny_deblender_run, tiny_classifier_run, tmp_path
):
    from tfdeblend.training.joint import train_phase2
    from tfdeblend.training.rundir import load_run

    out = tmp_path / "joint"
    history = train_phase2(deblender_data_dir, tiny_deblender_run, tiny_classifier_run, out,
                           phase2_config())
    assert history["epoch"] == [0, 1]
    for key in ("rdn_loss", "l1", "ce_rdn", "classifier_loss", "classifier_accuracy",
                "val_rdn_loss", "val_classifier_loss"):
        assert len(history[key]) == 2 and all(np.isfinite(history[key])), key
    run = load_run(out)
    assert run.deblender is not None and run.classifier is not None
    before_deb = load_run(tiny_deblender_run).deblender
    before_clf = load_run(tiny_classifier_run).classifier
    assert run.bands == load_run(tiny_deblender_run).bands
    assert run.config["train"]["phase"] == 2 and run.config["train"]["net"] == "joint"
    assert run.config["phase1"]["deblender_run"] == str(tiny_deblender_run.resolve())
    assert run.model_config("deblender") == load_run(tiny_deblender_run).model_config("deblender")
    for new, old in ((run.deblender, before_deb), (run.classifier, before_clf)):
        assert any(not np.array_equal(a, b) for a, b in zip(new.get_weights(), old.get_weights()))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch-001.keras", "epoch-002.keras"]
    # The per-epoch checkpoint is a whole JointModel that loads in safe mode.
    restored = keras.saving.load_model(out / "checkpoints" / "epoch-002.keras", compile=False)
    assert isinstance(restored, JointModel)
    for a, b in zip(restored.deblender.get_weights(), run.deblender.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TfdeblendError, match="already exists"):
        train_phase2(deblender_data_dir, tiny_deblender_run, tiny_classifier_run, out,
                     phase2_config())


def test_train_phase2_refuses_mismatched_inputs(
    deblender_data_dir, classifier_data_dir, tiny_deblender_run, tiny_classifier_run, tmp_path
):
    from tfdeblend.errors import ModelError
    from tfdeblend.training.joint import train_phase2

    out = tmp_path / "joint"
    with pytest.raises(TfdeblendError, match="2-galaxy blends"):
        train_phase2(classifier_data_dir, tiny_deblender_run, tiny_classifier_run, out,
                     phase2_config())
    with pytest.raises(ModelError, match="no deblender.keras"):
        train_phase2(deblender_data_dir, tiny_classifier_run, tiny_classifier_run, out,
                     phase2_config())
    with pytest.raises(ModelError, match="does not exist"):
        train_phase2(deblender_data_dir, tmp_path / "nowhere", tiny_classifier_run, out,
                     phase2_config())
    assert not out.exists()  # nothing half written
