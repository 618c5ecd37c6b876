"""Peel residuals as classifier training data (an addition to the paper).

During the peel the classifier counts the galaxies in *residuals*: the blend minus the RDN's
models of the galaxies already peeled. Those images hold what no simulated blend holds: the
RDN's errors (a ring where a model was too small, a hole where it was too large) on top of the
noise. A classifier trained only on blends counts such leftovers as a galaxy, and the peel stalls
(counts ``2, 1, 1, 1``: quality *low*), or it misses a faint galaxy beside them.

:func:`mine_residuals` runs a trained deblender over a simulated dataset the way the peel does
(normalize, deblend the brightest, denormalize, subtract; :mod:`tfdeblend.normalize` is the
same function inference uses) for a fixed number of steps, whatever a classifier would say, and
writes every residual as a record whose label ``n_gal`` is the number of true galaxies still in
it (:func:`remaining_galaxies`). The output is a dataset of kind ``residuals`` that
``tfdeblend train --phase 1 --net classifier`` takes next to a ``classifier`` set.

A true galaxy *remains* in a residual when the weighted least-squares amplitude of its noiseless
image in the residual (all true galaxies fitted together, pixels weighted by the inverse noise
variance of each band) is above ``threshold`` (default 0.5): more than half of it is still
there. A galaxy the RDN took out whole has amplitude near 0; one it missed, near 1; the leftovers
of a poor model are not a galaxy.

Axis order: channels last, as in every dataset record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tfdeblend.config import MAD_TO_SIGMA
from tfdeblend.errors import DataError, TfdeblendError

#: The dataset kind :func:`mine_residuals` writes.
RESIDUALS_KIND: str = "residuals"
#: Default peel steps mined per source record (residual after 1 and after 2 galaxies).
DEFAULT_STEPS: int = 2
#: Default share of a galaxy that must be left in a residual for it to count.
DEFAULT_THRESHOLD: float = 0.5


def band_weights(blend: np.ndarray, blend_noiseless: np.ndarray) -> np.ndarray:
    """Inverse noise variance per band of a batch, from ``blend - blend_noiseless``.

    Args:
        blend: ``(N, H, W, C)``.
        blend_noiseless: ``(N, H, W, C)``.

    Returns:
        ``(N, C)`` float64 weights; 1 for a band without noise (noiseless images).
    """
    noise = np.asarray(blend, np.float64) - np.asarray(blend_noiseless, np.float64)
    flat = noise.reshape(noise.shape[0], -1, noise.shape[-1])
    median = np.median(flat, axis=1, keepdims=True)
    sigma = MAD_TO_SIGMA * np.median(np.abs(flat - median), axis=1)
    return np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0) ** 2, 1.0)


def remaining_amplitudes(
    residual: np.ndarray, isolated: np.ndarray, n_gal: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Least-squares amplitude of each true galaxy in each residual.

    Solves ``residual ~ sum_i a_i isolated_i`` per image, all of its galaxies at once, with pixel
    weights ``weights[c]`` in band ``c``.

    Args:
        residual: ``(N, H, W, C)``.
        isolated: ``(N, S, H, W, C)`` noiseless galaxies (zero padded).
        n_gal: ``(N,)`` galaxies per image (the first ``n_gal`` slots are real).
        weights: ``(N, C)`` inverse noise variance per band.

    Returns:
        ``(N, S)`` float64 amplitudes; 0 in the padding slots.
    """
    residual = np.asarray(residual, np.float64)
    templates = np.asarray(isolated, np.float64)
    n_images, slots = templates.shape[:2]
    w = np.asarray(weights, np.float64)[:, None, None, :]
    real = np.arange(slots)[None, :] < np.asarray(n_gal)[:, None]
    weighted = templates * w[:, None]  # (N, S, H, W, C)
    gram = np.einsum("nshwc,nthwc->nst", weighted, templates)
    rhs = np.einsum("nshwc,nhwc->ns", weighted, residual)
    # padding slots and empty templates get a_i = 0 exactly (an identity row, zero right side)
    diagonal = np.einsum("nss->ns", gram).copy()
    keep = real & (diagonal > 0)
    gram = np.where(keep[:, :, None] & keep[:, None, :], gram, 0.0)
    index = np.arange(slots)
    gram[:, index, index] = np.where(keep, diagonal * (1.0 + 1e-9), 1.0)
    rhs = np.where(keep, rhs, 0.0)
    amplitudes = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return np.where(keep, amplitudes, 0.0).reshape(n_images, slots)


