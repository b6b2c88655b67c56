"""Linear probes (stage ``probes``): at which depth the residual stream linearly separates toxic from safe prompts,
and each toxic category from the other toxic ones.

Features: the residual stream (numbered as in refusal/evaluation/residual.py: 0..n_layers) of each ``layers`` stream
at the last prompt token (``position: last``, the first response position) or averaged over the post-instruction
tokens (``post_instruction``). Tasks: ``toxic_vs_safe`` (toxic 1, safe 0) and, with two or more toxic categories,
``category:<c>`` (c 1, the other toxic categories 0). Per task and stream: an L2-regularised logistic regression on
the standardised features (z-scored with the training prompts' mean and std) of ``max_prompts`` per label of the
``split`` (seeded), fitted by L-BFGS in float64 from zero (the loss is strictly convex: one optimum, deterministic);
its accuracy on the evaluation split with a bootstrap CI. Control task (Hewitt and Liang 2019): the same probe
trained and scored on control labels, the task's labels permuted among the prompts (each prompt keeps one random
label, the label counts are those of the task), ``control_draws`` draws averaged; selectivity = accuracy − control
accuracy. A probe that reads a real feature is accurate and selective; one that fits noise has selectivity ≈ 0.
Saved: ``probes.safetensors``, per task the unit probe directions in residual-stream units [len(layers), d] (pointing
to the positive class; usable as refusal directions) and ``layers``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from safetensors.torch import save_file
from torch import Tensor

from refusal.config import choice, integer, number, plain
from refusal.data.records import SPLITS
from refusal.errors import ConfigError
from refusal.evaluation.lens_plots import probes_plot
from refusal.evaluation.residual import residual_batches
from refusal.model.hooks import layer_spec, parse_layers
from refusal.utils.io import atomic_path, stable_hash

log = logging.getLogger(__name__)
POSITIONS = ("last", "post_instruction")
FILE = "probes.safetensors"


@dataclass
class ProbesSchema:
    """The config schema of ``evaluation.probes`` (values: conf/evaluation/*.yaml)."""
    layers: Any = MISSING  # layer spec: int, list, "a-b", all, mid
    position: str = MISSING
    split: str = MISSING
    max_prompts: int = MISSING
    l2: float = MISSING
    control_draws: int = MISSING


@dataclass(frozen=True)
class ProbeSettings:
    """``evaluation.probes``."""
    layers: object  # layer spec over the streams 0..n_layers
    position: str  # last | post_instruction (mean over the post-instruction tokens)
    split: str  # the training prompts (not the evaluation split)
    max_prompts: int  # per label
    l2: float  # > 0
    control_draws: int

    @classmethod
    def from_config(cls, node, key: str = "evaluation.probes") -> "ProbeSettings":
        return cls(layer_spec(f"{key}.layers", plain(node.layers)),
                   choice(f"{key}.position", node.position, POSITIONS),
                   choice(f"{key}.split", node.split, SPLITS),
                   integer(f"{key}.max_prompts", node.max_prompts, 1), number(f"{key}.l2", node.l2, 0, open_lo=True),
                   integer(f"{key}.control_draws", node.control_draws, 1))


def fit_logistic(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """K independent probes on ``x`` [K, n, d] and labels ``y`` [n] (0/1): (w [K, d], b [K]) minimising each one's
    mean logistic loss + l2/2 |w|², jointly by L-BFGS (the problems are separable: each reaches its own optimum)."""
    x, y = x.double(), y.double().expand(x.shape[0], -1)
    params = torch.zeros(x.shape[0], x.shape[2] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=200, tolerance_grad=1e-7, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("knd,kd->kn", x, params[:, :-1]) + params[:, -1:]
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1).sum()
                + 0.5 * l2 * params[:, :-1].pow(2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return params.detach()[:, :-1], params.detach()[:, -1]


def control_labels(y: Tensor, seed: int, *cell) -> Tensor:
    """A control task's labels: ``y`` permuted among the prompts (seeded per ``cell``): the same label counts."""
    rng = np.random.default_rng([seed, int(stable_hash(list(map(str, cell))), 16)])
    return y[torch.as_tensor(rng.permutation(len(y)))]


def probe_task(x_train: Tensor, y_train: Tensor, x_eval: Tensor, y_eval: Tensor, l2: float, draws: int, seed: int,
               task: str = "task") -> dict:
    """A task's probes on features [K, n, d] per stream and bool labels: {correct [K, m] bool, accuracy [K],
    control [K], selectivity [K], majority, directions [K, d] unit (residual units), predict(x [K, m, d]) -> bool}."""
    mean = x_train.double().mean(1, keepdim=True)
    std = x_train.double().std(1, keepdim=True)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))

    def z(x):
        return (x.double() - mean) / std

    zt, ze = z(x_train), z(x_eval)
    w, b = fit_logistic(zt, y_train, l2)

    def predict(x):
        return (torch.einsum("kmd,kd->km", z(x), w) + b[:, None]) > 0

    correct = (torch.einsum("kmd,kd->km", ze, w) + b[:, None] > 0) == y_eval.bool()
    control = torch.zeros(x_train.shape[0], dtype=torch.float64)
    for k in range(draws):
        yc_train = control_labels(y_train, seed, task, "train", k)
        yc_eval = control_labels(y_eval, seed, task, "eval", k)
        wc, bc = fit_logistic(zt, yc_train, l2)
        control += ((torch.einsum("kmd,kd->km", ze, wc) + bc[:, None] > 0) == yc_eval.bool()).double().mean(1) / draws
    accuracy = correct.double().mean(1)
    direction = w / std[:, 0]
    positive = float(y_eval.double().mean()) if len(y_eval) else float("nan")
    return {"correct": correct, "accuracy": accuracy, "control": control, "selectivity": accuracy - control,
            "majority": max(positive, 1 - positive), "directions": direction / direction.norm(dim=1, keepdim=True),
            "predict": predict}


def features(ctx, prompts: list[str], layers: list[int], position: str) -> Tensor:
    """[len(layers), n, d] float64 residual streams of ``prompts`` at ``position``."""
    n_post, rows = ctx.formatter.n_post_instruction, []
    for _, acts in residual_batches(ctx, prompts):
        picked = acts[:, layers, -1] if position == "last" else acts[:, layers, -n_post:].double().mean(2)
        rows.append(picked.double().cpu())
    return torch.cat(rows).transpose(0, 1) if rows else torch.zeros(len(layers), 0, ctx.loaded.d_model)


def _per_label(records, n: int, seed: int) -> list:
    out = []
    for label in ("toxic", "safe"):
        pool = list(records.filter(label=label))
        if len(pool) > n:
            rng = np.random.default_rng([seed, int(stable_hash(label), 16)])
            keep = np.sort(rng.choice(len(pool), n, replace=False))
            pool = [pool[i] for i in keep]
        out += pool
    return out


def _tasks(train: list, evals: list) -> dict[str, tuple]:
    """{task: (train indices, train labels, eval indices, eval labels)}."""
    def pick(records, keep, positive):
        idx = [i for i, r in enumerate(records) if keep(r)]
        return idx, torch.tensor([positive(records[i]) for i in idx])

    tasks = {"toxic_vs_safe": (*pick(train, lambda r: r.label in ("toxic", "safe"), lambda r: r.label == "toxic"),
                               *pick(evals, lambda r: r.label in ("toxic", "safe"), lambda r: r.label == "toxic"))}
    cats = sorted({r.category for r in train if r.label == "toxic"})
    for c in cats if len(cats) > 1 else []:
        def is_c(r, c=c):
            return r.category == c
        tasks[f"category:{c}"] = (*pick(train, lambda r: r.label == "toxic", is_c),
                                  *pick(evals, lambda r: r.label == "toxic", is_c))
    return tasks


def run_probes(ctx, prompts, s: ProbeSettings, run_dir: Path, split: str) -> dict:
    """The stage: probes trained on ``prompts``' ``s.split`` (``prompts``: the full prompt set), scored on
    ``ctx.prompts`` (the evaluation split ``split``); results, probes.safetensors and probes.png in ``run_dir``."""
    if s.split == split:
        raise ConfigError(f"evaluation.probes.split={split!r} is the evaluation split; choose a held-out one")
    run_dir, layers = Path(run_dir), parse_layers(s.layers, ctx.loaded.n_layers + 1)
    train, evals = _per_label(prompts.filter(split=s.split), s.max_prompts, ctx.seed), list(ctx.prompts)
    if not any(r.label == "toxic" for r in train) or not any(r.label == "safe" for r in train):
        raise ConfigError(f"evaluation.probes.split={s.split!r} needs toxic and safe prompts to train the probes on")
    log.info("probes: %d %s prompts to train, %d %s prompts to score, streams %s", len(train), s.split, len(evals),
             split, layers)
    x_train = features(ctx, [r.prompt for r in train], layers, s.position)
    x_eval = features(ctx, [r.prompt for r in evals], layers, s.position)
    rows, directions, hard = [], {}, None
    for task, (ti, ty, ei, ey) in _tasks(train, evals).items():
        out = probe_task(x_train[:, ti], ty, x_eval[:, ei], ey, s.l2, s.control_draws, ctx.seed, task)
        cis = [ctx.rate_ci(out["correct"][k].tolist(), "probes", task, str(layer)) for k, layer in enumerate(layers)]
        sel = out["selectivity"].tolist()
        rows.append({"task": task, "n_train": len(ti), "n_eval": len(ei), "majority": out["majority"],
                     "accuracy": out["accuracy"].tolist(), "ci_low": [c[0] for c in cis],
                     "ci_high": [c[1] for c in cis],
                     "control": out["control"].tolist(), "selectivity": sel, "best_layer": layers[int(np.argmax(sel))]})
        directions[task] = out["directions"].float().contiguous()
        hard_idx = [i for i, r in enumerate(evals) if r.label == "hard"]
        if task == "toxic_vs_safe" and hard_idx:
            hard = out["predict"](x_eval[:, hard_idx]).double().mean(1).tolist()
    path = run_dir / FILE
    with atomic_path(path) as tmp:
        save_file({**directions, "layers": torch.tensor(layers, dtype=torch.int64)}, str(tmp),
                  metadata={"weights_hash": ctx.loaded.weights_hash, "position": s.position,
                            "tasks": json.dumps(list(directions))})
    result = {"split": split, "train_split": s.split, "layers": layers, "position": s.position, "tasks": rows,
              "hard_predicted_toxic": hard, "directions": str(path), "settings": asdict(s)}
    result["plot"] = str(probes_plot(result, run_dir / "probes.png"))
    return result
