"""Tests of the peel-residual datasets (``tfdeblend residuals``) and training on several datasets."""

import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from tfdeblend.data import load_manifest, load_testset, read_dataset
from tfdeblend.errors import DataError, ModelError, TfdeblendError
from tfdeblend.normalize import denormalize, normalize
from tfdeblend.training.residuals import (
    RESIDUALS_KIND,
    band_weights,
    mine_residuals,
    remaining_amplitudes,
    remaining_galaxies,
)


@pytest.fixture(scope="module")
def source(deblender_data_dir):
    """The 32 real BTK 2-galaxy blends of the deblender fixture, as numpy arrays."""
    return load_testset(deblender_data_dir)


@pytest.fixture(scope="module")
def residuals_dir(deblender_data_dir, tiny_deblender_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("residuals") / "res"
    mine_residuals(deblender_data_dir, tiny_deblender_run, out, steps=2, batch_size=8,
                   progress=False)
    return out


# ---------------------------------------------------------------- labels


def test_remaining_galaxies_counts_what_is_left_of_real_blends(source):
    blend, noiseless = source["blend"], source["blend_noiseless"]
    isolated, n_gal = source["isolated"], source["n_gal"]
    noise = blend - noiseless
    weights = band_weights(blend, noiseless)
    assert weights.shape == (len(blend), 3) and np.all(weights > 0)

    def count(residual):
        return remaining_galaxies(residual, isolated, n_gal, weights)

    assert np.all(count(blend) == 2)
    assert np.all(count(noise) == 0)
    assert np.all(count(noise + isolated[:, 1]) == 1)  # the brighter one taken out whole
    assert np.all(count(blend - 0.8 * isolated[:, 0]) == 1)  # a fifth of it left: not a galaxy
    assert np.all(count(blend - 0.3 * isolated[:, 0]) == 2)  # most of it left: still there
    amplitudes = remaining_amplitudes(noise + 0.25 * isolated[:, 0], isolated, n_gal, weights)
    # the noise moves each amplitude by about 1/SNR; the faint ones by more
    assert np.median(np.abs(amplitudes[:, 0] - 0.25)) < 0.02
    assert np.median(np.abs(amplitudes[:, 1])) < 0.05


def test_remaining_amplitudes_ignore_padding_slots():
    rng = np.random.default_rng(0)
    templates = rng.random((2, 3, 8, 8, 3))
    templates[1, 2] = 0.0  # image 1 has two galaxies: its third slot is padding
    residual = 0.2 * templates[:, 0] + templates[:, 1]
    amplitudes = remaining_amplitudes(residual, templates, np.array([3, 2]), np.ones((2, 3)))
    np.testing.assert_allclose(amplitudes[:, :2], [[0.2, 1.0], [0.2, 1.0]], atol=1e-6)
    assert abs(amplitudes[0, 2]) < 1e-6 and amplitudes[1, 2] == 0.0


# ---------------------------------------------------------------- mining


def test_mined_records_are_the_peel_residuals_with_their_labels(
    residuals_dir, source, tiny_deblender_run
):
    from tfdeblend.training.rundir import load_run

    manifest = load_manifest(residuals_dir)
    assert manifest["kind"] == RESIDUALS_KIND and manifest["complete"]
    assert manifest["count"] == 2 * len(source["blend"]) and len(manifest["shards"]) == 2
    assert manifest["config"]["steps"] == 2 and manifest["bands"] == ["g", "r", "i"]
    mined = load_testset(residuals_dir)

    # step 1 and step 2 of the peel, computed here with the same normalization
    rdn = load_run(tiny_deblender_run).deblender
    images = tf.constant(source["blend"])
    expected = []
    for _ in range(2):
        normalized, scale = normalize(images)
        images = images - denormalize(rdn(normalized, training=False), scale)
        expected.append(images.numpy())
    np.testing.assert_allclose(mined["blend"][0::2], expected[0], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(mined["blend"][1::2], expected[1], rtol=1e-4, atol=1e-2)
    # the noise is untouched: residual - its noiseless part == the source's noise
    noise = source["blend"] - source["blend_noiseless"]
    np.testing.assert_allclose(mined["blend"][0::2] - mined["blend_noiseless"][0::2], noise,
                               atol=0.05)
    # labels: the galaxies left, recomputed from the truth
    weights = band_weights(source["blend"], source["blend_noiseless"])
    for step in range(2):
        labels = remaining_galaxies(mined["blend"][step::2], source["isolated"],
                                    source["n_gal"], weights)
        np.testing.assert_array_equal(mined["n_gal"][step::2], labels)
    # the truth travels along
    np.testing.assert_array_equal(mined["isolated"][0::2], source["isolated"])
    tallies = [s["labels"] for s in manifest["shards"]]
    assert sum(n for t in tallies for n in t["1"].values()) == len(source["blend"])


def test_mining_resumes_and_refuses_a_finished_output(
    residuals_dir, deblender_data_dir, tiny_deblender_run, tmp_path
):
    import shutil

    copy = tmp_path / "res"
    shutil.copytree(residuals_dir, copy)
    shard = load_manifest(copy)["shards"][1]
    (copy / shard["name"]).unlink()
    (copy / shard["name"].replace(".tfrecord.gz", ".json")).unlink()
    assert not load_manifest(copy)["complete"]
    mine_residuals(deblender_data_dir, tiny_deblender_run, copy, steps=2, batch_size=8,
                   progress=False)
    resumed = load_manifest(copy)
    assert resumed["complete"] and resumed["shards"][1]["sha256"] == shard["sha256"]
    with pytest.raises(TfdeblendError, match="complete; pass --overwrite"):
        mine_residuals(deblender_data_dir, tiny_deblender_run, copy, steps=2, progress=False)
    with pytest.raises(TfdeblendError, match="different dataset"):
        mine_residuals(deblender_data_dir, tiny_deblender_run, copy, steps=1, progress=False)


def test_mining_refuses_bad_sources_and_networks(
    residuals_dir, deblender_data_dir, tiny_classifier_run, tiny_deblender_run, tmp_path
):
    with pytest.raises(DataError, match="already a residuals dataset"):
        mine_residuals(residuals_dir, tiny_deblender_run, tmp_path / "a", progress=False)
    with pytest.raises(ModelError, match="holds no deblender.keras"):
        mine_residuals(deblender_data_dir, tiny_classifier_run, tmp_path / "b", progress=False)
    with pytest.raises(TfdeblendError, match="threshold"):
        mine_residuals(deblender_data_dir, tiny_deblender_run, tmp_path / "c", threshold=1.0,
                       progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_cli_residuals(deblender_data_dir, tiny_deblender_run, tmp_path):
    from tfdeblend.cli.main import cli

    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli, ["residuals", str(deblender_data_dir), "--deblender", str(tiny_deblender_run),
              "--out", str(out), "--steps", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "32 stamps" in result.output and "after step 1, galaxies left: " in result.output
    result = CliRunner().invoke(
        cli, ["residuals", str(tmp_path / "missing"), "--deblender", str(tiny_deblender_run),
              "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- training on several datasets


def _digests(dataset):
    return {hashlib.sha1(np.asarray(x).tobytes()).hexdigest() for x, _ in dataset}


def test_mixed_training_stream_draws_from_every_dataset(classifier_data_dir, residuals_dir):
    from tfdeblend.training.pipelines import make_dataset, make_mixed_dataset

    own = [_digests(make_dataset(d, "classifier", subset="train", validation_fraction=0.25))
           for d in (classifier_data_dir, residuals_dir)]
    mixed = make_mixed_dataset([classifier_data_dir, residuals_dir], "classifier", 8, seed=3,
                               validation_fraction=0.25, subset="train")
    drawn = [hashlib.sha1(np.asarray(x).tobytes()).hexdigest()
             for xs, _ in mixed.take(12) for x in xs]
    from_each = [sum(d in digests for d in drawn) for digests in own]
    assert sum(from_each) == len(drawn) == 96
    # 24 and 48 training records: about a third from the first set
    assert 16 <= from_each[0] <= 48 and from_each[1] > from_each[0]
    validation = make_mixed_dataset([classifier_data_dir, residuals_dir], "classifier", 5,
                                    validation_fraction=0.25, subset="validation")
    assert sum(int(tf.shape(y)[0]) for _, y in validation) == 8 + 16


def test_classifier_trains_on_a_classifier_set_and_residuals(
    classifier_data_dir, residuals_dir, tmp_path
):
    from fixtures_models import train_tiny

    from tfdeblend.training.rundir import load_run

    history = train_tiny([classifier_data_dir, residuals_dir], tmp_path / "run", "classifier",
                         steps=3, learning_rate=0.01)
    assert np.isfinite(history["loss"][-1]) and np.isfinite(history["val_loss"][-1])
    info = load_run(tmp_path / "run")
    assert info.classifier is not None
    dataset = info.config["dataset"]
    assert dataset["kind"] == ["classifier", RESIDUALS_KIND]
    assert dataset["count"] == 32 + 64 and len(dataset["path"]) == 2
    assert json.loads((tmp_path / "run" / "history.json").read_text())["loss"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["bands"] == [
        "g", "r", "i"]


def test_deblender_refuses_a_residuals_dataset(residuals_dir, tmp_path):
    from fixtures_models import train_tiny

    with pytest.raises(DataError, match="residuals"):
        train_tiny(residuals_dir, tmp_path / "run", "deblender")
    assert not (tmp_path / "run").exists()


def test_cli_phase2_mixes_several_deblender_datasets(
    deblender_data_dir, classifier_data_dir, tiny_deblender_run, tiny_classifier_run, tmp_path
):
    """Phase 2 takes several datasets as phase 1 does (e.g. one per observing condition), each
    checked before anything is written."""
    import shutil

    from tfdeblend.cli.main import cli

    from tfdeblend.data import load_manifest
    from tfdeblend.training.rundir import load_run

    runs = ["--deblender", str(tiny_deblender_run), "--classifier", str(tiny_classifier_run)]
    result = CliRunner().invoke(
        cli, ["train", "--phase", "2", str(deblender_data_dir), str(classifier_data_dir), *runs,
              "--out", str(tmp_path / "refused")])
    assert result.exit_code == 1 and "2-galaxy blends" in result.output
    assert str(classifier_data_dir) in result.output
    assert not (tmp_path / "refused").exists()

    second = tmp_path / "second"  # another set of 2-galaxy blends at another path
    shutil.copytree(deblender_data_dir, second)
    result = CliRunner().invoke(
        cli, ["train", "--phase", "2", str(deblender_data_dir), str(second), *runs,
              "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
              "--out", str(tmp_path / "joint")])
    assert result.exit_code == 0, result.output
    dataset = load_run(tmp_path / "joint").config["dataset"]
    assert dataset["count"] == 2 * int(load_manifest(deblender_data_dir)["count"])
    assert dataset["path"] == [str(deblender_data_dir.resolve()), str(second.resolve())]


def test_read_dataset_streams_a_residuals_dataset(residuals_dir):
    first = next(iter(read_dataset(residuals_dir, batch_size=4)))
    assert first["blend"].shape == (4, 80, 80, 3) and first["isolated"].shape == (4, 2, 80, 80, 3)
