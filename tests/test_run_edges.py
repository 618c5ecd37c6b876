"""Rough edges of ``tfdeblend run`` a new user hits (issue 25): outlier pixels, TensorFlow's log
lines, slow errors, scratch files of killed runs, two runs racing for one output, OS errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from inference_helpers import blend_images, exported_model, write_blends_fits
from tfdeblend.cli.main import cli

from tfdeblend.errors import TfdeblendError
from tfdeblend.outliers import clean_outliers, find_outliers, robust_sigma
from tfdeblend.utils import remove_stale_scratch, scratch_prefix

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": ""}  # what a user's shell has


@pytest.fixture(scope="module")
def model_dir(request, tmp_path_factory):
    return exported_model(request, tmp_path_factory)


@pytest.fixture(scope="module")
def images(request):
    return blend_images(request, 4)


def test_outliers_are_single_pixels_never_galaxies(images):
    """On real BTK blends (PSF-convolved galaxies, noise) nothing is an outlier; a cosmic ray
    (one pixel or a two-pixel track) on the sky or on a galaxy's core is, in its band only."""
    assert not find_outliers(images).any()
    bright = images * 1e4  # galaxies 10^4 times brighter: still no outlier
    assert not find_outliers(bright).any()
    hit = images.copy()
    core = np.unravel_index(np.argmax(images[0, ..., 1]), images.shape[1:3])
    hit[0, core[0], core[1], 1] += 50 * images[0, ..., 1].max()  # on the core, r band
    hit[1, 3, 7, 0] = 1e6  # on the sky, g band
    hit[2, 10, 20:22, 2] = 3e4  # a two-pixel track, i band
    bad = find_outliers(hit)
    assert bad.sum() == 4
    assert bad[0, core[0], core[1], 1] and bad[1, 3, 7, 0] and bad[2, 10, 20:22, 2].all()
    cleaned = clean_outliers(hit, bad)
    np.testing.assert_array_equal(cleaned[~bad], hit[~bad])
    # a galaxy in an image's corner (its other neighbours are noise) is not an outlier; the
    # middle pixel of an L-shaped 3-pixel track is
    corner = np.random.default_rng(3).normal(0, 1, (1, 20, 20, 1)).astype("float32")
    yy, xx = np.mgrid[:20, :20]
    corner[0, ..., 0] += 5e3 * np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    assert not find_outliers(corner).any()
    track = np.random.default_rng(4).normal(0, 1, (1, 20, 20, 1)).astype("float32")
    track[0, 10, 10:12, 0] = track[0, 11, 10, 0] = 500.0
    assert find_outliers(track)[0, 10, 10, 0]
    sky = robust_sigma(images)[2, 2]
    assert np.abs(cleaned[2, 10, 20:22, 2]).max() < 3 * sky  # replaced by the sky around it


