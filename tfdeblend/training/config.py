"""Training configuration shared by phase 1 and phase 2.

The defaults of :func:`paper_train_config` are the paper's hyperparameters (Wang et al. 2021,
section 3); every field can be overridden by a CLI flag or a YAML file, and the effective
configuration is saved as ``config.yaml`` in every run directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tfdeblend.config import YamlConfig, read_yaml_options
from tfdeblend.errors import TfdeblendError


@dataclasses.dataclass
class TrainConfig(YamlConfig):
    """Hyperparameters of one training run.

    Attributes:
        phase: 1 (one network alone) or 2 (joint).
        net: ``"deblender"`` or ``"classifier"`` in phase 1; ``"joint"`` in phase 2.
        preset: model preset name (``paper``, ``cpu``, ``tiny``).
        learning_rate: deblender (phase 1 deblender, phase 2 RDN) or classifier (phase 1) rate.
        classifier_learning_rate: classifier rate in phase 2.
        optimizer: ``adam`` (deblender) or ``sgd`` (classifier: momentum 0.9, as VGG) ...
        batch_size: global batch size (split over replicas).
        epochs: passes over the dataset.
        steps_per_epoch: cap on steps per epoch (``None``: the whole dataset).
        loss: deblender loss, ``l1`` (the paper's) or ``symmetric`` (permutation-invariant when the
            two brightest galaxies are close in brightness).
        flux_weight: deblender: weight of the relative band-flux error
            (:func:`~tfdeblend.training.losses.flux_error`) added to the L1 loss; 0 (the
            paper's loss) turns it off.
        wing_weight: deblender: weight of the asinh-stretched image error
            (:func:`~tfdeblend.training.losses.wing_error`, every pixel by its relative error,
            a bright galaxy's wings included) added to the L1 loss; 0 turns it off.
        ce_weight: lambda, weight of the classifier cross-entropy in the phase-2 RDN loss.
        single_weight: alpha, weight of 1-galaxy images in the phase-2 classifier loss.
        validation_fraction: share of the dataset held out for validation.
        seed: seed for shuffling and initialization.
        mixed_precision: use ``mixed_float16`` (GPUs only).
        jit_compile: XLA-compile the train step.
        lr_schedule: ``constant``, ``cosine`` (cosine decay to 0 over all steps) or ``auto``
            (constant for Adam, as the paper; cosine for SGD, the classifier).
        augment: random 90-degree rotations and flips of the training examples (phase 1; the
            paper does not augment).
        peel_fraction: phase 1 deblender: share of training blends whose brightest galaxy is
            removed (blend minus its noiseless image), so the network also learns the later peel
            steps (the paper trains them only in phase 2).
        init_from: phase 1: start from the weights of this run directory's network instead of a
            random initialization (fine-tuning; the architecture must match).
        conditioned: phase 1: the network also takes each band's noise and PSF FWHM
            (:mod:`tfdeblend.conditioning`); the datasets must store their observing conditions.
            With ``init_from`` an image-only network is widened: its weights are kept and the new
            condition inputs start at zero, so training starts from the same network. Phase 2
            sets it itself: it gives the conditions to the networks that take them.
    """

    phase: int = 1
    net: str = "deblender"
    preset: str = "cpu"
    learning_rate: float = 1e-4
    classifier_learning_rate: float = 1e-6
    optimizer: str = "adam"
    batch_size: int = 128
    epochs: int = 150
    steps_per_epoch: int | None = None
    loss: str = "l1"
    flux_weight: float = 0.0
    wing_weight: float = 0.0
    ce_weight: float = 1e-4
    single_weight: float = 0.2
    validation_fraction: float = 0.1
    seed: int = 0
    mixed_precision: bool = False
    jit_compile: bool = False
    lr_schedule: str = "auto"
    augment: bool = False
    peel_fraction: float = 0.0
    init_from: str | None = None
    conditioned: bool = False

    def __post_init__(self) -> None:
        if self.phase not in (1, 2):
            raise TfdeblendError(f"phase must be 1 or 2, not {self.phase}")
        if self.phase == 1 and self.net not in ("deblender", "classifier"):
            raise TfdeblendError(f"--net must be deblender or classifier, not {self.net!r}")
        if self.loss not in ("l1", "symmetric"):
            raise TfdeblendError(f"loss must be l1 or symmetric, not {self.loss!r}")
        if not self.flux_weight >= 0.0:
            raise TfdeblendError(f"flux weight must be >= 0, not {self.flux_weight}")
        if not self.wing_weight >= 0.0:
            raise TfdeblendError(f"wing weight must be >= 0, not {self.wing_weight}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise TfdeblendError("batch size and epochs must be positive")
        if self.steps_per_epoch is not None and self.steps_per_epoch <= 0:
            raise TfdeblendError("steps per epoch must be positive")
        if self.lr_schedule not in ("auto", "constant", "cosine"):
            raise TfdeblendError(
                f"lr_schedule must be auto, constant or cosine, not {self.lr_schedule!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise TfdeblendError(f"optimizer must be adam or sgd, not {self.optimizer!r}")
        if self.learning_rate <= 0:
            raise TfdeblendError("learning rate must be positive")
        if not 0.0 <= self.peel_fraction < 1.0:
            raise TfdeblendError("peel fraction must be in [0, 1)")
        if self.peel_fraction and self.net != "deblender":
            raise TfdeblendError("peel_fraction is a phase-1 deblender option")
        if self.phase == 2 and (self.augment or self.init_from):
            raise TfdeblendError(
                "augment and init_from are phase-1 options (phase 2 starts from --deblender and "
                "--classifier)"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise TfdeblendError("validation fraction must be in [0, 1)")


def paper_train_config(phase: int, net: str = "deblender") -> TrainConfig:
    """The paper's hyperparameters for ``phase`` (and ``net`` in phase 1).

    Phase 1 deblender: Adam, lr 1e-4, batch 128, 150 epochs, L1.
    Phase 1 classifier: SGD with momentum 0.9, lr 0.1, batch 200, 200 epochs, cross-entropy.
    Phase 2: Adam, lr 1e-5 (RDN) and 1e-6 (classifier), batch 8, 10 epochs, lambda 1e-4, alpha 0.2.
    """
    if phase == 2:
        return TrainConfig(
            phase=2, net="joint", preset="paper", learning_rate=1e-5,
            classifier_learning_rate=1e-6, optimizer="adam", batch_size=8, epochs=10,
        )
    if net == "classifier":
        return TrainConfig(
            phase=1, net="classifier", preset="paper", learning_rate=0.1, optimizer="sgd",
            batch_size=200, epochs=200,
        )
    return TrainConfig(phase=1, net="deblender", preset="paper", learning_rate=1e-4,
                       optimizer="adam", batch_size=128, epochs=150)


def build_train_config(
    phase: int,
    net: str | None = None,
    config_path: str | os.PathLike | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The paper's hyperparameters for ``phase``/``net``, updated by a YAML file, then by
    ``overrides`` (what ``tfdeblend train`` does with ``--config`` and its flags).

    ``None`` overrides are ignored.

    Raises:
        TfdeblendError: an unreadable file, unknown or invalid options, or a file whose
            ``phase``/``net`` differ from the ones asked for.
    """
    options = paper_train_config(phase, net or "deblender").to_dict()
    if config_path is not None:
        data = read_yaml_options(config_path)
        for key in ("phase", "net"):
            if key in data and data[key] != options[key]:
                raise TfdeblendError(
                    f"config file {config_path} sets {key}={data[key]!r}, but the command "
                    f"trains {key}={options[key]!r}"
                )
        options.update(data)
    options.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(options)
