"""The Residual Dense Network deblender (Zhang et al. 2018, as used by Wang et al. 2021, Fig. 2).

Input: a normalized blend ``(N, H, W, C)`` (see :mod:`tfdeblend.normalize`). Output: the
normalized image of the brightest galaxy, same shape, same scale (multiply by the blend's scale to
get flux). The network reads like the figure:

1. shallow feature extraction: two convs (F_-1, F_0);
2. D residual dense blocks, each C densely connected conv+ReLU layers, 1x1 local feature fusion and
   a local residual connection;
3. global feature fusion: concatenation of all block outputs, 1x1 conv, 3x3 conv, plus the global
   residual F_-1;
4. ESPCN upsampling (conv then sub-pixel ``depth_to_space``) and a final conv to C bands.

With ``downscale > 1`` the input is first rearranged by ``space_to_depth`` (lossless), so the
dense blocks work on a smaller grid and the sub-pixel upsampling restores full resolution.
"""

from __future__ import annotations

import keras
from keras import layers

from tfdeblend.models.layers import ConditionMaps, DepthToSpace, SpaceToDepth
from tfdeblend.models.presets import RDNConfig


def _conv(
    filters: int, kernel: int, name: str, activation: str | None = None, dtype: str | None = None
) -> layers.Conv2D:
    return layers.Conv2D(
        filters, kernel, padding="same", activation=activation, name=name, dtype=dtype
    )


def residual_dense_block(x, config: RDNConfig, index: int):
    """One residual dense block: C densely connected conv+ReLU, 1x1 local fusion, local residual."""
    k = config.kernel_size
    features = [x]
    for layer in range(config.layers_per_block):
        inputs = (
            features[0]
            if layer == 0
            else layers.Concatenate(name=f"rdb{index}_concat{layer}")(features)
        )
        features.append(_conv(config.growth, k, f"rdb{index}_conv{layer}", "relu")(inputs))
    fused = _conv(config.features, 1, f"rdb{index}_local_fusion")(
        layers.Concatenate(name=f"rdb{index}_concat")(features)
    )
    return layers.Add(name=f"rdb{index}_local_residual")([x, fused])


def build_rdn(config: RDNConfig) -> keras.Model:
    """Build the RDN deblender.

    Args:
        config: architecture (see :class:`RDNConfig`).

    Returns:
        A functional ``keras.Model`` mapping ``(None, H, W, C)`` normalized blends to
        ``(None, H, W, C)`` normalized brightest-galaxy images (float32 even under a mixed
        precision policy).
    """
    k, g0 = config.kernel_size, config.features
    size = config.stamp_size
    blend = keras.Input((size, size, config.channels), name="blend")
    x = SpaceToDepth(config.downscale, name="space_to_depth")(blend)
    inputs = blend
    if config.conditions:
        conditions = keras.Input((config.conditions,), name="conditions")
        x = ConditionMaps(name="condition_maps")([x, conditions])
        inputs = [blend, conditions]
    # Shallow feature net.
    f_minus1 = _conv(g0, k, "shallow_conv1")(x)
    f = _conv(g0, k, "shallow_conv2")(f_minus1)
    # Residual dense blocks.
    block_outputs = []
    for d in range(config.num_blocks):
        f = residual_dense_block(f, config, d)
        block_outputs.append(f)
    # Global feature fusion and global residual learning.
    fused = (
        layers.Concatenate(name="global_concat")(block_outputs)
        if len(block_outputs) > 1
        else block_outputs[0]
    )
    fused = _conv(g0, 1, "global_fusion_1x1")(fused)
    fused = _conv(g0, k, "global_fusion_3x3")(fused)
    dense_features = layers.Add(name="global_residual")([f_minus1, fused])
    # Up-sampling net: ESPCN sub-pixel convolution.
    r = config.downscale
    up = _conv(config.upsample_features * r * r, k, "upsample_conv")(dense_features)
    up = DepthToSpace(r, name="depth_to_space")(up)
    galaxy = _conv(config.channels, k, "output", dtype="float32")(up)
    return keras.Model(inputs, galaxy, name="rdn_deblender")


def rdn_param_count(config: RDNConfig) -> int:
    """Closed-form number of parameters of :func:`build_rdn` (weights + biases).

    A k x k conv from a to b channels has ``k*k*a*b + b`` parameters. With input channels
    ``c_in = C_bands * r**2 + K`` after ``space_to_depth`` (``K`` condition channels)::

        shallow   = conv(k, c_in, G0) + conv(k, G0, G0)
        block     = sum_{c<C} conv(k, G0 + c*G, G) + conv(1, G0 + C*G, G0)
        fusion    = conv(1, D*G0, G0) + conv(k, G0, G0)
        upsample  = conv(k, G0, U*r**2) + conv(k, U, C_bands)
        total     = shallow + D * block + fusion + upsample
    """

    def conv(kernel: int, a: int, b: int) -> int:
        return kernel * kernel * a * b + b

    k, g0, g, r = config.kernel_size, config.features, config.growth, config.downscale
    c_in = config.channels * r * r + config.conditions
    shallow = conv(k, c_in, g0) + conv(k, g0, g0)
    block = sum(conv(k, g0 + c * g, g) for c in range(config.layers_per_block))
    block += conv(1, g0 + config.layers_per_block * g, g0)
    fusion = conv(1, config.num_blocks * g0, g0) if config.num_blocks > 1 else conv(1, g0, g0)
    fusion += conv(k, g0, g0)
    upsample = conv(k, g0, config.upsample_features * r * r)
    upsample += conv(k, config.upsample_features, config.channels)
    return shallow + config.num_blocks * block + fusion + upsample
