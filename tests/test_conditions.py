"""Observing conditions: stamps drawn under other surveys, seeing and depth (issue 27), their
storage in both formats, and the evaluation grid over test sets of different conditions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tfdeblend.errors import CatalogError, TfdeblendError
from tfdeblend.simulate import (
    CONDITION_FIELDS,
    CONDITION_PRESETS,
    SimConfig,
    band_conditions,
    simulate,
    simulate_arrays,
)

#: SHA-256 of blends.fits of `tfdeblend simulate test --n-gal 2 --count 8 --format fits --seed 5`,
#: written by the code before the observing conditions existed (GalSim 2.8.5, BTK 1.0.9,
#: numpy 2.3.5): a nominal config must keep drawing exactly these bytes.
NOMINAL_BLENDS_SHA256 = "c61d41a34c9778217dc82cd4de53590a6de1b35a8884617dfa3c51a926699354"
NOMINAL_VERSIONS = {"galsim": "2.8.5", "btk": "1.0.9", "numpy": "2.3.5"}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"psf_scale": 0.0}, "psf_scale must be a number or a range"),
        ({"psf_scale": "wide"}, "psf_scale must be a number or a range"),
        ({"psf_scale": (2.0, 1.0)}, "psf_scale range must have lo <= hi"),
        ({"psf_scale": (1.0, 2.0, 3.0)}, "psf_scale must be a number or a range"),
        ({"psf_scale": float("nan")}, "psf_scale must be a number or a range"),
        ({"exposure_scale": 20.0}, "exposure_scale must be a number or a range"),
        ({"exposure_scale": (0.0, 1.0)}, "exposure_scale must be a number or a range"),
        ({"survey": "Hubble"}, "unknown survey 'Hubble'"),
        ({"survey": "HSC", "bands": ("u", "g")}, "survey HSC has no band"),
        ({"pixel_scale": 0.3}, "pixel_scale is the survey's"),
        ({"bright_fraction": 1.5}, "bright_fraction must be between 0 and 1"),
        ({"bright_fraction": True}, "bright_fraction must be a number"),
        ({"bright_mag": 26.0}, "bright_mag must be between 10 and max_mag"),
        ({"star_fraction": -0.1}, "star_fraction must be between 0 and 1"),
    ],
)
def test_conditions_are_validated(kwargs, message):
    with pytest.raises(TfdeblendError, match=message) as err:
        SimConfig(kind="test", count=1, **kwargs)
    assert "\n" not in str(err.value)


def test_conditions_config_round_trip(tmp_path):
    cfg = SimConfig(kind="test", count=3, survey="hsc", psf_scale=[1.0, 2.0],
                    exposure_scale=[0.1, 1], bright_fraction=0.25)
    assert cfg.survey == "HSC" and cfg.pixel_scale == pytest.approx(0.168)
    assert cfg.psf_scale == (1.0, 2.0) and cfg.exposure_scale == (0.1, 1.0)
    assert not cfg.fixed_conditions and not cfg.nominal
    cfg.to_yaml(tmp_path / "sim.yaml")
    assert SimConfig.from_yaml(tmp_path / "sim.yaml") == cfg
    # a range of zero width is a fixed value; the default is the nominal LSST
    assert SimConfig(kind="test", count=1, psf_scale=(1.5, 1.5)).psf_scale == 1.5
    assert SimConfig(kind="test", count=1).nominal
    assert set(CONDITION_PRESETS) >= {"nominal", "psf1.5", "year1", "hsc"}


def test_nominal_blends_are_byte_identical_to_before(tmp_path):
    import btk
    import galsim
    from tfdeblend.cli.main import cli

    versions = {"galsim": galsim.__version__, "btk": btk.__version__, "numpy": np.__version__}
    if versions != NOMINAL_VERSIONS:
        pytest.skip(f"reference bytes were drawn with {NOMINAL_VERSIONS}, here {versions}")
    out = tmp_path / "nominal"
    result = CliRunner().invoke(cli, ["simulate", "test", "--n-gal", "2", "--count", "8",
                                      "--format", "fits", "--seed", "5", "--out", str(out),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert _sha256(out / "blends.fits") == NOMINAL_BLENDS_SHA256
    # the nominal blends.fits has no condition keys; truth.fits does
    from astropy.io import fits

    assert "SURVEY" not in fits.getheader(out / "blends.fits")
    assert fits.getheader(out / "truth.fits")["SURVEY"] == "LSST"


@pytest.fixture(scope="module")
def nominal_arrays(catalog_table):
    return simulate_arrays(SimConfig(kind="test", n_gal=2, count=4, seed=21), table=catalog_table)


def test_psf_scale_makes_the_same_galaxies_larger(nominal_arrays, catalog_table):
    wide = simulate_arrays(SimConfig(kind="test", n_gal=2, count=4, seed=21, psf_scale=1.5),
                           table=catalog_table)
    size = nominal_arrays["mu20"] + nominal_arrays["mu02"]
    size_wide = wide["mu20"] + wide["mu02"]
    assert np.all(size_wide > size)
    # the same galaxies: same total flux, same centres
    np.testing.assert_allclose(wide["flux"].sum(1), nominal_arrays["flux"].sum(1), rtol=0.03)
    np.testing.assert_allclose(wide["x"], nominal_arrays["x"], atol=0.5)
    np.testing.assert_allclose(wide["psf_fwhm"], 1.5 * nominal_arrays["psf_fwhm"], rtol=1e-6)
    np.testing.assert_allclose(nominal_arrays["psf_fwhm"][0], [0.86, 0.81, 0.79], rtol=1e-6)


def test_exposure_scale_scales_flux_and_noise(nominal_arrays, catalog_table):
    year1 = simulate_arrays(
        SimConfig(kind="test", n_gal=2, count=4, seed=21, **CONDITION_PRESETS["year1"]),
        table=catalog_table)
    np.testing.assert_allclose(year1["flux"], 0.1 * nominal_arrays["flux"], rtol=2e-3)
    noise = (nominal_arrays["blend"] - nominal_arrays["blend_noiseless"]).std(axis=(0, 1, 2))
    noise1 = (year1["blend"] - year1["blend_noiseless"]).std(axis=(0, 1, 2))
    np.testing.assert_allclose(noise1 / noise, np.sqrt(0.1), rtol=0.1)
    np.testing.assert_allclose(year1["noise_sigma"], np.sqrt(0.1) * nominal_arrays["noise_sigma"],
                               rtol=1e-3)
    np.testing.assert_allclose(nominal_arrays["noise_sigma"][0], noise, rtol=0.05)
    np.testing.assert_allclose(year1["depth"], nominal_arrays["depth"] - 1.25, atol=1e-4)
    assert np.all(year1["exposure_scale"] == np.float32(0.1))


def test_hsc_stamps_and_files(catalog_table, tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    from tfdeblend.data import load_testset, write_dataset

    cfg = SimConfig(kind="test", n_gal=2, count=4, seed=21, catalog=None, survey="HSC")
    out = write_dataset(cfg, tmp_path / "hsc", table=catalog_table, fmt="fits", jobs=1,
                        progress=False)
    header = fits.getheader(out / "blends.fits")
    assert header["PIXSCALE"] == pytest.approx(0.168) and header["SURVEY"] == "HSC"
    assert header["BANDS"] == "g,r,i" and header["FWHM_I"] == pytest.approx(0.61)
    blends = Table.read(out / "truth.fits", hdu="BLENDS")
    np.testing.assert_allclose(blends["PIXSCALE"], 0.168, rtol=1e-6)
    data = load_testset(out)
    assert str(data["survey"]) == "HSC" and data["blend"].shape == (4, 80, 80, 3)
    np.testing.assert_allclose(data["pixel_scale"], 0.168, rtol=1e-6)
    # HSC's sky noise (FACTS.md: about 130 / 185 / 353 electrons)
    noise = (data["blend"] - data["blend_noiseless"]).std(axis=(0, 1, 2))
    np.testing.assert_allclose(noise, [130, 185, 353], rtol=0.1)
    np.testing.assert_allclose(data["noise_sigma"][0], noise, rtol=0.1)


def test_per_example_conditions_are_stored_and_read_back(catalog_table, tmp_path):
    from tfdeblend.data import load_manifest, load_testset, write_dataset

    cfg = SimConfig(kind="test", n_gal=2, count=5, seed=23, psf_scale=(1.0, 2.0),
                    exposure_scale=(0.1, 1.0))
    tf_dir = write_dataset(cfg, tmp_path / "tf", table=catalog_table, jobs=1, progress=False)
    fits_dir = write_dataset(cfg, tmp_path / "fits", table=catalog_table, fmt="fits", jobs=1,
                             progress=False)
    assert load_manifest(tf_dir)["conditions"] == list(CONDITION_FIELDS)
    tf_data, fits_data = load_testset(tf_dir), load_testset(fits_dir)
    expected = [cfg.example_scales(k)[:2] for k in range(cfg.count)]
    for data in (tf_data, fits_data):
        np.testing.assert_allclose(data["psf_scale"], [e[0] for e in expected], rtol=1e-6)
        np.testing.assert_allclose(data["exposure_scale"], [e[1] for e in expected], rtol=1e-6)
        assert str(data["survey"]) == "LSST"
    assert len(set(tf_data["psf_scale"].tolist())) == cfg.count
    assert np.all((tf_data["psf_scale"] >= 1) & (tf_data["psf_scale"] <= 2))
    assert np.all((tf_data["exposure_scale"] >= 0.1) & (tf_data["exposure_scale"] <= 1))
    for key in CONDITION_FIELDS:
        np.testing.assert_array_equal(tf_data[key], fits_data[key])
    np.testing.assert_array_equal(tf_data["blend"], fits_data["blend"])
    k = 3
    nominal = band_conditions("LSST", ("g", "r", "i"), 1.0, 1.0)
    np.testing.assert_allclose(tf_data["psf_fwhm"][k], nominal["psf_fwhm"] * expected[k][0],
                               rtol=1e-5)
    # a pure function of the config and the index: drawn alone, example k is the same
    alone = next(simulate(cfg, indices=[k], table=catalog_table))
    np.testing.assert_array_equal(alone["blend"], tf_data["blend"][k])
    np.testing.assert_array_equal(alone["psf_fwhm"], tf_data["psf_fwhm"][k])


def test_sets_without_stored_conditions_get_their_config_s(catalog_table, tmp_path):
    """A FITS test set written before the conditions existed (no condition columns) is read
    with the conditions of its config.yaml."""
    from astropy.io import fits

    from tfdeblend.data import load_testset, write_dataset

    out = write_dataset(SimConfig(kind="test", n_gal=2, count=2, seed=3), tmp_path / "old",
                        table=catalog_table, fmt="fits", jobs=1, progress=False)
    with fits.open(out / "truth.fits") as hdus:
        old = fits.BinTableHDU.from_columns(
            [hdus["BLENDS"].columns[n] for n in ("blend_id", "N_GAL", "NOISY")], name="BLENDS")
        fits.HDUList([hdus[0], hdus[1], hdus[2], hdus[3], old]).writeto(
            tmp_path / "truth.fits")
    (tmp_path / "truth.fits").replace(out / "truth.fits")
    data = load_testset(out)
    assert str(data["survey"]) == "LSST"
    np.testing.assert_allclose(data["psf_fwhm"], [[0.86, 0.81, 0.79]] * 2, rtol=1e-6)
    np.testing.assert_allclose(data["noise_sigma"][0], [157.4, 361.4, 434.5], rtol=1e-3)


def test_bright_fraction_draws_bright_galaxies(catalog_table):
    from surveycodex.utilities import mag2counts

    cfg = SimConfig(kind="test", n_gal=2, count=3, seed=5, bright_fraction=1.0, bright_mag=21.0)
    arrays = simulate_arrays(cfg, table=catalog_table)
    i20 = mag2counts(21.0, "LSST", "i").to_value("electron")
    assert np.all(arrays["flux"][..., 2] > 0.8 * i20)  # every galaxy with i <= 21
    few = catalog_table[np.asarray(catalog_table["i_ab"]) > 21.0]
    with pytest.raises(CatalogError, match="bright_mag"):
        simulate(cfg, table=few)


def test_star_fraction_draws_point_sources(catalog_table):
    """A star replaces a galaxy: the same conditions and noise draws, a PSF-sized source whose
    magnitude lies in 15..25.3; examples without a star keep their bytes."""
    from surveycodex.utilities import mag2counts

    plain = SimConfig(kind="deblender", count=6, seed=5)
    starry = SimConfig(kind="deblender", count=6, seed=5, star_fraction=0.5)
    a, b = simulate_arrays(plain, table=catalog_table), simulate_arrays(starry, table=catalog_table)
    has_star = [starry.example_stars(k, 2) is not None for k in range(6)]
    assert any(has_star) and not all(has_star)
    for k in range(6):
        assert np.array_equal(a["blend"][k], b["blend"][k]) == (not has_star[k])
        np.testing.assert_array_equal(a["psf_fwhm"][k], b["psf_fwhm"][k])
    k = has_star.index(True)
    star = starry.example_stars(k, 2)
    # the star is the source whose size is the PSF's: the smallest second moments of the pair
    size = b["mu20"][k] + b["mu02"][k]
    galaxy_sizes = a["mu20"][~np.asarray(has_star)] + a["mu02"][~np.asarray(has_star)]
    assert size.min() < np.median(galaxy_sizes)
    lo, hi = (mag2counts(m, "LSST", "i").to_value("electron") for m in (25.4, 14.9))
    assert np.all((b["flux"][k, :, 2] > lo) & (b["flux"][k, :, 2] < hi))
    assert star["star"].sum() == len(star["i"])
    assert ", 0.5 of sources stars" in starry.describe_conditions()


def test_cli_conditions_preset_and_flags(tmp_path, catalog_path):
    from tfdeblend.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "y1"
    result = runner.invoke(cli, ["simulate", "test", "--count", "2", "--format", "fits",
                                 "--conditions", "year1", "--psf-scale", "1:1.5", "--out",
                                 str(out), "--catalog", str(catalog_path), "--quiet",
                                 "--star-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    assert "LSST, psf x1:1.5, exposure x0.1, 0.5 of sources stars" in result.output
    cfg = SimConfig.from_yaml(out / "config.yaml")
    assert cfg.psf_scale == (1.0, 1.5) and cfg.exposure_scale == 0.1 and cfg.survey == "LSST"
    assert cfg.star_fraction == 0.5
    bad = runner.invoke(cli, ["simulate", "test", "--count", "2", "--psf-scale", "1:x",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: --psf-scale must be")
    # a field takes the conditions too, one per field (tests/test_field.py draws them)
    field = runner.invoke(cli, ["simulate", "field", "--exposure-scale", "0.1:1", "--out",
                                str(tmp_path / "field")])
    assert field.exit_code == 1 and "a field is drawn under one condition" in field.output
    stars = runner.invoke(cli, ["simulate", "field", "--star-fraction", "0.2", "--out",
                                str(tmp_path / "field")])
    assert stars.exit_code == 1 and "--star-fraction" in stars.output
    assert not (tmp_path / "bad").exists() and not (tmp_path / "field").exists()


# ------------------------------------------------------------------------------ the grid


def test_conditions_differ_only_for_other_conditions(nominal_arrays):
    from tfdeblend.evaluate import analysis

    nominal = analysis.conditions_summary(nominal_arrays)
    assert nominal["known"] and analysis.is_nominal(nominal)
    same = analysis.conditions_summary({**nominal_arrays, "n_gal": nominal_arrays["n_gal"] + 1})
    assert not analysis.conditions_differ([nominal, same])
    year1 = {**nominal_arrays, "exposure_scale": nominal_arrays["exposure_scale"] * 0.1,
             "depth": nominal_arrays["depth"] - 1.25}
    assert analysis.conditions_differ([nominal, analysis.conditions_summary(year1)])
    unknown = {k: v for k, v in nominal_arrays.items() if k not in CONDITION_FIELDS}
    assert not analysis.conditions_differ([nominal, analysis.conditions_summary(unknown)])


@pytest.fixture(scope="module")
def grid_dirs(tmp_path_factory, catalog_table):
    """Two 4-stamp 2-galaxy FITS test sets: nominal LSST and LSST year 1."""
    from tfdeblend.data import write_dataset

    root = tmp_path_factory.mktemp("grid_data")
    dirs = []
    for name, preset in (("nominal", "nominal"), ("year1", "year1")):
        cfg = SimConfig(kind="test", n_gal=2, count=4, seed=31, **CONDITION_PRESETS[preset])
        dirs.append(write_dataset(cfg, root / name, table=catalog_table, fmt="fits", jobs=1,
                                  progress=False))
    return dirs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real exported SavedModel of the tiny preset (untrained, fixed seed), as in
    test_evaluate.py."""
    import keras

    from tfdeblend.export import ModelBundle, export_model
    from tfdeblend.models.classifier import build_classifier
    from tfdeblend.models.presets import get_classifier_config, get_rdn_config
    from tfdeblend.models.rdn import build_rdn
    from tfdeblend.peel_config import PeelConfig

    keras.utils.set_random_seed(0)
    bundle = ModelBundle(build_rdn(get_rdn_config("tiny")),
                         build_classifier(get_classifier_config("tiny")))
    out = tmp_path_factory.mktemp("grid_model") / "tiny"
    export_model(bundle, out, peel=PeelConfig(max_iterations=3))
    return out


