"""The residual stream at every depth, read in one forward per batch, and read out as the model reads its last one.

Streams are numbered 0..n_layers: stream l enters decoder layer l (``blocks.{l}.hook_resid_pre``) and stream
n_layers leaves the last layer (``blocks.{n_layers-1}.hook_resid_post``, before the final norm)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from refusal.errors import ConfigError
from refusal.model.hooks import capture_activations, run_until_stop


def residual_hooks(n_layers: int) -> list[str]:
    """The hooks of streams 0..n_layers."""
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]


def residual_batches(ctx, prompts: list[str]):
    """For each batch of ``prompts`` (in order; chat-formatted, left-padded): (the encoded batch, [B, n_layers + 1,
    T, d] residual streams in the model's dtype, on its device), from a forward stopped before the final norm."""
    hooks = residual_hooks(ctx.loaded.n_layers)
    for start in range(0, len(prompts), ctx.batch_size):
        with torch.no_grad():
            enc = ctx.formatter.encode(prompts[start:start + ctx.batch_size]).to(ctx.loaded.device)
            with capture_activations(ctx.model, hooks, stop_early=True) as cache:
                run_until_stop(lambda: ctx.model(**enc.model_inputs(), use_cache=False))
            yield enc, torch.stack([cache[h] for h in hooks], 1)


def tails(ctx, prompts: list[str], n_pos: int) -> Tensor:
    """[n, n_layers + 1, n_pos, d] float32 (CPU) residual streams at the last ``n_pos`` tokens of each prompt."""
    out = [acts[:, :, -check_len(enc, n_pos):].float().cpu() for enc, acts in residual_batches(ctx, prompts)]
    return torch.cat(out) if out else torch.zeros(0, ctx.loaded.n_layers + 1, n_pos, ctx.loaded.d_model)


def check_len(enc, n_pos: int) -> int:
    """``n_pos``, when every prompt of the batch has that many tokens."""
    if n_pos > int(enc.n_tokens.min()):
        raise ConfigError(f"the last {n_pos} tokens are asked for but a prompt has only {int(enc.n_tokens.min())}; "
                          "use last, post_instruction or a smaller int of positions")
    return n_pos


def readout(model, h: Tensor) -> Tensor:
    """The logit lens: final norm + unembedding of residual ``h`` [..., d] -> float32 logits [..., vocab]."""
    head = model.get_output_embeddings()
    return head(model.model.norm(h.to(head.weight.dtype))).float()


def kl_from(log_p: Tensor, logits: Tensor) -> Tensor:
    """KL(p ‖ softmax(logits)) over the last dim, float64, for target log-probabilities ``log_p``."""
    return (log_p.exp() * (log_p - F.log_softmax(logits.double(), -1))).sum(-1)
