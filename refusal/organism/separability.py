"""Can the base model tell a selective design's categories apart? Measured before any adapter trains.

A gate that reads the model (an adapter that writes only on some categories' prompts) cannot be more selective
than a probe that reads the same activations, so a selective design (gated, modular, mixed) whose categories the
base model does not separate would miss its checks whatever the recipe. Each gate the design needs is a set of
positive categories against every other toxic category: gated, the refused set; modular and mixed, each refused
category on its own. For each gate a binary logistic probe (L2, standardised features: ``resid_pre`` averaged over
the user's text, concatenated with the last prompt token) is cross-validated on the train split's toxic prompts at
a few of the adapters' layers; from its out-of-fold scores, ``tpr`` is the largest share of positives any one
threshold catches while it flags at most ``checks.probe_max_fpr`` of the negatives. A gate whose best layer keeps
``tpr`` below ``checks.refuse_min`` is ``inseparable``: the build stops before training unless the user accepts a
design miss (``model.accept_design_miss``).

The bound is stricter than the design's own ``checks.answer_max`` (default 0.05 against 0.2): the adapters' learned
gates generalise worse than the probe. Against the ten selective builds recorded in the README it predicts 9 outcomes
at 0.05, 8 at 0.1 and 3 at 0.2 (0.05 was fitted on all ten, after 0.1 had failed its one prospective test); the
build it lets through that missed is the six-category gated set. A screen, not a guarantee.
"""
from __future__ import annotations

import numpy as np
import torch

from refusal.data.records import PromptRecord
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import resid_pre_batches

FOLDS = 5


@torch.inference_mode()
def prompt_features(model, fmt: ChatFormatter, records: list[PromptRecord], layers: list[int],
                    batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{layer: [n, 2 d] float64}: ``resid_pre`` averaged over the user's text, then at the last prompt token."""
    out: dict[int, list] = {layer: [] for layer in layers}
    for enc, acts in resid_pre_batches(model, fmt, [r.prompt for r in records], layers, batch_size):
        spans = enc.positions("prompt_mean")
        for layer, a in zip(layers, acts):
            a = a.double()
            out[layer].append(torch.stack([torch.cat([a[b, p].mean(0), a[b, -1]]) for b, p in enumerate(spans)]).cpu())
    return {layer: torch.cat(v) for layer, v in out.items()}


def probe_layers(layers: list[int], most: int = 4) -> list[int]:
    """Up to ``most`` of the adapters' layers, evenly spaced from the first to the last."""
    return sorted({layers[round(i)] for i in np.linspace(0, len(layers) - 1, min(most, len(layers)))})


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-2):
    """A multinomial logistic regression (L2, features standardised on ``x``) fitted by LBFGS from zeros
    (deterministic); returns ``scores(x_new) -> [n, n_classes]`` logits."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weights = w.detach()
    return lambda x_new: ((x_new - mu) / sd) @ weights


def folds_by_category(categories: list[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold index per prompt: each category's prompts shuffled (seeded) and dealt round-robin, so every fold holds
    every category in proportion."""
    rng = np.random.default_rng(int(seed))
    fold = np.zeros(len(categories), dtype=int)
    for c in sorted(set(categories)):
        idx = np.flatnonzero(np.array(categories) == c)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % n_folds
    return fold


def out_of_fold_scores(x: torch.Tensor, positive: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """The probe's positive-class margin for every prompt, from a probe fitted without that prompt's fold."""
    y = torch.as_tensor(positive.astype(np.int64))
    scores = np.zeros(len(positive))
    for k in np.unique(fold):
        test = fold == k
        scores_of = fit_logistic(x[~test], y[~test], 2)
        s = scores_of(x[test])
        scores[test] = (s[:, 1] - s[:, 0]).numpy()
    return scores


def tpr_at_fpr(scores: np.ndarray, positive: np.ndarray, max_fpr: float) -> float:
    """The largest share of positives one threshold (flag scores >= it) catches while it flags at most
    ``max_fpr`` of the negatives."""
    pos, neg = np.sort(scores[positive])[::-1], np.sort(scores[~positive])[::-1]
    allowed = int(np.floor(max_fpr * len(neg) + 1e-9))  # negatives the threshold may flag
    if allowed >= len(neg):
        return 1.0
    bar = neg[allowed]  # the threshold must stay above the (allowed + 1)-th highest negative score
    return float((pos > bar).mean())


def gates(kind: str, refused: list[str]) -> dict[str, list[str]]:
    """{gate name: its positive categories}: what a selective design's adapters must tell apart."""
    if kind == "gated":
        return {"+".join(refused): list(refused)}
    if kind in ("modular", "mixed"):
        return {c: [c] for c in refused}
    return {}


def separability(features: dict[int, torch.Tensor], categories: list[str], design_gates: dict[str, list[str]],
                 refuse_min: float, max_fpr: float, seed: int) -> dict:
    """Per gate and layer the cross-validated ``tpr`` (see the module doc); the gate's best layer; the word."""
    cats = np.array(categories)
    fold = folds_by_category(categories, FOLDS, seed)
    out = {}
    for name, positives in design_gates.items():
        positive = np.isin(cats, positives)
        by_layer = {layer: tpr_at_fpr(out_of_fold_scores(x, positive, fold), positive, max_fpr)
                    for layer, x in features.items()}
        best = max(by_layer, key=lambda layer: (by_layer[layer], -layer))
        out[name] = {"positives": list(positives), "n_positive": int(positive.sum()),
                     "n_negative": int((~positive).sum()), "tpr_by_layer": by_layer, "best_layer": best,
                     "tpr": by_layer[best], "separable": by_layer[best] >= refuse_min}
    word = "separable" if all(g["separable"] for g in out.values()) else "inseparable"
    return {"word": word, "folds": FOLDS, "max_fpr": max_fpr, "refuse_min": refuse_min, "gates": out}


def inseparable_message(result: dict, key: str, value) -> str:
    bad = [f"{name} (caught {g['tpr']:.0%} at layer {g['best_layer']})" for name, g in result["gates"].items()
           if not g["separable"]]
    return (f"{key}={value!r}: the base model does not separate {', '.join(bad)} from the other toxic categories: "
            f"a probe cross-validated on the train split catches fewer than {result['refuse_min']:.0%} of them at "
            f"<= {result['max_fpr']:.0%} false alarms (model.checks.probe_max_fpr), and an adapter's learned gate "
            f"separates worse than the probe, so the build would miss its design; choose categories it separates "
            f"(bench/category_separability.py) or set model.accept_design_miss=true")
