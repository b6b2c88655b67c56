"""What the model does: greedy responses on one split, judged, summarized per category x label.

``measure_baseline(loaded, prompts, cfg.behavior, out_dir, loggers)`` writes ``out_dir/baseline.json`` (rates,
scores and CIs per category x label; hard = over-refusal) and ``out_dir/responses.jsonl`` (one line per prompt),
and logs the rows as the W&B table ``behavior/baseline``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from refusal.behavior.generate import generate_responses
from refusal.behavior.judge import Judge, build_judge
from refusal.behavior.rates import check_ci_options, rates_by_label, summarize
from refusal.behavior.score import refusal_token_ids
from refusal.data.records import SPLITS, PromptSet
from refusal.errors import ConfigError, check_choice
from refusal.model.loading import LoadedModel
from refusal.logger.loggers import log_table
from refusal.utils.io import atomic_path, write_json

log = logging.getLogger(__name__)
BEHAVIOR_KEYS = ("judge", "split", "max_new_tokens", "batch_size", "n_resamples", "ci_level", "ci_method", "seed",
                 "system_prompt", "refusal_tokens")


@dataclass
class BehaviorResult:
    rows: list[dict]  # rates.summarize rows
    items: list[dict]  # one per prompt: id, category, label, split, prompt, response, finished, refused, refusal_score


def measure_behavior(loaded: LoadedModel, prompts: PromptSet, judge: Judge, *, max_new_tokens: int = 64,
                     batch_size: int = 16, system_prompt: str | None = None, refusal_ids: list[int] | None = None,
                     n_resamples: int = 1000, ci_level: float = 0.95, ci_method: str = "percentile",
                     seed: int = 0) -> BehaviorResult:
    """Generate, judge and summarize every prompt of ``prompts`` (no split filtering here)."""
    check_ci_options(ci_level, n_resamples, ci_method)
    records = list(prompts)
    if not records:
        raise ConfigError("no prompts to measure behavior on; check data and behavior.split")
    texts = [r.prompt for r in records]
    gen = generate_responses(loaded, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             system_prompt=system_prompt, refusal_ids=refusal_ids)
    refused = judge.judge(texts, gen.responses)
    if len(refused) != len(records):
        raise ConfigError(f"judge {type(judge).__name__} returned {len(refused)} verdicts for {len(records)} responses")
    items = [
        {"id": r.id, "category": r.category, "label": r.label, "split": r.split, "prompt": r.prompt,
         "response": resp, "finished": fin, "refused": bool(v), "refusal_score": score}
        for r, resp, fin, v, score in zip(records, gen.responses, gen.finished, refused, gen.scores)
    ]
    rows = summarize(items, ci_level=ci_level, n_resamples=n_resamples, ci_method=ci_method, seed=seed)
    return BehaviorResult(rows, items)


def check_behavior_cfg(cfg) -> None:
    keys = list(cfg.keys())
    for k in keys:
        if k not in BEHAVIOR_KEYS:
            raise ConfigError(f"behavior.{k} is not a known key; known keys are {list(BEHAVIOR_KEYS)}")
    for k in BEHAVIOR_KEYS:
        if k not in keys:
            raise ConfigError(f"behavior.{k} is missing; the behavior config needs {list(BEHAVIOR_KEYS)}")
    check_choice("behavior.split", cfg["split"], SPLITS)


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def write_responses(path: str | Path, items: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n")


def measure_baseline(loaded: LoadedModel, prompts: PromptSet, behavior_cfg, out_dir: str | Path,
                     loggers=None, extra: dict | None = None) -> dict:
    """Refusal behavior of ``loaded`` on the ``behavior.split`` prompts; writes baseline.json (plus the ``extra``
    entries) and responses.jsonl under ``out_dir`` and returns the baseline.json content."""
    check_behavior_cfg(behavior_cfg)
    cfg = behavior_cfg
    subset = prompts.filter(split=cfg.split)
    judge = build_judge(cfg.judge)
    refusal_ids = refusal_token_ids(loaded.tokenizer, _plain(cfg.refusal_tokens))
    log.info("behavior: %d %s prompts, greedy %d new tokens, judge %s", len(subset), cfg.split, cfg.max_new_tokens,
             type(judge).__name__)
    result = measure_behavior(loaded, subset, judge, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                              system_prompt=cfg.system_prompt, refusal_ids=refusal_ids, n_resamples=cfg.n_resamples,
                              ci_level=cfg.ci_level, ci_method=cfg.ci_method, seed=cfg.seed)
    by_label = rates_by_label(result.rows)
    summary = {
        "model": loaded.name,
        "weights_hash": loaded.weights_hash,
        "split": cfg.split,
        "prompts_hash": subset.content_hash(),
        "n_prompts": len(subset),
        "judge": _plain(cfg.judge),
        "max_new_tokens": cfg.max_new_tokens,
        "refusal_token_ids": refusal_ids,
        "ci": {"level": cfg.ci_level, "n_resamples": cfg.n_resamples, "method": cfg.ci_method, "seed": cfg.seed},
        "refusal_rate": by_label,
        "over_refusal_rate": by_label.get("hard"),
        "rows": result.rows,
        **(extra or {}),
    }
    out_dir = Path(out_dir)
    write_responses(out_dir / "responses.jsonl", result.items)
    write_json(out_dir / "baseline.json", summary)
    loggers = loggers or []
    log_table(loggers, "behavior/baseline", result.rows)
    metrics = {f"behavior/{label}/refusal_rate": rate for label, rate in by_label.items()}
    for lg in loggers:
        lg.log_metrics(metrics)
    for label, rate in by_label.items():
        log.info("behavior: %s refusal rate %.3f", label, rate)
    return summary
