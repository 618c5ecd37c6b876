"""The VGG-16 galaxy counter (Simonyan & Zisserman 2015, as used by Wang et al. 2021).

Input: a normalized image ``(N, H, W, C)``. Output: ``(N, num_classes)`` **logits** for
0, 1, 2, 3 galaxies; train with ``from_logits=True`` and take ``softmax`` for probabilities.
An optional parameter-free ``AsinhStretch`` first layer (``input_stretch``) shows faint galaxies.
Layout: 13 convs in 5 stages (2, 2, 3, 3, 3 convs of 3x3, ReLU; 2x2 max-pool after each stage),
then 3 dense layers (two hidden with ReLU and dropout, one output).
"""

from __future__ import annotations

import keras
from keras import layers

from tfdeblend.models.layers import AsinhStretch, ConditionMaps
from tfdeblend.models.presets import ClassifierConfig

#: convs per VGG-16 stage
STAGE_CONVS: tuple[int, ...] = (2, 2, 3, 3, 3)


def build_classifier(config: ClassifierConfig) -> keras.Model:
    """Build the VGG-16 classifier.

    Args:
        config: architecture (see :class:`ClassifierConfig`).

    Returns:
        A functional ``keras.Model`` mapping ``(None, H, W, C)`` normalized images to
        ``(None, num_classes)`` float32 logits.
    """
    size = config.stamp_size
    image = keras.Input((size, size, config.channels), name="image")
    x = image
    if config.input_stretch > 0:
        x = AsinhStretch(config.input_stretch, name="asinh_stretch")(x)
    inputs = image
    if config.conditions:
        conditions = keras.Input((config.conditions,), name="conditions")
        x = ConditionMaps(name="condition_maps")([x, conditions])
        inputs = [image, conditions]
    for stage, (convs, filters) in enumerate(zip(STAGE_CONVS, config.filters), start=1):
        for i in range(1, convs + 1):
            name = f"block{stage}_conv{i}"
            x = layers.Conv2D(
                filters, 3, padding="same", name=name, use_bias=not config.batch_norm
            )(x)
            if config.batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(config.dense_units, activation="relu", name=f"fc{i}")(x)
        if config.dropout > 0:
            x = layers.Dropout(config.dropout, name=f"fc{i}_dropout")(x)
    logits = layers.Dense(config.num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="vgg16_classifier")


def classifier_param_count(config: ClassifierConfig) -> int:
    """Closed-form number of parameters of :func:`build_classifier` (incl. BN statistics).

    Each 3x3 conv from a to b channels has ``9*a*b`` weights plus ``b`` biases without batch norm,
    or ``4*b`` batch-norm parameters (gamma, beta, moving mean and variance) with it. The flattened
    size is ``s*s*F5`` with ``s`` the stamp size halved (floor) five times. Dense layers:
    ``flat*U + U``, ``U*U + U``, ``U*K + K``.
    """
    total, channels = 0, config.channels + config.conditions
    for convs, filters in zip(STAGE_CONVS, config.filters):
        for _ in range(convs):
            total += 9 * channels * filters + (4 * filters if config.batch_norm else filters)
            channels = filters
    side = config.stamp_size
    for _ in STAGE_CONVS:
        side //= 2
    flat, units = side * side * channels, config.dense_units
    total += flat * units + units + units * units + units
    total += units * config.num_classes + config.num_classes
    return total
