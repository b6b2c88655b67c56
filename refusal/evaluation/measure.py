"""Forward-only measurements on chat-formatted prompts: logits at the first response position (the last prompt
token, left padding handled by the formatter) and the KL divergence between two runs. Prompts are batched by
length (less padding) and the results come back in the prompts' order."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refusal.model.chat import ChatFormatter, by_length
from refusal.utils.progress import progress


def in_order(rows: Tensor, order: list[int]) -> Tensor:
    """``rows`` computed in ``order`` (rows[k] belongs to prompt order[k]), put back in the prompts' order."""
    out = torch.empty_like(rows)
    out[torch.as_tensor(order, dtype=torch.long)] = rows
    return out


@torch.inference_mode()
def last_logits(model: nn.Module, formatter: ChatFormatter, prompts: list[str], batch_size: int) -> Tensor:
    """[n, vocab] float32 logits at the last prompt token of each prompt (run inside an ``intervene`` block to
    measure an intervention)."""
    device = next(model.parameters()).device
    order = by_length(prompts)
    ordered = [prompts[i] for i in order]
    out = []
    with progress(len(ordered), "logits") as bar:
        for start in range(0, len(ordered), batch_size):
            enc = formatter.encode(ordered[start:start + batch_size]).to(device)
            logits = model(**enc.model_inputs(), use_cache=False, logits_to_keep=1).logits[:, -1]
            out.append(logits.float().cpu())
            bar.update(enc.input_ids.shape[0])
    return in_order(torch.cat(out), order) if out else torch.empty(0)


def kl_per_prompt(base_logits: Tensor, new_logits: Tensor) -> Tensor:
    """[n] KL(p_base ‖ p_new) of the next-token distributions, in nats."""
    log_p = F.log_softmax(base_logits.double(), -1)
    log_q = F.log_softmax(new_logits.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
