"""Datasets on disk: sharded GZIP TFRecords with a manifest, FITS test sets, ``tf.data`` readers.

TFRecord layout (``DIR/``)::

    manifest.json                          what the dataset is and which shards are complete
    shard-00000-of-00008.tfrecord.gz       records of examples [0, count/8) ...
    shard-00000-of-00008.json              the shard's own completion note (name, count, sha256)

A shard is written to a temporary file, hashed, renamed into place, and only then marked
complete: first in its own note ``shard-*.json`` (atomic rename), then in ``manifest.json``,
which is re-merged from all notes under a file lock. Several processes (a job array, each with
``shard_index``) can therefore write one dataset at once, and :func:`load_manifest` merges the
notes again on read, so a manifest merge lost to a crash costs nothing. An interrupted run leaves
incomplete shards that a rerun of the same command writes (resume).

Records hold the fields of :data:`tfdeblend.simulate.RECORD_FIELDS`, channels last: float arrays
as raw little-endian float32 bytes, ``n_gal`` and ``noisy`` as int64. Shapes come from the manifest.
Simulated datasets also hold each example's observing conditions
(:data:`tfdeblend.simulate.CONDITION_FIELDS`, float32), named by the manifest's ``conditions``;
datasets written before them have no such key and are read as before.

FITS test sets (``DIR/blends.fits`` + ``DIR/truth.fits``, channels first) are described in
``docs/architecture.md``.

TensorFlow is imported only by the functions that need it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tfdeblend import __version__
from tfdeblend.errors import DataError, TfdeblendError
from tfdeblend.simulate import (
    BAND_CONDITION_FIELDS,
    CONDITION_FIELDS,
    RECORD_FIELDS,
    SimConfig,
    band_conditions,
    simulate,
    validate_catalog,
)
from tfdeblend.utils import atomic_dir, atomic_file, check_output_path

MANIFEST = "manifest.json"
FORMATS = ("tfrecord", "fits")
#: Examples per shard when the number of shards is not given.
EXAMPLES_PER_SHARD = 1000
_FLOAT_FIELDS = ("blend", "blend_noiseless", "isolated", "x", "y", "flux", "mu20", "mu02", "mu11")
_INT_FIELDS = ("n_gal", "noisy")
_FILE_MODE = 0o644
_MANIFEST_KEYS = ("kind", "config", "bands", "stamp_size", "max_sources", "count", "seed", "shards")


def shard_name(index: int, num_shards: int) -> str:
    """File name of shard ``index`` of ``num_shards``."""
    return f"shard-{index:05d}-of-{num_shards:05d}.tfrecord.gz"


def shard_range(index: int, num_shards: int, count: int) -> range:
    """Example indices held by shard ``index`` (contiguous, disjoint, covering ``count``)."""
    return range(index * count // num_shards, (index + 1) * count // num_shards)


def field_shapes(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shape of each record field for a dataset (channels last)."""
    size, n_bands, slots = manifest["stamp_size"], len(manifest["bands"]), manifest["max_sources"]
    image = (size, size, n_bands)
    return {
        "blend": image,
        "blend_noiseless": image,
        "isolated": (slots, *image),
        "n_gal": (),
        "noisy": (),
        "x": (slots,),
        "y": (slots,),
        "flux": (slots, n_bands),
        "mu20": (slots,),
        "mu02": (slots,),
        "mu11": (slots,),
        **{key: (n_bands,) if key in BAND_CONDITION_FIELDS else ()
           for key in manifest.get("conditions") or ()},
    }


