"""Compare the key metrics of two ``tfdeblend evaluate`` reports (``metrics.json``), test set by
test set, with the standard error of each metric, and flag where the new model is worse by more
than one standard error.

Standard errors: a fraction p of n has sqrt(p (1 - p) / n); a robust scatter s of n values about
1.48 s / sqrt(2 n) (a MAD's, 1.36x a Gaussian sigma's); a bias (median) of n values with robust
scatter s, 1.25 s / sqrt(n).

Usage: python scripts/compare_reports.py OLD/metrics.json NEW/metrics.json
"""

from __future__ import annotations

import json
import math
import sys

#: (label, path under methods/tfdeblend, kind, which direction is better)
KEYS = (
    ("high quality", ("table1_quality", "all", "high"), "fraction", +1),
    ("x recall", ("x", "found_fraction"), "fraction", +1),
    ("y recall", ("y", "found_fraction"), "fraction", +1),
    ("precision", ("detection", "precision"), "fraction", +1),
    ("exact count", ("detection", "exact_count_fraction"), "fraction", +1),
    ("x r bias", ("x", "flux", "r", "bias"), "bias", 0),
    ("x r scatter", ("x", "flux", "r", "scatter"), "scatter", -1),
    ("x r outliers", ("x", "flux", "r", "outlier_fraction"), "fraction", -1),
    ("y r bias", ("y", "flux", "r", "bias"), "bias", 0),
    ("y r scatter", ("y", "flux", "r", "scatter"), "scatter", -1),
    ("y r outliers", ("y", "flux", "r", "outlier_fraction"), "fraction", -1),
)


def _get(testset: dict, path: tuple, method: str = "tfdeblend"):
    node = testset if path[0] == "table1_quality" else testset["methods"][method]
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None, None
        node = node[key]
    # n: the quality table's, or the galaxy/detection counts
    return float(node), None


def _n(testset: dict, path: tuple) -> int:
    if path[0] == "table1_quality":
        return int(testset["table1_quality"]["all"]["n"])
    methods = testset["methods"]["tfdeblend"]
    if path[0] in ("x", "y") and path[1] == "flux":
        return int(methods[path[0]]["flux"]["r"]["n"])
    if path[0] in ("x", "y"):
        return int(methods[path[0]]["n_true"])
    if path[1] == "exact_count_fraction":
        return int(testset["n_stamps"])
    return int(methods["detection"]["n_pred" if path[1] == "precision" else "n_true"])


def standard_error(value: float, n: int, kind: str, scatter: float | None) -> float:
    if n <= 0:
        return float("nan")
    if kind == "fraction":
        return math.sqrt(max(value * (1 - value), 1e-12) / n)
    if kind == "scatter":
        return 1.48 * value / math.sqrt(2 * n)
    return 1.25 * (scatter or 0.0) / math.sqrt(n)


def main() -> None:
    old_path, new_path = sys.argv[1:3]
    old = json.load(open(old_path))["testsets"]
    new = json.load(open(new_path))["testsets"]
    worse = []
    for name in new:
        if name not in old:
            continue
        print(f"\n{name}\n| metric | old | new | SE | new - old |\n|---|---:|---:|---:|---:|")
        for label, path, kind, better in KEYS:
            a, _ = _get(old[name], path)
            b, _ = _get(new[name], path)
            if a is None or b is None:
                continue
            scatter = None
            if kind == "bias":
                scatter = _get(old[name], (*path[:-1], "scatter"))[0]
            se = standard_error(a, _n(old[name], path), kind, scatter)
            diff = b - a
            flag = ""
            if better and diff * better < -se:
                flag = " **worse**"
                worse.append(f"{name}: {label}")
            elif better == 0 and abs(b) > abs(a) + se:
                flag = " **worse**"
                worse.append(f"{name}: {label}")
            print(f"| {label} | {a:.4f} | {b:.4f} | {se:.4f} | {diff:+.4f}{flag} |")
    print("\nworse by more than one standard error:", ", ".join(worse) or "none")


if __name__ == "__main__":
    main()
