"""``tf.data`` input pipelines for the two networks (shared by phase 1 and phase 2).

Records come from :func:`tfdeblend.data.read_dataset` (channels last, schema in
``docs/architecture.md``). Scaling uses only :func:`tfdeblend.normalize.normalize`: the blend is
divided by its own scale ``s`` and every target by the *same* ``s``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import tensorflow as tf

from tfdeblend.conditioning import condition_features, record_conditions
from tfdeblend.errors import DataError
from tfdeblend.normalize import normalize

NETS: tuple[str, ...] = ("deblender", "classifier")
#: dataset kinds that must not be used to train each network in phase 1
_WRONG_KIND: dict[str, tuple[str, ...]] = {
    "deblender": ("classifier", "residuals"),
    "classifier": ("deblender",),
}


def _network_input(x: tf.Tensor, scale: tf.Tensor, record: dict[str, tf.Tensor], conditioned: bool):
    """``x``, or ``(x, condition features)`` for a conditioned network (unbatched or batched)."""
    if not conditioned:
        return x
    conditions = record_conditions(record)
    if conditions.shape.rank == 2:  # unbatched
        return x, condition_features(conditions[None], scale[None])[0]
    return x, condition_features(conditions, scale)


def deblender_example(
    record: dict[str, tf.Tensor], conditioned: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Map one record (unbatched or batched) to ``(x, y)`` for the deblender.

    Returns:
        ``x``: normalized blend ``(..., H, W, C)`` (with ``conditioned``, the pair ``(blend,
        condition features)``, :mod:`tfdeblend.conditioning`); ``y``: ``(..., 2, H, W, C)`` the brightest and
        second brightest noiseless galaxies divided by the blend's scale (zeros when absent).
        Use :func:`tfdeblend.training.losses.l1_loss` (brightest only) or
        :func:`~tfdeblend.training.losses.symmetric_l1_loss`.
    """
    x, scale = normalize(tf.cast(record["blend"], tf.float32))
    isolated = tf.cast(record["isolated"], tf.float32)[..., :2, :, :, :]
    missing = 2 - tf.shape(isolated)[-4]
    rank = isolated.shape.rank
    paddings = [[0, 0]] * (rank - 4) + [[0, missing], [0, 0], [0, 0], [0, 0]]
    isolated = tf.pad(isolated, paddings)
    y = isolated / tf.expand_dims(scale, -4)
    y = tf.ensure_shape(y, x.shape[:-3].concatenate([2]).concatenate(x.shape[-3:]))
    return _network_input(x, scale, record, conditioned), y


