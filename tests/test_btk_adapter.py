"""The BTK deblender adapter (tfdeblend.btk_adapter) on a real BTK batch."""

from __future__ import annotations

import btk
import numpy as np
import pytest
from astropy.table import Table
from btk.match import PixelHungarianMatcher
from btk.metrics.detection import Precision, Recall
from btk.metrics.reconstruction import MSE
from inference_helpers import exported_model, write_blends_fits

from tfdeblend.btk_adapter import RDNDeblender
from tfdeblend.errors import ModelError
from tfdeblend.export import load_model

BATCH = 4


@pytest.fixture(scope="module")
def blend_batch():
    """Four real 2-galaxy LSST blends, 120x120 pixels, drawn in g, r, i and z (one band more)."""
    from tfdeblend.catalog import load_default_catalog

    table = load_default_catalog()
    table = table[table["i_ab"] < 24.0]
    survey = btk.survey.get_surveys("LSST")
    survey.available_filters = ["z", "g", "r", "i"]  # an extra band, and not the model's order
    sampling = btk.sampling_functions.DefaultSampling(
        max_number=2, min_number=2, stamp_size=24.0, max_shift=2.0, seed=3, max_mag=24.0
    )
    generator = btk.draw_blends.CatsimGenerator(
        btk.catalog.CatsimCatalog(table), sampling, survey, batch_size=BATCH, njobs=1, seed=3
    )
    return next(generator)


@pytest.fixture(scope="module")
def model(request, tmp_path_factory):
    return load_model(exported_model(request, tmp_path_factory))


def test_batch_call_shapes_catalog_and_btk_metrics(blend_batch, model):
    assert blend_batch.image_size == 120
    deblender = RDNDeblender(max_n_sources=3, model=model, batch_size=2)
    result = deblender(blend_batch)
    assert result.deblended_images.shape == (BATCH, 3, 4, 120, 120)
    images = result.deblended_images
    # outside the central 80x80 crop and in the z band (not the model's) everything is zero
    assert not images[..., :20, :].any() and not images[..., 100:, :].any()
    assert not images[..., :, :20].any() and not images[..., :, 100:].any()
    assert not images[:, :, 0].any()

    # the same numbers as the model on the cropped g, r, i stamps
    crop = blend_batch.blend_images[:, [1, 2, 3], 20:100, 20:100]
    expected = model.deblend(np.transpose(crop, (0, 2, 3, 1)))
    for i in range(BATCH):
        n = min(int(expected["n_components"][i]), 3)
        assert len(result.catalog_list[i]) == n
        for j in range(n):
            np.testing.assert_allclose(
                images[i, j, 1:, 20:100, 20:100],
                np.transpose(expected["components"][i, j], (2, 0, 1)),
                rtol=1e-4,
                atol=1e-5 * np.abs(crop[i]).max(),
            )
        cat = result.catalog_list[i]
        # ra/dec in arcsec from the stamp centre, 0.2 arcsec per pixel
        np.testing.assert_allclose(cat["ra"], (cat["x_peak"] - 59.5) * 0.2)
        np.testing.assert_allclose(cat["dec"], (cat["y_peak"] - 59.5) * 0.2)
        assert ((cat["x_peak"] >= 20) & (cat["x_peak"] < 100)).all()
        assert result.extra_data[i]["quality"] in (0, 1, 2)
        # the catalog fluxes are those of the flux-conserving components
        np.testing.assert_allclose(
            cat["flux_r"], expected["conserved"][i, :n, :, :, 1].sum(axis=(1, 2)), rtol=1e-4,
            atol=1e-3 * np.abs(crop[i]).max(),
        )

    # one blend at a time gives the same as the batch
    single = deblender.deblend(1, blend_batch)
    tol = 1e-5 * np.abs(crop[1]).max()
    np.testing.assert_allclose(single.deblended_images, images[1], rtol=1e-4, atol=tol)

    # BTK's matcher and metrics run on the result
    true_catalogs = blend_batch.catalog_list
    matching = PixelHungarianMatcher(pixel_max_sep=5.0)(true_catalogs, result.catalog_list)
    n_matches = np.array([len(m) for m in matching.true_matches])
    precision = Precision(BATCH)(n_matches, matching.n_true, matching.n_pred)
    recall = Recall(BATCH)(n_matches, matching.n_true, matching.n_pred)
    assert matching.n_true.tolist() == [2] * BATCH
    assert matching.n_pred.tolist() == [len(c) for c in result.catalog_list]
    assert 0.0 <= recall <= 1.0
    assert np.isnan(precision) or 0.0 <= precision <= 1.0
    iso = matching.match_true_arrays(blend_batch.isolated_images)[:, :, 2]  # r band
    pred = matching.match_pred_arrays(images)[:, :, 2]
    mse = MSE(BATCH)(iso, pred)
    # BTK's MSE (an RMS over matched pairs whose images both have a positive sum) by hand
    errors = []
    for i in range(BATCH):
        n = min((iso[i].sum(axis=(-1, -2)) > 0).sum(), (pred[i].sum(axis=(-1, -2)) > 0).sum())
        errors += [np.sqrt(((iso[i, j] - pred[i, j]) ** 2).mean()) for j in range(n)]
    if errors:
        np.testing.assert_allclose(mse, np.mean(errors), rtol=1e-6)
    else:
        assert np.isnan(mse)