def test_a_hot_pixel_is_flagged_and_no_galaxy_is_lost(images, tmp_path):
    """The shipped model, through the command line a user types: a 1e6 pixel used to make every
    galaxy vanish (the normalization divides by the brightest pixel) with quality high. Now the
    galaxies come back as without it, the pixel stays in the residual, the stamp is flagged
    in BLENDS and the summary says so, and TensorFlow's log lines are not shown."""
    hot = images.copy()
    hot[1, 70, 5, 1] = 1e6
    src = write_blends_fits(tmp_path / "blends.fits", np.concatenate([images, hot[1:2]]))
    out = tmp_path / "out.fits"
    done = subprocess.run(
        [sys.executable, "-m", "tfdeblend.cli.main", "run", str(src), "-o", str(out), "--quiet"],
        capture_output=True, text=True, env=ENV, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "1 blend(s) held 1 outlier pixel(s)" in done.stdout
    for noise in ("absl", "I0000", "E0000", "W0000", "oneDNN"):
        assert noise not in done.stderr, done.stderr
    with fits.open(out) as hdul:
        blends = hdul["BLENDS"].data
        assert blends["outliers"].tolist() == [0, 0, 0, 0, 1]
        assert blends["n_components"][4] == blends["n_components"][1] >= 1
        flux = hdul["COMPONENTS"].data.sum(axis=(-2, -1))  # (N, K, C)
        np.testing.assert_allclose(flux[4], flux[1], rtol=0.02, atol=0.01 * flux[1].max())
        model = hdul["COMPONENTS"].data.sum(axis=1)
        data = np.transpose(np.concatenate([images, hot[1:2]]), (0, 3, 1, 2))
        np.testing.assert_allclose(model + hdul["RESIDUAL"].data, data, atol=0.05)
        assert hdul["RESIDUAL"].data[4, 1, 70, 5] > 0.99e6


def test_input_errors_come_before_tensorflow_loads(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_text("not a FITS file")
    code = (
        "import sys\n"
        "from tfdeblend.errors import TfdeblendError\n"
        "from tfdeblend.run import run_file\n"
        f"try:\n    run_file({str(bad)!r}, {str(tmp_path / 'o.fits')!r})\n"
        "except TfdeblendError as err:\n    print(err)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    lines = done.stdout.splitlines()
    assert "not a readable FITS file" in lines[0]
    assert lines[-1] == "False"
    assert not (tmp_path / "o.fits").exists()


def test_a_killed_run_leaves_scratch_that_the_next_run_removes(model_dir, images, tmp_path):
    src = write_blends_fits(tmp_path / "blends.fits", np.repeat(images, 64, axis=0))
    out = tmp_path / "out.fits"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfdeblend.cli.main", "run", str(src), "-o", str(out),
         "--model", str(model_dir), "--quiet", "--batch-size", "2"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    scratch: list[Path] = []
    while time.time() < deadline and len(scratch) < 3 and proc.poll() is None:
        time.sleep(0.2)
        scratch = [p for p in tmp_path.iterdir() if p.name.startswith(".out.fits.")]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(scratch) == 3, scratch  # the output's .tmp and two .npy memmaps
    assert all(p.exists() for p in scratch) and not out.exists()
    # a live process's scratch is left alone
    live = tmp_path / f"{scratch_prefix(out)}keep.tmp"
    live.touch()
    assert sorted(remove_stale_scratch(out)) == sorted(scratch)
    assert live.exists() and not any(p.exists() for p in scratch)


def test_a_file_that_appears_meanwhile_is_never_replaced(images, tmp_path):
    from tfdeblend.fitsio import ResultWriter

    out = tmp_path / "out.fits"
    writer = ResultWriter(out, 1, 2, ("g", "r", "i"), 80, {})
    writer.write_batch({
        "components": np.zeros((1, 2, 80, 80, 3), "float32"),
        "residual": images[:1], "counts": np.zeros((1, 3), "int32"),
        "quality": np.array([2]), "n_components": np.array([0]),
    })
    out.write_text("another run's result")  # a second process finished first
    with pytest.raises(TfdeblendError, match="appeared while"):
        writer.close()
    assert out.read_text() == "another run's result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.fits"]  # no scratch left


def test_os_errors_on_output_are_one_line(model_dir, images, tmp_path):
    src = write_blends_fits(tmp_path / "blends.fits", images[:1])
    for target in ("/proc/x.fits", "/proc/self/nope/x.fits"):
        result = CliRunner().invoke(
            cli, ["run", str(src), "-o", target, "--model", str(model_dir), "--quiet"]
        )
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, (
            result.output
        )
        assert "Traceback" not in result.output


def test_a_stamp_without_one_band_is_deblended_from_the_others(images, tmp_path):
    """A band with no data in a stamp (all NaN, or a plane of zeros): the shipped networks,
    shown an empty band, returned no galaxy at all, flagged high. The band is now made from the
    others for the networks: the same components as with the band, their fluxes in the other
    bands close to those, NaN in the absent one."""
    from astropy.table import Table

    from tfdeblend.run import run_file

    bad = images[:4].copy()
    bad[1, ..., 0] = 0.0  # g a plane of zeros
    bad[2, ..., 2] = np.nan  # no i
    for name, stamps in (("ok", images[:4]), ("bad", bad)):
        run_file(write_blends_fits(tmp_path / f"{name}.fits", stamps), tmp_path / f"{name}_o.fits",
                 progress=False)
    ok, out = (fits.open(tmp_path / f"{n}_o.fits") for n in ("ok", "bad"))
    with ok, out:
        assert (out["BLENDS"].data["n_components"] == ok["BLENDS"].data["n_components"]).all()
        assert (ok["BLENDS"].data["n_components"][1:3] >= 1).all()
        assert out["BLENDS"].data["missing"].tolist()[1:3] == [80 * 80, 80 * 80]
        residual = out["RESIDUAL"].data
        assert np.isnan(residual[1, 0]).all() and np.isnan(residual[2, 2]).all()
        assert np.isfinite(residual[[1, 2]][:, 1]).all()
    good, got = (Table.read(tmp_path / f"{n}_o.fits", hdu="CATALOG") for n in ("ok", "bad"))
    for stamp, absent in ((1, "g"), (2, "i")):
        rows = got["blend_id"] == stamp
        assert np.isnan(np.asarray(got[f"flux_{absent}"][rows], float)).all()
        for band in {"g", "r", "i"} - {absent}:
            np.testing.assert_allclose(np.asarray(got[f"flux_{band}"][rows], float),
                                       np.asarray(good[f"flux_{band}"][rows], float), rtol=0.15)


def test_nan_pixels_in_stamps_are_missing_data_not_a_refusal(model_dir, images, tmp_path):
    """NaN/inf pixels are filled from their neighbours for the networks, counted in BLENDS,
    NaN in the residual; the other stamps come out as without them."""
    from tfdeblend.fitsio import read_blends
    from tfdeblend.run import run_file

    bad = images.copy()
    bad[1, 30:33, 40, 1] = np.nan  # a short bad column across a galaxy, r band
    bad[2, 5, 5, 2] = np.inf
    nothing = images[:2].copy()
    nothing[1] = np.nan  # a stamp with no data at all: no component, flagged low, not high
    run_file(write_blends_fits(tmp_path / "nothing.fits", nothing), tmp_path / "n.fits",
             model=model_dir, progress=False)
    with fits.open(tmp_path / "n.fits") as out:
        assert out["BLENDS"].data["n_components"][1] == 0
        assert out["BLENDS"].data["quality"][1] == 0 and out["BLENDS"].data["quality_name"][1] == "low"
    src = write_blends_fits(tmp_path / "nan.fits", bad)
    with pytest.raises(TfdeblendError, match="2 stamp"):
        read_blends(src, bands=("g", "r", "i"))  # the reader alone still says so
    summary = run_file(src, tmp_path / "o.fits", model=model_dir, progress=False)
    assert summary["n_missing_blends"] == 2 and summary["n_missing"] == 4
    clean = run_file(write_blends_fits(tmp_path / "ok.fits", images), tmp_path / "ok_out.fits",
                     model=model_dir, progress=False)
    with fits.open(tmp_path / "o.fits") as out, fits.open(tmp_path / "ok_out.fits") as ok:
        assert out["BLENDS"].data["missing"].tolist() == [0, 3, 1, 0]
        residual = out["RESIDUAL"].data
        assert np.isnan(residual[1, 1, 30:33, 40]).all() and np.isnan(residual[2, 2, 5, 5])
        assert np.isfinite(out["COMPONENTS"].data).all()
        np.testing.assert_array_equal(out["COMPONENTS"].data[[0, 3]], ok["COMPONENTS"].data[[0, 3]])
        assert out["BLENDS"].data["n_components"][1] == ok["BLENDS"].data["n_components"][1]
    assert clean["n_missing"] == 0


def test_stamps_smaller_than_the_model_are_deblended_inside_it(images, tmp_path):
    """Cut-outs smaller than the networks' 80x80 (square or not) are no longer refused: each is
    centred in an 80x80 stamp of empty sky with its own noise, deblended by the shipped model and
    cut back. The galaxies come out where the 80x80 originals put them, components + residual is
    the input, and the summary says so; larger stamps are refused with what to do instead."""
    from tfdeblend.fitsio import read_blends
    from tfdeblend.outliers import robust_sigma
    from tfdeblend.run import fill_stamps, pad_offset, run_file, summary_line

    cut = images[:, 8:72, 8:72]  # the central 64x64 of each stamp
    filled, missing, absent = fill_stamps(cut, size=80)
    assert filled.shape == (4, 80, 80, 3) and not missing.any() and not absent.any()
    assert pad_offset(64, 64, 80) == (8, 8)
    np.testing.assert_array_equal(filled[:, 8:72, 8:72], cut)
    pad = filled[:, :8]  # empty sky with the stamp's own noise
    np.testing.assert_allclose(pad.std(axis=(1, 2)), robust_sigma(cut), rtol=0.2)
    assert np.abs(pad.mean(axis=(1, 2))).max() < 0.2 * robust_sigma(cut).min()

    from tfdeblend.export import load_model

    model = load_model()  # the shipped model, loaded once for the three runs
    whole = run_file(write_blends_fits(tmp_path / "80.fits", images), tmp_path / "o80.fits",
                     model=model, progress=False)
    small = run_file(write_blends_fits(tmp_path / "64.fits", cut), tmp_path / "o64.fits",
                     model=model, progress=False)
    assert "padded_from" not in whole and small["padded_from"] == (64, 64)
    assert "the 64x64 stamps were deblended centred in the model's 80x80" in summary_line(small)
    with fits.open(tmp_path / "o80.fits") as a, fits.open(tmp_path / "o64.fits") as b:
        assert b["COMPONENTS"].data.shape[-2:] == (64, 64) and b["RESIDUAL"].data.shape == (4, 3, 64, 64)
        np.testing.assert_allclose(b["COMPONENTS"].data.sum(axis=1) + b["RESIDUAL"].data,
                                   np.transpose(cut, (0, 3, 1, 2)), atol=0.05)
        ours, theirs = b["CATALOG"].data, a["CATALOG"].data
        inner = (theirs["x"] > 16) & (theirs["x"] < 64) & (theirs["y"] > 16) & (theirs["y"] < 64)
        assert inner.sum() >= 4
        for row in theirs[inner]:  # each galaxy well inside the cut-out is found where it was
            same = ours[ours["blend_id"] == row["blend_id"]]
            gap = np.hypot(same["x"] + 8 - row["x"], same["y"] + 8 - row["y"])
            assert gap.min() < 1.0, (row, same)
            assert abs(same["flux_r"][gap.argmin()] / row["flux_r"] - 1) < 0.1
    # not square: 50 rows by 70 columns
    odd = images[:2, 15:65, 5:75]
    run_file(write_blends_fits(tmp_path / "5070.fits", odd), tmp_path / "o5070.fits",
             model=model, progress=False)
    with fits.open(tmp_path / "o5070.fits") as out:
        assert out["RESIDUAL"].data.shape == (2, 3, 50, 70)
        np.testing.assert_allclose(out["COMPONENTS"].data.sum(axis=1) + out["RESIDUAL"].data,
                                   np.transpose(odd, (0, 3, 1, 2)), atol=0.05)
        assert out["BLENDS"].data["n_components"].min() >= 1
    # training and evaluation still read model-sized stamps only; larger ones are refused
    with pytest.raises(TfdeblendError, match="the model needs 80x80"):
        read_blends(tmp_path / "64.fits", bands=("g", "r", "i"), stamp_size=80)
    big = np.pad(images[:1], ((0, 0), (8, 8), (8, 8), (0, 0)))
    with pytest.raises(TfdeblendError, match="larger than the model's 80x80; deblend each as an"):
        run_file(write_blends_fits(tmp_path / "96.fits", big), tmp_path / "o96.fits",
                 progress=False)
    assert not (tmp_path / "o96.fits").exists()


def test_stamps_whose_sky_was_subtracted_too_much_get_a_note(images, tmp_path):
    """Stamps half a noise sigma below 0 (too much sky subtracted) lose most of their 'high'
    flags silently; the run now says so. Galaxies only add light, so the same stamps at 0 get
    no note (nor would bright ones: their median pixel is above 0)."""
    from tfdeblend.export import load_model
    from tfdeblend.outliers import robust_sigma
    from tfdeblend.run import run_file, stamp_sky_levels, summary_line

    model = load_model()
    sigma = np.median(robust_sigma(images), axis=0)  # (C,)
    low = images - 0.5 * sigma
    levels = stamp_sky_levels(low, robust_sigma(low))
    assert levels.shape == (4, 3) and (np.abs(levels + 0.45) < 0.1).all(), levels
    summary = run_file(write_blends_fits(tmp_path / "low.fits", low), tmp_path / "o_low.fits",
                       model=model, progress=False)
    band, level = next(iter(summary["sky_below"].items()))
    assert band in "gri" and -0.6 < level < -0.3
    assert "sigmas below 0 (a typical stamp's median pixel)" in summary_line(summary)
    clean = run_file(write_blends_fits(tmp_path / "ok.fits", images), tmp_path / "o_ok.fits",
                     model=model, progress=False)
    assert "sky_below" not in clean and "Note" not in summary_line(clean)
