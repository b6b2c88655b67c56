"""What every evaluation stage measures with: the model, the chat formatter, the held-out prompts, the refusal
judge and score, and the bootstrap settings; plus the unintervened baseline, computed once and shared."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from refusal.behavior.baseline import write_responses
from refusal.behavior.judge import Judge
from refusal.behavior.measure import Generation, judged_responses
from refusal.behavior.rates import Bootstrap, cell_rng, mean_interval, rate_interval, summarize
from refusal.data.records import PromptRecord, PromptSet
from refusal.model.chat import ChatFormatter
from refusal.model.loading import LoadedModel


@dataclass
class EvalContext:
    loaded: LoadedModel
    formatter: ChatFormatter
    prompts: PromptSet  # the held-out evaluation split, every label
    judge: Judge
    refusal_token_ids: list[int]
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
        gen = Generation(self.max_new_tokens, self.batch_size, self.formatter.system_prompt, self.refusal_token_ids,
                         self.max_length)
        items = judged_responses(self.loaded, records, self.judge, gen)
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
        return summarize(items, self.boot, self.seed)

    def condition_rows(self, items: list[dict], condition: str) -> list[dict]:
        """``summarize``'s rate rows of ``items``, each tagged with ``condition`` (none for no items)."""
        return [{"condition": condition, **row} for row in self.summarize(items)] if items else []

    # ------------------------------------------------------------------------------------- intervals
    def mean_ci(self, values, *cell) -> tuple[float, float]:
        low, high, _ = mean_interval(values, self.boot, cell_rng(self.seed, "mean", *cell))
        return low, high

    def rate_ci(self, outcomes, *cell) -> tuple[float, float]:
        low, high, _ = rate_interval(outcomes, self.boot, cell_rng(self.seed, "rate", *cell))
        return low, high
