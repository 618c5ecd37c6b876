"""Build in-process peelers for the tests (the package exports peelers as SavedModels instead).

The peel tests were written against a peel that counts over 8 views and runs 2 refinement
sweeps, with the other steps after the peel off: :data:`TEST_PEEL`, changed per test with
keyword options.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdeblend.deblend import Peeler
from tfdeblend.peel_config import PeelConfig

#: The peel the tests start from.
TEST_PEEL = PeelConfig(
    max_iterations=6, count_views=8, prior_three=0.0, split=False, split_distance=0.0,
    refine_steps=2, detect_snr=0.0,
    detect_window=0.0, merge_radius=0.0, keep_snr=0.0,
)


def peel_config(**options) -> PeelConfig:
    """:data:`TEST_PEEL` with ``options`` changed."""
    return TEST_PEEL.replace(**options)


def make_peeler(deblender, classifier, stamp_size=None, n_bands=None, **options) -> Peeler:
    """A :class:`Peeler` of :func:`peel_config` ``(**options)`` whose ``peel``, ``deblend_one``
    and ``count`` are compiled ``tf.function``s (traced once per input signature)."""
    peeler = Peeler(deblender, classifier, peel_config(**options))
    spec = tf.TensorSpec([None, stamp_size, stamp_size, n_bands], tf.float32, name="images")
    peeler.peel = tf.function(peeler.peel, input_signature=[spec], reduce_retracing=True)
    peeler.deblend_one = tf.function(peeler.deblend_one, input_signature=[spec])
    peeler.count = tf.function(peeler.count, input_signature=[spec])
    return peeler


def peel_numpy(peeler: Peeler, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """``peeler.peel`` on a numpy array, batch by batch; numpy arrays concatenated."""
    images = np.asarray(images, dtype=np.float32)
    parts = []
    for start in range(0, len(images), batch_size):
        out = peeler.peel(tf.constant(images[start : start + batch_size]))
        parts.append({key: value.numpy() for key, value in out.items()})
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
