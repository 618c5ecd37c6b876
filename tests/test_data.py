"""Tests of tfdeblend.data and `tfdeblend simulate`: real BTK datasets on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from tfdeblend.cli.main import cli

from tfdeblend.data import (
    list_shard_files,
    load_manifest,
    load_testset,
    read_dataset,
    shard_name,
    write_dataset,
)
from tfdeblend.errors import DataError, TfdeblendError
from tfdeblend.simulate import SimConfig


def _run(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    return result


def _sim_args(catalog_path, out, *extra):
    return [
        "simulate",
        "deblender",
        "--out",
        out,
        "--catalog",
        catalog_path,
        "--quiet",
        "--jobs",
        1,
        *extra,
    ]


def test_fixture_datasets_read_back(deblender_dataset, classifier_dataset):
    manifest = load_manifest(deblender_dataset)
    assert manifest["complete"] and manifest["count"] == 32 and manifest["bunit"] == "electron"
    assert manifest["bands"] == ["g", "r", "i"] and manifest["max_sources"] == 2
    assert [s["count"] for s in manifest["shards"]] == [16, 16]
    batch = next(iter(read_dataset(deblender_dataset, batch_size=8)))
    assert batch["blend"].shape == (8, 80, 80, 3) and batch["isolated"].shape == (8, 2, 80, 80, 3)
    assert batch["n_gal"].numpy().tolist() == [2] * 8
    arrays = load_testset(classifier_dataset)
    assert np.bincount(arrays["n_gal"]).tolist() == [8, 8, 8, 8]
    assert arrays["noisy"].sum() == 16


def test_shuffle_repeat_and_order(deblender_dataset):
    plain = [r["flux"] for r in read_dataset(deblender_dataset).as_numpy_iterator()]
    shuffled = [
        r["flux"] for r in read_dataset(deblender_dataset, shuffle=True, seed=1).as_numpy_iterator()
    ]
    assert len(plain) == len(shuffled) == 32
    key = lambda f: f[0, 0]  # noqa: E731
    assert sorted(map(key, plain)) == sorted(map(key, shuffled))
    assert list(map(key, plain)) != list(map(key, shuffled))
    repeated = read_dataset(deblender_dataset, batch_size=10, repeat=True).take(5)
    assert sum(int(b["n_gal"].shape[0]) for b in repeated) == 50


def test_fits_testsets_match_schema(fits_testset, fits_testset_3gal):
    with fits.open(fits_testset / "blends.fits") as hdus:
        assert hdus[0].data.shape == (8, 3, 80, 80) and hdus[0].data.dtype.name == "float32"
        assert hdus[0].header["BANDS"] == "g,r,i" and hdus[0].header["BUNIT"] == "electron"
        assert hdus[0].header["PIXSCALE"] == 0.2
    with fits.open(fits_testset_3gal / "truth.fits") as hdus:
        assert hdus["ISOLATED"].data.shape == (8, 3, 3, 80, 80)
        assert hdus["NOISELESS"].data.shape == (8, 3, 80, 80)
        assert len(hdus["CATALOG"].data) == 24 and "flux_r" in hdus["CATALOG"].columns.names
        assert list(hdus["BLENDS"].data["N_GAL"]) == [3] * 8
    arrays = load_testset(fits_testset_3gal / "blends.fits")
    np.testing.assert_allclose(
        arrays["isolated"].sum(axis=1), arrays["blend_noiseless"], rtol=1e-5, atol=1e-2
    )
    assert np.all(np.diff(arrays["flux"].sum(axis=-1), axis=1) <= 0)


def test_same_config_gives_identical_shards_and_fits(tmp_path, catalog_table):
    cfg = SimConfig(kind="classifier", count=8, seed=5)
    first = write_dataset(cfg, tmp_path / "a", table=catalog_table, num_shards=2, jobs=1)
    second = write_dataset(cfg, tmp_path / "b", table=catalog_table, num_shards=2, jobs=2)
    for name in (shard_name(0, 2), shard_name(1, 2)):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # the FITS set holds the same examples as the TFRecords
    fits_dir = write_dataset(cfg, tmp_path / "f", table=catalog_table, fmt="fits", jobs=1)
    from_fits, from_tfrecord = load_testset(fits_dir), load_testset(first)
    for key in ("blend", "isolated", "n_gal", "noisy", "flux"):
        np.testing.assert_array_equal(from_fits[key], from_tfrecord[key])


def test_two_runs_give_byte_identical_shards_and_manifest(tmp_path, catalog_path):
    # The same command run twice, in two processes: protobuf's map order is seeded per process,
    # so a second process (not a second call in this one) is what shows a non-deterministic
    # serialization.
    runs = [tmp_path / "first", tmp_path / "second"]
    args = [
        _sim_args(catalog_path, out, "--count", 4, "--seed", 9, "--num-shards", 2) for out in runs
    ]
    result = _run(*args[0])
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [sys.executable, "-m", "tfdeblend.cli.main", *map(str, args[1])],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = (load_manifest(run) for run in runs)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    for name in [s["name"] for s in first["shards"]] + ["manifest.json"]:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    # the GZIP header carries no time stamp or file name (mtime 0, no FNAME flag)
    header = (runs[0] / shard_name(0, 2)).read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08" and header[3] & 0x08 == 0 and header[4:8] == bytes(4)


def test_corrupted_shard_is_named(tmp_path, deblender_dataset):
    copy = shutil.copytree(deblender_dataset, tmp_path / "copy")
    shard = copy / shard_name(1, 2)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"shard .*{shard.name} is corrupted"):
        read_dataset(copy)
    (copy / shard_name(0, 2)).unlink()
    with pytest.raises(DataError, match="incomplete .1 of 2 shards"):
        read_dataset(copy, verify=False)


def test_resume_after_interruption(tmp_path, catalog_path, deblender_dataset):
    out = tmp_path / "resume"
    args = _sim_args(catalog_path, out, "--count", 32, "--seed", 1234, "--num-shards", 2)
    # same dataset as the fixture; simulate an interruption: shard 1 lost and marked incomplete
    shutil.copytree(deblender_dataset, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][1].update(complete=False, sha256=None)
    del manifest["config"]["star_fraction"]  # written before that option existed: its default
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / shard_name(1, 2)).unlink()
    (out / shard_name(1, 2).replace(".tfrecord.gz", ".json")).unlink()
    (out / f".{shard_name(1, 2)}.half.tmp").write_bytes(b"partial")
    assert not load_manifest(out)["complete"]
    before = (out / shard_name(0, 2)).stat().st_mtime_ns
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "2/2 shards (complete)" in result.output
    assert (out / shard_name(0, 2)).stat().st_mtime_ns == before  # not redrawn
    assert (out / shard_name(1, 2)).read_bytes() == (
        deblender_dataset / shard_name(1, 2)
    ).read_bytes()
    assert not list(out.glob(".*.tmp"))
    assert load_manifest(out)["complete"]
    # complete now: a rerun refuses, --overwrite redraws
    result = _run(*args)
    assert result.exit_code == 1 and "complete; pass --overwrite" in result.output


def test_job_array_shards(tmp_path, catalog_path, deblender_dataset):
    out = tmp_path / "array"
    base = _sim_args(catalog_path, out, "--count", 32, "--seed", 1234, "--num-shards", 2)
    result = _run(*base, "--shard-index", 1)
    assert result.exit_code == 0, result.output
    assert "1/2 shards (incomplete" in result.output
    manifest = load_manifest(out)
    assert [s["complete"] for s in manifest["shards"]] == [False, True]
    with pytest.raises(DataError, match="incomplete"):
        read_dataset(out)
    assert _run(*base, "--shard-index", 1).exit_code == 1  # that shard is done already
    result = _run(*base, "--shard-index", 0)
    assert result.exit_code == 0, result.output
    assert load_manifest(out)["complete"]
    for index in (0, 1):  # disjoint slices that add up to the single-process dataset
        name = shard_name(index, 2)
        assert (out / name).read_bytes() == (deblender_dataset / name).read_bytes()
    assert len(list_shard_files(out)) == 2


def test_overwrite(tmp_path, catalog_path):
    out = tmp_path / "ow"
    args = _sim_args(catalog_path, out, "--count", 2, "--num-shards", 1)
    assert _run(*args).exit_code == 0
    result = _run(*args[:-4], "--count", 3, "--num-shards", 1)
    assert result.exit_code == 1 and "different dataset" in result.output
    result = _run(*args[:-4], "--count", 3, "--num-shards", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert load_manifest(out)["count"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--count", "0"], "count must be positive"),
        (["--count", "-1"], "count must be positive"),
        (["--n-gal", "2"], "--n-gal applies only to kind 'test'"),
        (["--bands", "g,x"], "unknown band"),
        (["--count", "4", "--num-shards", "5"], "--num-shards must be between 1 and the count"),
        (["--count", "4", "--num-shards", "2", "--shard-index", "2"], "--shard-index must be"),
        (["--count", "4", "--shard-index", "0"], "--shard-index needs --num-shards"),
        (["--count", "4", "--format", "fits", "--num-shards", "2"], "tfrecord only"),
        (["--count", "4", "--jobs", "0"], "--jobs must be at least 1"),
    ],
)
def test_cli_bad_input(tmp_path, catalog_path, extra, message):
    out = tmp_path / "bad"
    result = _run(*_sim_args(catalog_path, out, *extra))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_bad_kind_ngal_catalog_and_output(tmp_path, catalog_path, catalog_table):
    out = tmp_path / "bad"
    cases = [
        (["simulate", "pairs", "--out", out], "unknown kind 'pairs'"),
        (["simulate", "test", "--n-gal", "9", "--out", out], "n_gal must be between 1 and 5"),
        (["simulate", "test", "--out", out, "--catalog", tmp_path / "no.fits"], "does not exist"),
    ]
    small = tmp_path / "small.fits"
    catalog_table[catalog_table["i_ab"] < 25.3][:2].write(small)
    cases.append(
        (["simulate", "test", "--n-gal", "3", "--out", out, "--catalog", small], "at least 3")
    )
    nocol = tmp_path / "nocol.fits"
    catalog_table[[c for c in catalog_table.colnames if c != "b_d"]].write(nocol)
    cases.append((["simulate", "test", "--out", out, "--catalog", nocol], "b_d"))
    cases.append((["simulate", "test", "--out", out, "--max-shift", "9"], "max_shift must be"))
    for args, message in cases:
        result = _run(*args, "--count", 2, "--quiet")
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: ") and message in result.output, result.output
        assert not out.exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    for fmt in ("tfrecord", "fits"):
        result = _run(*_sim_args(catalog_path, occupied, "--count", 2, "--format", fmt))
        assert result.exit_code == 1 and "already exists" in result.output
        assert (occupied / "notes.txt").read_text() == "mine"
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        result = _run(*_sim_args(catalog_path, readonly / "x", "--count", 2))
        import os

        if os.geteuid() != 0:  # root writes anywhere
            assert result.exit_code == 1 and "permission denied" in result.output
    finally:
        readonly.chmod(0o755)


def test_bad_manifest_and_missing_dataset(tmp_path):
    with pytest.raises(DataError, match="not a tfdeblend dataset"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "deblender"}))
    with pytest.raises(DataError, match="lacks key"):
        load_testset(tmp_path)
    with pytest.raises(TfdeblendError, match="unknown format"):
        write_dataset(SimConfig(count=1), tmp_path / "x", fmt="hdf5")


def test_fits_testset_missing_or_foreign_truth(tmp_path, fits_testset):
    from astropy.table import Table

    only_blends = tmp_path / "only"
    only_blends.mkdir()
    shutil.copy(fits_testset / "blends.fits", only_blends)
    with pytest.raises(DataError, match=r"truth.fits does not exist \(a FITS test set is"):
        load_testset(only_blends / "blends.fits")
    Table({"a": [1]}).write(only_blends / "truth.fits")
    with pytest.raises(DataError, match="cannot read FITS test set"):
        load_testset(only_blends)


def test_cli_max_shift_gives_close_pairs(tmp_path, catalog_path):
    common = ("--count", 6, "--seed", 5)
    close, default = tmp_path / "close", tmp_path / "default"
    for out, extra in ((close, ("--max-shift", 0.4)), (default, ())):
        result = _run(*_sim_args(catalog_path, out, *common, *extra))
        assert result.exit_code == 0, result.output
    arrays = load_testset(close)
    # centres within 0.4" = 2 px of the stamp centre (39.5) along x and y, up to the PSF's
    # and the pixel grid's shift of the light-weighted centroid
    assert arrays["x"].shape == (6, 2)
    assert np.all(np.abs(arrays["x"] - 39.5) < 2.6) and np.all(np.abs(arrays["y"] - 39.5) < 2.6)
    # the default spreads them over 12 px
    assert np.abs(load_testset(default)["x"] - 39.5).max() > 2.6
