"""Issue 27's targets for each test set of a ``tfdeblend evaluate`` report (``metrics.json``):
fainter-galaxy recall >= sep's + 0.15, precision >= 0.95, exact count >= 0.80, r-band flux
scatter below sep's for both galaxies, >= 75 % of blends flagged high.

Usage: python scripts/condition_targets.py REPORT/metrics.json [REPORT2/metrics.json ...]
"""

from __future__ import annotations

import json
import sys


def targets(testset: dict) -> list[tuple[str, bool, str]]:
    ours, sep = testset["methods"]["tfdeblend"], testset["methods"]["sep"]
    y, y_sep = ours["y"]["found_fraction"], sep["y"]["found_fraction"]
    precision = ours["detection"]["precision"]
    exact = ours["detection"]["exact_count_fraction"]
    sx, sx_sep = ours["x"]["flux"]["r"]["scatter"], sep["x"]["flux"]["r"]["scatter"]
    sy, sy_sep = ours["y"]["flux"]["r"]["scatter"], sep["y"]["flux"]["r"]["scatter"]
    high = testset["table1_quality"]["all"]["high"]
    return [
        ("y recall >= sep + 0.15", y >= y_sep + 0.15, f"{y:.3f} vs {y_sep + 0.15:.3f}"),
        ("precision >= 0.95", precision >= 0.95, f"{precision:.3f}"),
        ("exact count >= 0.80", exact >= 0.80, f"{exact:.3f}"),
        ("x r scatter < sep", sx < sx_sep, f"{sx:.3f} vs {sx_sep:.3f}"),
        ("y r scatter < sep", sy < sy_sep, f"{sy:.3f} vs {sy_sep:.3f}"),
        ("high >= 75 %", high >= 0.75, f"{100 * high:.1f} %"),
    ]


def main() -> None:
    for path in sys.argv[1:]:
        report = json.load(open(path))
        print(f"\n{path} (model {report['model'].get('path', report['model'].get('name'))})")
        header = None
        for name, testset in report["testsets"].items():
            rows = targets(testset)
            if header is None:
                header = [r[0] for r in rows]
                print("| test set | " + " | ".join(header) + " | met |")
                print("|---" * (len(header) + 2) + "|")
            cells = [("yes" if ok else "**no**") + f" ({text})" for _, ok, text in rows]
            met = sum(ok for _, ok, _ in rows)
            print(f"| `{name}` | " + " | ".join(cells) + f" | {met} of {len(rows)} |")


if __name__ == "__main__":
    main()
