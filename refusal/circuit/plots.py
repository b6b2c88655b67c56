"""PNG plots (matplotlib, Agg backend): category × category heatmaps of the discovery comparison and the
refusal direction, rectangular matrices of the transfer test, and faithfulness/completeness curves."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from refusal.utils.io import atomic_path  # noqa: E402


@contextlib.contextmanager
def _figure(path: Path, **subplots) -> Iterator[tuple]:
    """(fig, axes) of ``plt.subplots(**subplots)``; on leaving, laid out and written atomically to ``path`` (no
    software tag, so equal plots give equal bytes); closed in any case."""
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def heatmap(matrix: np.ndarray, labels: list[str], title: str, path: Path, vmin: float = 0.0, vmax: float = 1.0,
            cmap: str = "viridis") -> Path:
    """A square labels × labels matrix on a fixed colour scale, values written in the cells."""
    n = len(labels)
    size = 1.2 + 0.6 * n
    with _figure(path, figsize=(size + 1.5, size), dpi=100) as (fig, ax):
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
    return Path(path)


def matrix_plot(matrix: np.ndarray, rows: list[str], cols: list[str], title: str, path: Path,
                cmap: str = "RdBu_r", symmetric: bool = True, xlabel: str = "", ylabel: str = "") -> Path:
    """A rows × cols heatmap with the values written in the cells; colour scale symmetric around 0 by default."""
    m = np.asarray(matrix, dtype=float)
    finite = m[np.isfinite(m)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    vmax = vmax or 1.0
    vmin = -vmax if symmetric else (float(finite.min()) if finite.size else 0.0)
    with _figure(path, figsize=(1.6 + 0.7 * len(cols), 1.2 + 0.5 * len(rows)), dpi=100) as (fig, ax):
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = m[i, j]
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2g}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return Path(path)


def _curve_panel(ax, name: str, curve: dict) -> None:
    """One circuit's faithfulness and completeness against the node count, random circuits' mean ± range."""
    pts = curve["points"]
    x = np.array([p["n_nodes"] for p in pts], dtype=float)
    for key, color, style in (("faithfulness", "tab:blue", "o-"), ("completeness", "tab:red", "s--")):
        ax.plot(x, [_nan(p[key]) for p in pts], style, color=color, label=key, ms=3)
        mean = np.array([_nan(p["random"][key]["mean"]) for p in pts])
        lo = np.array([_nan(p["random"][key]["min"]) for p in pts])
        hi = np.array([_nan(p["random"][key]["max"]) for p in pts])
        ax.plot(x, mean, ":", color=color, alpha=0.6, label=f"random {key}")
        ax.fill_between(x, lo, hi, color=color, alpha=0.12, linewidth=0)
    d = curve.get("discovered")
    if d:
        ax.plot([d["n_nodes"]], [_nan(d["faithfulness"])], "*", color="tab:blue", ms=11, label="discovered")
        ax.plot([d["n_nodes"]], [_nan(d["completeness"])], "*", color="tab:red", ms=11)
    ax.axhline(1.0, color="gray", lw=0.6)
    ax.axhline(0.0, color="gray", lw=0.6)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0, right=max(1.0, float(x.max(initial=0))) * 1.3)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("nodes in circuit")
    ax.set_ylabel("fraction of effect")


def faithfulness_plot(curves: dict[str, dict], path: Path) -> Path:
    """One panel per circuit: faithfulness and completeness against the node count (symlog x), the random
    circuits' mean ± range, and the discovered circuit as stars."""
    names = list(curves)
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) or 1
    with _figure(path, nrows=rows, ncols=cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False) as (_, axes):
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, names):
            _curve_panel(ax, name, curves[name])
        axes.flat[0].legend(fontsize=7, loc="best")
    return Path(path)


def layer_scan_plot(panels: dict[str, dict[int, list[float]]], path: Path, selected: tuple[int, int] | None = None,
                    log_panels: tuple[str, ...] = (), lines: dict[str, float] | None = None) -> Path:
    """One panel per measure ({name: {layer: [value at each post-instruction position, the last one last]}}): its
    value against the layer, one line per position; ``selected`` (layer, position < 0) starred, ``lines``
    ({name: y}) a dashed threshold, the panels in ``log_panels`` on a symlog y axis."""
    names = list(panels)
    with _figure(path, nrows=1, ncols=len(names), figsize=(4.2 * len(names), 3.4), dpi=100,
                 squeeze=False) as (_, axes):
        for ax, name in zip(axes.flat, names):
            rows = panels[name]
            layers = sorted(rows)
            n_pos = max(len(rows[layer]) for layer in layers)
            for p in range(n_pos):
                ax.plot(layers, [_nan(rows[layer][p]) if p < len(rows[layer]) else np.nan for layer in layers],
                        ".-", ms=3, lw=1, label=f"position {p - n_pos}")
            if selected is not None and selected[0] in rows:
                ax.plot([selected[0]], [_nan(rows[selected[0]][selected[1]])], "k*", ms=11, label="selected")
            if lines and name in lines:
                ax.axhline(lines[name], color="gray", ls="--", lw=0.8)
            if name in log_panels:
                ax.set_yscale("symlog", linthresh=1e-2)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("layer (residual stream entering it)")
        axes.flat[0].legend(fontsize=7, loc="best")
    return Path(path)


def bar_panels(panels: dict[str, dict[str, float]], path: Path, lines: dict[str, float] | None = None) -> Path:
    """One bar panel per measure ({name: {bar label: value}}), ``lines`` ({name: y}) a dashed threshold."""
    names = list(panels)
    with _figure(path, nrows=1, ncols=len(names), figsize=(3.6 * len(names), 3.2), dpi=100,
                 squeeze=False) as (_, axes):
        for ax, name in zip(axes.flat, names):
            labels = list(panels[name])
            ax.bar(range(len(labels)), [_nan(panels[name][k]) for k in labels], color="tab:blue")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
            if lines and name in lines:
                ax.axhline(lines[name], color="gray", ls="--", lw=0.8)
            ax.set_title(name, fontsize=10)
    return Path(path)
