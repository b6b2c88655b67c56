"""Figures of the bottleneck stage (refusal/evaluation/bottleneck.py), matplotlib Agg like refusal/circuit/plots.py:
(a) layer × category residual refusal under the shared ablation, safe KL per layer in the row labels; (b) the mean
dissociation index by layer with its CI band and the ±margin lines; (c) at the best layer, per category the residual
refusal under the shared set, the category's own set and the random sets, with CIs. Every figure names n per
category; a category the model does not measurably refuse (not counted) is marked."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from refusal.circuit.plots import _figure


def _v(x) -> float:
    return float("nan") if x is None else float(x)


def _est(t: dict | None) -> tuple[float, float, float]:
    return (np.nan, np.nan, np.nan) if t is None else (_v(t["estimate"]), _v(t["low"]), _v(t["high"]))


def _category_labels(evidence: dict) -> list[str]:
    return [f"{p['category']} (n={p['n']})" + ("" if p["counted"] else ", not counted")
            for p in evidence["per_category"]]


def _row_label(row: dict) -> str:
    kl = row["evidence"]["safe_kl"]["estimate"]
    return f"{row['hook']} (k={row['k']}, safe KL={'?' if kl is None else f'{kl:.2g}'})"


def residual_heatmap(layers: list[dict], path: Path) -> Path:
    m = np.array([[_est(p["residual"])[0] for p in r["evidence"]["per_category"]] for r in layers], dtype=float)
    ev = layers[0]["evidence"]
    cols = _category_labels(ev)
    with _figure(path, figsize=(6.0 + 1.0 * len(cols), 1.6 + 0.45 * len(layers))) as (fig, ax):
        finite = m[np.isfinite(m)]
        hi = max(1.0, float(finite.max())) if finite.size else 1.0
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for i, j in np.ndindex(m.shape):
            ax.text(j, i, "–" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center",
                    fontsize=8, color="white" if np.isfinite(m[i, j]) and m[i, j] < (lo + hi) / 2 else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), [_row_label(r) for r in layers], fontsize=8)
        ax.set_title(f"residual refusal under the shared ablation\n(0 = all removed, 1 = none; "
                     f"safe n={ev['n_prompts']['safe']})", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return path


def dissociation_plot(layers: list[dict], margin: float, path: Path) -> Path:
    x = np.arange(len(layers))
    d = np.array([_est((r["evidence"]["dissociation"] or {}).get("mean")) for r in layers], dtype=float).reshape(-1, 3)
    ns = ", ".join(f"{c}={n}" for c, n in layers[0]["evidence"]["n_prompts"]["toxic"].items())
    with _figure(path, figsize=(max(5.0, 1.0 + 0.8 * len(layers)), 3.6)) as (fig, ax):
        ax.fill_between(x, d[:, 1], d[:, 2], alpha=0.3, color="tab:blue", label="CI")
        ax.plot(x, d[:, 0], "o-", color="tab:blue", label="mean dissociation index")
        for sign in (1, -1):
            ax.axhline(sign * margin, color="tab:red", ls="--", lw=1, label="±margin" if sign > 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, [r["hook"] for r in layers], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("dissociation (own − other drop)")
        ax.set_title("dissociation of equal-size category sets by layer\n" + textwrap.fill(f"n per category: {ns}", 90),
                     fontsize=9)
        ax.legend(fontsize=7)
    return path


def best_layer_bars(row: dict, path: Path) -> Path:
    ev = row["evidence"]
    own = ev["drop_matrix"]
    bars = {"shared set": [], "own category set": [], "random sets": []}
    for i, p in enumerate(ev["per_category"]):
        bars["shared set"].append(_est(p["residual"]))
        d = (np.nan, np.nan, np.nan) if own is None else tuple(_v(own[k][i][i]) for k in ("estimate", "high", "low"))
        bars["own category set"].append(tuple(1.0 - v for v in d))  # residual = 1 − drop; the CI flips
        bars["random sets"].append(_est(p["random_residual"]))
    cats = _category_labels(ev)
    x, w = np.arange(len(cats)), 0.8 / len(bars)
    with _figure(path, figsize=(2.0 + 1.4 * len(cats), 3.8)) as (fig, ax):
        for j, (name, vals) in enumerate(bars.items()):
            v = np.array(vals, dtype=float).reshape(-1, 3)
            err = np.abs(np.stack([v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]]))
            ax.bar(x + (j - 1) * w, np.nan_to_num(v[:, 0]), w, yerr=np.nan_to_num(err), capsize=3, label=name)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_xticks(x, cats, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("residual refusal (headroom-normalised)")
        ax.set_title(f"{row['hook']} (k={row['k']}, {ev['n_random_sets']} random sets, safe n="
                     f"{ev['n_prompts']['safe']})", fontsize=9)
        ax.legend(fontsize=7)
    return path


def bottleneck_plots(layers: list[dict], model: dict, margin: float, plot_dir: Path) -> dict[str, str]:
    """The three figures in ``plot_dir``: {name: path}; the bars at the model verdict's best layer (else the first)."""
    if not layers:
        return {}
    plot_dir.mkdir(parents=True, exist_ok=True)
    best = (model.get("best_layer") or {}).get("layer")
    row = next((r for r in layers if r["layer"] == best), layers[0])
    return {"residual_heatmap": str(residual_heatmap(layers, plot_dir / "bottleneck_residual.png")),
            "dissociation": str(dissociation_plot(layers, margin, plot_dir / "bottleneck_dissociation.png")),
            "best_layer_bars": str(best_layer_bars(row, plot_dir / "bottleneck_best_layer.png"))}
