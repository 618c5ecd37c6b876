"""Deblend the tiles of an image on a Dask cluster (``tfdeblend run --workers N / --scheduler``).

Each tile is one task: the worker reads its tile from the input file(s) itself (the files must
be readable by the workers: a shared file system on a batch system), deblends it with
:func:`tfdeblend.scene.deblend_tile`, and returns the tile's catalog rows and model image. Each
worker process loads the model once (:func:`_worker_model`) and keeps it for the tiles that
follow. The tasks run exactly what the in-process run does, tile by tile, so the catalog is the
same.

``workers=N`` starts a local cluster of ``N`` single-threaded worker processes;
``scheduler=ADDRESS`` joins an existing cluster (e.g. one that ``dask-jobqueue`` started on a
batch system). Dask is an optional dependency: ``pip install tfdeblend[distributed]``.
"""

from __future__ import annotations

import os

from tfdeblend.errors import TfdeblendError

_MODELS: dict[str, object] = {}


def _worker_model(model_dir: str):
    """The model of ``model_dir``, loaded once per worker process."""
    if model_dir not in _MODELS:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from tfdeblend.export import load_model

        _MODELS[model_dir] = load_model(model_dir)
    return _MODELS[model_dir]


def _deblend_tile_task(source, tile, model_dir, scene, batch_size, psf_fwhm=None, colour=None):
    """One tile, on a worker: read it, deblend it (:func:`tfdeblend.scene.deblend_tile`)."""
    from tfdeblend.outliers import stamp_functions
    from tfdeblend.scene import deblend_tile

    model = _worker_model(model_dir)
    image, variance, missing = source.read(*tile.ext)
    deblend, deblend_one = stamp_functions(model, batch_size, psf_fwhm)
    result = deblend_tile(
        image, variance, missing, deblend, tile, scene, model.stamp_size, source.bands,
        batch_size=batch_size, deblend_one=deblend_one, colour=colour,
    )
    info = {"model": model.name, "version": model.version, "peel": model.peel_config}
    return result, info


def deblend_tiles_dask(source, tiles, model_dir, scene, batch_size: int = 32,
                       workers: int | None = None, scheduler: str | None = None,
                       progress: bool = True, psf_fwhm=None, colour=None):
    """Deblend ``tiles`` on a Dask cluster; ``(results in tile order, model info)``.

    Raises:
        TfdeblendError: Dask is not installed, or the scheduler cannot be reached.
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise TfdeblendError(
            "--workers and --scheduler need Dask: pip install 'tfdeblend[distributed]'"
        ) from err
    from tqdm.auto import tqdm

    from tfdeblend.export import resolve_version_dir

    model_dir = str(resolve_version_dir(model_dir if model_dir is not None else _default()).resolve())
    cluster = None
    try:
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as err:  # ValueError: a malformed address
                raise TfdeblendError(f"cannot reach the Dask scheduler {scheduler}: {err}") from err
        else:
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        with client:
            futures = {
                client.submit(_deblend_tile_task, source, tile, model_dir, scene, batch_size,
                              psf_fwhm, colour, pure=False,
                              key=f"tfdeblend-tile-{tile.index}-{os.getpid()}"): tile
                for tile in tiles
            }
            results = {}
            info = None
            with tqdm(total=len(tiles), unit="tile", desc="deblending",
                      disable=not progress) as bar:
                for future in as_completed(futures):
                    result, info = future.result()
                    results[futures[future].index] = result
                    bar.update(1)
    finally:
        if cluster is not None:
            cluster.close()
    return [results[t.index] for t in tiles], info


def _default():
    from tfdeblend.export import default_model_dir

    return default_model_dir()
