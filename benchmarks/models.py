"""Benchmark candidate model configurations: parameters, FLOPs, train and inference images/s.

Usage: ``python benchmarks/models.py [--repeats 3] [--batch 16] [--configs cpu,tiny,...]``.
Prints a markdown table. Timings are the median of ``--repeats`` runs; they are noisy on a
shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfdeblend.models.classifier import build_classifier
from tfdeblend.models.presets import RDNConfig, get_classifier_config, get_rdn_config
from tfdeblend.models.rdn import build_rdn

CANDIDATES = {
    "rdn-tiny": lambda: build_rdn(get_rdn_config("tiny")),
    "rdn-cpu (f4 D4 C4 G32 G0=64)": lambda: build_rdn(get_rdn_config("cpu")),
    "rdn-f2 D4 C4 G32 G0=64": lambda: build_rdn(RDNConfig(downscale=2)),
    "rdn-paper (f1 D16 C8 G64)": lambda: build_rdn(get_rdn_config("paper")),
    "vgg-tiny": lambda: build_classifier(get_classifier_config("tiny")),
    "vgg-cpu (16-32-64-128-128 dense 256)": lambda: build_classifier(get_classifier_config("cpu")),
    "vgg-paper (64-512 dense 4096)": lambda: build_classifier(get_classifier_config("paper")),
}


def conv_flops(model: keras.Model) -> float:
    """Forward multiply-adds x 2 of the conv and dense layers for one image."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = np.prod(layer.kernel_size)
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            total += 2.0 * h * w * c_out * c_in * k
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def timed(fn, repeats: int) -> float:
    fn()  # warm up / trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--configs", default=",".join(CANDIDATES))
    args = parser.parse_args()
    print("| model | params | GFLOP/img (fwd) | train img/s | infer img/s |")
    print("|---|---|---|---|---|")
    for name in args.configs.split(","):
        model = CANDIDATES[name]()
        x = tf.random.normal((args.batch, 80, 80, 3))
        if name.startswith("rdn"):
            model.compile("adam", "mae")
            y = x
        else:
            model.compile(
                keras.optimizers.SGD(0.1, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            y = tf.zeros((args.batch,), tf.int32)
        predict = tf.function(lambda t, m=model: m(t, training=False))
        train_s = timed(lambda m=model, x=x, y=y: m.train_on_batch(x, y), args.repeats)
        infer_s = timed(lambda p=predict, x=x: p(x).numpy(), args.repeats)
        print(
            f"| {name} | {model.count_params():,} | {conv_flops(model) / 1e9:.2f} | "
            f"{args.batch / train_s:.1f} | {args.batch / infer_s:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