def condition_fields(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The condition fields a dataset's records hold (none for datasets written before them)."""
    names = tuple(manifest.get("conditions") or ())
    unknown = [n for n in names if n not in CONDITION_FIELDS]
    if unknown:
        raise DataError(f"unknown condition field(s) in the manifest: {', '.join(unknown)}")
    return names


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _catalog_fingerprint(table: Any) -> str:
    digest = hashlib.sha256()
    for name in table.colnames:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(np.asarray(table[name], dtype=np.float64)).tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import btk
    import galsim

    versions = {"tfdeblend": __version__, "numpy": np.__version__, "galsim": galsim.__version__}
    versions["btk"] = getattr(btk, "__version__", "unknown")
    return versions


# ------------------------------------------------------------------------------------ manifest


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{path} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err


def _merge_notes(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Mark complete every shard whose note and file exist; unmark those whose file is gone."""
    for shard in manifest["shards"]:
        note_path = path / shard["name"].replace(".tfrecord.gz", ".json")
        if note_path.exists():
            try:
                note = json.loads(note_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                note = {}
            if note.get("name") == shard["name"] and note.get("complete"):
                shard.update(note)
        if shard.get("complete") and not (path / shard["name"]).exists():
            shard["complete"] = False
    manifest["complete"] = all(s.get("complete") for s in manifest["shards"])
    return manifest


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a dataset's manifest, merging the per-shard completion notes.

    Args:
        path: dataset directory (or its ``manifest.json``).

    Returns:
        The manifest dict, with ``complete`` (bool) added: all shards written.

    Raises:
        DataError: no dataset there, or its manifest is unreadable or lacks keys.
    """
    path = Path(path)
    if path.name == MANIFEST:
        path = path.parent
    if not (path / MANIFEST).is_file():
        if (path / "blends.fits").is_file():
            raise DataError(f"{path} is a FITS test set; it has no TFRecord manifest")
        raise DataError(f"{path} is not a tfdeblend dataset (no {MANIFEST})")
    manifest = _read_json(path / MANIFEST)
    if not isinstance(manifest, dict):
        raise DataError(f"{path / MANIFEST} does not hold a manifest")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise DataError(f"{path / MANIFEST} lacks key(s): {', '.join(missing)}")
    return _merge_notes(path, manifest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path / ".manifest.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    manifest = {k: v for k, v in manifest.items() if k != "complete"}
    with atomic_file(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.chmod(_FILE_MODE)


def _update_manifest(path: Path) -> dict[str, Any]:
    with _locked(path):
        manifest = load_manifest(path)
        _write_manifest(path, manifest)
    return manifest


# ------------------------------------------------------------------------------------- writing


def _serialize(record: dict[str, np.ndarray]) -> bytes:
    import tensorflow as tf

    feature = {}
    for key in _FLOAT_FIELDS:
        raw = np.ascontiguousarray(record[key], dtype="<f4").tobytes()
        feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw]))
    for key in _INT_FIELDS:
        feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(record[key])]))
    for key in CONDITION_FIELDS:
        if key in record:
            raw = np.ascontiguousarray(record[key], dtype="<f4").tobytes()
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # deterministic: the feature map in key order. Otherwise protobuf (upb) writes map entries in
    # hash-table order, which is seeded per process, so the same record gives other bytes in
    # another run and the shards' SHA-256 would differ between two identical simulate commands.
    return example.SerializeToString(deterministic=True)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="blend", smoothing=0.1)


def _prepare_directory(
    out: Path,
    manifest: dict[str, Any],
    shard_index: int | None,
    overwrite: bool,
) -> dict[str, Any]:
    """Create, resume or reset the dataset directory; return the current manifest."""
    if out.exists() and not out.is_dir():
        if not overwrite:
            raise TfdeblendError(f"{out} already exists; pass --overwrite to replace it")
        out.unlink()
    if out.is_dir() and not (out / MANIFEST).exists() and any(out.iterdir()):
        if not overwrite:
            raise TfdeblendError(
                f"{out} already exists and is not a tfdeblend dataset; "
                "pass --overwrite to replace it"
            )
        shutil.rmtree(out)
    if not out.exists():
        check_output_path(out, overwrite=False)
        out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if not (out / MANIFEST).exists():
            _write_manifest(out, manifest)
            return load_manifest(out)
        current = load_manifest(out)
        # a manifest written before a config option existed holds that option's default
        config = {**manifest["config"], **current.get("config", {})}
        same = (
            config == manifest["config"]
            and current.get("catalog_sha256") == manifest["catalog_sha256"]
            and len(current["shards"]) == len(manifest["shards"])
        )
        if not same:
            if not overwrite:
                raise TfdeblendError(
                    f"{out} holds a different dataset (other settings, catalog or shard count); "
                    "pass --overwrite to replace it"
                )
            if shard_index is not None:
                raise TfdeblendError(
                    f"{out} holds a different dataset; --overwrite with --shard-index rewrites "
                    "one shard of the same dataset only: remove the directory first"
                )
        targets = range(len(current["shards"])) if shard_index is None else [shard_index]
        if same and not overwrite and all(current["shards"][i]["complete"] for i in targets):
            what = "dataset" if shard_index is None else f"shard {shard_index}"
            raise TfdeblendError(
                f"{out} already exists and its {what} is complete; pass --overwrite to replace it"
            )
        if overwrite:
            # unmark first (so an interruption never leaves a stale shard marked complete)
            names = [current["shards"][i]["name"] for i in targets] if same else None
            for item in list(out.iterdir()):
                if item.name == ".manifest.lock":
                    continue
                stem = item.name.replace(".tfrecord.gz", "").replace(".json", "")
                if names is None or any(stem == n.replace(".tfrecord.gz", "") for n in names):
                    if item.is_dir():
                        shutil.rmtree(item)
                    else:
                        item.unlink()
            if names is None:
                _write_manifest(out, manifest)
            return _merge_notes(out, load_manifest(out) if names is not None else manifest)
        return current


