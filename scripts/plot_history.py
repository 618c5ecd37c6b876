"""Plot the training curves of run directories (history.json) into one PNG.

Usage: python scripts/plot_history.py OUT.png RUN_DIR [RUN_DIR ...]

One panel per argument. Join run directories with ``+`` (``runs/a+runs/b``) to draw the stages
of one network trained in turn (``--init-from``) as one curve, with a dotted line between stages.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: str, panels: list[str]) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        runs = panel.split("+")
        offset, curves, bounds = 0, {}, []
        for run in runs:
            history = json.loads((Path(run) / "history.json").read_text())
            n = len(history.get("epoch") or next(iter(history.values())))
            for key, values in history.items():
                if key == "epoch" or not values:
                    continue
                xs, ys = curves.setdefault(key, ([], []))
                xs.extend(range(offset + 1, offset + len(values) + 1))
                ys.extend(values)
            offset += n
            bounds.append(offset + 0.5)
        for key, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o", ms=3, label=key)
        for x in bounds[:-1]:
            ax.axvline(x, color="k", ls=":", lw=0.8)
        ax.set_title(" + ".join(Path(r).name for r in runs), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
