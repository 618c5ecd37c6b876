"""Choosing a ``tf.distribute`` strategy by name."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tfdeblend.errors import TfdeblendError

STRATEGIES: tuple[str, ...] = ("default", "mirrored", "multi-worker")


def get_strategy(name: str | tf.distribute.Strategy = "default") -> tf.distribute.Strategy:
    """Return a distribution strategy.

    Args:
        name: ``"default"`` (no distribution: the default strategy, one device), ``"mirrored"``
            (synchronous data parallelism over all local GPUs; without GPUs, over all logical
            CPU devices, usually just one), or ``"multi-worker"``
            (``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment
            variable). A ``tf.distribute.Strategy`` instance is returned unchanged.

    Raises:
        TfdeblendError: unknown name, or ``multi-worker`` without a valid ``TF_CONFIG``.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) > 1 and all("CPU" in d.upper() for d in devices):
            # NCCL is GPU-only; reduce through one device.
            return tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
            )
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi-worker":
        text = os.environ.get("TF_CONFIG")
        if not text:
            raise TfdeblendError(
                "--strategy multi-worker needs the TF_CONFIG environment variable "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}})'
            )
        try:
            tf_config = json.loads(text)
            tf_config["cluster"]
            tf_config["task"]["type"]
            tf_config["task"]["index"]
        except (ValueError, KeyError, TypeError) as err:
            raise TfdeblendError(f"TF_CONFIG is not valid (needs cluster and task): {err}") from err
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TfdeblendError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that writes outputs (always true outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def prepare_fit(model, strategy: tf.distribute.Strategy, dataset: tf.data.Dataset) -> None:
    """Work around Keras 3.15 ``fit`` failing under ``MultiWorkerMirroredStrategy``.

    Keras's ``_maybe_symbolic_build`` reduces the first *distributed* batch with
    ``strategy.reduce``, which raises "Attempt to convert a value (PerReplica...)" with
    multi-worker collectives. Building the model, optimizer and metrics from one ordinary batch
    first (inside the scope) gives the same variables, after which that step is skipped.
    Keras also reduces the scalar per-step logs with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on scalars; :func:`_patch_keras_multi_worker_mean` reduces them with
    ``axis=None`` (the mean over replicas) instead. A no-op for other strategies. Call after
    ``compile`` and before ``fit``.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    _patch_keras_multi_worker_mean()
    batch = next(iter(dataset.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def _patch_keras_multi_worker_mean() -> None:
    """Reduce scalar logs over multi-worker replicas with ``axis=None`` (Keras 3.15 bug)."""
    from keras.src.backend.tensorflow import trainer as keras_trainer

    if getattr(keras_trainer, "_tfdeblend_patched", False):
        return
    original = keras_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):

            def mean(value):
                if isinstance(value, tf.distribute.DistributedValues) or tf.is_tensor(value):
                    axis = None if value.shape.rank == 0 else 0
                    return strategy.reduce("MEAN", value, axis=axis)
                return value

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    keras_trainer.reduce_per_replica = reduce_per_replica
    keras_trainer._tfdeblend_patched = True
