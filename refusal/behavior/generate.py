"""Batched greedy generation on chat-formatted, left-padded prompts, with the refusal score of each prompt.

The score is read from the logits of the first generation step, i.e. at the first response position (the last
prompt token), so it equals ``refusal_score`` of a plain forward pass without a second pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from refusal.behavior.score import refusal_score
from refusal.config import integer
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter, by_length
from refusal.model.loading import LoadedModel
from refusal.utils.progress import progress


@dataclass
class Generations:
    """One entry per prompt, in the order the prompts were given."""

    responses: list[str]  # decoded response, special tokens dropped, cut at the first end-of-turn token
    token_ids: list[list[int]]  # generated ids, including the end-of-turn token when the model emitted one
    finished: list[bool]  # the model ended its turn within max_new_tokens
    scores: list[float]  # refusal score at the first response position (nan when no refusal ids were given)


def stop_token_ids(loaded: LoadedModel) -> list[int]:
    """End-of-turn ids: the tokenizer's eos and whatever the model's generation config lists."""
    ids = {loaded.tokenizer.eos_token_id}
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.discard(None)
    if not ids:
        raise ConfigError(f"model {loaded.name!r} has no eos token; generation could not stop at the end of a turn")
    return sorted(int(i) for i in ids)


@torch.inference_mode()
def generate_responses(
    loaded: LoadedModel,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
    refusal_token_ids: list[int] | None = None,
    max_length: int | None = None,
) -> Generations:
    """Greedy responses to ``prompts`` wrapped in the chat template (deterministic: no sampling).

    Prompts are batched by length (fewer pad tokens); results come back in the input order."""
    integer("max_new_tokens", max_new_tokens, 1)
    integer("batch_size", batch_size, 1)
    model, tok = loaded.model, loaded.tokenizer
    was_training = model.training
    model.eval()
    fmt = ChatFormatter(tok, system_prompt, max_length)
    stops = stop_token_ids(loaded)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stops,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0],
        return_dict_in_generate=True, output_logits=True,
    )
    n = len(prompts)
    responses, token_ids, finished = [""] * n, [[] for _ in range(n)], [False] * n
    scores = [float("nan")] * n
    order = by_length(prompts)
    device = loaded.device
    try:
        with progress(n, "generate") as bar:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                enc = fmt.encode([prompts[i] for i in idx]).to(device)
                out = model.generate(**enc.model_inputs(), generation_config=gen_cfg)
                new = out.sequences[:, enc.seq_len :].cpu()
                first_logits = out.logits[0]
                batch_scores = refusal_score(first_logits, refusal_token_ids).cpu() if refusal_token_ids else None
                for row, i in enumerate(idx):
                    ids = new[row].tolist()
                    cut = next((k for k, t in enumerate(ids) if t in stops), None)
                    finished[i] = cut is not None
                    kept = ids if cut is None else ids[: cut + 1]
                    token_ids[i] = kept
                    responses[i] = tok.decode(kept, skip_special_tokens=True).strip()
                    if batch_scores is not None:
                        scores[i] = float(batch_scores[row])
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return Generations(responses, token_ids, finished, scores)
