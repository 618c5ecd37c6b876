"""Tests of the CatSim-format catalog: synthesizer statistics, I/O, BTK drawing and the CLI.

Tolerances against the OneDegSq reference values (also in docs/catalog.md and
``tfdeblend.catalog.TOLERANCES``): density within 10%, RMS ellipticity within 0.03, bulge/disk
fractions within 5 points, median disk semi-major axis within 20%.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from tfdeblend.cli.main import cli

from tfdeblend import catalog
from tfdeblend.errors import CatalogError, TfdeblendError


@pytest.fixture(scope="module")
def cat01() -> Table:
    """The built-in model on 0.1 deg^2 (about 46,000 galaxies, ~19,000 at i < 25.3)."""
    return catalog.synthesize_catalog(area_deg2=0.1, seed=3)


@pytest.fixture(scope="module")
def small_fits(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("catalog") / "small.fits"
    catalog.write_catalog(catalog.synthesize_catalog(area_deg2=0.005, seed=7), path)
    return str(path)


# --- the synthesizer -------------------------------------------------------------------------


def test_columns_types_and_units(cat01):
    assert tuple(cat01.colnames) == catalog.CATSIM_COLUMNS
    assert cat01["galtileid"].dtype == np.int64
    assert len(np.unique(cat01["galtileid"])) == len(cat01)
    assert str(cat01["a_d"].unit) == "arcsec" and str(cat01["i_ab"].unit) == "mag"
    assert str(cat01["pa_disk"].unit) == "deg"
    for name in catalog.CATSIM_COLUMNS:
        assert np.all(np.isfinite(np.asarray(cat01[name], float))), name
    # square patch of 0.1 deg^2 centred on (0, 0)
    half = np.sqrt(0.1) / 2
    assert np.abs(cat01["ra"]).max() <= half and np.abs(cat01["dec"]).max() <= half
    assert np.abs(cat01["ra"]).max() > 0.95 * half
    assert cat01["i_ab"].max() < catalog.FAINT_MAG


def test_components_are_consistent_for_btk(cat01):
    fb, fd = np.asarray(cat01["fluxnorm_bulge"]), np.asarray(cat01["fluxnorm_disk"])
    assert np.all(fb >= 0) and np.all(fd >= 0) and np.all(fb + fd > 0)
    # an absent component has zero axes; a present one has b <= a and a > 0
    assert np.all((fd > 0) == (cat01["a_d"] > 0))
    assert np.all((fb > 0) == (cat01["a_b"] > 0))
    assert np.all(cat01["b_d"] <= cat01["a_d"]) and np.all(cat01["b_b"] <= cat01["a_b"])
    assert np.all(cat01["b_d"][fd > 0] > 0) and np.all(cat01["b_b"][fb > 0] > 0)
    # BTK asserts equal position angles when both components exist
    assert np.array_equal(cat01["pa_disk"], cat01["pa_bulge"])
    assert np.all(np.asarray(cat01["fluxnorm_agn"]) == 0)
    # some pure bulges, and faint galaxies beyond BTK's cut
    assert np.any(fd == 0) and np.mean(cat01["i_ab"] > 25.3) > 0.4


def test_statistics_match_onedegsq(cat01):
    stats = catalog.catalog_statistics(cat01)
    targets, tol = catalog.ONEDEGSQ_TARGETS, catalog.TOLERANCES
    assert abs(stats["density"] / targets["density"] - 1) < tol["density"]
    assert abs(stats["rms_ellipticity"] - targets["rms_ellipticity"]) < tol["rms_ellipticity"]
    for key in ("frac_disk_only", "frac_small_bulge", "frac_large_bulge"):
        assert abs(stats[key] - targets[key]) < tol[key], key
    assert abs(stats["median_a_disk"] / targets["median_a_disk"] - 1) < tol["median_a_disk"]
    assert stats["frac_disk_only"] + stats["frac_small_bulge"] + stats["frac_large_bulge"] == (
        pytest.approx(1.0)
    )
    # redshifts and colours in the range of deep optical surveys
    assert 0.4 < stats["median_redshift"] < 1.0
    assert 0.3 < stats["median_g_r"] < 1.0 and 0.2 < stats["median_r_i"] < 0.7
    # fainter galaxies beyond the gold cut, as in CatSim
    assert stats["density_all"] > 2 * stats["density"]


def test_physical_trends(cat01):
    i = np.asarray(cat01["i_ab"])
    z = np.asarray(cat01["redshift"])
    g_r = np.asarray(cat01["g_ab"] - cat01["r_ab"])
    bt = np.asarray(cat01["fluxnorm_bulge"] / (cat01["fluxnorm_bulge"] + cat01["fluxnorm_disk"]))
    # fainter galaxies are further away and smaller
    assert np.median(z[(i > 24) & (i < 25)]) > np.median(z[(i > 21) & (i < 22)]) + 0.2
    a_d = np.asarray(cat01["a_d"])
    assert np.median(a_d[(i < 22) & (a_d > 0)]) > 1.5 * np.median(a_d[(i > 25) & (a_d > 0)])
    # bulge-dominated galaxies are redder than disks at the same redshift
    mid_z = (z > 0.2) & (z < 0.5)
    assert np.median(g_r[mid_z & (bt > 0.5)]) > np.median(g_r[mid_z & (bt == 0)]) + 0.2
    # the 4000 A break moves through g and r: g - r reddens from z ~ 0.1 to z ~ 0.4
    assert np.median(g_r[(z > 0.35) & (z < 0.45)]) > np.median(g_r[(z > 0.05) & (z < 0.15)])
    # magnitude counts rise towards the faint end
    assert np.sum((i > 25) & (i < 26)) > 1.5 * np.sum((i > 24) & (i < 25))


def test_deterministic_for_a_seed():
    first = catalog.synthesize_catalog(area_deg2=0.003, seed=11)
    second = catalog.synthesize_catalog(area_deg2=0.003, seed=11)
    other = catalog.synthesize_catalog(area_deg2=0.003, seed=12)
    for name in catalog.CATSIM_COLUMNS:
        assert np.array_equal(first[name], second[name]), name
    assert len(first) != len(other) or not np.array_equal(first["i_ab"], other["i_ab"])


def test_max_mag_limits_the_catalog():
    table = catalog.synthesize_catalog(area_deg2=0.003, seed=2, max_mag=25.3)
    assert table["i_ab"].max() < 25.3
    assert catalog.catalog_statistics(table)["n"] == len(table)


@pytest.mark.parametrize("area", [0.0, -1.0, float("nan")])
def test_bad_area_raises(area):
    with pytest.raises(TfdeblendError, match="area must be positive"):
        catalog.synthesize_catalog(area_deg2=area)


def test_bad_max_mag_raises():
    with pytest.raises(TfdeblendError, match="max_mag"):
        catalog.synthesize_catalog(area_deg2=0.001, max_mag=28.0)


# --- reading, writing, caching ---------------------------------------------------------------


def test_write_read_roundtrip(tmp_path):
    table = catalog.synthesize_catalog(area_deg2=0.002, seed=5)
    path = catalog.write_catalog(table, tmp_path / "cat.fits")
    back = catalog.read_catalog(path)
    assert len(back) == len(table)
    for name in catalog.CATSIM_COLUMNS:
        assert np.allclose(back[name], table[name]), name
    assert back.meta["AREA"] == pytest.approx(0.002)
    assert catalog.catalog_statistics(back)["density"] == pytest.approx(
        catalog.catalog_statistics(table)["density"]
    )
    # no temporary files left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.fits"]


def test_write_refuses_existing_file(tmp_path):
    table = catalog.synthesize_catalog(area_deg2=0.001, seed=5)
    path = tmp_path / "cat.fits"
    path.write_text("keep me")
    with pytest.raises(TfdeblendError, match="already exists"):
        catalog.write_catalog(table, path)
    assert path.read_text() == "keep me"
    catalog.write_catalog(table, path, overwrite=True)
    assert len(catalog.read_catalog(path)) == len(table)


def test_read_names_missing_columns(tmp_path):
    table = catalog.synthesize_catalog(area_deg2=0.001, seed=5)
    table.remove_columns(["a_b", "g_ab"])
    path = tmp_path / "partial.fits"
    table.write(path)
    with pytest.raises(CatalogError, match=r"partial.fits is missing columns: a_b, g_ab$"):
        catalog.read_catalog(path)


def test_read_errors_for_missing_unreadable_and_empty_files(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        catalog.read_catalog(tmp_path / "nope.fits")
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"\x00\x01 not a fits file \xff" * 10)
    with pytest.raises(CatalogError, match="garbage.fits"):
        catalog.read_catalog(garbage)
    empty = catalog.synthesize_catalog(area_deg2=0.001, seed=5)[:0]
    empty.write(tmp_path / "empty.fits")
    with pytest.raises(CatalogError, match="is empty"):
        catalog.read_catalog(tmp_path / "empty.fits")


def test_load_default_catalog_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDEBLEND_CACHE", str(tmp_path))
    first = catalog.load_default_catalog(area_deg2=0.002, seed=4)
    cached = list(tmp_path.glob("catalog-v*-area0.002-seed4.fits"))
    assert len(cached) == 1
    second = catalog.load_default_catalog(area_deg2=0.002, seed=4)
    assert np.array_equal(first["i_ab"], second["i_ab"])
    # the second call read the cache: a corrupt cache file is rebuilt, not trusted
    cached[0].write_bytes(b"corrupt")
    third = catalog.load_default_catalog(area_deg2=0.002, seed=4)
    assert np.array_equal(first["i_ab"], third["i_ab"])
    assert len(catalog.read_catalog(cached[0])) == len(first)


# --- BTK -------------------------------------------------------------------------------------


def test_btk_draws_the_catalog(small_fits):
    btk = pytest.importorskip("btk")
    btk_catalog = btk.catalog.CatsimCatalog.from_file(small_fits)
    survey = btk.survey.get_surveys("LSST")
    survey.available_filters = ["g", "r", "i"]
    sampling = btk.sampling_functions.DefaultSampling(
        max_number=2, min_number=2, stamp_size=24.0, seed=1
    )
    generator = btk.draw_blends.CatsimGenerator(
        btk_catalog, sampling, survey, batch_size=3, njobs=1, add_noise="none", seed=1
    )
    batch = next(generator)
    assert batch.blend_images.shape == (3, 3, 120, 120)
    assert batch.isolated_images.shape == (3, 2, 3, 120, 120)
    assert np.all(np.isfinite(batch.blend_images))
    for blend in range(3):
        table = batch.catalog_list[blend]
        assert len(table) == 2 and np.all(table["i_ab"] <= 25.3)
        # the drawn flux matches the catalog magnitudes: brighter i_ab -> more electrons
        flux_i = batch.isolated_images[blend, :, 2].sum(axis=(1, 2))
        assert np.all(flux_i > 0)
        assert (flux_i[0] > flux_i[1]) == (table["i_ab"][0] < table["i_ab"][1])
        # the blend is the sum of its isolated galaxies (noiseless)
        assert np.allclose(batch.blend_images[blend], batch.isolated_images[blend].sum(axis=0))


# --- CLI -------------------------------------------------------------------------------------


def test_cli_writes_catalog_and_prints_statistics(tmp_path):
    out = tmp_path / "sub" / "cat.fits"
    result = CliRunner().invoke(
        cli, ["catalog", "--area", "0.01", "--seed", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "OneDegSq" in result.output and "53.700" in result.output
    assert "B/T > 0.1" in result.output
    table = catalog.read_catalog(out)
    assert len(table) > 1000
    assert f"Wrote {len(table)} galaxies" in result.output
    # the summary says which galaxies the statistics describe
    n_gold = int(np.sum(np.asarray(table["i_ab"]) < 25.3))
    assert (
        f"The rows above describe the {n_gold} of the {len(table)} galaxies (0.01 deg^2) "
        "brighter than i = 25.3,\nthe gold sample that tfdeblend simulate draws from; "
        f"'density, all' counts all {len(table)}."
    ) in result.output
    same = catalog.synthesize_catalog(area_deg2=0.01, seed=1)
    assert np.array_equal(table["i_ab"], same["i_ab"])


@pytest.mark.parametrize("area", ["0", "-0.5"])
def test_cli_rejects_bad_area(tmp_path, area):
    out = tmp_path / "cat.fits"
    result = CliRunner().invoke(cli, ["catalog", "--area", area, "--out", str(out)])
    assert result.exit_code == 1
    assert "Error: catalog area must be positive" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_refuses_existing_output_without_overwrite(tmp_path):
    out = tmp_path / "cat.fits"
    out.write_text("old")
    result = CliRunner().invoke(cli, ["catalog", "--area", "0.001", "--out", str(out)])
    assert result.exit_code == 1
    assert "already exists; pass --overwrite" in result.output
    assert out.read_text() == "old"
    result = CliRunner().invoke(
        cli, ["catalog", "--area", "0.001", "--out", str(out), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    assert len(catalog.read_catalog(out)) > 0


def test_cli_reports_unwritable_directory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = CliRunner().invoke(
        cli, ["catalog", "--area", "0.001", "--out", str(blocker / "cat.fits")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot write to")
    assert "Traceback" not in result.output


def test_statistics_without_area_metadata_use_the_bounding_box(cat01):
    table = cat01.copy()
    del table.meta["AREA"]
    stats = catalog.catalog_statistics(table)
    assert stats["area_deg2"] == pytest.approx(0.1, rel=0.01)
    assert stats["density"] == pytest.approx(catalog.catalog_statistics(cat01)["density"], rel=0.01)
    with pytest.raises(CatalogError, match="no galaxy"):
        catalog.catalog_statistics(table, max_mag=10.0)


def test_statistics_summary_names_the_cut(cat01):
    stats = catalog.catalog_statistics(cat01, max_mag=24.0)
    text = catalog.format_statistics(stats)
    assert stats["max_mag"] == 24.0 and "density i<24.0 (/arcmin^2)" in text
    assert text.endswith(
        f"the {stats['n']} of the {stats['n_all']} galaxies (0.1 deg^2) brighter than i = 24;\n"
        f"'density, all' counts all {stats['n_all']}."
    )
    assert "gold sample" not in text


@pytest.mark.parametrize("name", ["cat.ecsv", "cat.txt"])
def test_text_formats_roundtrip(tmp_path, name):
    table = catalog.synthesize_catalog(area_deg2=0.001, seed=8)
    back = catalog.read_catalog(catalog.write_catalog(table, tmp_path / name))
    assert len(back) == len(table)
    assert np.array_equal(back["galtileid"], table["galtileid"])
    assert np.allclose(back["i_ab"], table["i_ab"])


def test_huge_area_is_refused():
    with pytest.raises(TfdeblendError, match="too large"):
        catalog.synthesize_catalog(area_deg2=1000.0)
