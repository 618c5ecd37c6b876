"""Tests of tfdeblend.field and `tfdeblend simulate field` (small real GalSim fields)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner
from tfdeblend.cli.main import cli

from tfdeblend import measure
from tfdeblend.errors import CatalogError, TfdeblendError
from tfdeblend.field import (
    BAD_VALUE,
    MASK_PLANES,
    FieldConfig,
    catalog_seed,
    draw_galaxy,
    field_catalog,
    render_field,
    simulate_field,
    stamp_half_size,
)

SIZE = 128
BAD, SAT = 1 << MASK_PLANES["BAD"], 1 << MASK_PLANES["SAT"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("field") / "f"
    config = FieldConfig(size=SIZE, seed=11, per_band=True)
    simulate_field(config, out, progress=False)
    return out, config


@pytest.fixture(scope="module")
def noiseless():
    config = FieldConfig(size=SIZE, seed=11, noise=False, bad_columns=False, saturate=False)
    return config, render_field(config)


def _run(*args):
    return CliRunner().invoke(cli, ["simulate", *map(str, args)])


def test_layout_hdus_columns_and_wcs(written):
    out, config = written
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "field.fits",
        "field_g.fits",
        "field_i.fits",
        "field_r.fits",
        "truth.fits",
    ]
    assert FieldConfig.from_yaml(out / "config.yaml") == config
    with fits.open(out / "field.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "VARIANCE", "MASK"]
        image, variance, mask = (h.data for h in hdul)
        header, mask_header = hdul[0].header, hdul["MASK"].header
    assert image.shape == variance.shape == mask.shape == (3, SIZE, SIZE)
    assert image.dtype.name == "float32" and variance.dtype.name == "float32"
    assert mask.dtype.name == "int32"
    assert header["BANDS"] == "g,r,i" and header["BUNIT"] == "electron"
    assert header["PIXSCALE"] == pytest.approx(0.2) and header["SURVEY"] == "LSST"
    assert header["SEED"] == 11 and header["CATSEED"] == catalog_seed(11)
    assert {k: mask_header[f"MP_{k}"] for k in MASK_PLANES} == {"BAD": 0, "SAT": 1, "NO_DATA": 8}
    assert np.all(variance > 0) and np.all(np.isfinite(variance))

    wcs = WCS(header).celestial  # the cube's header has a 2-axis celestial WCS (WCSAXES = 2)
    assert header["WCSAXES"] == 2
    assert wcs.wcs.ctype[0] == "RA---TAN" and wcs.wcs.ctype[1] == "DEC--TAN"
    scales = np.abs(wcs.wcs.cdelt) * 3600
    np.testing.assert_allclose(scales, 0.2)
    ra0, dec0 = wcs.pixel_to_world_values((SIZE - 1) / 2, (SIZE - 1) / 2)
    assert (ra0, dec0) == pytest.approx((config.ra, config.dec))

    truth = Table.read(out / "truth.fits", hdu="TRUTH")
    th = fits.getheader(out / "truth.fits", "TRUTH")
    assert th["SIZE"] == SIZE and th["BANDS"] == "g,r,i" and th["PIXSCALE"] == pytest.approx(0.2)
    assert truth.colnames == [
        "id",
        "catalog_id",
        "x",
        "y",
        "ra",
        "dec",
        "inside",
        "frac_inside",
        "masked",
        "star",
        "g_ab",
        "r_ab",
        "i_ab",
        "flux_g",
        "flux_r",
        "flux_i",
    ]
    assert th["NGAL"] == len(truth) and th["NINSIDE"] == int(truth["inside"].sum()) > 5
    assert list(truth["id"]) == list(range(len(truth)))
    flux = np.stack([truth[f"flux_{b}"] for b in "gri"], axis=1)
    assert np.all(np.diff(flux.sum(axis=1)) <= 0)  # brightest first
    ra, dec = wcs.pixel_to_world_values(truth["x"], truth["y"])
    np.testing.assert_allclose(ra, truth["ra"], atol=1e-9)
    np.testing.assert_allclose(dec, truth["dec"], atol=1e-9)
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    inside = (x >= -0.5) & (x < SIZE - 0.5) & (y >= -0.5) & (y < SIZE - 0.5)
    assert np.array_equal(inside, np.asarray(truth["inside"]))
    assert (~inside).any()  # the margin's galaxies are drawn and flagged
    assert np.all(np.abs(x - (SIZE - 1) / 2) <= SIZE / 2 + 4.0 / 0.2 + 1e-6)
    assert np.all(truth["frac_inside"][~inside] < 0.6) and np.all(truth["frac_inside"] <= 1)

    for c, band in enumerate("gri"):
        with fits.open(out / f"field_{band}.fits") as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
            assert hdul[0].data is None
            assert hdul["IMAGE"].header["FILTER"] == band
            assert hdul["MASK"].header["MP_BAD"] == 0 and hdul["MASK"].header["MP_SAT"] == 1
            np.testing.assert_array_equal(hdul["IMAGE"].data, image[c])
            np.testing.assert_array_equal(hdul["MASK"].data, mask[c])
            np.testing.assert_array_equal(hdul["VARIANCE"].data, variance[c])
            assert WCS(hdul["IMAGE"].header).wcs.compare(wcs.wcs)


def test_noiseless_image_is_the_sum_of_the_galaxies(noiseless):
    config, field = noiseless
    truth = field.truth
    np.testing.assert_array_equal(field.image, field.model.astype(np.float32))
    assert not field.mask.any() and not np.isnan(field.image).any()
    # all the light in the field is the in-field part of the galaxies' fluxes
    flux = np.stack([truth[f"flux_{b}"] for b in config.bands], axis=1).sum(axis=1)
    assert field.model.sum() == pytest.approx(np.sum(truth["frac_inside"] * flux), rel=1e-6)
    # the brightest galaxy, drawn alone, sits at its truth (x, y) (0-based, as measure.py)
    import btk  # noqa: F401 - surveys

    from tfdeblend.simulate import make_survey

    survey = make_survey(config.survey, config.bands)
    cat = field_catalog(config)
    row = truth[0]
    entry = cat[list(cat["galtileid"]).index(row["catalog_id"])]
    filt = survey.get_filter("r")
    stamp = draw_galaxy(entry, filt, survey, filt.psf, row["x"], row["y"], 40)
    centroid = measure.moments(stamp.array[..., None])
    x0, y0 = stamp.bounds.xmin - 1, stamp.bounds.ymin - 1
    assert float(centroid["x"]) + x0 == pytest.approx(row["x"], abs=0.05)
    assert float(centroid["y"]) + y0 == pytest.approx(row["y"], abs=0.05)


def test_noise_has_the_variance_plane(noiseless):
    config, quiet = noiseless
    noisy = render_field(config.replace(noise=True))
    np.testing.assert_array_equal(noisy.model, quiet.model)  # same galaxies
    pull = (noisy.image - noisy.model) / np.sqrt(noisy.variance)
    assert abs(pull.mean()) < 0.03
    assert pull.std() == pytest.approx(1.0, abs=0.03)
    # sky noise as in BTK's LSST 10-year stamps (sqrt of the mean sky level)
    sky = noisy.variance.min(axis=(1, 2))
    np.testing.assert_allclose(np.sqrt(sky), [157.4, 361.4, 434.5], rtol=0.01)


def test_truth_fluxes_match_btk(noiseless):
    """The same galaxy drawn by BTK's CatsimGenerator (as `simulate test` does, 120x120 stamp)
    has the truth flux within 1 %; every truth flux is within 1 % of the catalog magnitude's."""
    from surveycodex.utilities import mag2counts

    from tfdeblend.simulate import BlendRenderer, SimConfig

    config, field = noiseless
    truth = field.truth
    cat = field_catalog(config)
    renderer = BlendRenderer(SimConfig(kind="test", n_gal=1, count=1), cat)
    renderer.generator.add_noise = "none"
    survey = renderer.survey
    pixel = survey.pixel_scale.to_value("arcsec")
    ids = list(cat["galtileid"])
    checked = 0
    for row in truth[:12]:
        entry = cat[ids.index(row["catalog_id"])]
        if stamp_half_size(entry, 0.86, pixel) > 60:
            continue  # BTK's 24" stamp cuts more of this galaxy's wings than the field's stamp
        for c, band in enumerate(config.bands):
            blend = Table(cat[[ids.index(row["catalog_id"])]])
            blend["ra"], blend["dec"], blend["btk_rotation"] = [0.0], [0.0], [0.0]
            image, _ = renderer.generator.render_blend(
                blend, renderer.psf[c], survey.get_filter(band), survey, np.random.SeedSequence(0)
            )
            assert row[f"flux_{band}"] == pytest.approx(image.sum(), rel=0.01)
            checked += 1
    assert checked >= 15
    for band in config.bands:
        filt = survey.get_filter(band)
        expected = np.array([mag2counts(m, survey, filt).value for m in truth[f"{band}_ab"]])
        ratio = np.asarray(truth[f"flux_{band}"]) / expected
        assert np.all((ratio > 0.99) & (ratio < 1.001)), (ratio.min(), ratio.max())


