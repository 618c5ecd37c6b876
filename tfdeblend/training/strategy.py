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
