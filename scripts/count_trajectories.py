"""Classifier logits along the whole peel, for calibrating the count offline.

The peel's residuals do not depend on the counts: every step that goes on peels the RDN's
brightest galaxy, whatever the count was (the count only decides *when* the peel stops). So one
pass that peels ``max_iterations`` times and records the classifier's logits at every step (the
single view and the ``count_views`` average) lets :func:`simulate` replay the peel's stop rules
for any offset added to the logits, without running the networks again.

    python scripts/count_trajectories.py saved_models/tfdeblend_cpu/12 work_data/val2 ... \
        --out work_data/trajectories_v12.npz
    python scripts/count_trajectories.py --replay work_data/trajectories_v12.npz
    python scripts/count_trajectories.py --replay work_data/trajectories_v12.npz --plot prior.png

Validation sets only: the offset is chosen here and judged on the held-out test sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def record(model_dir: str, sets: list[str], out: str, batch: int = 50) -> None:
    import keras
    import tensorflow as tf

    import tfdeblend.models.layers  # noqa: F401  (registers the custom layers)
    from tfdeblend import deblend as dbl
    from tfdeblend.data import load_testset
    from tfdeblend.export import read_model_metadata
    from tfdeblend.normalize import noise_std, normalize, remove_outliers
    from tfdeblend.peel_config import PeelConfig

    path, meta = read_model_metadata(model_dir)
    extra = Path(path) / "assets.extra"
    deblender = keras.saving.load_model(extra / "deblender.keras", compile=False)
    classifier = keras.saving.load_model(extra / "classifier.keras", compile=False)
    # raw logits: the model's own prior_three is what the replay varies
    config = PeelConfig.from_metadata(meta).replace(prior_three=0.0)
    peeler = dbl.Peeler(deblender, classifier, config,
                        default_psf=meta["conditions"]["psf_fwhm"])
    k = config.max_iterations
    views = config.count_views

    @tf.function(reduce_retracing=True)
    def trajectory(images, psf):
        images, _ = remove_outliers(images)
        sigma = noise_std(images)
        conditions = peeler.conditions_for(images, None, psf, estimated=sigma)
        residual = images
        singles, averages, empty = [], [], []
        for t in range(k + 1):
            normalized, scale = normalize(residual, sigma=sigma)
            features = dbl._features(conditions, scale)
            singles.append(dbl.run_classifier(classifier, normalized, features))
            if views > 1:
                averages.append(peeler._view_average(normalized, features))
            else:
                averages.append(singles[-1])
            empty.append(tf.equal(tf.reduce_max(tf.abs(residual), axis=[1, 2, 3]), 0.0))
            if t < k:
                galaxy = dbl.denormalize(
                    dbl.run_deblender(deblender, normalized, features), scale)
                residual = residual - galaxy
        return tf.stack(singles, 1), tf.stack(averages, 1), tf.stack(empty, 1)

    result = {"view_confidence": np.float32(config.view_confidence), "sets": np.array(sets)}
    for name in sets:
        ts = load_testset(name)
        blends = np.asarray(ts["blend"], np.float32)
        psf = (np.asarray(ts["psf_fwhm"], np.float32)
               / np.asarray(ts["pixel_scale"], np.float32)[:, None])
        parts = []
        for start in range(0, len(blends), batch):
            parts.append([x.numpy() for x in trajectory(
                tf.constant(blends[start:start + batch]), tf.constant(psf[start:start + batch]))])
            print(f"{name}: {start + len(parts[-1][0])}/{len(blends)}", flush=True)
        key = Path(name).name
        result[f"{key}/single"] = np.concatenate([p[0] for p in parts])
        result[f"{key}/average"] = np.concatenate([p[1] for p in parts])
        result[f"{key}/empty"] = np.concatenate([p[2] for p in parts])
        result[f"{key}/n_gal"] = np.asarray(ts["n_gal"])
    np.savez_compressed(out, **result)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def counts_for(single, average, empty, offset, view_confidence) -> np.ndarray:
    """The count at every step (N, K + 1) with ``offset`` (4,) added to the logits."""
    s = single + offset
    a = average + offset
    unsure = softmax(s).max(-1) < view_confidence
    logits = np.where(unsure[..., None], a, s)
    return np.where(empty, 0, logits.argmax(-1))


def simulate(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The peel's own stop rules (:func:`tfdeblend.deblend.stop_rule`) on per-step counts
    ``(N, K + 1)``: ``quality`` (2/1/0) and the number of components peeled."""
    import tensorflow as tf

    from tfdeblend.deblend import stop_rule

    n, steps = counts.shape
    counts = tf.constant(counts, tf.int32)
    active = tf.ones([n], tf.bool)
    monotone = tf.ones([n], tf.bool)
    previous = tf.fill([n], -1)
    run = tf.zeros([n], tf.int32)
    quality = tf.zeros([n], tf.int32)
    peeled = np.zeros(n, int)
    for t in range(steps):
        count = tf.where(active, counts[:, t], -1)
        monotone, run, quality, peel = stop_rule(t, steps - 1, count, active, monotone,
                                                 previous, run, quality)
        peeled += peel.numpy()
        previous = tf.where(active, count, previous)
        active = peel
    return quality.numpy(), peeled


