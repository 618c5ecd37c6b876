"""Tests of the iterative peel (tfdeblend.deblend).

The peel rules are checked with two small *oracle* Keras models whose answers are known exactly:
the image holds up to three galaxies in three fixed, disjoint boxes; the oracle classifier counts
the boxes holding flux and the oracle deblender returns the brightest box (or the two brightest,
or nothing, to provoke the medium and low rules). Pixel peaks are powers of two so the
normalization is exact and a peeled box is exactly zero afterwards. The trained tiny models of
the project are used for the flux-conservation test.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from peel_helpers import make_peeler, peel_config, peel_numpy

from tfdeblend.config import QUALITY_NAMES
from tfdeblend.deblend import Peeler, centroids, residual_snr
from tfdeblend.errors import TfdeblendError
from tfdeblend.peel_config import PeelConfig

SIZE = 16
BOXES = [(slice(1, 5), slice(1, 5)), (slice(6, 10), slice(6, 10)), (slice(11, 15), slice(11, 15))]


def _masks() -> np.ndarray:
    masks = np.zeros((3, SIZE, SIZE, 1), "float32")
    for i, (rows, cols) in enumerate(BOXES):
        masks[i, rows, cols, 0] = 1.0
    return masks


@keras.saving.register_keras_serializable(package="tfdeblend_tests")
class BoxCount(keras.layers.Layer):
    """Logits peaking at the number of boxes that hold any flux."""

    def call(self, images):
        masks = keras.ops.convert_to_tensor(_masks())  # (3, H, W, 1)
        flux = keras.ops.sum(keras.ops.abs(images)[:, None] * masks, axis=(2, 3, 4))  # (N, 3)
        count = keras.ops.sum(keras.ops.cast(flux > 0, "int32"), axis=1)
        return 10.0 * keras.ops.one_hot(count, 4)


@keras.saving.register_keras_serializable(package="tfdeblend_tests")
class BoxDeblend(keras.layers.Layer):
    """Return the ``n_peel`` brightest boxes of the image (0, 1 or 2), plus ``leak`` times the
    next brightest box (a deblender that cuts the overlap wrongly)."""

    def __init__(self, n_peel: int = 1, leak: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n_peel = n_peel
        self.leak = leak

    def get_config(self):
        return {**super().get_config(), "n_peel": self.n_peel, "leak": self.leak}

    def call(self, images):
        masks = keras.ops.convert_to_tensor(_masks())
        flux = keras.ops.sum(images[:, None] * masks, axis=(2, 3, 4))  # (N, 3)
        order = keras.ops.argsort(-flux, axis=1)
        keep = keras.ops.zeros_like(flux)
        for j in range(self.n_peel):
            keep = keep + keras.ops.one_hot(order[:, j], 3)
        if self.leak:
            keep = keep + self.leak * keras.ops.one_hot(order[:, self.n_peel], 3)
        mask = keras.ops.sum(keep[:, :, None, None, None] * masks[None], axis=1)
        return images * mask


def oracle_models(n_peel: int = 1, bands: int = 2, leak: float = 0.0):
    inputs = keras.Input((SIZE, SIZE, bands))
    classifier = keras.Model(inputs, BoxCount()(inputs))
    inputs = keras.Input((SIZE, SIZE, bands))
    deblender = keras.Model(inputs, BoxDeblend(n_peel, leak)(inputs))
    return deblender, classifier


def blend(fluxes: list[float], bands: int = 2) -> np.ndarray:
    """A blend with a box galaxy of peak ``f`` (a power of two) per non-zero entry."""
    image = np.zeros((SIZE, SIZE, bands), "float32")
    for (rows, cols), peak in zip(BOXES, fluxes):
        image[rows, cols, :] = peak * 0.5
        image[rows.start + 1, cols.start + 1, :] = peak
    return image


def test_three_galaxies_peel_in_brightness_order_with_high_quality():
    peeler = make_peeler(*oracle_models(1), count_views=1, max_iterations=6)
    images = np.stack([blend([4.0, 64.0, 16.0]), blend([0, 8.0, 2.0]), blend([32.0, 0, 0])])
    out = peel_numpy(peeler, images)
    assert out["components"].shape == (3, 6, SIZE, SIZE, 2)
    np.testing.assert_array_equal(out["n_components"], [3, 2, 1])
    np.testing.assert_array_equal(out["quality"], [2, 2, 2])
    np.testing.assert_array_equal(out["counts"][0], [3, 2, 1, 0, -1, -1, -1])
    np.testing.assert_array_equal(out["counts"][1], [2, 1, 0, -1, -1, -1, -1])
    np.testing.assert_array_equal(out["counts"][2], [1, 0, -1, -1, -1, -1, -1])
    # peel order = brightness order; each component is exactly one galaxy in input units
    np.testing.assert_array_equal(out["components"][0, 0], blend([0, 64.0, 0]))
    np.testing.assert_array_equal(out["components"][0, 1], blend([0, 0, 16.0]))
    np.testing.assert_array_equal(out["components"][0, 2], blend([4.0, 0, 0]))
    assert not out["components"][0, 3:].any()
    np.testing.assert_array_equal(out["residual"], 0.0)
    np.testing.assert_array_equal(out["components"].sum(axis=1) + out["residual"], images)


def test_medium_low_guard_and_empty_rules_in_one_batch():
    images = np.stack([blend([4.0, 64.0, 16.0]), blend([0, 0, 0]), blend([2.0, 0, 8.0])])
    # the deblender takes two galaxies at once: counts 3, 1, 0 -> medium
    out = peel_numpy(make_peeler(*oracle_models(2), count_views=1), images)
    np.testing.assert_array_equal(out["counts"][0, :3], [3, 1, 0])
    np.testing.assert_array_equal(out["quality"], [1, 2, 1])  # blank stamp: 0 components, high
    np.testing.assert_array_equal(out["n_components"], [2, 0, 1])
    np.testing.assert_array_equal(out["residual"][1], 0.0)
    assert not out["components"][1].any()

    # the deblender returns nothing: the same count three times in a row -> low, stop there
    out = peel_numpy(make_peeler(*oracle_models(0), count_views=1), images)
    np.testing.assert_array_equal(out["counts"][0], [3, 3, 3, -1, -1, -1, -1])
    np.testing.assert_array_equal(out["quality"], [0, 2, 0])
    np.testing.assert_array_equal(out["n_components"], [2, 0, 2])
    np.testing.assert_array_equal(out["residual"], images)

    # max-iterations guard: two steps allowed, three galaxies -> low after two components
    out = peel_numpy(make_peeler(*oracle_models(1), count_views=1, max_iterations=2), images)
    assert out["components"].shape[1] == 2
    np.testing.assert_array_equal(out["counts"][0], [3, 2, 1])
    np.testing.assert_array_equal(out["quality"], [0, 2, 2])
    np.testing.assert_array_equal(out["n_components"], [2, 0, 2])
    assert QUALITY_NAMES[int(out["quality"][0])] == "low"


def test_units_do_not_matter_and_single_calls():
    peeler = make_peeler(*oracle_models(1), count_views=1)
    images = np.stack([blend([4.0, 64.0, 16.0])])
    scaled = peel_numpy(peeler, images * 1024.0)  # a power of two keeps the test exact
    plain = peel_numpy(peeler, images)
    np.testing.assert_array_equal(scaled["components"], plain["components"] * 1024.0)
    np.testing.assert_array_equal(scaled["counts"], plain["counts"])
    one = peeler.deblend_one(tf.constant(images)).numpy()
    np.testing.assert_array_equal(one[0], blend([0, 64.0, 0]))
    counted = peeler.count(tf.constant(images))
    assert counted["count"].numpy().tolist() == [3]
    np.testing.assert_allclose(counted["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_eager_and_compiled_agree_and_batches_are_independent():
    models = oracle_models(1)
    rng = np.random.default_rng(0)
    images = np.stack([blend(list(2.0 ** rng.integers(0, 8, 3))) for _ in range(5)])
    eager = Peeler(*models, peel_config(count_views=1))(tf.constant(images))
    compiled = peel_numpy(make_peeler(*models, count_views=1), images, batch_size=2)
    for key in compiled:
        np.testing.assert_array_equal(eager[key].numpy(), compiled[key])


def test_trained_models_conserve_flux(tiny_peel_models, rendered_blends):
    """With the real (tiny, trained) networks: components + residual == input (float32)."""
    deblender, classifier = tiny_peel_models
    images = rendered_blends
    out = peel_numpy(make_peeler(deblender, classifier, max_iterations=4), images, batch_size=3)
    total = out["components"].sum(axis=1) + out["residual"]
    scale = np.abs(images).max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(total / scale, images / scale, atol=1e-5)
    n = out["n_components"]
    assert ((n >= 0) & (n <= 4)).all()
    for i in range(len(images)):
        assert not out["components"][i, n[i] :].any()
        steps = out["counts"][i]
        assert (steps[: n[i] + 1] >= 0).all() or out["quality"][i] == 0
    assert set(np.unique(out["quality"])) <= {0, 1, 2}


def test_real_networks_run_on_steps_where_no_blend_peels(tiny_peel_models, rendered_blends):
    """A batch in which no blend peels hands the networks an empty batch; TensorFlow's oneDNN
    convolutions (on by default on AVX-512 CPUs) fail on those unless the peel guards them."""
    deblender, classifier = tiny_peel_models
    blank = np.zeros((2, *rendered_blends.shape[1:]), "float32")  # always counted 0
    images = np.concatenate([blank, rendered_blends[:2]])
    peeler = make_peeler(deblender, classifier, stamp_size=images.shape[1],
                         n_bands=images.shape[-1], split=True, keep_snr=5.0)
    out = peel_numpy(peeler, images, batch_size=2)  # the first batch never peels nor splits
    assert out["n_components"][:2].tolist() == [0, 0]
    assert out["quality"][:2].tolist() == [2, 2]
    np.testing.assert_array_equal(out["residual"][:2], blank)
    empty = tf.zeros((0, *images.shape[1:]))
    assert peeler.deblend_one(empty).shape == (0, *images.shape[1:])
    assert peeler.count(empty)["count"].shape == (0,)
    assert peeler.peel(empty)["components"].shape[0] == 0


@pytest.fixture(scope="module")
def tiny_peel_models(tiny_deblender_run, tiny_classifier_run):
    """The project's tiny trained deblender and classifier (fixtures_models.py)."""
    from tfdeblend.training.rundir import load_run

    return load_run(tiny_deblender_run).deblender, load_run(tiny_classifier_run).classifier


