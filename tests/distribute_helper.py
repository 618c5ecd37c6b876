"""Run in a subprocess by test_distribute.py: one SGD step on 1 device vs MirroredStrategy over
2 logical CPU devices (the logical devices must be configured before TensorFlow initializes them,
so this cannot run inside the pytest process). Prints a JSON line."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfdeblend.training.config import TrainConfig  # noqa: E402
from tfdeblend.training.phase1 import build_phase1_model  # noqa: E402
from tfdeblend.training.strategy import get_strategy  # noqa: E402


def main(loss: str) -> None:
    config = TrainConfig(
        preset="tiny",
        optimizer="sgd",
        learning_rate=0.5,
        lr_schedule="constant",
        batch_size=8,
        loss=loss,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 80, 80, 3)).astype("float32")
    y = rng.normal(size=(8, 2, 80, 80, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    keras.utils.set_random_seed(0)
    single, _ = build_phase1_model("deblender", config, 3, 80)
    initial = single.get_weights()
    loss_single = single.fit(ds, epochs=1, verbose=0).history["loss"][0]
    strategy = get_strategy("mirrored")
    with strategy.scope():
        mirrored, _ = build_phase1_model("deblender", config, 3, 80)
    mirrored.set_weights(initial)
    loss_mirrored = mirrored.fit(ds, epochs=1, verbose=0).history["loss"][0]
    after_single, after_mirrored = single.get_weights(), mirrored.get_weights()
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "devices": list(strategy.extended.worker_devices),
                "loss_single": loss_single,
                "loss_mirrored": loss_mirrored,
                "max_update": max(
                    float(np.abs(a - b).max()) for a, b in zip(after_single, initial)
                ),
                "max_diff": max(
                    float(np.abs(a - b).max()) for a, b in zip(after_single, after_mirrored)
                ),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "l1")