def test_grid_table_for_test_sets_of_other_conditions(grid_dirs, tiny_model, tmp_path):
    from tfdeblend.cli.main import cli

    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", *map(str, grid_dirs), "--out", str(out),
                                      "--model", str(tiny_model), "--baseline", "sep",
                                      "--batch-size", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    assert "## Observing conditions" in text and "## Observing conditions" in result.output
    assert text.index("## Observing conditions") < text.index("## Test set `nominal`")
    rows = [line for line in text.splitlines() if line.startswith(("| `nominal`", "| `year1`"))]
    assert len(rows) == 4  # the grid and the targets table, one row per test set each
    assert "tfdeblend / sep" in text
    assert (out / "conditions.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "metrics.json").read_text())
    grid = saved["conditions_grid"]
    assert [r["testset"] for r in grid["rows"]] == ["nominal", "year1"]
    assert grid["reference"] == "sep" and grid["band"] == "r" and grid["figure"]
    nominal, year1 = grid["rows"]
    assert nominal["nominal"] and not year1["nominal"]
    assert year1["conditions"]["exposure_scale"]["median"] == pytest.approx(0.1)
    assert year1["conditions"]["depth"]["r"]["median"] == pytest.approx(
        nominal["conditions"]["depth"]["r"]["median"] - 1.25, abs=1e-4)
    assert set(year1["methods"]) == {"tfdeblend", "sep"}
    assert set(year1["targets"]) == set(grid["targets"])
    ts = saved["testsets"]["year1"]
    # the grid's numbers are the stamp report's
    assert year1["methods"]["sep"]["y_recall"] == ts["methods"]["sep"]["y"]["found_fraction"]
    assert (year1["methods"]["tfdeblend"]["flux"]["x"]["scatter"]
            == ts["methods"]["tfdeblend"]["x"]["flux"]["r"]["scatter"])
    assert year1["quality"]["high"] == ts["table1_quality"]["all"]["high"]
    assert ts["conditions"]["survey"] == "LSST"
