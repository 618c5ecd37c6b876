"""Issue 27's bright-end checks on simulated stamps, for any model.

1. An i <= 17.5 galaxy with a faint neighbour (i >= 22): how many components match no galaxy
   (spurious), and how often each galaxy is found (matched within 1" = 5 px of its centroid).
   Stamps from ``tfdeblend simulate test --n-gal 2 --count 400 --format fits --seed 45
   --bright-fraction 0.5 --bright-mag 17.5``, the pairs that qualify.
2. The same stamps with a 1e6 pixel (a cosmic ray) 12 px from the bright galaxy, through
   ``tfdeblend run``'s path (:func:`tfdeblend.outliers.deblend_batch`): galaxies lost.

Usage: python scripts/bright_neighbour_check.py TESTSET_DIR [--model DIR]
"""

from __future__ import annotations

import argparse

import numpy as np


def match(components: np.ndarray, n: int, truth_xy: np.ndarray, radius: float = 5.0):
    """(found per true galaxy (bool), spurious components) for one stamp."""
    from tfdeblend import measure

    if n == 0:
        return np.zeros(len(truth_xy), bool), 0
    m = measure.moments(components[:n])
    xy = np.stack([m["x"], m["y"]], axis=1)
    found = np.zeros(len(truth_xy), bool)
    spurious = 0
    for c in xy:
        d = np.hypot(*(truth_xy - c).T)
        j = int(np.argmin(d))
        if d[j] < radius and not found[j]:
            found[j] = True
        else:
            spurious += 1
    return found, spurious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("testset")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    from surveycodex import get_survey
    from surveycodex.utilities import mag2counts

    from tfdeblend.data import load_testset
    from tfdeblend.export import load_model
    from tfdeblend.outliers import deblend_batch

    t = load_testset(args.testset)
    survey = get_survey("LSST")
    i_band = list(t["bands"]).index("i")
    bright = mag2counts(17.5, survey, survey.get_filter("i")).value
    faint = mag2counts(22.0, survey, survey.get_filter("i")).value
    flux = t["flux"][:, :, i_band]
    pick = np.flatnonzero((flux[:, 0] >= bright) & (flux[:, 1] <= faint))
    model = load_model(args.model)
    images = t["blend"][pick].astype(np.float32)
    known = {}
    if model.conditioned:
        known["psf_fwhm"] = t["psf_fwhm"][pick] / t["pixel_scale"][pick, None]
    truth = np.stack([t["x"][pick], t["y"][pick]], axis=2)  # (n, 2 galaxies, xy)
    hit = images.copy()
    for k in range(len(pick)):  # a cosmic ray 12 px from the bright galaxy, in every band
        x, y = truth[k, 0]
        hit[k, int(np.clip(round(y), 0, 79)), int(np.clip(round(x) + 12, 0, 79)), :] = 1e6
    rows = {}
    for name, data in (("clean", images), ("1e6 pixel", hit)):
        out = deblend_batch(model, data, batch_size=32, **known)
        found = np.zeros((len(pick), 2), bool)
        spurious = np.zeros(len(pick), int)
        for k in range(len(pick)):
            found[k], spurious[k] = match(out["conserved"][k], int(out["n_components"][k]),
                                          truth[k])
        rows[name] = (found, spurious, out["quality"])
    print(f"model {model.name} version {model.version}: {len(pick)} stamps with i <= 17.5 and a "
          f"neighbour at i >= 22 ({args.testset})")
    print("| stamps | bright found | faint found | stamps with a spurious component | "
          "spurious components | quality high/medium/low |")
    print("|---|---|---|---|---|---|")
    for name, (found, spurious, quality) in rows.items():
        q = "/".join(f"{np.mean(quality == v):.2f}" for v in (2, 1, 0))
        print(f"| {name} | {found[:, 0].mean():.3f} | {found[:, 1].mean():.3f} | "
              f"{np.mean(spurious > 0):.3f} | {spurious.sum()} | {q} |")
    lost = (rows["clean"][0] & ~rows["1e6 pixel"][0]).sum()
    print(f"galaxies found on the clean stamps but lost with the 1e6 pixel: {lost}")


if __name__ == "__main__":
    main()