def write_dataset(
    config: SimConfig,
    out: str | os.PathLike,
    table: Any = None,
    fmt: str = "tfrecord",
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    jobs: int | None = None,
    progress: bool = True,
) -> Path:
    """Simulate ``config`` and write it to ``out``: TFRecord shards or a FITS test set.

    Args:
        config: what to simulate.
        out: dataset directory.
        table: CatSim astropy Table (default: the catalog named in ``config``).
        fmt: ``tfrecord`` (sharded, resumable) or ``fits`` (``blends.fits`` + ``truth.fits``).
        num_shards: TFRecord shards (default ``ceil(count / 1000)``).
        shard_index: write only this shard (job arrays); ``None`` writes all missing shards.
        overwrite: replace an existing dataset (with ``shard_index``: only that shard).
        jobs: worker processes (default: all cores).
        progress: show a tqdm progress bar.

    Returns:
        The dataset directory.

    Raises:
        TfdeblendError: bad arguments, an existing output, or a catalog problem
            (:class:`~tfdeblend.errors.CatalogError`); nothing is written then.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise TfdeblendError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if jobs is not None and jobs < 1:
        raise TfdeblendError(f"--jobs must be at least 1, got {jobs}")
    if fmt == "fits":
        if num_shards is not None or shard_index is not None:
            raise TfdeblendError("--num-shards/--shard-index apply to --format tfrecord only")
        check_output_path(out, overwrite)
        if table is None:
            from tfdeblend.simulate import load_catalog

            table = load_catalog(config)
        validate_catalog(table, config)
        records = list(
            _with_progress(simulate(config, table=table, jobs=jobs), config.count, progress)
        )
        return write_fits_testset(records, out, config, overwrite=True)

    if num_shards is None:
        if shard_index is not None:
            raise TfdeblendError("--shard-index needs --num-shards")
        num_shards = -(-config.count // EXAMPLES_PER_SHARD)
    if not 1 <= num_shards <= config.count:
        raise TfdeblendError(
            f"--num-shards must be between 1 and the count ({config.count}), got {num_shards}"
        )
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise TfdeblendError(
            f"--shard-index must be between 0 and {num_shards - 1}, got {shard_index}"
        )
    if table is None:
        from tfdeblend.simulate import load_catalog

        table = load_catalog(config)
    eligible = validate_catalog(table, config)

    manifest = {
        "format": "tfrecord",
        "kind": config.kind,
        "config": config.to_dict(),
        "bands": list(config.bands),
        "bunit": "electron",
        "pixel_scale": config.pixel_scale,
        "survey": config.survey,
        "conditions": list(CONDITION_FIELDS),
        "stamp_size": config.stamp_size,
        "max_sources": config.max_sources,
        "count": config.count,
        "seed": config.seed,
        "catalog_sha256": _catalog_fingerprint(eligible),
        "versions": _versions(),
        "shards": [
            {
                "name": shard_name(i, num_shards),
                "count": len(shard_range(i, num_shards, config.count)),
                "sha256": None,
                "complete": False,
            }
            for i in range(num_shards)
        ],
    }
    current = _prepare_directory(out, manifest, shard_index, overwrite)
    targets = range(num_shards) if shard_index is None else [shard_index]
    todo = [i for i in targets if not current["shards"][i]["complete"]]
    indices = [k for i in todo for k in shard_range(i, num_shards, config.count)]
    stream = simulate(config, indices=indices, table=table, jobs=jobs)
    bar = _progress(len(indices), progress, f"simulate {config.kind}")
    try:
        for i in todo:
            count = len(shard_range(i, num_shards, config.count))
            _write_shard(out, i, num_shards, count, stream, bar)
    finally:
        bar.close()
        stream.close()
    return out


def write_derived_dataset(
    out: str | os.PathLike,
    manifest: dict[str, Any],
    make_stream: Callable[[int], Iterator[dict[str, np.ndarray]]],
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "write",
    note: Callable[[int], dict[str, Any]] | None = None,
) -> Path:
    """Write a dataset whose records are computed from another one (e.g. peel residuals).

    The same guarantees as :func:`write_dataset`: shards are written atomically, each marked
    complete in its own note, and rerunning the same call on an interrupted directory writes
    only the missing shards.

    Args:
        out: dataset directory.
        manifest: the full manifest (``kind``, ``config``, ``bands``, ``stamp_size``,
            ``max_sources``, ``count``, ``seed``, ``catalog_sha256``, ``shards`` with ``name`` and
            ``count``...). Its ``config`` identifies the dataset: a rerun with another ``config``
            is refused unless ``overwrite``.
        make_stream: ``make_stream(i)`` yields the records of shard ``i``, in order.
        overwrite: replace an existing dataset.
        progress: show a tqdm progress bar (over records).
        desc: the progress bar's label.
        note: ``note(i)`` returns extra keys for shard ``i``'s completion note (called after
            its records are written; merged into the manifest's shard entry).

    Returns:
        The dataset directory.
    """
    out = Path(out)
    num_shards = len(manifest["shards"])
    manifest = {**manifest, "shards": [dict(s, sha256=None, complete=False)
                                       for s in manifest["shards"]]}
    current = _prepare_directory(out, manifest, None, overwrite)
    todo = [i for i in range(num_shards) if not current["shards"][i]["complete"]]
    bar = _progress(sum(manifest["shards"][i]["count"] for i in todo), progress, desc)
    try:
        for i in todo:
            stream = make_stream(i)
            try:
                _write_shard(out, i, num_shards, manifest["shards"][i]["count"], stream, bar,
                             note=note)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
    finally:
        bar.close()
    return out


def _with_progress(stream: Iterator, total: int, enabled: bool) -> Iterator:
    bar = _progress(total, enabled, "simulate")
    try:
        for item in stream:
            bar.update(1)
            yield item
    finally:
        bar.close()


def _write_shard(
    out: Path,
    index: int,
    num_shards: int,
    count: int,
    stream: Iterator,
    bar: Any,
    note: Callable[[int], dict[str, Any]] | None = None,
) -> None:
    """Write the next ``count`` records of ``stream`` as shard ``index``, then its note."""
    import tensorflow as tf

    name = shard_name(index, num_shards)
    for stale in out.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
    with atomic_file(out / name) as tmp:
        with tf.io.TFRecordWriter(str(tmp), options="GZIP") as writer:
            for _ in range(count):
                try:
                    record = next(stream)
                except StopIteration:
                    raise TfdeblendError(
                        f"shard {name}: its source ran out after fewer than {count} records"
                    ) from None
                writer.write(_serialize(record))
                bar.update(1)
        digest = sha256_file(tmp)
        tmp.chmod(_FILE_MODE)
    extra = note(index) if note is not None else {}
    shard_note = {**extra, "name": name, "count": count, "sha256": digest, "complete": True}
    with atomic_file(out / name.replace(".tfrecord.gz", ".json")) as tmp:
        tmp.write_text(json.dumps(shard_note) + "\n")
        tmp.chmod(_FILE_MODE)
    _update_manifest(out)


def write_fits_testset(
    records: list[dict[str, np.ndarray]],
    out: str | os.PathLike,
    config: SimConfig,
    overwrite: bool = False,
) -> Path:
    """Write records as ``out/blends.fits`` + ``out/truth.fits`` (+ ``config.yaml``), atomically.

    ``blends.fits``: primary HDU float32 ``(N, C, H, W)`` (channels first), header ``BANDS``,
    ``BUNIT='electron'``, ``PIXSCALE``. ``truth.fits``: ``ISOLATED`` ``(N, S, C, H, W)``,
    ``NOISELESS`` ``(N, C, H, W)``, ``CATALOG`` table (``blend_id, source, x, y, flux_<band>,
    mu20, mu02, mu11``, one row per galaxy, brightest first) and ``BLENDS`` table
    (``blend_id, N_GAL, NOISY`` and the conditions of each blend: ``PSF_FWHM_<band>``,
    ``NOISE_<band>``, ``DEPTH_<band>``, ``PIXSCALE``, ``PSF_SCALE``, ``EXP_SCALE``).

    The conditions are also header keys (:func:`condition_cards`) of ``truth.fits``'s primary
    HDU, and of ``blends.fits`` unless they are the nominal ones (so that a nominal
    ``blends.fits`` keeps its bytes of before the conditions existed).
    """
    from astropy.io import fits
    from astropy.table import Table

    out = check_output_path(out, overwrite)
    arrays = {key: np.stack([r[key] for r in records]) for key in RECORD_FIELDS}
    conditions = {key: np.stack([r[key] for r in records]) for key in CONDITION_FIELDS
                  if all(key in r for r in records)}
    bands = ",".join(config.bands)
    unit_comment = ("per pixel, LSST 10-year depth, sky subtracted" if config.nominal
                    else "per pixel, sky subtracted; see SURVEY etc.")

    def header(hdu: Any) -> Any:
        hdu.header["BANDS"] = (bands, "channel order")
        hdu.header["BUNIT"] = ("electron", unit_comment)
        hdu.header["PIXSCALE"] = (config.pixel_scale, "arcsec per pixel")
        return hdu

    blends = header(fits.PrimaryHDU(np.moveaxis(arrays["blend"], -1, 1).astype(np.float32)))
    blends.header["KIND"] = config.kind
    blends.header["SEED"] = config.seed
    if not config.nominal:
        blends.header.extend(condition_cards(config))
    isolated = header(
        fits.ImageHDU(np.moveaxis(arrays["isolated"], -1, 2).astype(np.float32), name="ISOLATED")
    )
    noiseless = header(
        fits.ImageHDU(
            np.moveaxis(arrays["blend_noiseless"], -1, 1).astype(np.float32), name="NOISELESS"
        )
    )
    rows: dict[str, list] = {"blend_id": [], "source": [], "x": [], "y": []}
    rows.update({f"flux_{b}": [] for b in config.bands})
    rows.update({"mu20": [], "mu02": [], "mu11": []})
    for blend_id, n_gal in enumerate(arrays["n_gal"]):
        for source in range(int(n_gal)):
            rows["blend_id"].append(blend_id)
            rows["source"].append(source)
            for key in ("x", "y", "mu20", "mu02", "mu11"):
                rows[key].append(arrays[key][blend_id, source])
            for channel, band in enumerate(config.bands):
                rows[f"flux_{band}"].append(arrays["flux"][blend_id, source, channel])
    catalog = Table(
        {
            k: np.asarray(v, dtype=np.int64 if k in ("blend_id", "source") else np.float32)
            for k, v in rows.items()
        }
    )
    catalog_hdu = header(fits.table_to_hdu(catalog))
    catalog_hdu.name = "CATALOG"
    columns = {
        "blend_id": np.arange(len(records), dtype=np.int64),
        "N_GAL": arrays["n_gal"].astype(np.int64),
        "NOISY": arrays["noisy"].astype(np.int64),
    }
    for key, (column, _) in _CONDITION_COLUMNS.items():
        if key not in conditions:
            continue
        if key in BAND_CONDITION_FIELDS:
            for channel, band in enumerate(config.bands):
                columns[f"{column}_{band}"] = conditions[key][:, channel].astype(np.float32)
        else:
            columns[column] = conditions[key].astype(np.float32)
    blends_hdu = fits.table_to_hdu(Table(columns))
    blends_hdu.name = "BLENDS"
    for key, (column, unit) in _CONDITION_COLUMNS.items():
        if unit and key in conditions:
            names = ([f"{column}_{b}" for b in config.bands] if key in BAND_CONDITION_FIELDS
                     else [column])
            for name in names:
                index = list(columns).index(name) + 1
                blends_hdu.header[f"TUNIT{index}"] = unit
    primary = header(fits.PrimaryHDU())
    primary.header.extend(condition_cards(config))
    truth = fits.HDUList([primary, isolated, noiseless, catalog_hdu, blends_hdu])
    with atomic_dir(out) as tmp:
        blends.writeto(tmp / "blends.fits")
        truth.writeto(tmp / "truth.fits")
        config.to_yaml(tmp / "config.yaml")
        tmp.chmod(0o755)
        for item in tmp.iterdir():
            item.chmod(_FILE_MODE)
    return out


#: condition field -> (``BLENDS`` column, or its prefix before ``_<band>``; FITS unit)
_CONDITION_COLUMNS: dict[str, tuple[str, str]] = {
    "psf_fwhm": ("PSF_FWHM", "arcsec"),
    "noise_sigma": ("NOISE", ""),  # electrons (not a FITS unit)
    "depth": ("DEPTH", "mag"),
    "pixel_scale": ("PIXSCALE", "arcsec"),
    "psf_scale": ("PSF_SCALE", ""),
    "exposure_scale": ("EXP_SCALE", ""),
}


def condition_cards(config: SimConfig) -> list[tuple[str, Any, str]]:
    """FITS header cards of a test set's conditions.

    ``SURVEY``; ``PSFSCALE`` and ``EXPSCALE`` when fixed, ``PSFSCMIN``/``PSFSCMAX`` and
    ``EXPSCMIN``/``EXPSCMAX`` for ranges; ``BRIGHTF``/``BRIGHTM`` with a bright fraction; and when
    both scales are fixed, per band ``FWHM_<B>`` (atmospheric PSF FWHM, arcsec), ``NOISE_<B>``
    (sky noise std, electrons) and ``DEPTH_<B>`` (5-sigma AB magnitude of the sky noise in 1
    arcsec^2).
    """
    cards: list[tuple[str, Any, str]] = [("SURVEY", config.survey, "BTK/surveycodex survey")]
    for keys, value, what in (
        (("PSFSCALE", "PSFSCMIN", "PSFSCMAX"), config.psf_scale, "atmospheric PSF FWHM factor"),
        (("EXPSCALE", "EXPSCMIN", "EXPSCMAX"), config.exposure_scale, "exposure time factor"),
    ):
        if isinstance(value, tuple):
            cards += [(keys[1], value[0], f"{what}, lowest"),
                      (keys[2], value[1], f"{what}, highest")]
        else:
            cards.append((keys[0], value, what))
    if config.bright_fraction > 0:
        cards += [("BRIGHTF", config.bright_fraction, "share of galaxies with i <= BRIGHTM"),
                  ("BRIGHTM", config.bright_mag, "i mag limit of the bright galaxies")]
    if config.fixed_conditions:
        cond = band_conditions(config.survey, config.bands, config.psf_scale,
                               config.exposure_scale)
        for channel, band in enumerate(config.bands):
            b = band.upper()
            cards += [
                (f"FWHM_{b}", round(float(cond["psf_fwhm"][channel]), 4),
                 f"{band} atmospheric PSF FWHM, arcsec"),
                (f"NOISE_{b}", round(float(cond["noise_sigma"][channel]), 3),
                 f"{band} sky noise std, electron"),
                (f"DEPTH_{b}", round(float(cond["depth"][channel]), 3),
                 f"{band} 5-sigma sky limit in 1 arcsec2, AB"),
            ]
    return cards


# ------------------------------------------------------------------------------------- reading


def verify_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Check that every shard exists, is complete and matches its SHA-256; return the manifest.

    Raises:
        DataError: an incomplete dataset, or a missing or corrupted shard (named).
    """
    path = Path(path)
    manifest = load_manifest(path)
    _require_complete(path, manifest)
    for shard in manifest["shards"]:
        if sha256_file(path / shard["name"]) != shard["sha256"]:
            raise DataError(
                f"shard {path / shard['name']} is corrupted (SHA-256 does not match the manifest)"
            )
    return manifest


