"""Plots written into run folders (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_confusion(cm: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> None:
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=100)
    ax.imshow(cm, cmap="Blues")
    vmax = max(max(r) for r in cm) or 1
    for i in range(k):
        for j in range(k):
            v = cm[i][j]
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > 0.5 * vmax else "black")
    ax.set_xticks(range(k), classes, rotation=90 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
