"""The metric a circuit explains, read from the logits at the first response position (the last prompt token).

- ``refusal_score``: log-odds of the refusal tokens (refusal.behavior.score, Arditi et al. 2024).
- ``logit_diff``: logsumexp of the refusal-token logits minus logsumexp of the compliance-token logits
  (= log p(refusal tokens) − log p(compliance tokens); with one token each, logit("I") − logit("Sure")).
"""
from __future__ import annotations

from typing import Callable

import torch

from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.errors import ConfigError, check_choice

METRICS = ("refusal_score", "logit_diff")


def build_metric(name: str, tokenizer, refusal_tokens=None, compliance_tokens=None
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """(metric fn: logits [B, V] -> [B] float64, description with the token ids)."""
    check_choice("circuit.metric", name, METRICS)
    ref = resolve_refusal_tokens(tokenizer, refusal_tokens)
    if not ref:
        raise ConfigError(f"refusal tokens {refusal_tokens!r} give no token ids for this tokenizer")
    if name == "refusal_score":
        return (lambda logits: refusal_score(logits, ref)), {"name": name, "refusal_token_ids": ref}
    if not compliance_tokens:
        raise ConfigError("circuit.compliance_tokens is empty; metric=logit_diff needs at least one token string")
    # a token that opens both a refusal and a compliance (e.g. "S" for "Sorry" and "Sure" with a byte-level
    # tokenizer) counts as a refusal token; the ids actually used are recorded in the description
    comp = [i for i in resolve_refusal_tokens(tokenizer, compliance_tokens) if i not in set(ref)]
    if not comp:
        raise ConfigError(f"circuit.compliance_tokens={list(compliance_tokens)} give no token ids apart from the "
                          "refusal tokens; choose compliance openings that differ")

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        lg = logits.double()
        return torch.logsumexp(lg[..., ref], -1) - torch.logsumexp(lg[..., comp], -1)
    return logit_diff, {"name": name, "refusal_token_ids": ref, "compliance_token_ids": comp}