@pytest.fixture(scope="module")
def rendered_blends(fits_testset):
    """Real BTK stamps (6, 80, 80, 3) from the data fixture (fixtures_data.py)."""
    from tfdeblend.data import load_testset

    return load_testset(fits_testset)["blend"][:6].astype("float32")


# ---------------------------------------------------------------- flux-conserving components


def _gauss(size, x0, y0, sigma):
    yy, xx = np.mgrid[:size, :size]
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return (g / g.sum()).astype("float32")


def test_noise_std_is_a_robust_sigma():
    from tfdeblend.deblend import noise_std

    rng = np.random.default_rng(1)
    noise = rng.normal(size=(3, 64, 64, 2)).astype("float32") * np.array([2.0, 5.0], "float32")
    noise[0, 10:20, 10:20, :] += 1e4  # a bright leftover source barely moves it
    sigma = noise_std(noise).numpy()
    np.testing.assert_allclose(sigma, np.broadcast_to([2.0, 5.0], (3, 2)), rtol=0.08)
    assert np.all(noise_std(np.zeros((1, 8, 8, 2), "float32")).numpy() == 0)


def test_conserve_flux_recovers_what_the_models_got_wrong():
    from tfdeblend.deblend import conserve_flux

    size, sigma_noise = 48, 1.0
    a, b = _gauss(size, 18, 24, 3.0), _gauss(size, 29, 24, 2.5)
    rng = np.random.default_rng(0)
    truth = np.array([3000.0, 800.0])
    fluxes = []
    for _ in range(20):
        noise = rng.normal(scale=sigma_noise, size=(size, size)).astype("float32")
        image = truth[0] * a + truth[1] * b + noise
        # the "network" got both fluxes wrong by -20 % and -40 %
        models = np.stack([0.8 * truth[0] * a, 0.6 * truth[1] * b])[..., None][None]
        models = models.astype("float32")
        image = image.astype("float32")
        residual = image[None, ..., None] - models.sum(1)
        out = conserve_flux(tf.constant(models), tf.constant(residual))
        conserved = out["conserved"].numpy()
        # inside the footprint the data are split among the galaxies, nothing is created
        left = image[None, ..., None] - conserved.sum(1)
        footprint = conserved.sum(1) != models.sum(1)
        np.testing.assert_allclose(left[footprint], 0.0, atol=1e-3)
        np.testing.assert_allclose(left[~footprint], residual[~footprint], atol=1e-4)
        # the unmodelled flux (20 % and 40 % of the galaxies) inflates the MAD a little
        assert abs(out["noise_std"].numpy()[0, 0] - sigma_noise) < 0.25
        fluxes.append(conserved.sum(axis=(2, 3, 4))[0])
    errors = np.mean(fluxes, axis=0) / truth - 1
    assert np.all(np.abs(errors) < 0.03), errors  # models alone: -0.2 and -0.4