def replay(path: str, offsets: list[np.ndarray]) -> None:
    data = np.load(path)
    vc = float(data["view_confidence"])
    names = [Path(s).name for s in data["sets"]]
    print(f"{'offset':>24} " + " ".join(f"{n:>24}" for n in names))
    print(f"{'':>24} " + " ".join(f"{'high exact over under':>24}" for _ in names))
    for off in offsets:
        cells = []
        for name in names:
            counts = counts_for(data[f"{name}/single"], data[f"{name}/average"],
                                data[f"{name}/empty"], off, vc)
            quality, peeled = simulate(counts)
            n_gal = data[f"{name}/n_gal"]
            cells.append(f"{np.mean(quality == 2):.3f} {np.mean(peeled == n_gal):.3f} "
                         f"{np.mean(peeled > n_gal):.3f} {np.mean(peeled < n_gal):.3f}")
        print(f"{np.array2string(off, precision=2):>24} " + " ".join(f"{c:>24}" for c in cells))


def plot(path: str, out: str) -> None:
    """"high" and components = galaxies against the offset on the count of 3, per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(path)
    vc = float(data["view_confidence"])
    offsets = np.linspace(-3.0, 1.0, 17)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for name in (Path(s).name for s in data["sets"]):
        n_gal = data[f"{name}/n_gal"]
        high, exact = [], []
        for d3 in offsets:
            counts = counts_for(data[f"{name}/single"], data[f"{name}/average"],
                                data[f"{name}/empty"], np.array([0, 0, 0, d3]), vc)
            quality, peeled = simulate(counts)
            high.append(np.mean(quality == 2))
            exact.append(np.mean(peeled == n_gal))
        axes[0].plot(offsets, high, "o-", ms=3, label=name)
        axes[1].plot(offsets, exact, "o-", ms=3, label=name)
    for ax, title in zip(axes, ("quality high", "components peeled = galaxies")):
        ax.axvline(-1.0, color="grey", ls=":")
        ax.set_xlabel("offset added to the logit of a count of 3 (prior_three)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Validation sets, the peel replayed offline (scripts/count_trajectories.py)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("sets", nargs="*")
    parser.add_argument("--out")
    parser.add_argument("--replay")
    parser.add_argument("--plot", help="with --replay: write this PNG")
    args = parser.parse_args()
    if args.replay and args.plot:
        plot(args.replay, args.plot)
    elif args.replay:
        grid = [np.array([d0, 0, 0, d3], np.float32)
                for d0 in (0.0, -0.25, 0.25) for d3 in (0.0, -0.5, -1.0, -1.5, -2.0)]
        replay(args.replay, grid)
    else:
        record(args.model, args.sets, args.out)


if __name__ == "__main__":
    main()
