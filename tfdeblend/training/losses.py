"""Deblender losses, reduced per example.

Each function returns one value per example (shape ``(N,)``); Keras (``compile``/``fit``) then
takes the sum over the replica's examples divided by the *global* batch size, so the gradient is
the same on 1 or many replicas. A custom ``train_step`` (phase 2) should do the same:
``tf.reduce_sum(per_example) / global_batch_size`` (or ``tf.nn.compute_average_loss``).

Targets ``y_true`` are either ``(N, H, W, C)`` (the brightest galaxy) or ``(N, 2, H, W, C)``
(brightest, second brightest; zeros when there is no second galaxy) as produced by
:func:`tfdeblend.training.pipelines.deblender_example`. All images are normalized by the blend's
scale (channels last).
"""

from __future__ import annotations

import keras
import tensorflow as tf

#: The symmetric loss treats the two brightest galaxies as interchangeable when the second one
#: has at least this fraction of the brightest one's flux (summed over pixels and bands).
SYMMETRIC_RATIO: float = 0.8

#: Softening of :func:`wing_error`, normalized units (the input's peak pixel is 1): pixels
#: fainter than this count linearly, brighter ones by their relative error. 1e-3 is about the
#: sky noise of a stamp whose brightest pixel is 1,000 sigma (an i ~ 17.5 galaxy at LSST
#: 10-year depth), where a bright galaxy's wings sit.
WING_SOFTENING: float = 1e-3

#: Added to the target's mean band flux in the denominator of :func:`flux_error`, in normalized
#: units. A galaxy's normalized flux is its flux over the input's peak pixel, about 10-100 for a
#: target (a point source of peak 1 under the LSST PSF sums to about 14), so this only guards
#: empty targets (a peeled blend with nothing left).
FLUX_EPS: float = 1.0


def _per_example_l1(target: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(target - prediction), axis=[-3, -2, -1])