def _require_complete(path: Path, manifest: dict[str, Any]) -> None:
    if not manifest["complete"]:
        done = sum(bool(s["complete"]) for s in manifest["shards"])
        raise DataError(
            f"dataset {path} is incomplete ({done} of {len(manifest['shards'])} shards written); "
            "rerun the same simulate command to finish it"
        )


def read_dataset(
    path: str | os.PathLike,
    batch_size: int | None = None,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    verify: bool = True,
    shuffle_buffer: int = 1024,
) -> Any:
    """Stream a TFRecord dataset as a ``tf.data.Dataset`` of feature dicts (channels last).

    Args:
        path: dataset directory.
        batch_size: batch the records (last batch may be smaller); ``None``: single records.
        shuffle: shuffle shard order and records (buffer ``shuffle_buffer``).
        repeat: repeat forever.
        seed: shuffle seed.
        verify: check every shard's SHA-256 first.
        shuffle_buffer: records held by the shuffle buffer.

    Returns:
        ``tf.data.Dataset`` yielding dicts of the record fields (float32, ``n_gal``/``noisy``
        int64), with static shapes; plus the condition fields the manifest names.

    Raises:
        DataError: incomplete dataset, missing or corrupted shard.
    """
    import tensorflow as tf

    path = Path(path)
    manifest = verify_dataset(path) if verify else load_manifest(path)
    _require_complete(path, manifest)
    files = [str(path / s["name"]) for s in manifest["shards"]]
    shapes = field_shapes(manifest)
    floats = (*_FLOAT_FIELDS, *condition_fields(manifest))
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in floats}
    spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in _INT_FIELDS})

    def parse(serialized: Any) -> dict[str, Any]:
        parsed = tf.io.parse_single_example(serialized, spec)
        out = {}
        for key in floats:
            values = tf.io.decode_raw(parsed[key], tf.float32, little_endian=True)
            out[key] = tf.reshape(values, shapes[key])
        for key in _INT_FIELDS:
            out[key] = parsed[key]
        return out

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if shuffle:
        dataset = dataset.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
            cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=seed is not None,
        )
    else:
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
        dataset = dataset.shuffle(
            min(shuffle_buffer, manifest["count"]), seed=seed, reshuffle_each_iteration=True
        )
    if repeat:
        dataset = dataset.repeat()
    if batch_size is not None:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_testset(path: str | os.PathLike, verify: bool = True) -> dict[str, np.ndarray]:
    """Read a whole (small) dataset into numpy arrays, channels last.

    Args:
        path: a TFRecord dataset directory, a FITS test-set directory, or its ``blends.fits``.
        verify: check the TFRecord shards' SHA-256.

    Returns:
        Dict with the record fields stacked ``(N, ...)`` plus ``bands`` (numpy array of str),
        the observing conditions of each stamp (:data:`tfdeblend.simulate.CONDITION_FIELDS`,
        ``(N, C)`` or ``(N,)``) and ``survey`` (0-d str array) where the set records them.
        Test sets written before the conditions existed get those of their config (FITS:
        ``config.yaml``; TFRecords: the manifest's ``config``) when it is readable.

    Raises:
        DataError: nothing readable there, or a FITS pair that does not match.
    """
    path = Path(path)
    if path.is_file() and path.name == "blends.fits":
        path = path.parent
    if (path / "blends.fits").is_file():
        return _load_fits_testset(path)
    manifest = load_manifest(path)
    records = [r for r in read_dataset(path, verify=verify).as_numpy_iterator()]
    keys = (*RECORD_FIELDS, *condition_fields(manifest))
    arrays = {key: np.stack([r[key] for r in records]) for key in keys}
    arrays["bands"] = np.array(manifest["bands"])
    config = manifest.get("config")
    if manifest.get("survey"):
        arrays["survey"] = np.array(manifest["survey"])
    if "psf_fwhm" not in arrays and isinstance(config, dict) and "kind" in config:
        _conditions_from_config(arrays, lambda: SimConfig.from_dict(config))
    return arrays


