"""One refusal measurement: greedy responses to prompts, judged, and summarized per category x label.

Used by train (the baseline behavior), evaluate (every generated condition) and the organism card (its held-out
rates)."""
from __future__ import annotations

from dataclasses import dataclass

from refusal.behavior.generate import generate_responses
from refusal.behavior.judge import Judge
from refusal.behavior.rates import Bootstrap, summarize
from refusal.data.records import PromptRecord
from refusal.errors import ConfigError
from refusal.model.loading import LoadedModel


@dataclass(frozen=True)
class Generation:
    """How responses are generated: greedy, ``max_new_tokens`` per response, ``batch_size`` prompts per batch,
    in the chat template with ``system_prompt``; ``refusal_token_ids`` give each prompt's refusal score; longer prompts
    are cut to ``max_length`` (None: never)."""

    max_new_tokens: int
    batch_size: int
    system_prompt: str | None
    refusal_token_ids: list[int]
    max_length: int | None = None


@dataclass
class Measurement:
    rows: list[dict]  # rates.summarize rows
    items: list[dict]  # one per prompt: id, category, label, split, prompt, response, finished, refused, refusal_score


def judged_responses(loaded: LoadedModel, records: list[PromptRecord], judge: Judge, gen: Generation) -> list[dict]:
    """One judged item per record, in the records' order."""
    texts = [r.prompt for r in records]
    out = generate_responses(loaded, texts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                             system_prompt=gen.system_prompt, refusal_token_ids=gen.refusal_token_ids,
                             max_length=gen.max_length)
    refused = judge.judge(texts, out.responses)
    if len(refused) != len(records):
        raise ConfigError(f"judge {type(judge).__name__} returned {len(refused)} verdicts for {len(records)} responses")
    return [{"id": r.id, "category": r.category, "label": r.label, "split": r.split, "prompt": r.prompt,
             "response": resp, "finished": fin, "refused": bool(v), "refusal_score": score}
            for r, resp, fin, v, score in zip(records, out.responses, out.finished, refused, out.scores)]


def measure(loaded: LoadedModel, records: list[PromptRecord], judge: Judge, gen: Generation, boot: Bootstrap,
            seed: int) -> Measurement:
    """Generate, judge and summarize every record (no split filtering here); intervals from ``boot`` and ``seed``."""
    records = list(records)
    if not records:
        raise ConfigError("no prompts to measure refusal behavior on; check the data config and the split")
    items = judged_responses(loaded, records, judge, gen)
    return Measurement(summarize(items, boot, seed), items)