def remaining_galaxies(
    residual: np.ndarray,
    isolated: np.ndarray,
    n_gal: np.ndarray,
    weights: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Number of true galaxies still in each residual (amplitude above ``threshold``).

    Args: as :func:`remaining_amplitudes`, plus ``threshold``.

    Returns:
        ``(N,)`` int64 counts.
    """
    amplitudes = remaining_amplitudes(residual, isolated, n_gal, weights)
    return np.sum(amplitudes > threshold, axis=1).astype(np.int64)


def _peel_pass(deblender: Any):
    """A compiled pass of the peel: ``images -> images minus the RDN's brightest galaxy``."""
    import tensorflow as tf

    from tfdeblend.conditioning import call_network, condition_features
    from tfdeblend.normalize import denormalize, normalize

    @tf.function(reduce_retracing=True)
    def subtract_brightest(images, conditions):
        normalized, scale = normalize(images)
        features = None if conditions is None else condition_features(conditions, scale)
        model = call_network(deblender, normalized, features)
        model = denormalize(tf.cast(model, tf.float32), scale)
        return images - model, model

    return subtract_brightest


def residual_records(
    records: Iterator[dict[str, np.ndarray]],
    deblender: Any,
    steps: int = DEFAULT_STEPS,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 64,
) -> Iterator[dict[str, np.ndarray]]:
    """Peel source records with ``deblender`` and yield one labelled record per step.

    Args:
        records: unbatched source records (numpy dicts with the dataset schema).
        deblender: the RDN (Keras model; normalized image -> normalized brightest galaxy).
        steps: residuals per source record: after 1, 2, ..., ``steps`` galaxies peeled.
        threshold: see :func:`remaining_galaxies`.
        batch_size: records per RDN call.

    Yields:
        For each source record, in order, ``steps`` records: the source's fields with ``blend``
        the residual, ``blend_noiseless`` the source's minus the models peeled so far, and
        ``n_gal`` the galaxies left.
    """
    import tensorflow as tf

    from tfdeblend.conditioning import is_conditioned, record_conditions

    subtract = _peel_pass(deblender)
    batch: list[dict[str, np.ndarray]] = []

    def flush(batch):
        blend = np.stack([r["blend"] for r in batch]).astype(np.float32)
        noiseless = np.stack([r["blend_noiseless"] for r in batch]).astype(np.float32)
        isolated = np.stack([r["isolated"] for r in batch])
        n_gal = np.array([int(r["n_gal"]) for r in batch])
        weights = band_weights(blend, noiseless)
        images, peeled = tf.constant(blend), np.zeros_like(blend)
        conditions = None
        if is_conditioned(deblender):
            conditions = record_conditions(
                {k: np.stack([r[k] for r in batch]) for k in ("noise_sigma", "psf_fwhm",
                                                             "pixel_scale")})
        out = []
        for _ in range(steps):
            images, model = subtract(images, conditions)
            peeled = peeled + model.numpy()
            residual = images.numpy()
            labels = remaining_galaxies(residual, isolated, n_gal, weights, threshold)
            out.append((residual, noiseless - peeled, labels))
        for j, source in enumerate(batch):
            for residual, truth, labels in out:
                record = dict(source)
                record["blend"] = residual[j]
                record["blend_noiseless"] = truth[j]
                record["n_gal"] = np.int64(labels[j])
                yield record

    for record in records:
        batch.append(record)
        if len(batch) == batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


def _source_records(path: Path, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
    """Records ``[start, stop)`` of a TFRecord dataset, as numpy dicts."""
    from tfdeblend.data import read_dataset

    dataset = read_dataset(path, verify=False).skip(start).take(stop - start)
    yield from dataset.as_numpy_iterator()


def mine_residuals(
    source_dir: str | os.PathLike,
    deblender: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int = DEFAULT_STEPS,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the peel residuals of a simulated dataset, labelled, as a ``residuals`` dataset.

    Args:
        source_dir: a TFRecord dataset written by ``tfdeblend simulate`` (any kind; the
            ``deblender`` and ``test`` kinds are the usual sources).
        deblender: the RDN: a run directory, a ``.keras`` file, or an exported model directory
            (``NAME`` or ``NAME/<version>``: its ``assets.extra/deblender.keras``).
        out_dir: the dataset directory to write (one shard per source shard; rerunning the same
            call finishes an interrupted one).
        steps: residuals per source record (1 to 5).
        threshold: share of a galaxy that must be left for it to count (0 < threshold < 1).
        batch_size: records per RDN call.
        overwrite: replace an existing dataset.
        progress: tqdm progress bar.

    Returns:
        ``{"path", "count", "labels": {step: {n_gal: count}}}`` over the whole dataset.

    Raises:
        TfdeblendError: bad options, a source that is not a complete dataset, a deblender that
            does not fit it, an existing output.
    """
    from tfdeblend.data import (
        _versions,
        load_manifest,
        sha256_file,
        shard_name,
        verify_dataset,
        write_derived_dataset,
    )
    from tfdeblend.training.phase1 import check_network_fits, load_network, network_file

    if not 1 <= int(steps) <= 5:
        raise TfdeblendError(f"steps must be between 1 and 5, not {steps}")
    if not 0.0 < float(threshold) < 1.0:
        raise TfdeblendError(f"threshold must be between 0 and 1, not {threshold}")
    if int(batch_size) < 1:
        raise TfdeblendError(f"batch size must be positive, not {batch_size}")
    source = Path(source_dir).resolve()
    out = Path(out_dir)
    if out.resolve() == source:
        raise TfdeblendError("the output must differ from the source dataset")
    manifest = load_manifest(source)
    if manifest.get("kind") == RESIDUALS_KIND:
        raise DataError(f"{source_dir} is already a residuals dataset; mine a simulated one")
    if not manifest["complete"]:
        raise DataError(f"{source_dir} is incomplete; finish it with its simulate command first")
    deblender_path = network_file(deblender, "deblender", what="--deblender")
    model, run_bands, run_size, _ = load_network(deblender_path, "deblender")
    bands, stamp_size = tuple(manifest["bands"]), int(manifest["stamp_size"])
    check_network_fits(deblender, run_bands, run_size, bands, stamp_size, what="--deblender")
    verify_dataset(source)

    steps = int(steps)
    source_shards = manifest["shards"]
    starts = np.cumsum([0] + [int(s["count"]) for s in source_shards])
    config = {
        "source": str(source),
        "source_kind": manifest["kind"],
        "source_seed": manifest.get("seed"),
        "source_count": int(manifest["count"]),
        "source_sha256": [s["sha256"] for s in source_shards],
        "deblender": str(deblender_path.resolve()),
        "deblender_sha256": sha256_file(deblender_path),
        "steps": steps,
        "threshold": float(threshold),
    }
    n_shards = len(source_shards)
    out_manifest = {
        "format": "tfrecord",
        "kind": RESIDUALS_KIND,
        "config": config,
        "bands": list(bands),
        "bunit": manifest.get("bunit", "electron"),
        "pixel_scale": manifest.get("pixel_scale"),
        # the residual records keep their source's observing conditions
        **({"conditions": manifest["conditions"]} if manifest.get("conditions") else {}),
        "stamp_size": stamp_size,
        "max_sources": int(manifest["max_sources"]),
        "count": int(manifest["count"]) * steps,
        "seed": manifest.get("seed"),
        "catalog_sha256": manifest.get("catalog_sha256"),
        "versions": _versions(),
        "shards": [
            {"name": shard_name(i, n_shards), "count": int(s["count"]) * steps}
            for i, s in enumerate(source_shards)
        ],
    }
    tallies: dict[int, dict[str, dict[str, int]]] = {}

    def make_stream(i: int) -> Iterator[dict[str, np.ndarray]]:
        tally = tallies.setdefault(i, {str(t + 1): {} for t in range(steps)})
        records = _source_records(source, int(starts[i]), int(starts[i + 1]))
        for k, record in enumerate(residual_records(records, model, steps, threshold,
                                                    batch_size)):
            step = tally[str(k % steps + 1)]
            step[str(int(record["n_gal"]))] = step.get(str(int(record["n_gal"])), 0) + 1
            yield record

    write_derived_dataset(out, out_manifest, make_stream, overwrite=overwrite,
                          progress=progress, desc="mine residuals",
                          note=lambda i: {"labels": tallies.get(i, {})})
    final = load_manifest(out)
    labels: dict[str, dict[str, int]] = {}
    for shard in final["shards"]:
        for step, counts in (shard.get("labels") or {}).items():
            for label, n in counts.items():
                labels.setdefault(step, {})
                labels[step][label] = labels[step].get(label, 0) + int(n)
    return {"path": str(out), "count": int(final["count"]), "labels": labels}