def test_missing_bands_are_refused(blend_batch, model):
    survey = btk.survey.get_surveys("LSST")
    survey.available_filters = ["g", "r"]
    two = btk.blend_batch.BlendBatch(
        blend_batch.batch_size,
        blend_batch.max_n_sources,
        blend_batch.stamp_size,
        survey,
        blend_batch.blend_images[:, 1:3],
        blend_batch.isolated_images[:, :, 1:3],
        blend_batch.catalog_list,
        blend_batch.psf[1:3],
    )
    with pytest.raises(ModelError, match="the model needs g,r,i"):
        RDNDeblender(max_n_sources=3, model=model)(two)


def test_a_hot_pixel_does_not_change_what_the_adapter_finds(blend_batch, model):
    """A 1e6 pixel (a cosmic ray) in one blend: replaced for the networks, as tfdeblend run does."""
    import copy

    deblender = RDNDeblender(max_n_sources=3, model=model, batch_size=4)
    clean = deblender(blend_batch)
    hit = copy.copy(blend_batch)
    hit.blend_images = np.array(blend_batch.blend_images, copy=True)
    hit.blend_images[0, 2, 57, 63] = 1e6  # r band, inside the central crop
    result = deblender(hit)
    for i in range(BATCH):
        assert len(result.catalog_list[i]) == len(clean.catalog_list[i])
    # the models differ only through the pixel's replacement by its neighbours' median (this
    # tiny, barely trained model, stuck at a count of 3, amplifies that to about 1-2 % of the
    # flux; the 1e6 pixel itself would be 10x the stamps' total)
    diff = np.abs(result.deblended_images - clean.deblended_images).sum()
    assert diff < 0.03 * np.abs(clean.deblended_images).sum()
    # the pixel went into no model
    assert result.deblended_images.max() < 1.01 * clean.deblended_images.max()


def test_btk_stamps_smaller_than_the_model_are_peeled_whole(blend_batch, model, tmp_path):
    """BTK stamps smaller than the model's 80x80 were refused; they are now peeled whole,
    centred in empty sky of their own noise as `tfdeblend run` does, and returned at BTK's size.
    The central 64x64 of the batch gives what the run path gives on the same pixels."""
    from tfdeblend.run import run_file

    survey = btk.survey.get_surveys("LSST")
    survey.available_filters = ["z", "g", "r", "i"]
    small = btk.blend_batch.BlendBatch(
        blend_batch.batch_size, blend_batch.max_n_sources, 64 * 0.2, survey,
        blend_batch.blend_images[..., 28:92, 28:92],
        blend_batch.isolated_images[..., 28:92, 28:92], blend_batch.catalog_list,
        blend_batch.psf,
    )
    assert small.image_size == 64
    result = RDNDeblender(max_n_sources=3, model=model, batch_size=2)(small)
    assert result.deblended_images.shape == (BATCH, 3, 4, 64, 64)
    assert not result.deblended_images[:, :, 0].any()  # z: not the model's band
    # the same pixels through tfdeblend run, one file
    stamps = np.transpose(small.blend_images[:, 1:4], (0, 2, 3, 1))
    run_file(write_blends_fits(tmp_path / "b.fits", stamps), tmp_path / "o.fits", model=model,
             progress=False)
    catalog = Table.read(tmp_path / "o.fits", hdu="CATALOG")
    for i in range(BATCH):
        ours = result.catalog_list[i]
        theirs = catalog[catalog["blend_id"] == i][:3]
        assert len(ours) == len(theirs) >= 1
        np.testing.assert_allclose(ours["x_peak"], theirs["x"], atol=0.01)
        np.testing.assert_allclose(ours["flux_r"], theirs["flux_r"], rtol=1e-3)
