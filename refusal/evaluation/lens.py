"""Logit lens and tuned lens (stage ``lens``): where in depth the refusal decision becomes readable.

Residual streams are numbered 0..n_layers: stream l enters decoder layer l (``blocks.{l}.hook_resid_pre``) and
stream n_layers leaves the last layer (``blocks.{n_layers-1}.hook_resid_post``). The logit lens reads a stream h
as the model reads its last one: logits = unembed(final_norm(h)); the tuned lens first applies the stream's affine
translator (refusal/evaluation/tuned_lens.py). From those logits, the refusal score (log-odds of the refusal tokens,
refusal/behavior/score.py) at each of the last ``positions`` prompt tokens (the post-instruction tokens; the last
one is the first response position, where the model's own refusal score is read), and the KL divergence
KL(final-layer next-token distribution ‖ lens distribution) there. On the evaluation split: the mean score per
layer and position per label (toxic, safe, hard) and per toxic category (``toxic/<category>``), bootstrap CIs at the
first response position, and each group's *emergence layer*: the first layer whose gap to the safe prompts' mean
score (first response position) reaches ``emergence_fraction`` of the final layer's gap.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor

from refusal.behavior.score import refusal_score
from refusal.config import number
from refusal.errors import ConfigError
from refusal.evaluation.lens_plots import lens_plot
from refusal.evaluation.tuned_lens import TunedLensSchema, TunedLensSettings, fit_tuned_lens
from refusal.evaluation.residual import check_len, kl_from, readout, residual_batches

log = logging.getLogger(__name__)
POSITIONS = ("last", "post_instruction")
LENSES = ("logit", "tuned")


@dataclass
class LensSchema:
    """The config schema of ``evaluation.lens`` (values: conf/evaluation/*.yaml)."""
    positions: Any = MISSING  # last | post_instruction | int
    emergence_fraction: float = MISSING
    tuned: TunedLensSchema = field(default_factory=TunedLensSchema)


@dataclass(frozen=True)
class LensSettings:
    """``evaluation.lens``."""
    positions: int | str  # last | post_instruction | an int >= 1: the last n prompt tokens read
    emergence_fraction: float  # share of the final toxic − safe gap that marks a group's emergence layer
    tuned: TunedLensSettings

    @classmethod
    def from_config(cls, node, key: str = "evaluation.lens") -> "LensSettings":
        pos = node.positions
        if not (pos in POSITIONS or (isinstance(pos, int) and not isinstance(pos, bool) and pos >= 1)):
            raise ConfigError(f"{key}.positions={pos!r} is not valid; choose one of {list(POSITIONS)} or an int >= 1")
        return cls(pos, number(f"{key}.emergence_fraction", node.emergence_fraction, 0, 1, open_lo=True, open_hi=True),
                   TunedLensSettings.from_config(node.tuned, f"{key}.tuned"))


def n_positions(positions, formatter) -> int:
    return 1 if positions == "last" else formatter.n_post_instruction if positions == "post_instruction" else positions


@torch.no_grad()
def lens_readouts(ctx, prompts: list[str], n_pos: int, tuned=None) -> dict[str, Tensor]:
    """{"<lens>": [n, n_layers + 1, n_pos] float64 refusal scores, "kl_<lens>": KL(final ‖ lens) likewise} for the
    logit lens and, with ``tuned`` (a TunedLens), the tuned lens."""
    lenses = {"logit": lambda layer, h: h, **({"tuned": tuned} if tuned is not None else {})}
    rows = {k: [] for name in lenses for k in (name, f"kl_{name}")}
    for enc, acts in residual_batches(ctx, prompts):
        tail = acts[:, :, -check_len(enc, n_pos):]
        target = F.log_softmax(readout(ctx.model, tail[:, -1]).double(), -1)
        for name, lens in lenses.items():
            per_layer = [readout(ctx.model, lens(layer, tail[:, layer])) for layer in range(tail.shape[1])]
            rows[name].append(torch.stack([refusal_score(lg, ctx.refusal_token_ids) for lg in per_layer], 1).cpu())
            rows[f"kl_{name}"].append(torch.stack([kl_from(target, lg) for lg in per_layer], 1).cpu())
    return {k: torch.cat(v) for k, v in rows.items()}


def groups_of(records) -> dict[str, list[int]]:
    """{group: indices into ``records``}: each label present, then ``toxic/<category>`` for each toxic category."""
    out = {lb: [i for i, r in enumerate(records) if r.label == lb] for lb in ("toxic", "safe", "hard")}
    out = {k: v for k, v in out.items() if v}
    for c in sorted({r.category for r in records if r.label == "toxic"}):
        out[f"toxic/{c}"] = [i for i, r in enumerate(records) if r.label == "toxic" and r.category == c]
    return out


def curves(ctx, scores: Tensor, groups: dict[str, list[int]], lens: str) -> dict[str, dict]:
    """{group: {n, mean [layer][position], last (mean at the first response position per layer), ci_low, ci_high}}."""
    out = {}
    for g, idx in groups.items():
        x = scores[idx].numpy()
        cis = [ctx.mean_ci(x[:, layer, -1], "lens", lens, g, str(layer)) for layer in range(x.shape[1])]
        out[g] = {"n": len(idx), "mean": x.mean(0).tolist(), "last": x[:, :, -1].mean(0).tolist(),
                  "ci_low": [c[0] for c in cis], "ci_high": [c[1] for c in cis]}
    return out


def emergence(curve: dict[str, dict], fraction: float) -> dict[str, int | None]:
    """{group (not safe): the first layer whose gap to safe's mean score reaches ``fraction`` of the final gap; None
    when the final gap is not positive}."""
    if "safe" not in curve:
        return {}
    safe = np.asarray(curve["safe"]["last"])
    out = {}
    for g, c in curve.items():
        if g == "safe":
            continue
        gap = np.asarray(c["last"]) - safe
        out[g] = int(np.argmax(gap >= fraction * gap[-1])) if gap[-1] > 0 else None
    return out


def run_lens(ctx, prompts, s: LensSettings, run_dir: Path, split: str) -> dict:
    """The stage: the tuned lens fitted (or reused) on ``prompts``' ``s.tuned.split`` (``prompts``: the full prompt
    set), both lenses read on ``ctx.prompts`` (the evaluation split ``split``); results and lens_curves.png."""
    run_dir = Path(run_dir)
    if s.tuned.enabled and s.tuned.split == split:
        raise ConfigError(f"evaluation.lens.tuned.split={split!r} is the evaluation split; choose a held-out one")
    tuned, training = fit_tuned_lens(ctx, prompts, s.tuned, run_dir) if s.tuned.enabled else (None, None)
    records = list(ctx.prompts)
    if not records:
        raise ConfigError(f"the {split} split has no prompts to read the lens on")
    n_pos = n_positions(s.positions, ctx.formatter)
    log.info("lens: reading %d %s prompts at %d positions", len(records), split, n_pos)
    read = lens_readouts(ctx, [r.prompt for r in records], n_pos, tuned)
    groups = groups_of(records)
    lenses = [k for k in LENSES if k in read]
    result = {"split": split, "layers": list(range(ctx.loaded.n_layers + 1)), "positions": list(range(-n_pos, 0)),
              "n_prompts": len(records), "lenses": lenses, "tuned_training": training,
              "curves": {k: curves(ctx, read[k], groups, k) for k in lenses},
              "kl": {k: read[f"kl_{k}"].mean((0, 2)).tolist() for k in lenses},
              "settings": {**asdict(s), "tuned": asdict(s.tuned)}}
    result["emergence"] = {k: emergence(result["curves"][k], s.emergence_fraction) for k in lenses}
    result["plot"] = str(lens_plot(result, run_dir / "lens_curves.png"))
    return result
