"""PNG plots of the lens and probe stages (matplotlib, Agg): curves against the residual stream's depth."""
from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from refusal.utils.io import atomic_path  # noqa: E402

XLABEL = "residual stream (entering layer; last: after the last layer)"


@contextlib.contextmanager
def _figure(path: Path, nrows: int, ncols: int):
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows), dpi=100, squeeze=False)
    try:
        yield axes
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)


def _nan(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _axis(ax, title: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(XLABEL, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend and ax.lines:
        ax.legend(fontsize=7, loc="best")


def _band(ax, x, mean, low, high, label):
    line, = ax.plot(x, _nan(mean), ".-", ms=3, lw=1.2, label=label)
    ax.fill_between(x, _nan(low), _nan(high), color=line.get_color(), alpha=0.2, lw=0)


def lens_plot(result: dict, path: Path) -> Path:
    """Per lens: the mean refusal score at the first response position against depth, per label (CI bands) and per
    toxic category; and KL(final ‖ lens) against depth, one line per lens."""
    lenses, x = result["lenses"], result["layers"]
    with _figure(path, len(lenses), 3) as axes:
        for row, lens in enumerate(lenses):
            curve = result["curves"][lens]
            for g, c in curve.items():
                if "/" not in g:
                    _band(axes[row, 0], x, c["last"], c["ci_low"], c["ci_high"], f"{g} (n={c['n']})")
                else:
                    axes[row, 1].plot(x, _nan(c["last"]), ".-", ms=3, lw=1, label=g.split("/", 1)[1])
            for col, what in enumerate(("label", "toxic category")):
                ax = axes[row, col]
                low, high = ax.get_ylim()
                if low < 0 < high:  # refusal score 0: refusal as likely as not
                    ax.axhline(0.0, color="gray", ls="--", lw=0.8)
                _axis(ax, f"{lens} lens: refusal log-odds by {what}")
        kl = axes[0, 2]
        for lens in lenses:
            kl.plot(x, _nan(result["kl"][lens]), ".-", ms=3, lw=1.2, label=f"{lens} lens")
        _axis(kl, "KL(final ‖ lens) in nats, evaluation prompts")
        for row in range(1, len(lenses)):
            axes[row, 2].axis("off")
    return Path(path)


def probes_plot(result: dict, path: Path) -> Path:
    """Per task: held-out accuracy (CI band), control accuracy and selectivity against depth; the toxic-vs-safe
    panel also shows the share of hard prompts its probe calls toxic."""
    tasks, x = result["tasks"], result["layers"]
    ncols = min(4, len(tasks))
    nrows = -(-len(tasks) // ncols)
    with _figure(path, nrows, ncols) as axes:
        for ax, t in zip(axes.flat, tasks):
            _band(ax, x, t["accuracy"], t["ci_low"], t["ci_high"], "accuracy")
            ax.plot(x, _nan(t["control"]), ".--", ms=3, lw=1, label="control accuracy")
            ax.plot(x, _nan(t["selectivity"]), ".-", ms=3, lw=1, label="selectivity")
            if t["task"] == "toxic_vs_safe" and result.get("hard_predicted_toxic"):
                ax.plot(x, _nan(result["hard_predicted_toxic"]), ":", lw=1.2, label="hard called toxic")
            ax.axhline(t["majority"], color="gray", ls="--", lw=0.8)
            ax.set_ylim(min(-0.05, float(np.nanmin(_nan(t["selectivity"]))) - 0.05), 1.05)
            _axis(ax, t["task"], legend=ax is axes.flat[0])
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
    return Path(path)
