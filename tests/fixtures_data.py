"""Data fixtures (owned by the simulate/data module): small real BTK datasets.

All fixtures are session scoped and render real BTK/GalSim blends from a synthesized CatSim
catalog (0.01 deg^2, ~2000 galaxies with i < 25.3), in the bands g, r, i, on one core:

- ``catalog_path``: the catalog as FITS.
- ``deblender_dataset``: TFRecord dataset directory, 32 two-galaxy blends, 2 shards.
- ``classifier_dataset``: TFRecord dataset directory, 32 images, classes 0..3 balanced (8 each),
  half of each class noiseless.
- ``fits_testset``: directory with ``blends.fits`` + ``truth.fits``, 8 two-galaxy blends.
- ``fits_testset_3gal``: the same with 3 galaxies per blend.

Read them with :func:`tfdeblend.data.read_dataset` / :func:`tfdeblend.data.load_testset`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_SEED = 1234


@pytest.fixture(scope="session")
def catalog_table():
    """The synthesized CatSim-format astropy Table behind ``catalog_path``."""
    from tfdeblend.catalog import synthesize_catalog

    return synthesize_catalog(area_deg2=0.01, seed=FIXTURE_SEED)


@pytest.fixture(scope="session")
def catalog_path(tmp_path_factory, catalog_table) -> Path:
    """A synthesized CatSim catalog written as FITS (0.01 deg^2)."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.fits"
    catalog_table.write(path, format="fits")
    return path


def _make(tmp_path_factory, catalog_path, name, fmt="tfrecord", num_shards=None, **config):
    from tfdeblend.data import write_dataset
    from tfdeblend.simulate import SimConfig

    cfg = SimConfig(seed=FIXTURE_SEED, catalog=str(catalog_path), **config)
    out = tmp_path_factory.mktemp("data") / name
    return write_dataset(cfg, out, fmt=fmt, num_shards=num_shards, jobs=1, progress=False)


@pytest.fixture(scope="session")
def deblender_dataset(tmp_path_factory, catalog_path) -> Path:
    """TFRecord dataset: 32 two-galaxy blends (g, r, i), 2 shards."""
    return _make(
        tmp_path_factory, catalog_path, "deblender", kind="deblender", count=32, num_shards=2
    )


@pytest.fixture(scope="session")
def classifier_dataset(tmp_path_factory, catalog_path) -> Path:
    """TFRecord dataset: 32 images with 0..3 galaxies (8 per class, half noiseless)."""
    return _make(
        tmp_path_factory, catalog_path, "classifier", kind="classifier", count=32, num_shards=2
    )


@pytest.fixture(scope="session")
def fits_testset(tmp_path_factory, catalog_path) -> Path:
    """FITS test set directory (blends.fits + truth.fits): 8 two-galaxy blends."""
    return _make(tmp_path_factory, catalog_path, "test2", fmt="fits", kind="test", n_gal=2, count=8)


@pytest.fixture(scope="session")
def fits_testset_3gal(tmp_path_factory, catalog_path) -> Path:
    """FITS test set directory (blends.fits + truth.fits): 8 three-galaxy blends."""
    return _make(tmp_path_factory, catalog_path, "test3", fmt="fits", kind="test", n_gal=3, count=8)