def test_an_empty_batch_peels_to_empty_outputs():
    out = Peeler(*oracle_models(1), peel_config(count_views=1))(tf.zeros((0, SIZE, SIZE, 2)))
    assert out["components"].shape[0] == 0 and out["conserved"].shape[0] == 0
    assert out["noise_std"].shape == (0, 2)


def test_peel_outputs_conserved_components():
    from tfdeblend.deblend import conserve_flux

    peeler = Peeler(*oracle_models(1), peel_config(count_views=1))
    images = np.stack([blend([4.0, 2.0, 0.0]), blend([0.0, 8.0, 16.0])])
    out = peeler(tf.constant(images))
    assert out["conserved"].shape == out["components"].shape
    assert out["noise_std"].shape == (2, 2)
    # the oracle peels exactly, so the residual is zero and there is nothing to hand back
    np.testing.assert_array_equal(out["conserved"].numpy(), out["components"].numpy())
    # a constant residual has no noise: all of it inside the galaxies' support goes to them
    again = conserve_flux(out["components"], out["residual"] + 1.0)["conserved"].numpy()
    support = images > 0
    np.testing.assert_allclose(again.sum(1)[support], images[support] + 1.0, atol=1e-5)
    np.testing.assert_array_equal(again.sum(1)[~support], 0.0)


# ---------------------------------------------------------------- refinement after the peel


