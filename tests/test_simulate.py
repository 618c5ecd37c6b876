"""Tests of tfdeblend.simulate on real (small) BTK/GalSim renderings."""

from __future__ import annotations

import numpy as np
import pytest

from tfdeblend import measure
from tfdeblend.errors import CatalogError, TfdeblendError
from tfdeblend.simulate import (
    MAX_TEST_GALAXIES,
    PRESETS,
    RECORD_FIELDS,
    SimConfig,
    make_survey,
    simulate,
    simulate_arrays,
)

#: sqrt(mean sky level) of BTK 1.0.9's LSST 10-year survey, electrons: 157.4, 361.4, 434.5.
SKY_STD = {"g": 157.4, "r": 361.4, "i": 434.5}


@pytest.fixture(scope="module")
def test_arrays(catalog_table):
    return simulate_arrays(SimConfig(kind="test", n_gal=3, count=6, seed=7), table=catalog_table)


def test_record_shapes_units_and_truth(test_arrays):
    arrays = test_arrays
    assert set(RECORD_FIELDS) <= set(arrays)
    assert arrays["blend"].shape == (6, 80, 80, 3)
    assert arrays["isolated"].shape == (6, 3, 80, 80, 3)
    assert arrays["flux"].shape == (6, 3, 3)
    assert arrays["blend"].dtype == np.float32
    assert list(arrays["bands"]) == ["g", "r", "i"]
    assert np.all(arrays["n_gal"] == 3) and np.all(arrays["noisy"] == 1)
    # electrons: an i < 25.3 galaxy at LSST 10-year depth has >~1e4 e- in r
    assert np.all(arrays["flux"][..., 1] > 1e3)
    # noiseless components are non-negative and sum to the noiseless blend
    assert arrays["isolated"].min() >= 0
    np.testing.assert_allclose(
        arrays["isolated"].sum(axis=1), arrays["blend_noiseless"], rtol=1e-5, atol=1e-2
    )
    # the noisy blend is the noiseless one plus zero-mean noise of the sky's level
    residual = arrays["blend"] - arrays["blend_noiseless"]
    assert abs(residual.mean()) < 20
    assert 100 < residual[..., 0].std() < 400


def test_brightest_first_and_truth_matches_measure(test_arrays):
    arrays = test_arrays
    bright = measure.brightness(arrays["isolated"])  # (N, S)
    assert np.all(np.diff(bright, axis=1) <= 0)
    np.testing.assert_allclose(arrays["flux"], measure.fluxes(arrays["isolated"]), rtol=1e-5)
    moments = measure.moments(arrays["isolated"])
    for key in ("x", "y", "mu20", "mu02", "mu11"):
        np.testing.assert_allclose(arrays[key], moments[key], rtol=1e-4, atol=1e-4)
    # every centre lies inside the 80x80 crop (max_shift 2.4" = 12 px around 39.5)
    assert np.all(np.abs(arrays["x"] - 39.5) < 20) and np.all(np.abs(arrays["y"] - 39.5) < 20)


def test_classifier_balanced_half_noiseless_and_sky_noise(catalog_table):
    cfg = SimConfig(kind="classifier", count=16, seed=3)
    arrays = simulate_arrays(cfg, table=catalog_table)
    assert np.bincount(arrays["n_gal"], minlength=4).tolist() == [4, 4, 4, 4]
    for n in range(4):
        assert arrays["noisy"][arrays["n_gal"] == n].sum() == 2
    empty = arrays["n_gal"] == 0
    quiet = empty & (arrays["noisy"] == 0)
    assert np.all(arrays["blend"][quiet] == 0)  # noiseless class 0: all zeros
    assert np.all(np.isnan(arrays["x"][empty]))
    noisy_empty = arrays["blend"][empty & (arrays["noisy"] == 1)]  # (2, 80, 80, 3)
    # pure sky noise: std within 3% of sqrt(sky level) (2 x 6400 pixels per band: ~0.6% error)
    for channel, band in enumerate("gri"):
        std = noisy_empty[..., channel].std()
        assert abs(std / SKY_STD[band] - 1) < 0.03, (band, std)
        assert abs(noisy_empty[..., channel].mean()) < 0.05 * SKY_STD[band]
    # noiseless non-empty images are exactly their noiseless blend
    clean = (arrays["noisy"] == 0) & ~empty
    np.testing.assert_array_equal(arrays["blend"][clean], arrays["blend_noiseless"][clean])