def classifier_example(
    record: dict[str, tf.Tensor], conditioned: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Map one record to ``(normalized blend (..., H, W, C), n_gal (...) int32)`` (with
    ``conditioned``, ``x`` is the pair ``(blend, condition features)``)."""
    x, scale = normalize(tf.cast(record["blend"], tf.float32))
    return _network_input(x, scale, record, conditioned), tf.cast(record["n_gal"], tf.int32)


def check_manifest(
    manifest: dict[str, Any],
    net: str,
    bands: tuple[str, ...] | None = None,
    stamp_size: int | None = None,
    where: str = "dataset",
) -> None:
    """Refuse a dataset that does not fit the network (kind, bands, stamp size).

    Raises:
        DataError: with one line naming the mismatch.
    """
    if net not in NETS:
        raise DataError(f"net must be one of {', '.join(NETS)}, not {net!r}")
    kind = manifest.get("kind")
    if kind in _WRONG_KIND[net]:
        wanted = "a 'classifier' or 'residuals'" if net == "classifier" else f"a {net!r}"
        raise DataError(f"{where} is a {kind!r} dataset; the {net} needs {wanted} dataset")
    data_bands = tuple(manifest.get("bands", ()))
    if bands is not None and data_bands != tuple(bands):
        raise DataError(
            f"{where} has bands {','.join(data_bands)} but the model was trained on "
            f"{','.join(bands)}"
        )
    if stamp_size is not None and int(manifest.get("stamp_size", -1)) != int(stamp_size):
        raise DataError(
            f"{where} has stamp size {manifest.get('stamp_size')} but the model "
            f"expects {stamp_size}"
        )
    if net == "deblender" and int(manifest.get("max_sources", 0)) < 1:
        raise DataError(f"{where} has no isolated galaxies (max_sources < 1)")


def split_sizes(count: int, validation_fraction: float) -> tuple[int, int]:
    """``(n_train, n_validation)``; the first ``n_validation`` records are held out."""
    n_val = int(math.floor(count * validation_fraction))
    if validation_fraction > 0 and count > 1:
        n_val = max(n_val, 1)
    return count - n_val, n_val


def _uniform(seed: tf.Tensor | None, shape: list[int]) -> tf.Tensor:
    """Uniform [0, 1) draws: stateless (reproducible) with a ``seed`` pair, else stateful."""
    if seed is None:
        return tf.random.uniform(shape)
    return tf.random.stateless_uniform(shape, seed=seed)


def peel_brightest(
    record: dict[str, tf.Tensor], fraction: float, seed: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """With probability ``fraction``, remove the brightest galaxy from an unbatched record.

    The blend becomes ``blend - isolated[0]`` (the other galaxies plus the same noise) and the
    targets shift up by one (``isolated[1:]``, zero padded), so the deblender also learns the later
    steps of the peel: a residual whose brightest galaxy was already taken out. Records with a
    single galaxy are left alone. ``seed`` (an int ``(2,)`` tensor) makes the draw stateless.
    """
    isolated = tf.cast(record["isolated"], tf.float32)
    n_gal = tf.cast(record["n_gal"], tf.int32)
    peel = tf.logical_and(_uniform(seed, [])[()] < fraction, n_gal >= 2)
    blend = tf.cast(record["blend"], tf.float32)
    shifted = tf.concat([isolated[1:], tf.zeros_like(isolated[:1])], axis=0)
    out = dict(record)
    out["blend"] = tf.where(peel, blend - isolated[0], blend)
    out["isolated"] = tf.where(peel, shifted, isolated)
    out["n_gal"] = tf.where(peel, record["n_gal"] - 1, record["n_gal"])
    return out


def dihedral(
    x: tf.Tensor, y: tf.Tensor, net: str, seed: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """One random element of the dihedral group D4 (rotation by k x 90 degrees, then an
    optional left-right flip), applied identically to an unbatched example ``(x, y)``.

    Valid for these stamps because the PSF is round and the noise is white, so a rotated or
    mirrored blend is as likely as the original. For the deblender ``y`` is ``(2, H, W, C)``
    and is transformed with ``x``; the classifier's label is unchanged. ``seed`` (an int
    ``(2,)`` tensor) makes the draw stateless.
    """
    draws = _uniform(seed, [2])
    k = tf.minimum(tf.cast(draws[0] * 4.0, tf.int32), 3)
    flip = draws[1] < 0.5

    def transform(image: tf.Tensor) -> tf.Tensor:
        out = tf.image.rot90(image, k)
        out = tf.cond(flip, lambda: tf.image.flip_left_right(out), lambda: out)
        return tf.ensure_shape(out, image.shape)  # square stamps: the shape is unchanged

    image, conditions = x if isinstance(x, tuple) else (x, None)
    image = transform(image)
    x = image if conditions is None else (image, conditions)
    if net == "deblender":
        return x, transform(y)
    return x, y


def _draw(record, seed, net, fn, peel_fraction, augment):
    """Peel (deblender), map to ``(x, y)``, then rotate/flip: the training-time random steps."""
    seeds = (None, None) if seed is None else tf.unstack(
        tf.random.experimental.stateless_split(seed, 2)
    )
    if peel_fraction > 0:
        record = peel_brightest(record, peel_fraction, seeds[0])
    x, y = fn(record)
    return dihedral(x, y, net, seeds[1]) if augment else (x, y)


def prepare(
    records: tf.data.Dataset,
    net: str,
    batch_size: int | None = None,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    shuffle_buffer: int = 1024,
    drop_remainder: bool = False,
    augment: bool = False,
    peel_fraction: float = 0.0,
    conditioned: bool = False,
) -> tf.data.Dataset:
    """Turn an unbatched dataset of record dicts into ``(x, y)`` batches for ``net``.

    Works on any ``tf.data.Dataset`` with the record schema (e.g. built in memory), so tests
    and notebooks do not need a dataset directory. ``augment`` applies a random
    :func:`dihedral` transform to every example (training only); ``peel_fraction`` (deblender)
    removes the brightest galaxy from that share of the examples (:func:`peel_brightest`).
    With a ``seed`` both draws are stateless, so the same seed gives the same examples.
    """
    if net not in NETS:
        raise DataError(f"net must be one of {', '.join(NETS)}, not {net!r}")
    example = deblender_example if net == "deblender" else classifier_example

    def fn(record):
        return example(record, conditioned)

    ds = records
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    fraction = peel_fraction if net == "deblender" else 0.0
    if not (fraction > 0 or augment):
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    elif seed is None:
        ds = ds.map(lambda r: _draw(r, None, net, fn, fraction, augment),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # one stateless seed pair per element of the (shuffled, repeated) stream: the same
        # --seed gives the same peels and rotations, in any parallel order
        base = tf.constant(int(seed), tf.int64)
        ds = ds.enumerate().map(
            lambda i, r: _draw(r, tf.stack([base, i]), net, fn, fraction, augment),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(
    dataset_dir: str | os.PathLike,
    net: str,
    batch_size: int | None = None,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    validation_fraction: float = 0.0,
    subset: str = "all",
    bands: tuple[str, ...] | None = None,
    stamp_size: int | None = None,
    drop_remainder: bool = False,
    augment: bool = False,
    peel_fraction: float = 0.0,
    conditioned: bool = False,
) -> tf.data.Dataset:
    """Read a dataset directory as ``(x, y)`` batches for ``net`` (see :func:`prepare`).

    Args:
        dataset_dir: directory written by ``tfdeblend simulate``.
        net: ``"deblender"`` or ``"classifier"``.
        batch_size: global batch size (``None``: unbatched).
        shuffle, repeat, seed: as in ``tf.data``; only the training part is shuffled.
        validation_fraction: share of records held out (the first ones, deterministic).
        subset: ``"train"``, ``"validation"`` or ``"all"``.
        bands, stamp_size: what the model expects; checked against the manifest.
        drop_remainder: drop a last partial batch.
        augment: random rotations and flips (:func:`dihedral`); never on the validation part.
        peel_fraction: share of training examples whose brightest galaxy is removed
            (:func:`peel_brightest`); never on the validation part.
        conditioned: ``x`` is ``(image, condition features)`` (the dataset must store the
            observing conditions).

    Raises:
        DataError: the directory is not a dataset, or does not match ``net``/bands/stamp size.
    """
    from tfdeblend.data import load_manifest, read_dataset

    manifest = load_manifest(dataset_dir)
    check_manifest(manifest, net, bands, stamp_size, where=str(dataset_dir))
    if subset not in ("train", "validation", "all"):
        raise DataError(f"subset must be train, validation or all, not {subset!r}")
    if conditioned and not {"noise_sigma", "psf_fwhm", "pixel_scale"} <= set(
        manifest.get("conditions") or ()
    ):
        raise DataError(
            f"{dataset_dir} stores no observing conditions; a conditioned network needs a dataset "
            "written by this version of tfdeblend simulate"
        )
    records = read_dataset(dataset_dir, verify=subset != "validation")
    n_train, n_val = split_sizes(int(manifest["count"]), validation_fraction)
    if subset == "train":
        records = records.skip(n_val)
    elif subset == "validation":
        if n_val == 0:
            raise DataError("no validation records: validation fraction is 0")
        records = records.take(n_val)
    return prepare(
        records,
        net,
        batch_size,
        shuffle=shuffle and subset != "validation",
        repeat=repeat,
        seed=seed,
        drop_remainder=drop_remainder,
        augment=augment and subset != "validation",
        peel_fraction=peel_fraction if subset != "validation" else 0.0,
        conditioned=conditioned,
    )


def make_mixed_dataset(
    dataset_dirs: list[str | os.PathLike],
    net: str,
    batch_size: int,
    seed: int | None = None,
    validation_fraction: float = 0.0,
    subset: str = "train",
    drop_remainder: bool = False,
    augment: bool = False,
    peel_fraction: float = 0.0,
    conditioned: bool = False,
) -> tf.data.Dataset:
    """Several dataset directories as one stream of ``(x, y)`` batches (see :func:`make_dataset`).

    ``subset="train"``: each directory's training part is shuffled and repeated on its own, and
    examples are drawn from them in proportion to their sizes, so every batch mixes them.
    ``subset="validation"``: the validation parts one after the other (not repeated).
    One directory gives exactly :func:`make_dataset`'s stream.
    """
    from tfdeblend.data import load_manifest

    dirs = list(dataset_dirs)
    if len(dirs) == 1:
        return make_dataset(
            dirs[0], net, batch_size, shuffle=subset == "train", repeat=subset == "train",
            seed=seed, validation_fraction=validation_fraction, subset=subset,
            drop_remainder=drop_remainder, augment=augment, peel_fraction=peel_fraction,
            conditioned=conditioned,
        )
    parts = [
        make_dataset(
            d, net, None, shuffle=subset == "train", repeat=subset == "train",
            seed=None if seed is None else seed + i,
            validation_fraction=validation_fraction, subset=subset, augment=augment,
            peel_fraction=peel_fraction, conditioned=conditioned,
        )
        for i, d in enumerate(dirs)
    ]
    if subset == "train":
        sizes = [split_sizes(int(load_manifest(d)["count"]), validation_fraction)[0]
                 for d in dirs]
        weights = [n / sum(sizes) for n in sizes]
        mixed = tf.data.Dataset.sample_from_datasets(parts, weights=weights, seed=seed)
    else:
        mixed = parts[0]
        for part in parts[1:]:
            mixed = mixed.concatenate(part)
    mixed = mixed.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return mixed.with_options(options).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------ the training sets of a run
def dataset_list(dataset_dir: str | os.PathLike | list) -> list[str | os.PathLike]:
    """One dataset directory, or a list/tuple of them, as a non-empty list."""
    dirs = [dataset_dir] if isinstance(dataset_dir, (str, os.PathLike)) else list(dataset_dir)
    if not dirs:
        raise DataError("no dataset directory given")
    return dirs


def dataset_summary(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest a run directory records: the dataset's own, or for several datasets their
    paths, kinds, counts and seeds as lists (``count``: the total)."""
    if len(manifests) == 1:
        return manifests[0]
    return {
        "path": [m.get("path") for m in manifests],
        "kind": [m.get("kind") for m in manifests],
        "bands": manifests[0]["bands"],
        "stamp_size": manifests[0]["stamp_size"],
        "max_sources": max(int(m.get("max_sources", 0)) for m in manifests),
        "count": sum(int(m["count"]) for m in manifests),
        "seed": [m.get("seed") for m in manifests],
    }


