"""Plot the training curves of run directories (history.json) into one PNG.

Usage: python scripts/plot_history.py OUT.png RUN_DIR [RUN_DIR ...]
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: str, runs: list[str]) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs):
        history = json.loads((Path(run) / "history.json").read_text())
        epochs = [e + 1 for e in history.get("epoch", range(len(next(iter(history.values())))))]
        for key, values in history.items():
            if key == "epoch" or not values:
                continue
            ax.plot(epochs[: len(values)], values, marker="o", label=key)
        ax.set_title(Path(run).name)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
