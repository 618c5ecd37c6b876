"""``tfdeblend run`` and the FITS layer (tfdeblend.fitsio, tfdeblend.run.run_file)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from inference_helpers import blend_images, exported_model, write_blends_fits
from tfdeblend.cli.main import cli

from tfdeblend.errors import DataError
from tfdeblend.fitsio import open_blends, read_blends
from tfdeblend.run import run_file


@pytest.fixture(scope="module")
def model_dir(request, tmp_path_factory):
    return exported_model(request, tmp_path_factory)


@pytest.fixture(scope="module")
def images(request):
    return blend_images(request, 5)


def invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args), "--quiet"])


def test_run_writes_every_hdu(model_dir, images, tmp_path):
    blends = np.concatenate([images, np.zeros_like(images[:1])])  # + an all-zero stamp
    src = write_blends_fits(tmp_path / "blends.fits", blends, PIXSCALE=0.2)
    out = tmp_path / "out.fits"
    result = invoke(
        src,
        "-o",
        out,
        "--model",
        model_dir,
        "--batch-size",
        4,
        "--preview",
        tmp_path / "prev",
        "--preview-count",
        2,
    )
    assert result.exit_code == 0, result.output
    assert "Deblended 6 blend(s)" in result.output
    n = len(blends)
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == [
            "PRIMARY", "COMPONENTS", "RESIDUAL", "CONSERVED", "CATALOG", "BLENDS"
        ]
        head = hdul[0].header
        assert head["MODEL"] == "tiny" and head["MODELVER"] == 1 and head["BANDS"] == "g,r,i"
        assert head["BUNIT"] == "electron" and head["TFDBVER"]
        assert head["MAXITER"] == 4 and head["REFINE"] == 2 and head["NVIEWS"] == 8
        assert head["SPLIT"] is True and head["DETECTSN"] == 10.0
        assert head["DETECTWN"] == 8.0 and head["MERGERAD"] == 3.0 and head["KEEPSNR"] == 5.0
        assert head["PRIOR3"] == 0.0  # the tiny model's (inference_helpers.exported_model)
        comps, resid = hdul["COMPONENTS"].data, hdul["RESIDUAL"].data
        assert comps.shape == (n, 4, 3, 80, 80) and comps.dtype.kind == "f"
        assert resid.shape == (n, 3, 80, 80)
        assert hdul["COMPONENTS"].header["BUNIT"] == "electron"
        np.testing.assert_allclose(
            comps.sum(axis=1) + resid, np.transpose(blends, (0, 3, 1, 2)), atol=0.05
        )
        table = hdul["BLENDS"].data
        catalog = hdul["CATALOG"].data
        np.testing.assert_array_equal(table["blend_id"], np.arange(n))
        assert table["counts"].shape == (n, 5)
        assert set(table["quality"]) <= {0, 1, 2}
        assert set(table["split"]) <= {0, 1} and set(table["recovered"]) <= {0, 1}
        assert (table["merged"] >= 0).all() and (table["pruned"] >= 0).all()
        assert len(catalog) == table["n_components"].sum()
        for name in (
            "blend_id",
            "component",
            "x",
            "y",
            "flux_g",
            "flux_r",
            "flux_i",
            "mu20",
            "mu02",
            "mu11",
            "quality",
        ):
            assert name in catalog.columns.names
        # the flux-conserving components: the models plus a share of the residual, so together
        # they never hold more than the input, and only the flux outside the footprints is left
        conserved = hdul["CONSERVED"].data
        assert conserved.shape == comps.shape
        assert hdul["CONSERVED"].header["BUNIT"] == "electron"
        left = np.transpose(blends, (0, 3, 1, 2)) - conserved.sum(axis=1)
        inside = conserved.sum(axis=1) != comps.sum(axis=1)
        assert inside.any()
        np.testing.assert_allclose(left[inside], 0.0, atol=0.05)
        np.testing.assert_allclose(left[~inside], resid[~inside], atol=0.05)
        for band in ("g", "r", "i"):
            assert np.all(table[f"noise_{band}"][:-1] > 0)
        # each catalog row measures its flux-conserving component
        for row in catalog[:5]:
            comp = conserved[row["blend_id"], row["component"]]
            np.testing.assert_allclose(row["flux_r"], comp[1].sum(), rtol=1e-4, atol=1.0)
        # the all-zero stamp: no component, its residual is zero, first count 0
        assert table["n_components"][-1] == 0 and table["counts"][-1][0] == 0
        assert not comps[-1].any() and not resid[-1].any() and not conserved[-1].any()
        assert table["noise_r"][-1] == 0
    assert sorted(p.name for p in (tmp_path / "prev").iterdir()) == [
        "blend_00000.png",
        "blend_00001.png",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_run_file_matches_the_model_and_streams_batches(model_dir, images, tmp_path):
    from tfdeblend.export import load_model

    model = load_model(model_dir)
    src = write_blends_fits(tmp_path / "b.fits", images)
    summary = run_file(src, tmp_path / "o.fits", model=model, batch_size=2, progress=False)
    assert summary["n_blends"] == len(images)
    assert sum(summary["quality"].values()) == len(images)
    expected = model.deblend(images)
    with fits.open(tmp_path / "o.fits") as hdul:
        np.testing.assert_allclose(
            hdul["RESIDUAL"].data, np.transpose(expected["residual"], (0, 3, 1, 2)),
            rtol=1e-4, atol=1e-2,  # batches of 2 and of 32: float32 rounding only
        )
        np.testing.assert_array_equal(hdul["BLENDS"].data["quality"], expected["quality"])
        np.testing.assert_array_equal(hdul["BLENDS"].data["split"], expected["split"])
        np.testing.assert_array_equal(hdul["BLENDS"].data["recovered"], expected["recovered"])
        np.testing.assert_array_equal(hdul["BLENDS"].data["merged"], expected["merged"])
    assert summary["n_split"] == int(expected["split"].sum())
    assert summary["n_merged"] == int(expected["merged"].sum())
    assert summary["n_recovered"] == int(expected["recovered"].sum())


def test_reading_single_stamps_extensions_and_band_selection(images, tmp_path):
    # one stamp (C, H, W) in an image extension after an empty primary
    hdr = fits.Header({"BANDS": "g,r,i"})
    one = np.transpose(images[0], (2, 0, 1))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(one, header=hdr)]).writeto(tmp_path / "1.fits")
    data, header, bands = read_blends(tmp_path / "1.fits", bands=("g", "r", "i"), stamp_size=80)
    assert data.shape == (1, 3, 80, 80) and bands == ("g", "r", "i")
    np.testing.assert_array_equal(data[0], one)
    # six bands in the file: the model's three are selected in the model's order
    six = np.concatenate([images[:2]] * 2, axis=-1)
    write_blends_fits(tmp_path / "6.fits", six, bands=("u", "g", "r", "i", "z", "y"))
    data, _, bands = read_blends(tmp_path / "6.fits", bands=("i", "r", "g"))
    np.testing.assert_array_equal(data, np.transpose(six[..., [3, 2, 1]], (0, 3, 1, 2)))
    data, _, _ = read_blends(tmp_path / "6.fits", bands=("i", "r", "g"), channels_last=True)
    np.testing.assert_array_equal(data, six[..., [3, 2, 1]])
    with open_blends(tmp_path / "6.fits") as blends:
        assert len(blends) == 2 and blends.bands == ("u", "g", "r", "i", "z", "y")
        np.testing.assert_array_equal(blends.read(1, 2, channels_last=True), six[1:2])


def test_scaled_integer_stamps_are_read_in_physical_values(images, tmp_path):
    """BITPIX 16 with BSCALE/BZERO, and unsigned 16-bit stamps, which astropy cannot
    memory-map scaled: read as astropy reads them without memmap, not refused with a
    traceback."""
    stamps = np.transpose(images[:2], (0, 3, 1, 2))
    hdu = fits.PrimaryHDU(stamps, header=fits.Header({"BANDS": "g,r,i"}))
    hdu.scale("int16", bscale=float(np.abs(stamps).max() / 30000), bzero=0.0)
    hdu.writeto(tmp_path / "int16.fits")
    counts = np.clip(np.round(stamps + 1000), 0, 65535).astype(np.uint16)
    fits.PrimaryHDU(counts, header=fits.Header({"BANDS": "g,r,i"})).writeto(tmp_path / "u16.fits")
    for name in ("int16.fits", "u16.fits"):
        path = tmp_path / name
        data, _, _ = read_blends(path, bands=("g", "r", "i"), stamp_size=80)
        expected = fits.getdata(path, memmap=False)
        assert expected.dtype != np.int16  # scaled by astropy
        np.testing.assert_allclose(data, expected, rtol=1e-6)
    np.testing.assert_allclose(data, counts)


def _bad_inputs(tmp_path, images):
    """name -> (path, expected message fragment)."""
    cases = {}
    p = tmp_path / "text.fits"
    p.write_text("this is not a FITS file at all\n" * 200)
    cases["not fits"] = (p, "not a readable FITS file")
    p = tmp_path / "empty.fits"
    p.write_bytes(b"")
    cases["empty file"] = (p, "is empty")
    p = tmp_path / "table.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))]),
        ]
    ).writeto(p)
    cases["no image"] = (p, "no image HDU")
    p = tmp_path / "dims.fits"
    fits.PrimaryHDU(np.zeros((80, 80), "f4"), header=fits.Header({"BANDS": "g"})).writeto(p)
    cases["2-d image"] = (p, "missing r,i")  # one band's image: the model needs three
    big = np.pad(images, ((0, 0), (8, 8), (8, 8), (0, 0)))
    cases["stamp size"] = (write_blends_fits(tmp_path / "s.fits", big), "96x96 pixels, larger")
    cases["no bands"] = (write_blends_fits(tmp_path / "nb.fits", images, bands=None), "no BANDS")
    cases["band mismatch"] = (
        write_blends_fits(tmp_path / "bm.fits", images, bands=("g", "r", "z")),
        "missing i",
    )
    cases["bands vs channels"] = (
        write_blends_fits(tmp_path / "bc.fits", images[..., :2], bands=("g", "r", "i")),
        "2 channel(s)",
    )
    p = tmp_path / "zero.fits"
    fits.PrimaryHDU(np.zeros((0, 3, 80, 80), "f4"), header=fits.Header({"BANDS": "g,r,i"})).writeto(
        p
    )
    cases["no stamps"] = (p, "no stamps")
    cases["missing"] = (tmp_path / "missing.fits", "does not exist")
    p = tmp_path / "truncated.fits"
    p.write_bytes(write_blends_fits(tmp_path / "whole.fits", images).read_bytes()[:5000])
    cases["truncated"] = (p, "is truncated")
    return cases


def test_bad_inputs_give_one_clear_line_and_no_output(model_dir, images, tmp_path):
    for name, (path, fragment) in _bad_inputs(tmp_path, images).items():
        out = tmp_path / f"out-{name.replace('/', '_').replace(' ', '_')}.fits"
        result = invoke(path, "-o", out, "--model", model_dir)
        assert result.exit_code == 1, (name, result.output)
        assert result.output.startswith("Error: "), (name, result.output)
        assert fragment in result.output, (name, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists(), name
        if name != "2-d image":  # an image, not stamps: read_blends refuses it too
            with pytest.raises(DataError):
                read_blends(path, bands=("g", "r", "i"), stamp_size=80)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_model_and_output_errors(model_dir, images, tmp_path, monkeypatch):
    src = write_blends_fits(tmp_path / "b.fits", images[:1])
    out = tmp_path / "o.fits"
    result = invoke(src, "-o", out, "--model", tmp_path / "nomodel")
    assert result.exit_code == 1 and "does not exist" in result.output and not out.exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "readme.txt").write_text("hello")
    result = invoke(src, "-o", out, "--model", tmp_path / "foreign")
    assert result.exit_code == 1 and "not a model directory" in result.output
    monkeypatch.setenv("TFDEBLEND_MODEL", str(tmp_path / "nowhere"))
    result = invoke(src, "-o", out)  # the default model
    assert result.exit_code == 1 and "default model" in result.output and not out.exists()
    monkeypatch.setenv("TFDEBLEND_MODEL", str(model_dir))
    assert invoke(src, "-o", out).exit_code == 0
    before = out.read_bytes()
    result = invoke(src, "-o", out)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert out.read_bytes() == before
    assert invoke(src, "-o", out, "--overwrite").exit_code == 0


def test_an_exported_network_seeds_fine_tuning(model_dir):
    """``--init-from`` accepts an export (or the ``.keras`` files inside it), checked against its
    bands."""
    from tfdeblend.errors import ModelError
    from tfdeblend.export import load_model
    from tfdeblend.training.phase1 import read_init_weights

    keras_file = load_model(model_dir).path / "assets.extra" / "deblender.keras"
    weights, _ = read_init_weights(keras_file, "deblender", ("g", "r", "i"), 80)
    assert weights and all(np.all(np.isfinite(w)) for w in weights)
    with pytest.raises(ModelError, match="bands g,r,i, the dataset has r,i,z"):
        read_init_weights(keras_file, "deblender", ("r", "i", "z"), 80)
    with pytest.raises(ModelError, match="80-pixel stamps"):
        read_init_weights(keras_file, "deblender", ("g", "r", "i"), 64)
    # the export directory stands for its highest version's networks
    for net in ("deblender", "classifier"):
        from_dir, _ = read_init_weights(model_dir, net, ("g", "r", "i"), 80)
        from_file, _ = read_init_weights(keras_file.with_name(f"{net}.keras"), net,
                                         ("g", "r", "i"), 80)
        assert all(np.array_equal(a, b) for a, b in zip(from_dir, from_file))
    with pytest.raises(ModelError, match="bands g,r,i, the dataset has r,i,z"):
        read_init_weights(model_dir, "classifier", ("r", "i", "z"), 80)


def test_write_results_in_memory(tmp_path):
    from tfdeblend.fitsio import blends_table, component_catalog, write_results

    comps = np.ones((2, 3, 3, 8, 8), np.float32)  # (N, K, C, H, W)
    catalog = component_catalog(np.transpose(comps, (0, 1, 3, 4, 2)), [1, 2], [2, 1],
                                ("g", "r", "i"))
    blends = blends_table(np.array([1, 2]), np.array([2, 1]), np.zeros((2, 4)),
                          noise_std=np.full((2, 3), 5.0), bands=("g", "r", "i"))
    write_results(tmp_path / "a.fits", comps, comps[:, 0], catalog, blends,
                  {"bands": ("g", "r", "i"), "bunit": "electron"}, conserved=2 * comps)
    write_results(tmp_path / "b.fits", comps, comps[:, 0], catalog, blends)
    with fits.open(tmp_path / "a.fits") as hdul:
        assert [h.name for h in hdul] == [
            "PRIMARY", "COMPONENTS", "RESIDUAL", "CONSERVED", "CATALOG", "BLENDS"
        ]
        np.testing.assert_array_equal(hdul["CONSERVED"].data, 2 * comps)
        assert hdul["CONSERVED"].header["BUNIT"] == "electron"
        assert list(hdul["BLENDS"].data["noise_r"]) == [5.0, 5.0]
        assert len(hdul["CATALOG"].data) == 3
    with fits.open(tmp_path / "b.fits") as hdul:
        assert "CONSERVED" not in [h.name for h in hdul]


def test_preview_marks_a_split_blend(tmp_path):
    from matplotlib.image import imread

    from tfdeblend.preview import save_previews

    rng = np.random.default_rng(0)
    blend = rng.normal(size=(1, 20, 20, 3)).astype("float32")
    results = {
        "blend": blend,
        "components": np.stack([blend, blend], axis=1),
        "residual": blend * 0,
        "counts": np.array([[2, 0, -1]]),
        "quality": np.array([1]),
        "n_components": np.array([2]),
    }
    plain = save_previews(tmp_path / "plain", results, ("g", "r", "i"))
    split = save_previews(tmp_path / "split", {**results, "split": np.array([1])}, ("g", "r", "i"))
    a, b = imread(plain[0]), imread(split[0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # the title and the last panel say so


def test_preview_of_a_stamp_with_missing_pixels_is_not_black(tmp_path):
    """A NaN pixel made the stretch NaN: every panel of the stamp came out black."""
    from matplotlib.image import imread

    from tfdeblend.preview import save_preview

    yy, xx = np.mgrid[:40, :40]
    galaxy = np.exp(-((xx - 20.0) ** 2 + (yy - 20.0) ** 2) / 10.0)[..., None] * [1.0, 2.0, 3.0]
    blend = galaxy.astype("float32")
    holed = blend.copy()
    holed[20, 5:10, 1] = np.nan
    panels = {}
    for name, image in (("clean", blend), ("holed", holed)):
        path = save_preview(tmp_path / f"{name}.png", image, image[None], image - image,
                            np.array([1, 0]), 2, 1)
        rgb = imread(path)[..., :3]
        panels[name] = (np.ptp(rgb, axis=-1) > 0.1).sum()  # coloured pixels: the galaxy
    assert panels["clean"] > 100 and panels["holed"] > 0.8 * panels["clean"], panels


def test_no_header_card_of_a_results_file_is_truncated():
    """Each card's comment fits its 80-character line (astropy truncated SPLITDST's with a
    warning on every run)."""
    import warnings

    from tfdeblend.fitsio import primary_header
    from tfdeblend.peel_config import PeelConfig

    for preset in ("shipped", "paper"):
        info = {"model": "tfdeblend_cpu", "version": 15, "bands": ("g", "r", "i"),
                "bunit": "electron", "input": "blends.fits", "n_blends": 3,
                "peel": PeelConfig.preset(preset)}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            text = primary_header(info).tostring()
        assert "SPLITDST" in text