def test_deterministic_per_example_and_independent_of_jobs(catalog_table):
    cfg = SimConfig(kind="deblender", count=6, seed=11)
    serial = list(simulate(cfg, table=catalog_table, jobs=1))
    parallel = list(simulate(cfg, table=catalog_table, jobs=2))
    subset = list(simulate(cfg, indices=[4, 1], table=catalog_table, jobs=1))
    for a, b in zip(serial, parallel):
        for key in RECORD_FIELDS:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(subset[0]["blend"], serial[4]["blend"])
    np.testing.assert_array_equal(subset[1]["isolated"], serial[1]["isolated"])
    other_seed = next(simulate(cfg.replace(seed=12), table=catalog_table))
    assert not np.array_equal(other_seed["blend"], serial[0]["blend"])


def test_bands_restricted_and_ordered(catalog_table):
    survey = make_survey("LSST", ["i", "g"])
    assert list(survey.available_filters) == ["i", "g"]
    cfg = SimConfig(kind="test", n_gal=1, count=1, bands=("i", "g"), seed=5)
    record = next(simulate(cfg, table=catalog_table))
    assert record["blend"].shape == (80, 80, 2)
    full = next(simulate(cfg.replace(bands=("g", "r", "i")), table=catalog_table))
    # same galaxy and position: the i and g channels agree whatever bands are drawn
    np.testing.assert_allclose(record["isolated"][0, ..., 0], full["isolated"][0, ..., 2])
    np.testing.assert_allclose(record["isolated"][0, ..., 1], full["isolated"][0, ..., 0])


def test_presets_and_config_roundtrip(tmp_path):
    assert PRESETS["paper"] == {"deblender": 50_000, "classifier": 400_000, "test": 1000}
    assert SimConfig(kind="classifier", preset="paper").count == 400_000
    assert SimConfig(kind="deblender").count == PRESETS["cpu"]["deblender"]
    assert SimConfig(kind="test").n_gal == 2
    cfg = SimConfig(kind="test", n_gal=3, count=5, bands=("r",), seed=4)
    cfg.to_yaml(tmp_path / "sim.yaml")
    assert SimConfig.from_yaml(tmp_path / "sim.yaml") == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "pairs"}, "unknown kind"),
        ({"kind": "deblender", "count": 0}, "count must be positive"),
        ({"kind": "deblender", "count": -3}, "count must be positive"),
        ({"kind": "test", "n_gal": 0}, "n_gal must be between 1"),
        ({"kind": "test", "n_gal": MAX_TEST_GALAXIES + 1}, "n_gal must be between 1"),
        ({"kind": "classifier", "n_gal": 2}, "applies only to kind 'test'"),
        ({"kind": "deblender", "bands": ("g", "w")}, "unknown band"),
        ({"kind": "deblender", "preset": "huge"}, "unknown preset"),
        ({"kind": "deblender", "max_shift": 9.0}, "max_shift"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(TfdeblendError, match=message):
        SimConfig(**kwargs)


def test_catalog_problems(catalog_table):
    cfg = SimConfig(kind="test", n_gal=3, count=1)
    with pytest.raises(CatalogError, match="missing column.*a_d"):
        next(simulate(cfg, table=catalog_table[[c for c in catalog_table.colnames if c != "a_d"]]))
    bright = catalog_table[catalog_table["i_ab"] <= 25.3][:2]
    with pytest.raises(CatalogError, match="2 galaxies with i <= 25.3.*at least 3"):
        simulate(cfg, table=bright)