def test_refinement_reestimates_each_galaxy_from_the_blend_minus_the_others():
    """A deblender that leaks 1/4 of the next galaxy into the brightest: the peel's components
    are wrong in the overlap; each Jacobi sweep re-estimates them from ``blend - others``."""
    models = oracle_models(1, leak=0.25)
    images = np.stack([blend([0.0, 64.0, 16.0]), blend([32.0, 0.0, 0.0])])
    plain = peel_numpy(make_peeler(*models, count_views=1, refine_steps=0), images)
    # the paper's peel: component 1 = B64 + B16 / 4, component 2 = the remaining 3/4 of B16
    np.testing.assert_allclose(plain["components"][0, 0], blend([0, 64.0, 4.0]))
    np.testing.assert_allclose(plain["components"][0, 1], blend([0, 0, 12.0]))
    refined = {
        steps: peel_numpy(make_peeler(*models, count_views=1, refine_steps=steps), images) for steps in (1, 2)
    }
    # sweep 1: B64 + (B16 / 4) / 4 and, from blend - old component 1, 3/4 B16 again;
    # sweep 2: component 2 from blend - (B64 + B16 / 16) = 15/16 B16
    np.testing.assert_allclose(refined[1]["components"][0, 0], blend([0, 64.0, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(refined[1]["components"][0, 1], blend([0, 0, 12.0]), rtol=1e-6)
    np.testing.assert_allclose(refined[2]["components"][0, 0], blend([0, 64.0, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(refined[2]["components"][0, 1], blend([0, 0, 15.0]), rtol=1e-6)
    for out in refined.values():
        # counts, quality and the number of components are the peel's; padding stays empty
        for key in ("counts", "quality", "n_components"):
            np.testing.assert_array_equal(out[key], plain[key])
        assert not out["components"][:, 2:].any()
        # a single galaxy is left alone; components + residual == input still
        np.testing.assert_array_equal(out["components"][1], plain["components"][1])
        np.testing.assert_allclose(
            out["components"].sum(axis=1) + out["residual"], images, atol=1e-5
        )
    with pytest.raises(TfdeblendError, match="refine_steps"):
        peel_config(refine_steps=-1)
    with pytest.raises(TfdeblendError, match="count_views"):
        peel_config(count_views=3)


# ---------------------------------------------------------------- counting over several views


def test_dihedral_views_are_the_eight_rotations_and_flips():
    from tfdeblend.deblend import dihedral_views

    image = np.arange(2 * 5 * 5 * 1, dtype="float32").reshape(2, 5, 5, 1)  # no symmetry
    views = dihedral_views(tf.constant(image), 8).numpy().reshape(8, 2, 5, 5, 1)
    assert len({v.tobytes() for v in views}) == 8
    np.testing.assert_array_equal(views[0], image)
    np.testing.assert_array_equal(views[1], image[:, :, ::-1])
    for k in (1, 2, 3):  # then the rotations of the image and of its mirror image
        np.testing.assert_array_equal(views[1 + k], np.rot90(image, k, axes=(1, 2)))
        np.testing.assert_array_equal(views[4 + k], np.rot90(image[:, :, ::-1], k, axes=(1, 2)))
    # the set of views of a rotated image is the same set
    rotated = dihedral_views(tf.constant(np.rot90(image, 1, axes=(1, 2)).copy()), 8).numpy()
    assert {v.tobytes() for v in rotated.reshape(8, 2, 5, 5, 1)} == {
        v.tobytes() for v in views
    }
    assert dihedral_views(tf.constant(image), 4).shape[0] == 8
    np.testing.assert_array_equal(dihedral_views(tf.constant(image), 1).numpy(), image)


def test_count_averages_the_classifier_logits_over_the_views(tiny_peel_models, rendered_blends):
    from tfdeblend.deblend import dihedral_views
    from tfdeblend.normalize import normalize

    deblender, classifier = tiny_peel_models
    images = rendered_blends
    normalized, _ = normalize(tf.constant(images))
    logits = classifier(dihedral_views(normalized, 8), training=False).numpy()
    expected = logits.reshape(8, len(images), -1).mean(axis=0)
    counts = {}
    for views, prior in ((1, 0.0), (8, 0.0), (8, -1.5), (1, 5.0), (8, -5.0)):
        peeler = make_peeler(deblender, classifier, count_views=views, prior_three=prior)
        counted = peeler.count(tf.constant(images))
        # prior_three is added to the (averaged) logit of a count of 3
        mean = (expected if views == 8 else logits[: len(images)]) + [0.0, 0.0, 0.0, prior]
        np.testing.assert_array_equal(counted["count"].numpy(), mean.argmax(axis=1))
        np.testing.assert_allclose(
            counted["probabilities"].numpy(), tf.nn.softmax(mean).numpy(), rtol=1e-4, atol=1e-6
        )
        counts[prior] = counted["count"].numpy()
    assert (counts[5.0] == 3).all() and (counts[-5.0] != 3).all()
    # the shipped peel's prior; the paper and models exported before it: none
    assert PeelConfig().prior_three == -1.0 and PeelConfig.preset("paper").prior_three == 0.0
    assert PeelConfig.from_metadata({"peel": {"max_iterations": 4}}).prior_three == 0.0
    # with all 8 views, a rotated or mirrored blend peels with the same counts
    peeler = make_peeler(deblender, classifier, max_iterations=3, count_views=8)
    plain = peel_numpy(peeler, images)
    turned = peel_numpy(peeler, np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))[:, ::-1]))
    np.testing.assert_array_equal(plain["counts"][:, 0], turned["counts"][:, 0])


# ---------------------------------------------------------------- splitting merged components


@keras.saving.register_keras_serializable(package="tfdeblend_tests")
class MergeInNoise(keras.layers.Layer):
    """Return the two brightest boxes when the image holds flux outside the boxes (as a noisy
    blend does), else the brightest box: a deblender that merges close galaxies in a blend but
    separates them in its own noiseless model."""

    def call(self, images):
        masks = keras.ops.convert_to_tensor(_masks())
        flux = keras.ops.sum(images[:, None] * masks, axis=(2, 3, 4))  # (N, 3)
        outside = keras.ops.sum(keras.ops.abs(images) * (1.0 - keras.ops.sum(masks, 0)), (1, 2, 3))
        order = keras.ops.argsort(-flux, axis=1)
        keep = keras.ops.one_hot(order[:, 0], 3)
        second = keras.ops.cast(outside > 0, "float32")[:, None]
        keep = keep + second * keras.ops.one_hot(order[:, 1], 3)
        mask = keras.ops.sum(keep[:, :, None, None, None] * masks[None], axis=1)
        return images * mask


def merging_models():
    """The oracle classifier, the :class:`MergeInNoise` deblender, and a 2x2-pixel "noise" image
    (flux outside the boxes: added to a blend, it makes the deblender merge the two brightest;
    a single pixel would be removed as an outlier before the networks see it)."""
    _, classifier = oracle_models(1)
    inputs = keras.Input((SIZE, SIZE, 2))
    deblender = keras.Model(inputs, MergeInNoise()(inputs))
    noisy = np.zeros((SIZE, SIZE, 2), "float32")
    noisy[:2, 5:7] = 1.0  # outside the boxes
    return deblender, classifier, noisy


def test_split_separates_a_component_the_classifier_counts_as_two():
    deblender, classifier, noisy = merging_models()
    images = np.stack([
        blend([0.0, 64.0, 16.0]) + noisy,  # counts 2, 0: one component holding both galaxies
        blend([4.0, 64.0, 16.0]) + noisy,  # counts 3, 1, 0: two components for three galaxies
        blend([0.0, 64.0, 16.0]),  # no merge: peeled one by one
        blend([0.0, 0.0, 32.0]) + noisy,  # one galaxy: nothing to split
    ])
    plain = peel_numpy(make_peeler(deblender, classifier, count_views=1, refine_steps=0), images)
    np.testing.assert_array_equal(plain["n_components"], [1, 2, 2, 1])
    np.testing.assert_array_equal(plain["quality"], [1, 1, 2, 2])
    np.testing.assert_array_equal(plain["split"], 0)
    for refine_steps in (0, 2):
        peeler = make_peeler(
            deblender, classifier, count_views=1, refine_steps=refine_steps, split=True
        )
        out = peel_numpy(peeler, images)
        np.testing.assert_array_equal(out["split"], [1, 1, 0, 0])
        np.testing.assert_array_equal(out["n_components"], [2, 3, 2, 1])
        # the merged component keeps its brightest galaxy; the other one comes last
        np.testing.assert_array_equal(out["components"][0, 0], blend([0, 64.0, 0]))
        np.testing.assert_array_equal(out["components"][0, 1], blend([0, 0, 16.0]))
        np.testing.assert_array_equal(out["components"][1, 0], blend([0, 64.0, 0]))
        np.testing.assert_array_equal(out["components"][1, 1], blend([4.0, 0, 0]))
        np.testing.assert_array_equal(out["components"][1, 2], blend([0, 0, 16.0]))
        for i in (2, 3):
            np.testing.assert_array_equal(out["components"][i], plain["components"][i])
        # counts and quality describe the peel; the sum of the components does not change
        for key in ("counts", "quality"):
            np.testing.assert_array_equal(out[key], plain[key])
        np.testing.assert_array_equal(out["residual"], plain["residual"])
        np.testing.assert_allclose(out["components"].sum(1) + out["residual"], images)


class AlmostAll(keras.layers.Layer):
    """A deblender whose "brightest galaxy" is 98 % of its input (a model off by 2 %)."""

    def call(self, images):
        return 0.98 * images


class AlwaysTwo(keras.layers.Layer):
    """A classifier that counts every image as two galaxies."""

    def call(self, images):
        return keras.ops.zeros_like(images[:, 0, 0, :1]) + keras.ops.convert_to_tensor(
            [[0.0, 0.0, 10.0, 0.0]])


def bright_galaxy_off_by_two_percent():
    """``(deblender, classifier, galaxy)``: an RDN whose galaxy is 98 % of its input, a
    classifier that always counts two, and a bright Gaussian galaxy ``(SIZE, SIZE)``."""
    inputs = keras.Input((SIZE, SIZE, 2))
    deblender = keras.Model(inputs, AlmostAll()(inputs))
    inputs = keras.Input((SIZE, SIZE, 2))
    classifier = keras.Model(inputs, AlwaysTwo()(inputs))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    galaxy = 1e4 * np.exp(-((xx - 8) ** 2 + (yy - 8) ** 2) / (2 * 2.0**2))
    return deblender, classifier, galaxy


def test_a_bright_model_is_not_split_into_its_own_error():
    """The classifier counts a bright galaxy's model as two; what the RDN leaves of it is 2 %
    of the model, far above the sky noise but within the model's own error: with
    ``model_error`` the split is refused, without it the model is split."""
    deblender, classifier, galaxy = bright_galaxy_off_by_two_percent()
    components = np.zeros((1, 3, SIZE, SIZE, 2), "float32")
    components[0, 0] = galaxy[..., None]
    sigma = tf.ones([1, 2])
    for model_error, expected in ((0.03, 0), (0.0, 1)):
        peeler = Peeler(deblender, classifier,
                        peel_config(count_views=1, max_iterations=3, split=True, detect_snr=10.0,
                                    model_error=model_error))
        _, n_components, split = peeler.split_merged(
            tf.constant(components), tf.constant([1]), tf.constant([2]), sigma=sigma)
        assert split.numpy().tolist() == [expected]
        assert n_components.numpy().tolist() == [1 + expected]


def test_a_component_holding_two_separated_galaxies_is_cut_in_two():
    # what the RDN sometimes returns for two galaxies 20 px and more apart: one component
    yy, xx = np.mgrid[:80, :80].astype(np.float32)

    def blob(x, y, flux, sx=2.5, sy=2.5):
        return flux * np.exp(-0.5 * (((xx - x) / sx) ** 2 + ((yy - y) / sy) ** 2))

    comps = np.zeros((3, 6, 80, 80, 3), np.float32)
    comps[0, 0] = (blob(25, 30, 50.0) + blob(55, 50, 20.0))[..., None]  # two galaxies
    comps[1, 0] = blob(40, 40, 50.0, sx=12.0, sy=3.0)[..., None]  # one long galaxy, one peak
    comps[2, 0] = (blob(38, 40, 50.0) + blob(44, 40, 30.0))[..., None]  # a close pair: not this step's
    peeler = Peeler(None, None, PeelConfig(split_distance=10.0))
    out, n, split = peeler.split_separated(tf.constant(comps), tf.constant([1, 1, 1]),
                                           tf.constant([2, 2, 2]), sigma=tf.ones((3, 3)))
    out = out.numpy()
    assert split.numpy().tolist() == [1, 0, 0] and n.numpy().tolist() == [2, 1, 1]
    np.testing.assert_allclose(out.sum(1), comps.sum(1), atol=1e-4)  # the residual is unchanged
    first, second = (centroids(tf.constant(out[0, k])).numpy() for k in (0, 1))
    np.testing.assert_allclose(first, [25, 30], atol=0.5)
    np.testing.assert_allclose(second, [55, 50], atol=0.5)
    # peaks 36 px apart are not "farther than 40 px"
    _, _, split = Peeler(None, None, PeelConfig(split_distance=40.0)).split_separated(
        tf.constant(comps), tf.constant([1, 1, 1]), tf.constant([2, 2, 2]), sigma=tf.ones((3, 3)))
    assert split.numpy().tolist() == [0, 0, 0]
    # the second peak on another component of the blend: that galaxy's light, not a new one
    # (and a blend with two components and a first count of 2 is not eligible at all)
    leak = np.zeros((2, 6, 80, 80, 3), np.float32)
    leak[:, 0] = comps[0, 0]
    leak[:, 1] = blob(55, 50, 200.0)[..., None]
    _, n, split = peeler.split_separated(tf.constant(leak), tf.constant([2, 2]),
                                         tf.constant([3, 2]), sigma=tf.ones((2, 3)))
    assert split.numpy().tolist() == [0, 0] and n.numpy().tolist() == [2, 2]
    assert PeelConfig.preset("paper").split_distance == 0.0


def test_split_needs_a_free_slot():
    deblender, classifier, noisy = merging_models()
    images = blend([0.0, 64.0, 16.0])[None] + noisy
    peeler = make_peeler(deblender, classifier, count_views=1, max_iterations=1, split=True)
    out = peel_numpy(peeler, images)
    np.testing.assert_array_equal(out["split"], [0])
    np.testing.assert_array_equal(out["n_components"], [1])


# ---------------------------------------------------------------- residual detection


@keras.saving.register_keras_serializable(package="tfdeblend_tests")
class BlindBoxCount(keras.layers.Layer):
    """:class:`BoxCount` blind to the last box: a classifier that misses one galaxy."""

    def call(self, images):
        masks = keras.ops.convert_to_tensor(_masks()[:2])
        flux = keras.ops.sum(keras.ops.abs(images)[:, None] * masks, axis=(2, 3, 4))
        count = keras.ops.sum(keras.ops.cast(flux > 0, "int32"), axis=1)
        return 10.0 * keras.ops.one_hot(count, 4)


@keras.saving.register_keras_serializable(package="tfdeblend_tests")
class HalfDeblend(keras.layers.Layer):
    """Half of the brightest box: a deblender that leaves part of each core in the residual."""

    def call(self, images):
        return 0.5 * BoxDeblend(1)(images)


def blind_models(half: bool = False):
    inputs = keras.Input((SIZE, SIZE, 2))
    classifier = keras.Model(inputs, BlindBoxCount()(inputs))
    inputs = keras.Input((SIZE, SIZE, 2))
    layer = HalfDeblend() if half else BoxDeblend(1)
    return keras.Model(inputs, layer(inputs)), classifier


def sky(n: int, seed: int = 0) -> np.ndarray:
    """Unit Gaussian noise outside the boxes (the oracles only look inside them)."""
    outside = 1.0 - _masks().sum(0)  # (H, W, 1)
    noise = np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 2))
    return (noise * outside).astype("float32")


def test_residual_snr_of_pure_noise_is_unit_and_a_source_stands_out():
    noise = np.random.default_rng(1).normal(size=(4, 64, 64, 3)).astype("float32")
    noise *= np.array([1.0, 3.0, 10.0], "float32")  # the bands' noise levels differ
    snr = residual_snr(noise).numpy()
    assert snr.shape == (4, 64, 64)
    assert 0.9 < snr[:, 8:-8, 8:-8].std() < 1.1  # away from the zero-padded edges
    source = noise.copy()
    source[:, 30:34, 30:34, :] += 3.0 * np.array([1.0, 3.0, 10.0], "float32")
    peak = residual_snr(source).numpy()[:, 28:36, 28:36].max(axis=(1, 2))
    # 16 pixels at 3 sigma in 3 bands: S/N 21 with the box's own filter, ~15 with the PSF's
    assert np.all((peak > 10) & (peak < 21))


def test_the_models_own_error_is_noise_to_the_residual_detection():
    """A bright galaxy's model off by 2 % leaves a residual far above the sky noise: with
    ``model_error`` 0.03 it no longer reads as a source, while a faint galaxy away from the
    models keeps its sky-noise S/N."""
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(1, 64, 64, 3)).astype("float32")
    yy, xx = np.mgrid[:64, :64]
    bright = 1e4 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / (2 * 4.0**2))
    faint = 4.0 * ((abs(xx - 48) < 2) & (abs(yy - 48) < 2))
    model = np.repeat(bright[None, ..., None], 3, axis=-1).astype("float32")
    residual = noise + 0.02 * model + faint[None, ..., None].astype("float32")
    sky_only = residual_snr(residual).numpy()[0]
    with_error = residual_snr(residual, model=model, model_error=0.03).numpy()[0]
    assert sky_only[12:29, 12:29].max() > 100  # the model's error, read as a source
    assert with_error[12:29, 12:29].max() < 2
    np.testing.assert_allclose(with_error[44:52, 44:52], sky_only[44:52, 44:52], rtol=1e-3)
    assert sky_only[44:52, 44:52].max() > 10
    # models exported before the term existed run without it
    assert PeelConfig.from_metadata({"peel": {"max_iterations": 4}}).model_error == 0.0
    assert PeelConfig().model_error == 0.03


