"""Model fixtures (owned by the models/training module): tiny trained runs.

``tiny_deblender_run`` and ``tiny_classifier_run`` are phase-1 run directories (``tiny`` preset,
a few steps) trained on the real BTK data fixtures ``deblender_dataset``/``classifier_dataset``
(from ``fixtures_data.py``).
"""

from pathlib import Path

import pytest

__all__ = [
    "deblender_data_dir",
    "classifier_data_dir",
    "tiny_deblender_run",
    "tiny_classifier_run",
    "train_tiny",
]


@pytest.fixture(scope="session")
def deblender_data_dir(deblender_dataset) -> Path:
    """A small real ``deblender`` dataset directory (2-galaxy BTK blends)."""
    return Path(deblender_dataset)


@pytest.fixture(scope="session")
def classifier_data_dir(classifier_dataset) -> Path:
    """A small real ``classifier`` dataset directory (0..3 galaxies)."""
    return Path(classifier_dataset)


def train_tiny(dataset_dir, out_dir, net: str, epochs: int = 1, steps: int = 2, **changes):
    """Phase-1 training of the ``tiny`` preset for a few steps; returns the history."""
    from tfdeblend.training.config import paper_train_config
    from tfdeblend.training.phase1 import train_phase1

    config = paper_train_config(1, net).replace(
        preset="tiny",
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=4,
        validation_fraction=0.25,
        **changes,
    )
    return train_phase1(dataset_dir, out_dir, net, config, verbose=0)


@pytest.fixture(scope="session")
def tiny_deblender_run(deblender_data_dir, tmp_path_factory) -> Path:
    """Run directory of a ``tiny`` RDN trained a few steps (``deblender.keras`` + config.yaml)."""
    out = tmp_path_factory.mktemp("runs") / "tiny_deblender"
    train_tiny(deblender_data_dir, out, "deblender", learning_rate=1e-3)
    return out


@pytest.fixture(scope="session")
def tiny_classifier_run(classifier_data_dir, tmp_path_factory) -> Path:
    """Run directory of a ``tiny`` VGG-16 trained a few steps (``classifier.keras``)."""
    out = tmp_path_factory.mktemp("runs") / "tiny_classifier"
    train_tiny(classifier_data_dir, out, "classifier", learning_rate=0.01)
    return out