def _conditions_from_config(arrays: dict[str, np.ndarray], make_config: Callable) -> None:
    """Fill the conditions of a test set written before they were stored, from its config
    (fixed conditions only); leave them out when the config cannot be read."""
    try:
        config = make_config()
    except (TfdeblendError, OSError, ValueError, TypeError):
        return
    if not config.fixed_conditions:
        return
    count = len(arrays["n_gal"])
    cond = band_conditions(config.survey, config.bands, config.psf_scale, config.exposure_scale)
    for key in CONDITION_FIELDS:
        arrays[key] = np.repeat(np.asarray(cond[key])[None], count, axis=0)
    arrays["survey"] = np.array(config.survey)


def _load_fits_testset(path: Path) -> dict[str, np.ndarray]:
    from astropy.io import fits
    from astropy.table import Table

    try:
        with fits.open(path / "blends.fits") as hdus:
            blend = np.asarray(hdus[0].data, dtype=np.float32)
            bands = [b for b in str(hdus[0].header.get("BANDS", "")).split(",") if b]
        with fits.open(path / "truth.fits") as hdus:
            survey = str(hdus[0].header.get("SURVEY", ""))
            isolated = np.asarray(hdus["ISOLATED"].data, dtype=np.float32)
            noiseless = np.asarray(hdus["NOISELESS"].data, dtype=np.float32)
            catalog = Table(hdus["CATALOG"].data)
            blends = Table(hdus["BLENDS"].data)
    except FileNotFoundError as err:
        raise DataError(
            f"{err.filename} does not exist (a FITS test set is blends.fits and truth.fits)"
        ) from err
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"cannot read FITS test set {path}: {err}") from err
    missing = [c for c in ("blend_id", "source", "x", "y") if c not in catalog.colnames]
    missing += [c for c in ("N_GAL", "NOISY") if c not in blends.colnames]
    if missing:
        raise DataError(f"{path / 'truth.fits'} lacks the column(s) {', '.join(missing)}")
    if blend.ndim != 4 or len(bands) != blend.shape[1]:
        raise DataError(f"{path / 'blends.fits'} must hold (N, C, H, W) with BANDS for C")
    count, slots = blend.shape[0], isolated.shape[1]
    if isolated.shape[0] != count or noiseless.shape[0] != count or len(blends) != count:
        raise DataError(f"{path}: blends.fits and truth.fits hold different numbers of blends")
    arrays: dict[str, np.ndarray] = {
        "blend": np.moveaxis(blend, 1, -1),
        "blend_noiseless": np.moveaxis(noiseless, 1, -1),
        "isolated": np.moveaxis(isolated, 2, -1),
        "n_gal": np.asarray(blends["N_GAL"], dtype=np.int64),
        "noisy": np.asarray(blends["NOISY"], dtype=np.int64),
    }
    for key in ("x", "y", "mu20", "mu02", "mu11"):
        arrays[key] = np.full((count, slots), np.nan, np.float32)
    arrays["flux"] = np.full((count, slots, len(bands)), np.nan, np.float32)
    blend_id = np.asarray(catalog["blend_id"], dtype=np.int64)
    source = np.asarray(catalog["source"], dtype=np.int64)
    for key in ("x", "y", "mu20", "mu02", "mu11"):
        arrays[key][blend_id, source] = catalog[key]
    for channel, band in enumerate(bands):
        arrays["flux"][blend_id, source, channel] = catalog[f"flux_{band}"]
    arrays["bands"] = np.array(bands)
    for key, (column, _) in _CONDITION_COLUMNS.items():
        names = ([f"{column}_{b}" for b in bands] if key in BAND_CONDITION_FIELDS else [column])
        if all(n in blends.colnames for n in names):
            values = np.stack([np.asarray(blends[n], dtype=np.float32) for n in names], axis=-1)
            arrays[key] = values if key in BAND_CONDITION_FIELDS else values[:, 0]
    if survey:
        arrays["survey"] = np.array(survey)
    if "psf_fwhm" not in arrays and (path / "config.yaml").is_file():
        _conditions_from_config(arrays, lambda: SimConfig.from_yaml(path / "config.yaml"))
    return arrays


def list_shard_files(path: str | os.PathLike) -> list[Path]:
    """Shard files present in a dataset directory, sorted."""
    pattern = re.compile(r"shard-\d{5}-of-\d{5}\.tfrecord\.gz$")
    return sorted(p for p in Path(path).iterdir() if pattern.match(p.name))