def test_residual_detection_adds_a_galaxy_the_classifier_missed():
    deblender, classifier = blind_models()
    images = np.stack([
        blend([0.0, 64.0, 16.0]),  # the third galaxy is missed by the count: recovered
        blend([0.0, 64.0, 1.0]),  # missed, but below the S/N threshold: left alone
        blend([0.0, 64.0, 0.0]),  # nothing left
    ]) + sky(3)
    plain = peel_numpy(make_peeler(deblender, classifier, count_views=1, refine_steps=0), images)
    np.testing.assert_array_equal(plain["n_components"], [1, 1, 1])
    np.testing.assert_array_equal(plain["recovered"], 0)
    for refine_steps in (0, 2):
        peeler = make_peeler(deblender, classifier, count_views=1, refine_steps=refine_steps,
                             detect_snr=10.0)
        out = peel_numpy(peeler, images)
        np.testing.assert_array_equal(out["recovered"], [1, 0, 0])
        np.testing.assert_array_equal(out["n_components"], [2, 1, 1])
        np.testing.assert_array_equal(out["components"][0, 0], blend([0, 64.0, 0]))
        np.testing.assert_array_equal(out["components"][0, 1], blend([0, 0, 16.0]))
        for i in (1, 2):
            np.testing.assert_array_equal(out["components"][i], plain["components"][i])
        for key in ("counts", "quality"):  # they describe the peel
            np.testing.assert_array_equal(out[key], plain[key])
        np.testing.assert_allclose(out["components"].sum(1) + out["residual"], images)
    # no free slot: nothing is added
    peeler = make_peeler(deblender, classifier, count_views=1, max_iterations=1, detect_snr=10.0)
    np.testing.assert_array_equal(peel_numpy(peeler, images)["recovered"], [0, 0, 0])


