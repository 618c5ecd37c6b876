"""Match predicted objects (deblended components or detections) to true galaxies.

The matching is the one of BTK's ``PixelHungarianMatcher``: a Hungarian (minimum total distance)
assignment on the pixel distance between centroids, after which pairs farther apart than
``max_sep`` pixels are dropped. It is reimplemented here on plain arrays (scipy's
``linear_sum_assignment``) so that it works per stamp without building astropy tables.

Coordinates are 0-based pixels in the stamp, ``x`` = column, ``y`` = row (see ``measure.py``).
Padding entries (``nan`` coordinates) never match.

Example:
    >>> import numpy as np
    >>> true_xy = np.array([[10.0, 10.0], [30.0, 30.0]])
    >>> pred_xy = np.array([[29.0, 31.0], [10.5, 9.5], [60.0, 60.0]])
    >>> match_positions(true_xy, pred_xy, max_sep=5.0).tolist()
    [1, 0]
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

#: default maximum separation in pixels (BTK's ``PixelHungarianMatcher`` default)
DEFAULT_MAX_SEP = 5.0


def match_positions(
    true_xy: np.ndarray, pred_xy: np.ndarray, max_sep: float = DEFAULT_MAX_SEP
) -> np.ndarray:
    """Hungarian matching of predicted to true positions in one stamp.

    Args:
        true_xy: ``(S, 2)`` true ``(x, y)`` in pixels; rows with ``nan`` are padding.
        pred_xy: ``(K, 2)`` predicted ``(x, y)`` in pixels; rows with ``nan`` are ignored.
        max_sep: largest accepted distance in pixels (strictly smaller distances match).

    Returns:
        ``(S,)`` int array: for each true galaxy the index of its predicted object in
        ``pred_xy``, or ``-1`` when it has no match.
    """
    true_xy = np.asarray(true_xy, dtype=np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    result = np.full(len(true_xy), -1, dtype=np.int64)
    true_ok = np.flatnonzero(np.all(np.isfinite(true_xy), axis=1))
    pred_ok = np.flatnonzero(np.all(np.isfinite(pred_xy), axis=1))
    if len(true_ok) == 0 or len(pred_ok) == 0:
        return result
    diff = true_xy[true_ok, None, :] - pred_xy[None, pred_ok, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    rows, cols = linear_sum_assignment(dist)
    keep = dist[rows, cols] < max_sep
    result[true_ok[rows[keep]]] = pred_ok[cols[keep]]
    return result


def match_batch(
    true_x: np.ndarray,
    true_y: np.ndarray,
    pred_x: np.ndarray,
    pred_y: np.ndarray,
    max_sep: float = DEFAULT_MAX_SEP,
) -> np.ndarray:
    """:func:`match_positions` over a batch of stamps.

    Args:
        true_x, true_y: ``(N, S)`` true centroids in pixels, ``nan`` padding.
        pred_x, pred_y: ``(N, K)`` predicted centroids in pixels, ``nan`` for empty slots.
        max_sep: largest accepted distance in pixels.

    Returns:
        ``(N, S)`` int array of predicted indices, ``-1`` for unmatched true galaxies.
    """
    true_x = np.asarray(true_x, dtype=np.float64)
    n_stamps = true_x.shape[0]
    out = np.full(true_x.shape, -1, dtype=np.int64)
    for i in range(n_stamps):
        out[i] = match_positions(
            np.stack([true_x[i], np.asarray(true_y[i])], axis=-1),
            np.stack([np.asarray(pred_x[i]), np.asarray(pred_y[i])], axis=-1),
            max_sep,
        )
    return out