def test_masks_and_nans(written):
    out, _ = written
    with fits.open(out / "field.fits") as hdul:
        image, mask, header = hdul[0].data, hdul["MASK"].data, hdul[0].header
    truth = Table.read(out / "truth.fits", hdu="TRUTH")
    assert header["BADVAL"] == BAD_VALUE
    for c, band in enumerate("gri"):
        column = header[f"BADCOL_{band.upper()}"]
        bad = (mask[c] & BAD) > 0
        assert bad[:, column].all() and bad.sum() == SIZE  # one full-height column
        assert np.all(image[c][:, column] == BAD_VALUE)
        sat = (mask[c] & SAT) > 0
        assert np.array_equal(np.isnan(image[c]), sat & ~bad)
        assert sat.sum() >= 3
        # the saturated pixels include the core of the brightest galaxy inside the field
        brightest = truth[np.flatnonzero(truth["inside"])[0]]
        rows, cols = np.nonzero(sat)
        distance = np.hypot(cols - brightest["x"], rows - brightest["y"])
        assert distance.min() < 1.5
        level = header[f"SATLEV_{band.upper()}"]
        assert np.all(image[c][~sat & ~bad] < level)
    assert truth["masked"][np.flatnonzero(truth["inside"])[0]]
    assert not truth["masked"].all()
    assert not (mask & ~(BAD | SAT)).any()


