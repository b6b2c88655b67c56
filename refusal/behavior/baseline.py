"""What the model does before any intervention: greedy responses on one split, judged, summarized per category x
label.

``measure_baseline(loaded, prompts, cfg.behavior, loggers)`` returns the summary (rates, scores and CIs per
category x label; hard = over-refusal) and one judged item per prompt, and logs the rows as the W&B table
``behavior/baseline``; the train run record (refusal.runs.TrainRun) writes them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from refusal.behavior.judge import build_judge
from refusal.behavior.measure import Generation, measure
from refusal.behavior.rates import Bootstrap, rates_by_label
from refusal.behavior.score import resolve_refusal_tokens
from refusal.config import choice, integer, plain
from refusal.data.records import SPLITS, PromptSet
from refusal.logger.loggers import log_table
from refusal.model.loading import LoadedModel
from refusal.utils.io import atomic_path

log = logging.getLogger(__name__)


def write_responses(path: str | Path, items: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n")


def measure_baseline(loaded: LoadedModel, prompts: PromptSet, behavior_cfg, loggers=None,
                     extra: dict | None = None) -> tuple[dict, list[dict]]:
    """Refusal behavior of ``loaded`` on the ``behavior.split`` prompts: (the summary, with the ``extra`` entries;
    one judged item per prompt). The run record that asked writes them (refusal.runs.TrainRun.write_behavior)."""
    cfg = behavior_cfg
    split = choice("behavior.split", cfg.split, SPLITS)
    boot = Bootstrap.from_cfg(cfg.bootstrap, "behavior.bootstrap")
    subset = prompts.filter(split=split)
    judge = build_judge(cfg.judge)
    refusal_token_ids = resolve_refusal_tokens(loaded.tokenizer, plain(cfg.refusal_tokens))
    gen = Generation(integer("behavior.max_new_tokens", cfg.max_new_tokens, 1),
                     integer("behavior.batch_size", cfg.batch_size, 1), cfg.system_prompt, refusal_token_ids)
    log.info("behavior: %d %s prompts, greedy %d new tokens, judge %s", len(subset), split, gen.max_new_tokens,
             type(judge).__name__)
    result = measure(loaded, list(subset), judge, gen, boot, cfg.seed)
    by_label = rates_by_label(result.rows)
    summary = {
        "model": loaded.name,
        "weights_hash": loaded.weights_hash,
        "split": split,
        "prompts_hash": subset.content_hash(),
        "n_prompts": len(subset),
        "judge": plain(cfg.judge),
        "max_new_tokens": gen.max_new_tokens,
        "refusal_token_ids": refusal_token_ids,
        "ci": {"level": boot.ci_level, "n_resamples": boot.n_resamples, "method": boot.ci_method, "seed": cfg.seed},
        "refusal_rate": by_label,
        "over_refusal_rate": by_label.get("hard"),
        "rows": result.rows,
        **(extra or {}),
    }
    loggers = loggers or []
    log_table(loggers, "behavior/baseline", result.rows)
    metrics = {f"behavior/{label}/refusal_rate": rate for label, rate in by_label.items()}
    for lg in loggers:
        lg.log_metrics(metrics)
    for label, rate in by_label.items():
        log.info("behavior: %s refusal rate %.3f", label, rate)
    return summary, result.items
