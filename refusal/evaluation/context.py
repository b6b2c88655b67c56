"""What every evaluation stage measures with: the model, the chat formatter, the held-out prompts, the refusal
judge and score, and the bootstrap settings; plus the unintervened baseline, computed once and shared."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from refusal.behavior.baseline import write_responses
from refusal.behavior.generate import generate_responses
from refusal.behavior.judge import Judge
from refusal.behavior.rates import mean_interval, rate_interval, summarize
from refusal.data.records import PromptRecord, PromptSet
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter
from refusal.model.loading import LoadedModel
from refusal.utils.io import stable_hash


@dataclass(frozen=True)
class Bootstrap:
    n_resamples: int = 1000
    ci_level: float = 0.95
    ci_method: str = "percentile"


@dataclass
class EvalContext:
    loaded: LoadedModel
    formatter: ChatFormatter
    prompts: PromptSet  # the held-out evaluation split, every label
    judge: Judge
    refusal_ids: list[int]
    batch_size: int
    max_new_tokens: int
    boot: Bootstrap
    seed: int
    out_dir: Path
    max_length: int | None = None
    _generations: dict = field(default_factory=dict, repr=False)

    @property
    def model(self):
        return self.loaded.model

    def generate(self, records: list[PromptRecord], name: str | None = None) -> list[dict]:
        """Greedy responses, judged: one item per record (id, category, label, prompt, response, refused,
        refusal_score). With ``name``, also written to ``responses/<name>.jsonl``."""
        if not records:
            return []
        gen = generate_responses(self.loaded, [r.prompt for r in records], max_new_tokens=self.max_new_tokens,
                                 batch_size=self.batch_size, system_prompt=self.formatter.system_prompt,
                                 refusal_ids=self.refusal_ids, max_prompt_tokens=self.max_length)
        refused = self.judge.judge([r.prompt for r in records], gen.responses)
        if len(refused) != len(records):
            raise ConfigError(f"judge {type(self.judge).__name__} returned {len(refused)} verdicts for "
                              f"{len(records)} responses")
        items = [{"id": r.id, "category": r.category, "label": r.label, "split": r.split, "prompt": r.prompt,
                  "response": resp, "finished": fin, "refused": bool(v), "refusal_score": s}
                 for r, resp, fin, v, s in zip(records, gen.responses, gen.finished, refused, gen.scores)]
        if name:
            write_responses(self.out_dir / "responses" / f"{name}.jsonl", items)
        return items

    # ------------------------------------------------------------------------------------- baseline (shared)
    @cached_property
    def baseline_items(self) -> dict[str, dict]:
        """{prompt id: judged item} for every evaluation prompt, without any intervention."""
        items = self.generate(list(self.prompts), name="baseline")
        return {it["id"]: it for it in items}

    def summarize(self, items: list[dict]) -> list[dict]:
        b = self.boot
        return summarize(items, ci_level=b.ci_level, n_resamples=b.n_resamples, ci_method=b.ci_method, seed=self.seed)

    # ------------------------------------------------------------------------------------- intervals
    def rng(self, *cell) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), int(stable_hash(list(cell)), 16)])

    def mean_ci(self, values, *cell) -> tuple[float, float]:
        b = self.boot
        low, high, _ = mean_interval(values, b.ci_level, b.n_resamples, b.ci_method, self.rng("mean", *cell))
        return low, high

    def rate_ci(self, outcomes, *cell) -> tuple[float, float]:
        b = self.boot
        low, high, _ = rate_interval(outcomes, b.ci_level, b.n_resamples, b.ci_method, self.rng("rate", *cell))
        return low, high