def test_no_defects_and_hsc(tmp_path):
    out = tmp_path / "hsc"
    result = _run(
        "field",
        "--size",
        64,
        "--survey",
        "hsc",
        "--no-bad-columns",
        "--no-saturate",
        "--bands",
        "g,i",
        "--quiet",
        "--out",
        out,
        "--seed",
        2,
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1 and "64x64" in result.output
    with fits.open(out / "field.fits") as hdul:
        assert hdul[0].header["SURVEY"] == "HSC" and hdul[0].header["BANDS"] == "g,i"
        assert hdul[0].header["PIXSCALE"] == pytest.approx(0.168)
        assert not hdul["MASK"].data.any() and np.isfinite(hdul[0].data).all()
        assert "SATLEV_G" not in hdul[0].header and "BADCOL_G" not in hdul[0].header
    assert not (out / "field_g.fits").exists()
    assert not Table.read(out / "truth.fits")["masked"].any()


def test_fields_under_observing_conditions(noiseless, tmp_path):
    """A field drawn at LSST year-1 depth or under wider seeing: the same galaxies, a tenth of
    the exposure (flux and sky), or wider profiles; the conditions are in the header, as the
    PSF FWHMs a user gives to `tfdeblend run --psf`."""
    config, nominal = noiseless
    year1 = render_field(config.replace(exposure_scale=0.1))
    wide = render_field(config.replace(psf_scale=1.5))
    for band in config.bands:
        np.testing.assert_allclose(year1.truth[f"flux_{band}"],  # GalSim draws to ~0.3 %
                                   0.1 * nominal.truth[f"flux_{band}"], rtol=0.005)
        np.testing.assert_allclose(wide.truth[f"flux_{band}"], nominal.truth[f"flux_{band}"],
                                   rtol=0.01, atol=1e-6 * nominal.truth[f"flux_{band}"].max())
    np.testing.assert_allclose(year1.variance, 0.1 * nominal.variance, rtol=1e-4)

    def concentration(model):  # sum(m^2) / sum(m)^2 per band: lower when the PSF is wider
        return (model.astype(float) ** 2).sum(axis=(1, 2)) / model.sum(axis=(1, 2)) ** 2

    assert np.all(concentration(wide.model) < 0.8 * concentration(nominal.model))

    out = tmp_path / "year1"
    result = _run("field", "--size", 32, "--conditions", "year1", "--psf-scale", 1.5,
                  "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert "PSF x1.5, exposure x0.1" in result.output
    header = fits.getheader(out / "field.fits")
    assert header["EXPSCALE"] == pytest.approx(0.1) and header["PSFSCALE"] == pytest.approx(1.5)
    base = FieldConfig(size=32).psf_fwhm  # the survey's nominal FWHMs, arcsec
    assert [header[f"PSF_{b.upper()}"] for b in "gri"] == pytest.approx([1.5 * f for f in base])
    assert 0.6 < base[2] < 1.0  # LSST's i band


def test_deterministic_bytes(tmp_path):
    paths = []
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        simulate_field(FieldConfig(size=48, seed=seed), tmp_path / name, progress=False)
        paths.append(tmp_path / name)
    for name in ("field.fits", "truth.fits"):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes()
    assert (paths[0] / "field.fits").read_bytes() != (paths[2] / "field.fits").read_bytes()
    assert catalog_seed(4) != catalog_seed(5)


def test_refuses_existing_directory_then_overwrites(tmp_path):
    out = tmp_path / "f"
    out.mkdir()
    with pytest.raises(TfdeblendError, match="already exists"):
        simulate_field(FieldConfig(size=32), out, progress=False)
    result = _run("field", "--size", 32, "--out", out, "--quiet")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "--overwrite" in result.output
    assert _run("field", "--size", 32, "--out", out, "--quiet", "--overwrite").exit_code == 0
    assert (out / "field.fits").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["field", "--size", 0], "size must be between"),
        (["field", "--size", 100000], "size must be between"),
        (["field", "--survey", "XYZ"], "unknown survey 'XYZ'"),
        (["field", "--survey", "HSC", "--bands", "u,g"], "survey HSC has no band(s) u"),
        (["field", "--bands", "g,q"], "unknown band"),
        (["field", "--count", 3], "--count applies only to the stamp kinds"),
        (["field", "--format", "fits"], "--format applies only to the stamp kinds"),
        (["field", "--n-gal", 2], "--n-gal applies only"),
        (["test", "--size", 64], "--size applies only to kind 'field'"),
        (["deblender", "--per-band"], "--per-band applies only to kind 'field'"),
        (["test", "--no-saturate"], "--saturate/--no-saturate applies only"),
        (["field", "--catalog", "/no/such.fits"], "does not exist"),
        (["field", "--psf-scale", "1:2"], "a field is drawn under one condition"),
        (["field", "--exposure-scale", "0"], "exposure_scale must be"),
        (["pairs"], "unknown kind 'pairs'"),
    ],
)
def test_cli_one_line_errors(tmp_path, args, message):
    result = _run(*args, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_config_validation():
    with pytest.raises(TfdeblendError, match="max_mag"):
        FieldConfig(max_mag=27.0)  # the built-in catalog stops at 26.5
    assert FieldConfig(max_mag=27.0, catalog="x.fits").max_mag == 27.0
    with pytest.raises(TfdeblendError, match="margin"):
        FieldConfig(margin=-1)
    with pytest.raises(TfdeblendError, match="unknown FieldConfig option"):
        FieldConfig.from_dict({"sise": 3})
    assert FieldConfig(survey="lsst").survey == "LSST"


def test_catalog_file_window(catalog_table):
    config = FieldConfig(size=96, seed=1, catalog="given")
    cat = field_catalog(config, table=catalog_table)
    half = config.window_arcsec / 2
    assert (
        len(cat) > 10 and np.all(np.abs(cat["xi"]) <= half) and np.all(np.abs(cat["eta"]) <= half)
    )
    assert np.all(cat["i_ab"] <= config.max_mag)
    other = field_catalog(config.replace(seed=2), table=catalog_table)
    assert set(cat["galtileid"]) != set(other["galtileid"])  # the seed places the window
    with pytest.raises(CatalogError, match="smaller than the"):
        field_catalog(FieldConfig(size=4096, catalog="given"), table=catalog_table)


def test_stars_are_point_sources_added_to_the_same_galaxies(noiseless):
    """``stars``: point sources (the PSF) on a stellar locus, added to the very galaxies the
    field has without them (the star stream is a new child of the seed), flagged in the
    truth."""
    config, field = noiseless
    starry = render_field(config.replace(stars=150.0))
    truth = starry.truth
    star = np.asarray(truth["star"], bool)
    assert 30 <= star.sum() <= 70  # 150 per arcmin^2 over the (25.6" + 8")^2 window: 47 expected
    assert (np.asarray(truth["catalog_id"])[star] < 0).all()
    galaxies = truth[~star]
    np.testing.assert_array_equal(galaxies["catalog_id"], field.truth["catalog_id"])
    np.testing.assert_allclose(galaxies["x"], field.truth["x"])
    # every star's light is the PSF's: the brightest star inside is the r PSF times its flux
    import galsim

    from tfdeblend.simulate import make_survey

    stars = truth[star & np.asarray(truth["inside"], bool)]
    brightest = stars[np.argmax(stars["flux_r"])]
    alone = starry.model - field.model  # the stars only
    x, y = int(round(brightest["x"])), int(round(brightest["y"]))
    bounds = galsim.BoundsI(max(x - 3, 0) + 1, min(x + 4, SIZE), max(y - 3, 0) + 1,
                            min(y + 4, SIZE))  # its core, where no other star's light counts
    psf = galsim.ImageD(bounds, scale=0.2)
    survey = make_survey(config.survey, config.bands)
    for other in truth[star]:  # its neighbours' wings as well
        psf += survey.get_filter("r").psf.withFlux(float(other["flux_r"])).drawImage(
            image=psf.copy(), center=galsim.PositionD(other["x"] + 1.0, other["y"] + 1.0))
    cut = alone[1, bounds.ymin - 1:bounds.ymax, bounds.xmin - 1:bounds.xmax]
    np.testing.assert_allclose(cut, psf.array, atol=0.01 * psf.array.max())
    # colours on the stellar locus: g - r within 0.2-1.5, r - i rising with it
    g_r = np.asarray(stars["g_ab"] - stars["r_ab"])
    r_i = np.asarray(stars["r_ab"] - stars["i_ab"])
    assert ((g_r > 0.15) & (g_r < 1.55)).all()
    assert np.corrcoef(g_r, r_i)[0, 1] > 0.7
    with pytest.raises(TfdeblendError, match="stars must be between"):
        FieldConfig(stars=-1)


def test_cli_writes_a_field_with_stars_and_says_so(tmp_path):
    """`simulate field --stars`: the headers count galaxies and stars apart, star magnitudes lie
    between i = 15 and the faint limit, and without --stars no star is drawn."""
    out = tmp_path / "f"
    result = _run("field", "--size", 64, "--seed", 4, "--stars", 200, "--no-saturate",
                  "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    header = fits.getheader(out / "truth.fits", "TRUTH")
    truth = Table.read(out / "truth.fits", hdu="TRUTH")
    star = np.asarray(truth["star"], bool)
    assert header["NSTAR"] == star.sum() >= 10 and header["STARS"] == 200
    assert header["NGAL"] == (~star).sum()
    assert header["NINSIDE"] == (~star & np.asarray(truth["inside"], bool)).sum()
    assert f"{header['NSTAR']} stars" in result.output
    assert (np.asarray(truth["i_ab"])[star] >= 15).all()
    assert (np.asarray(truth["i_ab"])[star] <= 26.5).all()
    plain = tmp_path / "g"
    assert _run("field", "--size", 64, "--seed", 4, "--out", plain, "--quiet").exit_code == 0
    without = Table.read(plain / "truth.fits", hdu="TRUTH")
    assert not np.asarray(without["star"]).any()
    assert fits.getheader(plain / "truth.fits", "TRUTH")["NSTAR"] == 0
    np.testing.assert_array_equal(np.sort(without["catalog_id"]),
                                  np.sort(truth["catalog_id"][~star]))