def test_residual_detection_ignores_core_errors_and_mismatched_models():
    deblender, classifier = blind_models(half=True)
    # peeling halves of the bright core leaves a quarter of it (8 per pixel, S/N ~100) in the
    # residual, brighter than the missed galaxy (4 per pixel). The leftover lies within the
    # exclusion radius of the galaxy found, so the peak searched is the missed galaxy's; but the
    # RDN's brightest galaxy of the residual is the leftover, far from that peak: nothing is added
    images = np.stack([blend([0.0, 64.0, 0.0]), blend([0.0, 64.0, 8.0])]) + sky(2, seed=2)
    peeler = make_peeler(deblender, classifier, count_views=1, max_iterations=3, refine_steps=0,
                         detect_snr=10.0)
    out = peel_numpy(peeler, images)
    np.testing.assert_array_equal(out["n_components"], [2, 2])
    np.testing.assert_array_equal(out["recovered"], [0, 0])
    # with a deblender that models the whole brightest box, the missed galaxy is the one found
    deblender, _ = blind_models()
    out = peel_numpy(make_peeler(deblender, classifier, count_views=1, refine_steps=0,
                                 detect_snr=10.0), images)
    np.testing.assert_array_equal(out["recovered"], [0, 1])
    x, y = centroids(out["components"][1, 1]).numpy()
    assert 11 <= x <= 15 and 11 <= y <= 15


