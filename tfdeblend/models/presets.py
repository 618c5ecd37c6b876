"""Model configurations and named presets (``paper``, ``cpu``, ``tiny``).

The ``paper`` presets are the networks of Wang et al. (2021): an RDN with D=16 residual dense
blocks of C=8 layers, growth G=64, and VGG-16. They are GPU models (~280 GFLOP per 80x80 image
for the RDN). The ``cpu`` presets were chosen by measurement with ``benchmarks/models.py`` on a
2-core CPU (see ``docs/models.md``): the RDN runs its dense blocks on a 4x smaller grid
(``space_to_depth`` in, ESPCN ``depth_to_space`` out) and the classifier keeps VGG-16's 13 conv +
3 dense layout with fewer filters. ``tiny`` is for tests.
"""

from __future__ import annotations

import dataclasses

from tfdeblend.config import YamlConfig
from tfdeblend.errors import TfdeblendError


@dataclasses.dataclass
class RDNConfig(YamlConfig):
    """Residual Dense Network (deblender) hyperparameters.

    Attributes:
        channels: number of bands C_in of the input image (channels last).
        stamp_size: side of the square input stamp, pixels.
        num_blocks: D, number of residual dense blocks.
        layers_per_block: C, densely connected conv+ReLU layers per block.
        growth: G, output channels of each dense layer (growth rate).
        features: G0, channels of the shallow/global features and of each block's output.
        downscale: ``space_to_depth`` factor at the input (1 = full resolution, as in the paper);
            the ESPCN ``depth_to_space`` at the end restores full size.
        upsample_features: channels after the sub-pixel upsampling, before the final conv.
        kernel_size: side of the spatial convolutions (3 in the paper).
        conditions: length of the observing-conditions input (:mod:`tfdeblend.conditioning`;
            ``2 * channels``: noise and PSF per band), appended as constant channels after
            ``space_to_depth``; 0 = image only (the paper, version 9 and before).
    """

    channels: int = 3
    stamp_size: int = 80
    num_blocks: int = 4
    layers_per_block: int = 4
    growth: int = 32
    features: int = 64
    downscale: int = 4
    upsample_features: int = 16
    kernel_size: int = 3
    conditions: int = 0

    def __post_init__(self) -> None:
        for name in (
            "channels",
            "stamp_size",
            "num_blocks",
            "layers_per_block",
            "growth",
            "features",
            "downscale",
            "upsample_features",
            "kernel_size",
        ):
            if int(getattr(self, name)) < 1:
                raise TfdeblendError(f"RDN {name} must be >= 1, not {getattr(self, name)}")
        if self.conditions < 0:
            raise TfdeblendError("RDN conditions must be >= 0 (0: image only)")
        if self.stamp_size % self.downscale:
            raise TfdeblendError(
                f"stamp size {self.stamp_size} is not a multiple of the RDN downscale "
                f"factor {self.downscale}"
            )


@dataclasses.dataclass
class ClassifierConfig(YamlConfig):
    """VGG-16 galaxy counter hyperparameters.

    Attributes:
        channels: number of bands of the input image (channels last).
        stamp_size: side of the square input stamp, pixels.
        filters: conv filters of VGG's 5 stages (2, 2, 3, 3, 3 convs; 2x2 max-pool after each).
        dense_units: width of the two hidden dense layers.
        dropout: dropout rate after each hidden dense layer.
        batch_norm: batch normalization after each conv (lets SGD at lr 0.1 train; the paper
            does not say, VGG-16 without it does not train at that rate).
        num_classes: output logits (0, 1, 2, 3 galaxies).
        input_stretch: softening ``a`` of an ``asinh(x / a)`` stretch applied to the normalized
            image inside the classifier (:class:`~tfdeblend.models.layers.AsinhStretch`); 0 = none
            (the paper). The normalization divides by the blend's max, so on a linear scale a
            faint neighbour of a bright galaxy sits at ~1e-3-1e-2 and the counter misses it; the
            stretch (a ~ the sky noise in normalized units) makes it visible. It is part of the
            network, so the one normalization stays the same everywhere.
        conditions: length of the observing-conditions input (as :class:`RDNConfig`), appended
            as constant channels after the stretch; 0 = image only.
    """

    channels: int = 3
    stamp_size: int = 80
    filters: tuple[int, ...] = (16, 32, 64, 128, 128)
    dense_units: int = 256
    dropout: float = 0.5
    batch_norm: bool = True
    num_classes: int = 4
    input_stretch: float = 0.0
    conditions: int = 0

    def __post_init__(self) -> None:
        if self.conditions < 0:
            raise TfdeblendError("classifier conditions must be >= 0 (0: image only)")
        if self.input_stretch < 0:
            raise TfdeblendError("classifier input_stretch must be >= 0 (0: no stretch)")
        self.filters = tuple(int(f) for f in self.filters)
        if len(self.filters) != 5 or min(self.filters) < 1:
            raise TfdeblendError(f"classifier filters must be 5 positive ints, not {self.filters}")
        if self.stamp_size < 32:
            raise TfdeblendError("classifier stamp size must be >= 32 (5 max-pools of 2)")
        if not 0.0 <= self.dropout < 1.0:
            raise TfdeblendError("classifier dropout must be in [0, 1)")
        if self.dense_units < 1 or self.num_classes < 2 or self.channels < 1:
            raise TfdeblendError("classifier dense units, classes and channels must be positive")


#: preset name -> (RDN options, classifier options); channels and stamp size come from the data.
PRESETS: dict[str, tuple[dict, dict]] = {
    "paper": (
        dict(
            num_blocks=16,
            layers_per_block=8,
            growth=64,
            features=64,
            downscale=1,
            upsample_features=64,
        ),
        dict(filters=(64, 128, 256, 512, 512), dense_units=4096, dropout=0.5),
    ),
    "cpu": (
        dict(
            num_blocks=4,
            layers_per_block=4,
            growth=32,
            features=64,
            downscale=4,
            upsample_features=16,
        ),
        dict(filters=(16, 32, 64, 128, 128), dense_units=256, dropout=0.5, input_stretch=0.01),
    ),
    "tiny": (
        dict(
            num_blocks=1, layers_per_block=2, growth=8, features=8, downscale=4, upsample_features=4
        ),
        dict(filters=(4, 4, 8, 8, 8), dense_units=16, dropout=0.0),
    ),
}


def _preset(name: str) -> tuple[dict, dict]:
    if name not in PRESETS:
        raise TfdeblendError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def get_rdn_config(
    name: str, channels: int = 3, stamp_size: int = 80, conditioned: bool = False
) -> RDNConfig:
    """The RDN configuration of preset ``name`` for ``channels`` bands and ``stamp_size`` pixels
    (``conditioned``: with the noise and PSF of each band as input)."""
    return RDNConfig(channels=channels, stamp_size=stamp_size,
                     conditions=2 * channels if conditioned else 0, **_preset(name)[0])


def get_classifier_config(
    name: str, channels: int = 3, stamp_size: int = 80, conditioned: bool = False
) -> ClassifierConfig:
    """The classifier configuration of preset ``name`` (``conditioned`` as :func:`get_rdn_config`)."""
    return ClassifierConfig(channels=channels, stamp_size=stamp_size,
                            conditions=2 * channels if conditioned else 0, **_preset(name)[1])
