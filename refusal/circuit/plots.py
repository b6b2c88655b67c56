"""PNG heatmaps of category × category matrices (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from refusal.utils.io import atomic_path  # noqa: E402


def heatmap(matrix: np.ndarray, labels: list[str], title: str, path: Path, vmin: float = 0.0, vmax: float = 1.0,
            cmap: str = "viridis") -> Path:
    n = len(labels)
    size = 1.2 + 0.6 * n
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=100)
    try:
        im = ax.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        for i in range(n):
            for j in range(n):
                v = matrix[i, j]
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if not np.isnan(v) and v < (vmin + vmax) / 2 else "black")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return Path(path)