def test_detect_snr_is_checked():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(TfdeblendError, match="detect_snr"):
            peel_config(detect_snr=bad)


def test_detection_window_finds_a_faint_galaxy_beside_a_core_error():
    # as above, the half deblender leaves a quarter of the bright core, and given the whole
    # residual it models that leftover; given only a disc around the residual's peak, it sees
    # the missed galaxy alone and models it
    deblender, classifier = blind_models(half=True)
    images = np.stack([blend([0.0, 64.0, 0.0]), blend([0.0, 64.0, 8.0])]) + sky(2, seed=2)
    peeler = make_peeler(deblender, classifier, count_views=1, max_iterations=3, refine_steps=0,
                         detect_snr=10.0, detect_window=4.0)
    out = peel_numpy(peeler, images)
    np.testing.assert_array_equal(out["recovered"], [0, 1])
    np.testing.assert_array_equal(out["n_components"], [2, 3])
    x, y = centroids(out["components"][1, 2]).numpy()
    assert 11 <= x <= 15 and 11 <= y <= 15
    np.testing.assert_allclose(out["components"].sum(1) + out["residual"], images, atol=1e-5)


def test_merge_joins_components_of_one_galaxy_and_keeps_the_sum():
    deblender, classifier = blind_models(half=True)
    images = np.stack([blend([0.0, 64.0, 0.0]), blend([4.0, 64.0, 0.0])]) + sky(2, seed=3)
    # the half deblender peels the bright core in halves: two components on the same galaxy
    plain = peel_numpy(make_peeler(deblender, classifier, count_views=1, max_iterations=3,
                                   refine_steps=0), images)
    np.testing.assert_array_equal(plain["n_components"], [2, 2])
    peeler = make_peeler(deblender, classifier, count_views=1, max_iterations=3, refine_steps=0,
                         merge_radius=3.0)
    out = peel_numpy(peeler, images)
    np.testing.assert_array_equal(out["merged"], [1, 1])
    np.testing.assert_array_equal(out["n_components"], [1, 1])
    np.testing.assert_allclose(out["components"][:, 0], plain["components"][:, :2].sum(1))
    assert not out["components"][:, 1:].any()
    np.testing.assert_array_equal(out["residual"], plain["residual"])
    # the flux-conserving split hands the merged component what its parts had
    np.testing.assert_allclose(out["conserved"][:, 0], plain["conserved"][:, :2].sum(1),
                               atol=1e-4)
    for key in ("counts", "quality"):  # they describe the peel
        np.testing.assert_array_equal(out[key], plain[key])


def test_merge_close_follows_chains_and_packs_the_rest():
    def gaussian(x, y, amplitude=1.0):
        yy, xx = np.mgrid[:40, :40]
        image = amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
        return np.repeat(image[..., None], 2, -1).astype("float32")

    components = np.zeros((2, 4, 40, 40, 2), "float32")
    # blend 0: slot 1 -> slot 0; slot 3 -> slot 2 (1.1 px apart)
    components[0, :4] = [gaussian(10, 10), gaussian(11, 11, 0.2), gaussian(30, 30, 0.5),
                         gaussian(30.5, 31, 0.1)]
    # blend 1: slot 2 lies 2.5 px from slot 1, which lies 2.5 px from slot 0: both end in slot 0
    components[1, :3] = [gaussian(10, 10), gaussian(12.5, 10, 0.3), gaussian(15, 10, 0.1)]
    n_components = np.array([4, 3], "int32")
    peeler = Peeler(None, None, peel_config(max_iterations=4, merge_radius=3.0))
    merged, n_kept, n_merged = (t.numpy() for t in peeler.merge_close(
        tf.constant(components), tf.constant(n_components)))
    np.testing.assert_array_equal(n_kept, [2, 1])
    np.testing.assert_array_equal(n_merged, [2, 2])
    np.testing.assert_allclose(merged.sum(1), components.sum(1), atol=1e-6)
    np.testing.assert_allclose(merged[0, 0], components[0, :2].sum(0), atol=1e-6)
    np.testing.assert_allclose(merged[0, 1], components[0, 2:].sum(0), atol=1e-6)
    np.testing.assert_allclose(merged[1, 0], components[1, :3].sum(0), atol=1e-6)
    assert not merged[0, 2:].any() and not merged[1, 1:].any()
    # nothing closer than the radius: unchanged
    far = Peeler(None, None, peel_config(max_iterations=4, merge_radius=1.0))
    same, n_same, none = (t.numpy() for t in far.merge_close(
        tf.constant(components[:1]), tf.constant(n_components[:1])))
    np.testing.assert_array_equal(n_same, [4])
    np.testing.assert_array_equal(none, [0])
    np.testing.assert_allclose(same, components[:1], rtol=1e-6, atol=1e-30)


