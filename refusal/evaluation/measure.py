"""Forward-only measurements on chat-formatted prompts: logits at the first response position (the last prompt
token, left padding handled by the formatter), a metric of them, and the KL divergence between two runs."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refusal.models.chat import ChatFormatter


@torch.inference_mode()
def last_logits(model: nn.Module, formatter: ChatFormatter, prompts: list[str], batch_size: int) -> Tensor:
    """[n, vocab] float32 logits at the last prompt token of each prompt (run inside an ``intervene`` block to
    measure an intervention)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = formatter.encode(prompts[start:start + batch_size]).to(device)
        logits = model(**enc.model_inputs(), use_cache=False, logits_to_keep=1).logits[:, -1]
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def metric_values(model: nn.Module, formatter: ChatFormatter, prompts: list[str], metric: Callable[[Tensor], Tensor],
                  batch_size: int) -> Tensor:
    """[n] float64 metric (e.g. the refusal score) per prompt."""
    if not prompts:
        return torch.empty(0, dtype=torch.float64)
    return metric(last_logits(model, formatter, prompts, batch_size)).double()


def kl_per_prompt(base_logits: Tensor, new_logits: Tensor) -> Tensor:
    """[n] KL(p_base ‖ p_new) of the next-token distributions, in nats."""
    log_p = F.log_softmax(base_logits.double(), -1)
    log_q = F.log_softmax(new_logits.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
