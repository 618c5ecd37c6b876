"""Keras callbacks of a training run (both phases).

A run directory gets ``checkpoints/epoch-XXX.keras`` (every epoch), ``backup/`` (for resuming an
interrupted run: :class:`keras.callbacks.BackupAndRestore`), ``logs/`` (TensorBoard scalars and
sample images) and ``history.json`` (per-epoch metrics, kept across resumptions).
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfdeblend.utils import atomic_file


class JsonHistory(keras.callbacks.Callback):
    """Write ``history.json`` (``{"epoch": [...], "<metric>": [...]}``) after every epoch.

    On a resumed run the epochs already recorded before ``initial_epoch`` are kept.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self.history: dict[str, list] = {}

    def on_train_begin(self, logs=None):
        self.history = {}
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._started:
            return
        self._started = True
        # The first epoch run is the initial epoch (> 0 when BackupAndRestore resumed).
        if epoch and self.path.exists():
            old = json.loads(self.path.read_text())
            keep = [i for i, e in enumerate(old.get("epoch", [])) if e < epoch]
            self.history = {k: [v[i] for i in keep] for k, v in old.items()}

    def on_epoch_end(self, epoch, logs=None):
        self.history.setdefault("epoch", []).append(int(epoch))
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(np.asarray(value)))
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package (needed by ``tf.summary``) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def _to_rgb(images: np.ndarray) -> np.ndarray:
    """Normalized images (N, H, W, C) -> displayable (N, H, W, 3 or 1) in [0, 1] (asinh stretch)."""
    images = images[..., :3] if images.shape[-1] >= 3 else images[..., :1]
    stretched = np.arcsinh(np.clip(images, 0, None) * 20.0) / np.arcsinh(20.0)
    return np.clip(stretched, 0.0, 1.0).astype("float32")


class SampleImages(keras.callbacks.Callback):
    """Log a few inputs, predictions and targets to TensorBoard at each epoch end."""

    def __init__(
        self, log_dir: str | os.PathLike, inputs: np.ndarray, targets: np.ndarray | None = None
    ):
        super().__init__()
        self.log_dir = str(Path(log_dir) / "images")
        # a conditioned network's inputs are [images, condition features]
        self.inputs = (
            [np.asarray(v, dtype="float32") for v in inputs]
            if isinstance(inputs, list) else np.asarray(inputs, dtype="float32")
        )
        self.targets = None if targets is None else np.asarray(targets, dtype="float32")
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        prediction = np.asarray(self.model(self.inputs, training=False))
        with self._writer.as_default():
            images = self.inputs[0] if isinstance(self.inputs, list) else self.inputs
            tf.summary.image("blend", _to_rgb(images), step=epoch, max_outputs=8)
            tf.summary.image("prediction", _to_rgb(prediction), step=epoch, max_outputs=8)
            if self.targets is not None:
                tf.summary.image("target", _to_rgb(self.targets), step=epoch, max_outputs=8)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def make_callbacks(
    run_dir: str | os.PathLike,
    config: Any = None,
    sample_images: tuple[np.ndarray, np.ndarray | None] | np.ndarray | None = None,
    checkpoints: bool = True,
    tensorboard: bool = True,
) -> list:
    """The callbacks of one training run writing into ``run_dir``.

    Args:
        run_dir: the run directory (created if needed).
        config: the run's :class:`~tfdeblend.training.config.TrainConfig` (unused for now;
            kept for schedules that depend on it).
        sample_images: deblender only: normalized inputs ``(n, H, W, C)`` or ``(inputs,
            targets)`` to show in TensorBoard every epoch.
        checkpoints: save ``checkpoints/epoch-XXX.keras`` every epoch.
        tensorboard: write TensorBoard logs to ``logs/``.

    Returns:
        ``[JsonHistory, BackupAndRestore, ModelCheckpoint, TensorBoard, SampleImages]`` (those
        enabled). Progress output is the ``verbose`` argument of ``fit``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # JsonHistory first: an epoch is in history.json before the backup says it is done.
    callbacks: list = [
        JsonHistory(run_dir / "history.json"),
        # double_checkpoint: the previous backup is kept, so a run killed while writing the
        # new one resumes from the previous epoch instead of failing on a truncated file
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
    ]
    if checkpoints:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(run_dir / "checkpoints" / "epoch-{epoch:03d}.keras"), save_freq="epoch"
            )
        )
    if tensorboard and not tensorboard_available():
        warnings.warn(
            "TensorBoard is not installed (pip install tensorboard): no logs/ written",
            stacklevel=2,
        )
        tensorboard = False
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False))
        if sample_images is not None:
            inputs, targets = (
                sample_images if isinstance(sample_images, tuple) else (sample_images, None)
            )
            callbacks.append(SampleImages(run_dir / "logs", inputs, targets))
    return callbacks
