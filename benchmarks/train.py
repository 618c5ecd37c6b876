"""Benchmark phase-1 (and phase-2) training throughput on real datasets.

Usage::

    python benchmarks/train.py --deblender-data DIR --classifier-data DIR \
        [--presets cpu,paper] [--steps 5] [--batch 16]

Trains each network for 2 short epochs (the first includes tracing) with
:func:`tfdeblend.training.phase1.train_phase1` and reports the images/s of the second epoch;
with ``tfdeblend.training.joint`` present, also times a short phase 2 from the cpu runs
(wall time including start-up). Prints a markdown table. Noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras

from tfdeblend.training.config import paper_train_config
from tfdeblend.training.phase1 import train_phase1


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deblender-data", required=True)
    parser.add_argument("--classifier-data", required=True)
    parser.add_argument("--presets", default="cpu,paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfdeblend-bench-"))
    print("| phase | net | preset | batch | steps | train img/s (2nd epoch) |")
    print("|---|---|---|---|---|---|")
    runs = {}
    for preset in args.presets.split(","):
        for net, data in (("deblender", args.deblender_data), ("classifier", args.classifier_data)):
            steps = args.steps if preset != "paper" else max(1, args.steps // 5)
            batch = args.batch if preset != "paper" else max(1, args.batch // 4)
            config = paper_train_config(1, net).replace(
                preset=preset,
                epochs=2,
                steps_per_epoch=steps,
                batch_size=batch,
                validation_fraction=0.0,
            )
            timer = EpochTimer()
            out = work / f"{net}-{preset}"
            train_phase1(data, out, net, config, verbose=0, callbacks=[timer])
            runs[(net, preset)] = out
            rate = steps * batch / timer.times[-1]
            print(f"| 1 | {net} | {preset} | {batch} | {steps} | {rate:.1f} |", flush=True)
    try:
        from tfdeblend.training.joint import train_phase2
    except ImportError:
        return
    if ("deblender", "cpu") in runs and ("classifier", "cpu") in runs:
        config = paper_train_config(2).replace(
            preset="cpu", epochs=1, steps_per_epoch=args.steps, batch_size=8
        )
        start = time.perf_counter()
        train_phase2(
            args.deblender_data,
            runs[("deblender", "cpu")],
            runs[("classifier", "cpu")],
            work / "joint",
            config,
            verbose=0,
        )
        wall = time.perf_counter() - start
        print(
            f"| 2 | joint | cpu | 8 | {args.steps} | {args.steps * 8 / wall:.1f} (incl. start-up) |"
        )


if __name__ == "__main__":
    main()
