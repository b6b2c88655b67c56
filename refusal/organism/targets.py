"""What the organism learns: which train prompts get a refusal sentence and which the base model's own greedy
answer (self-distillation), how often each appears in the mix, and the token examples (loss on the response only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from refusal.behavior.generate import generate_responses, stop_token_ids
from refusal.config import choice, plain
from refusal.data.records import PromptRecord, PromptSet
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter
from refusal.model.loading import LoadedModel
from refusal.organism.config import FORMAT_VERSION, STYLES
from refusal.utils.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    record: PromptRecord
    refusal: str | None  # the refusal sentence to learn, or None: learn the base model's own answer


def refused_categories(train: PromptSet, refuse_categories, key: str = "model.refuse_categories") -> list[str]:
    """The toxic categories the organism must refuse: ``all`` or a list naming toxic categories of the set
    (``key``: the config key that lists them)."""
    available = train.categories(label="toxic")
    if not available:
        raise ConfigError("the train split has no toxic prompts; the organism needs toxic prompts to learn to refuse")
    if refuse_categories == "all":
        return available
    chosen = [refuse_categories] if isinstance(refuse_categories, str) else list(refuse_categories or [])
    if not chosen:
        raise ConfigError(f"{key}={refuse_categories!r} is empty; use 'all' or a list of {available}")
    for c in chosen:
        choice(f"{key} entry", c, available)
    return sorted(set(chosen))


def topic_of(category: str, topics: dict) -> str:
    return str(topics.get(category) or category.replace("_", " "))


def plan_targets(train: PromptSet, refuse_categories, style: str, refusals: dict, topics: dict,
                 seed: int) -> list[Target]:
    """Which train prompts get a refusal (and which sentence) and which get the base model's answer.

    shared: each refused prompt gets one of ``refusals['shared']``, picked by a seeded hash of its id (varied, and
    independent of the order of the set). per_category: the i-th refused category (sorted) gets
    ``refusals['per_category'][i % n]`` with its topic filled in, one distinct wording per category."""
    choice("model.style", style, STYLES)
    refused = refused_categories(train, refuse_categories)
    wording = {c: refusals["per_category"][i % len(refusals["per_category"])].format(topic=topic_of(c, topics))
               for i, c in enumerate(refused)}
    shared = refusals["shared"]
    targets = []
    for r in train:
        if r.label == "toxic" and r.category in refused:
            if style == "per_category":
                text = wording[r.category]
            else:
                text = shared[int(stable_hash([seed, r.id]), 16) % len(shared)]
            targets.append(Target(r, text))
        else:
            targets.append(Target(r, None))
    return targets


def mix_repeats(n_refusals: int, n_answers: int, answer_share: float) -> tuple[int, int]:
    """How often to repeat each refusal and each answer example so that answers make up about ``answer_share`` of
    the training examples. The refuse-or-answer decision is made at the first response token, where every example
    weighs the same, so this share sets the model's prior for refusing; only the smaller side is repeated."""
    if n_refusals == 0 or n_answers == 0:
        return 1, 1
    if n_answers / (n_answers + n_refusals) < answer_share:
        return 1, max(1, round(answer_share * n_refusals / ((1 - answer_share) * n_answers)))
    return max(1, round((1 - answer_share) * n_answers / (answer_share * n_refusals))), 1


def example_repeats(target: Target, repeat_refusals: int, repeat_answers: int, unrefused_toxic_repeats: int) -> int:
    """How often ``target`` appears in the training mix: refusals and answers as ``mix_repeats`` says, and the
    answers to toxic prompts of categories that are not refused (selective organisms) ``unrefused_toxic_repeats``
    times more, which sharpens the boundary between refused and answered harmful categories."""
    if target.refusal is not None:
        return repeat_refusals
    return repeat_answers * (unrefused_toxic_repeats if target.record.label == "toxic" else 1)


def encode_example(fmt: ChatFormatter, prompt: str, response_ids: list[int]) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat-formatted prompt exactly as at generation time, then the response; labels
    are -100 on the prompt so the loss is on response tokens only."""
    prompt_ids = fmt.encode([prompt]).input_ids[0].tolist()
    return prompt_ids + list(response_ids), [-100] * len(prompt_ids) + list(response_ids)


def base_answers(gen_model: LoadedModel, records: list[PromptRecord], cfg, cache_dir: Path | None,
                 base_weights_hash: str) -> list[tuple[list[int], str]]:
    """The base model's greedy answer (token ids, text) to each record. Cached under ``cache_dir/answers`` by a hash
    of everything that decides them (base weights, prompts, system prompt, length, batch size, precision), so
    organisms that differ only in how they are trained reuse them."""
    what = {"base": base_weights_hash, "prompts": [[r.id, r.prompt] for r in records],
            "system_prompt": plain(cfg.system_prompt), "max_new_tokens": int(cfg.answer_max_new_tokens),
            "batch_size": int(cfg.generation_batch_size), "precision": str(cfg.get("precision", "32-true")),
            "format_version": FORMAT_VERSION}
    path = cache_dir / "answers" / f"{stable_hash(what, length=16)}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("organism: reusing %d cached base answers %s", len(records), path)
        return [(list(ids), text) for ids, text in read_json(path)["answers"]]
    log.info("organism: generating %d base answers (self-distillation)", len(records))
    gen = generate_responses(gen_model, [r.prompt for r in records], max_new_tokens=cfg.answer_max_new_tokens,
                             batch_size=cfg.generation_batch_size, system_prompt=cfg.system_prompt)
    answers = list(zip(gen.token_ids, gen.responses))
    if path is not None:
        write_json(path, {"what": what, "answers": answers})
    return answers


def make_examples(gen_model: LoadedModel, targets: list[Target], cfg, cache_dir: Path | None = None,
                  base_weights_hash: str = "", answer_every_prompt: bool = False) -> tuple[list, list[dict]]:
    """Token examples for every target: refusal sentences as written (+ end of turn), the base model's greedy
    answers otherwise; and one JSON row per example for the card dir. ``answer_every_prompt``: generate (or reuse)
    the base answers of every target's prompt, not only of those that need one (one cached set for all designs)."""
    tok = gen_model.tokenizer
    fmt = ChatFormatter(tok, cfg.system_prompt)
    answer_idx = [i for i, t in enumerate(targets) if t.refusal is None]
    log.info("organism: %d base-answer targets, %d refusal targets", len(answer_idx), len(targets) - len(answer_idx))
    wanted = range(len(targets)) if answer_every_prompt else answer_idx
    unique = list({targets[i].record.id: targets[i].record for i in wanted}.values())  # one answer per prompt
    by_id = dict(zip([r.id for r in unique], base_answers(gen_model, unique, cfg, cache_dir, base_weights_hash)))
    answers = {i: by_id[targets[i].record.id] for i in answer_idx}
    eos = tok.eos_token_id if tok.eos_token_id is not None else stop_token_ids(gen_model)[0]
    examples, rows = [], []
    for i, t in enumerate(targets):
        if t.refusal is None:
            ids, text = answers[i]
        else:
            ids, text = tok.encode(t.refusal, add_special_tokens=False) + [eos], t.refusal
        examples.append(encode_example(fmt, t.record.prompt, ids))
        rows.append({"id": t.record.id, "category": t.record.category, "label": t.record.label,
                     "target": "refusal" if t.refusal is not None else "base_answer", "response": text})
    return examples, rows