def flux_error(target: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    """Relative error of the summed flux per band, averaged over bands, per example.

    ``mean_b |sum(prediction_b) - sum(target_b)| / (mean_b sum(target_b) + FLUX_EPS)``: the
    band errors are divided by the target's *mean* band flux, so a band where the galaxy is faint
    (g for a red galaxy) cannot dominate. The pixel L1 hardly feels a small error spread over a
    galaxy's faint wings; this term does, and photometry is measured from exactly those sums.

    Args:
        target, prediction: ``(N, H, W, C)`` normalized images.

    Returns:
        ``(N,)`` per-example relative flux error.
    """
    target_flux = tf.reduce_sum(target, axis=[-3, -2])  # (N, C)
    predicted_flux = tf.reduce_sum(prediction, axis=[-3, -2])
    denominator = tf.reduce_mean(target_flux, axis=-1) + FLUX_EPS
    return tf.reduce_mean(tf.abs(predicted_flux - target_flux), axis=-1) / denominator


def wing_error(target: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    """Mean absolute difference of the asinh-stretched images, per example.

    ``mean |asinh(prediction / s) - asinh(target / s)|`` with ``s`` = :data:`WING_SOFTENING`:
    linear below ``s``, the relative error above it. Images are divided by their peak pixel, so
    the L1 hardly sees the wings of a bright galaxy (a few 1e-3 of its peak), where a model
    that falls 10-60 % short leaves light the peel takes for another galaxy; this term weighs
    a pixel by its relative error at any brightness.
    """
    s = WING_SOFTENING
    return tf.reduce_mean(tf.abs(tf.asinh(prediction / s) - tf.asinh(target / s)),
                          axis=[-3, -2, -1])


def _per_example_loss(target: tf.Tensor, prediction: tf.Tensor, flux_weight: float,
                      wing_weight: float = 0.0) -> tf.Tensor:
    loss = _per_example_l1(target, prediction)
    if flux_weight:
        loss = loss + flux_weight * flux_error(target, prediction)
    if wing_weight:
        loss = loss + wing_weight * wing_error(target, prediction)
    return loss


def _split_targets(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
    y_true = tf.cast(y_true, y_pred.dtype)
    if y_true.shape.rank == y_pred.shape.rank + 1:
        return y_true[:, 0], (y_true[:, 1] if y_true.shape[1] and y_true.shape[1] > 1 else None)
    return y_true, None


def l1_loss(y_true: tf.Tensor, y_pred: tf.Tensor, flux_weight: float = 0.0,
            wing_weight: float = 0.0) -> tf.Tensor:
    """Mean absolute error to the brightest galaxy (the paper's loss), per example.

    Args:
        y_true: ``(N, H, W, C)`` or ``(N, 2, H, W, C)`` normalized targets (brightest first).
        y_pred: ``(N, H, W, C)`` network output.
        flux_weight: weight of :func:`flux_error` added to the L1 (0: the paper's loss).
        wing_weight: weight of :func:`wing_error` added to the L1 (0: the paper's loss).

    Returns:
        ``(N,)`` mean over pixels and bands of ``|y_true[brightest] - y_pred|`` (plus
        ``flux_weight`` times the relative flux error).
    """
    y_pred = tf.convert_to_tensor(y_pred)
    first, _ = _split_targets(tf.convert_to_tensor(y_true), y_pred)
    return _per_example_loss(first, y_pred, flux_weight, wing_weight)


def symmetric_l1_loss(
    y_true: tf.Tensor, y_pred: tf.Tensor, ratio: float = SYMMETRIC_RATIO, flux_weight: float = 0.0,
    wing_weight: float = 0.0,
) -> tf.Tensor:
    """Permutation-invariant L1 when the two brightest galaxies are close in brightness.

    Rule: let ``F1 >= F2`` be the summed fluxes of the two brightest (noiseless) targets. When
    ``F2 >= ratio * F1`` the loss is ``min(L1(galaxy 1), L1(galaxy 2))`` (the network may return
    either, the paper's proposed fix for equally bright galaxies); otherwise it is the plain L1 to
    the brightest. With ``(N, H, W, C)`` targets it is the plain L1.

    Args:
        y_true: ``(N, 2, H, W, C)`` normalized targets (brightest, second brightest).
        y_pred: ``(N, H, W, C)`` network output.
        ratio: flux ratio above which the two are interchangeable.
        flux_weight: weight of :func:`flux_error` added to each of the two losses.
        wing_weight: weight of :func:`wing_error` added to each of the two losses.

    Returns:
        ``(N,)`` per-example loss.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    first, second = _split_targets(tf.convert_to_tensor(y_true), y_pred)
    loss_first = _per_example_loss(first, y_pred, flux_weight, wing_weight)
    if second is None:
        return loss_first
    loss_second = _per_example_loss(second, y_pred, flux_weight, wing_weight)
    flux_first = tf.reduce_sum(first, axis=[-3, -2, -1])
    flux_second = tf.reduce_sum(second, axis=[-3, -2, -1])
    close = tf.logical_and(flux_second > 0, flux_second >= ratio * flux_first)
    return tf.where(close, tf.minimum(loss_first, loss_second), loss_first)


@keras.saving.register_keras_serializable(package="tfdeblend")
class L1Loss(keras.losses.Loss):
    """Keras loss wrapping :func:`l1_loss` (mean over the global batch)."""

    def __init__(self, flux_weight: float = 0.0, wing_weight: float = 0.0, name: str = "l1",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.flux_weight = float(flux_weight)
        self.wing_weight = float(wing_weight)

    def call(self, y_true, y_pred):
        return l1_loss(y_true, y_pred, self.flux_weight, self.wing_weight)

    def get_config(self):
        return {**super().get_config(), "flux_weight": self.flux_weight,
                "wing_weight": self.wing_weight}


@keras.saving.register_keras_serializable(package="tfdeblend")
class SymmetricL1Loss(keras.losses.Loss):
    """Keras loss wrapping :func:`symmetric_l1_loss` (mean over the global batch)."""

    def __init__(
        self,
        ratio: float = SYMMETRIC_RATIO,
        flux_weight: float = 0.0,
        wing_weight: float = 0.0,
        name: str = "symmetric_l1",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.ratio = float(ratio)
        self.flux_weight = float(flux_weight)
        self.wing_weight = float(wing_weight)

    def call(self, y_true, y_pred):
        return symmetric_l1_loss(y_true, y_pred, self.ratio, self.flux_weight, self.wing_weight)

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio, "flux_weight": self.flux_weight,
                "wing_weight": self.wing_weight}


def get_deblender_loss(name: str, flux_weight: float = 0.0,
                       wing_weight: float = 0.0) -> keras.losses.Loss:
    """``"l1"`` -> :class:`L1Loss`, ``"symmetric"`` -> :class:`SymmetricL1Loss`.

    ``flux_weight`` adds that many times :func:`flux_error` to the per-example loss,
    ``wing_weight`` that many times :func:`wing_error`.
    """
    if name == "l1":
        return L1Loss(flux_weight=flux_weight, wing_weight=wing_weight)
    if name == "symmetric":
        return SymmetricL1Loss(flux_weight=flux_weight, wing_weight=wing_weight)
    from tfdeblend.errors import TfdeblendError

    raise TfdeblendError(f"loss must be l1 or symmetric, not {name!r}")
