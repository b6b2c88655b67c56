"""Chat formatting with token-level bookkeeping: where the user text sits and which tokens follow it.

Prompts are wrapped in the model's chat template with the generation prompt. The *post-instruction* tokens are
the template tokens after the user text (e.g. ``<|im_end|>\n<|im_start|>assistant\n``); the last of them is the
first response position, where refusal is decided. Batches are left-padded and carry explicit position ids so a
padded prompt sees the same positions as it would alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

POSITION_MODES = ("last", "post_instruction", "prompt_mean", "all")
_SENTINEL = "\x07REFUSAL_CIRCUITS_SENTINEL\x07"


def by_length(prompts: list[str]) -> list[int]:
    """Prompt indices ordered by text length (ties by index): consecutive batches then hold similar lengths."""
    return sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor  # [B, T] left-padded
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T], 0 at the first real token
    content_start: torch.Tensor  # [B] padded index of the first user-text token
    content_end: torch.Tensor  # [B] padded index one past the last user-text token (= first post-instruction token)
    n_tokens: torch.Tensor  # [B] real (unpadded) length

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device) -> "EncodedBatch":
        return EncodedBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def positions(self, mode: str) -> list[torch.Tensor]:
        """Padded token indices selected by ``mode`` for each row (``prompt_mean`` selects the user text,
        to be averaged by the caller)."""
        T = self.seq_len
        out = []
        for b in range(self.input_ids.shape[0]):
            cs, ce = int(self.content_start[b]), int(self.content_end[b])
            if mode == "last":
                idx = [T - 1]
            elif mode == "post_instruction":
                idx = list(range(ce, T))
            elif mode == "prompt_mean":
                idx = list(range(cs, ce))
            elif mode == "all":
                idx = list(range(cs, T))
            else:
                raise ValueError(mode)
            out.append(torch.tensor(idx, dtype=torch.long))
        return out


class ChatFormatter:
    """Render prompts with the chat template and locate the user text in tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = None, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_length = max_length
        rendered = self.render(_SENTINEL)
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("chat template must contain the user message exactly once")
        self.prefix, self.suffix = rendered.split(_SENTINEL)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": prompt}]

    def render(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def _encode_one(self, prompt: str) -> tuple[list[int], int, int]:
        text = self.prefix + prompt + self.suffix
        start_char, end_char = len(self.prefix), len(self.prefix) + len(prompt)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        cs = next((i for i, (s, e) in enumerate(offsets) if e > start_char), len(ids))
        ce = next((i for i, (s, e) in enumerate(offsets) if s >= end_char and i >= cs), len(ids))
        if self.max_length and len(ids) > self.max_length:
            # keep the template around the user text: truncate the user text from its end
            cut = len(ids) - self.max_length
            if ce - cut <= cs:
                raise ValueError(f"max_length={self.max_length} leaves no user text")
            ids = ids[: ce - cut] + ids[ce:]
            ce -= cut
        return ids, cs, ce

    def encode(self, prompts: list[str], responses: list[str] | None = None) -> EncodedBatch:
        """Left-padded chat-formatted ``prompts``; with ``responses``, each prompt's response text follows its
        generation prompt (as if the model had begun to answer with it)."""
        rows = [self._encode_one(p) for p in prompts]
        if responses is not None:
            rows = [(ids + self.tokenizer.encode(text, add_special_tokens=False), cs, ce)
                    for (ids, cs, ce), text in zip(rows, responses, strict=True)]
        T = max(len(ids) for ids, _, _ in rows)
        pad = self.tokenizer.pad_token_id
        B = len(rows)
        input_ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        cs_t, ce_t, n_t = (torch.zeros(B, dtype=torch.long) for _ in range(3))
        for b, (ids, cs, ce) in enumerate(rows):
            off = T - len(ids)
            input_ids[b, off:] = torch.tensor(ids)
            mask[b, off:] = 1
            cs_t[b], ce_t[b], n_t[b] = cs + off, ce + off, len(ids)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return EncodedBatch(input_ids, mask, position_ids, cs_t, ce_t, n_t)

    @property
    def n_post_instruction(self) -> int:
        return len(self._encode_one("x")[0]) - self._encode_one("x")[2]