class TrainingSets:
    """The dataset directories one training run draws from (phase 1 or phase 2), checked.

    Both phases open their data here: the manifests are read and checked with ``check`` before
    anything is written, and :meth:`streams` gives the training and validation batches (the
    directories mixed in proportion to their training sizes, :func:`make_mixed_dataset`).

    Args:
        dataset_dir: one directory or a list of them.
        validation_fraction: share of each directory held out (its first records).
        check: ``check(manifest, where, first)`` raising :class:`DataError` for a dataset the run
            cannot use (``first``: the first directory's manifest, or ``None`` for the first).
    """

    def __init__(self, dataset_dir, validation_fraction: float, check) -> None:
        from pathlib import Path

        from tfdeblend.data import load_manifest

        self.dirs = dataset_list(dataset_dir)
        self.manifests: list[dict[str, Any]] = []
        for d in self.dirs:
            manifest = dict(load_manifest(d))
            manifest.setdefault("path", str(Path(d).resolve()))
            check(manifest, str(d), self.manifests[0] if self.manifests else None)
            self.manifests.append(manifest)
        self.validation_fraction = validation_fraction
        self.bands = tuple(self.manifests[0]["bands"])
        self.stamp_size = int(self.manifests[0]["stamp_size"])
        self._sizes = [split_sizes(int(m["count"]), validation_fraction) for m in self.manifests]
        self.n_train = sum(n for n, _ in self._sizes)
        self.n_val = sum(n for _, n in self._sizes)
        if self.n_train < 1:
            raise DataError(f"{', '.join(map(str, self.dirs))}: no training records")

    @property
    def summary(self) -> dict[str, Any]:
        """What the run directory records (:func:`dataset_summary`)."""
        return dataset_summary(self.manifests)

    def steps_per_epoch(self, batch_size: int, steps: int | None) -> int:
        """``steps``, or one pass over the training records."""
        if steps:
            return int(steps)
        return max(1, self.n_train // batch_size if self.n_train >= batch_size else 1)

    def streams(
        self, net: str, batch_size: int, seed: int | None, augment: bool = False,
        peel_fraction: float = 0.0, conditioned: bool = False,
    ) -> tuple[tf.data.Dataset, tf.data.Dataset | None, int | None]:
        """``(train, validation, validation steps)`` batches for ``net`` (validation ``None``
        when nothing is held out). The training stream repeats (give ``fit`` its steps)."""
        train_dirs = [d for d, (n, _) in zip(self.dirs, self._sizes) if n > 0]
        val_dirs = [d for d, (_, n) in zip(self.dirs, self._sizes) if n > 0]
        train = make_mixed_dataset(
            train_dirs, net, batch_size, seed=seed,
            validation_fraction=self.validation_fraction, subset="train",
            drop_remainder=self.n_train >= batch_size, augment=augment,
            peel_fraction=peel_fraction, conditioned=conditioned,
        )
        if self.n_val == 0:
            return train, None, None
        # an explicit count: TFRecords after skip/take have no known length, and without it
        # Keras warns that the validation input "ran out of data" after epoch 1
        val_batch = min(batch_size, self.n_val)
        validation = make_mixed_dataset(
            val_dirs, net, val_batch, seed=seed,
            validation_fraction=self.validation_fraction, subset="validation",
            conditioned=conditioned,
        )
        return train, validation, math.ceil(self.n_val / val_batch)