def test_components_within_the_models_error_are_dropped_and_real_ones_kept():
    """A piece of a bright galaxy's model (2 % of it: far above the sky, within the model's own
    error) is dropped; a faint galaxy away from the models, a sky-level component away from
    them (the classifier's call) and the first component are kept, in their order."""
    yy, xx = np.mgrid[:48, :48]

    def gaussian(x, y, amplitude, width=2.0):
        image = amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))
        return np.repeat(image[..., None], 2, -1).astype("float32")

    components = np.zeros((2, 4, 48, 48, 2), "float32")
    components[0, :4] = [gaussian(16, 16, 1e4), gaussian(16, 16, 200.0),
                         gaussian(36, 36, 10.0), gaussian(8, 40, 0.05)]
    components[1, :2] = [gaussian(24, 24, 0.05), gaussian(25, 24, 0.05)]  # weak, on the first
    n_components = np.array([4, 2], "int32")
    sigma = tf.ones([2, 2])
    peeler = Peeler(None, None, peel_config(max_iterations=4, keep_snr=5.0))
    kept, n_kept, pruned = (t.numpy() for t in peeler.keep_significant(
        tf.constant(components), tf.constant(n_components), sigma))
    np.testing.assert_array_equal(n_kept, [3, 1])
    np.testing.assert_array_equal(pruned, [1, 1])
    np.testing.assert_array_equal(kept[0, :3], components[0, [0, 2, 3]])
    np.testing.assert_array_equal(kept[1, 0], components[1, 0])
    assert not kept[0, 3:].any() and not kept[1, 1:].any()
    # without the models' error the piece of the bright model reads as a source and stays
    no_error = Peeler(None, None, peel_config(max_iterations=4, keep_snr=5.0, model_error=0.0))
    assert no_error.keep_significant(tf.constant(components), tf.constant(n_components),
                                     sigma)[1].numpy().tolist() == [4, 1]
    # models exported before the step existed run without it; the shipped peel has it
    assert PeelConfig.from_metadata({"peel": {"max_iterations": 4}}).keep_snr == 0.0
    assert PeelConfig().keep_snr == 5.0 and PeelConfig.preset("paper").keep_snr == 0.0


def test_the_peel_drops_what_it_cut_out_of_a_bright_models_error():
    """A deblender off by 2 % and a classifier that counts every image as two: the peel cuts
    the bright galaxy, then a piece of its error, then stops stuck. The piece goes back to the
    residual (components + residual == input); without the step it stays a component."""
    deblender, classifier, galaxy = bright_galaxy_off_by_two_percent()
    images = (np.repeat(galaxy[None, ..., None], 2, -1)
              + np.random.default_rng(0).normal(size=(1, SIZE, SIZE, 2))).astype("float32")
    options = dict(count_views=1, max_iterations=4, refine_steps=0)
    plain = peel_numpy(make_peeler(deblender, classifier, **options), images)
    out = peel_numpy(make_peeler(deblender, classifier, keep_snr=5.0, **options), images)
    assert plain["n_components"].tolist() == [2] and plain["pruned"].tolist() == [0]
    assert out["n_components"].tolist() == [1] and out["pruned"].tolist() == [1]
    np.testing.assert_array_equal(out["components"][0, 0], plain["components"][0, 0])
    assert not out["components"][0, 1:].any()
    np.testing.assert_allclose(out["residual"], plain["residual"] + plain["components"][:, 1],
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["components"].sum(1) + out["residual"], images, atol=1e-2)
    for key in ("counts", "quality"):  # they describe the peel
        np.testing.assert_array_equal(out[key], plain[key])


def test_real_galaxies_are_not_dropped(tiny_peel_models, rendered_blends):
    """On real 2-galaxy stamps with the tiny trained networks, the significance step keeps
    every component of the plain peel and components + residual == input."""
    deblender, classifier = tiny_peel_models
    images = rendered_blends
    plain = peel_numpy(make_peeler(deblender, classifier, max_iterations=4), images)
    out = peel_numpy(make_peeler(deblender, classifier, max_iterations=4, keep_snr=5.0), images)
    assert (plain["n_components"] >= 2).any()
    np.testing.assert_array_equal(out["n_components"], plain["n_components"])
    np.testing.assert_array_equal(out["pruned"], 0)
    np.testing.assert_array_equal(out["components"], plain["components"])
    scale = np.abs(images).max(axis=(1, 2, 3), keepdims=True)
    total = out["components"].sum(axis=1) + out["residual"]
    np.testing.assert_allclose(total / scale, images / scale, atol=1e-5)


def test_detect_window_and_merge_radius_are_checked():
    for key in ("detect_window", "merge_radius", "keep_snr"):
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(TfdeblendError, match=key):
                peel_config(**{key: bad})


def test_stop_rule_flags_count_sequences_as_the_paper_says():
    """The peel's stop rules, step by step on recorded counts (what the peel's loop and
    scripts/count_trajectories.py's replay both run): high when the count falls by one to 0,
    medium when it reaches 0 otherwise, low when stuck 3 times or after K components."""
    import tensorflow as tf

    from tfdeblend.deblend import REPEAT_LIMIT, stop_rule

    k = 4
    sequences = {  # counts at steps 0..k -> (quality, components peeled)
        (2, 1, 0, 0, 0): (2, 2),
        (3, 1, 0, 0, 0): (1, 2),
        (2, 2, 1, 0, 0): (1, 3),
        (1, 1, 1, 1, 1): (0, REPEAT_LIMIT - 1),
        (3, 2, 1, 3, 2): (0, k),  # K components peeled and still counting
        (0, 0, 0, 0, 0): (2, 0),
    }
    counts = tf.constant(list(sequences), tf.int32)
    n = len(sequences)
    active, monotone = tf.ones([n], tf.bool), tf.ones([n], tf.bool)
    previous, run, quality = tf.fill([n], -1), tf.zeros([n], tf.int32), tf.zeros([n], tf.int32)
    peeled = np.zeros(n, int)
    for t in range(k + 1):
        count = tf.where(active, counts[:, t], -1)
        monotone, run, quality, peel = stop_rule(t, k, count, active, monotone, previous, run,
                                                 quality)
        peeled += peel.numpy()
        previous = tf.where(active, count, previous)
        active = peel
    assert not active.numpy().any()
    assert list(zip(quality.numpy().tolist(), peeled.tolist())) == list(sequences.values())
