"""SAE quality on held-out prompts, one SAE at a time spliced in at the tokens it was trained on (``positions``,
the activation store's: ``all`` = the user text and the post-instruction tokens, not the system prompt or the
template before the user text, whose outlier activations an SAE never saw):

- explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² and L0 (mean active features per token), over those tokens;
- next-token cross-entropy at those tokens (the next token real) with the model as is (CE_orig), with x ← x̂ there
  (CE_sae) and with x ← 0 there (CE_zero), and CE loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_orig)
  (1 = the SAE loses nothing; unclamped; NaN when no token has a next one, e.g. ``positions=last``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refusal.evaluation.interventions import Reconstruct, ZeroAblate, intervene
from refusal.model.hooks import capture_activations
from refusal.sae.model import SparseAutoencoder


def _ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, sel: torch.Tensor
            ) -> tuple[float, int]:
    """Summed next-token CE over selected positions whose next token is real, and their count."""
    keep = sel[:, :-1] & mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
    return float(ce[keep].double().sum()), int(keep.sum())


@dataclass
class AtTokens:
    """Apply ``inner``'s edit only at the tokens where ``where`` [B, T] is true."""
    hook: str
    inner: object
    where: torch.Tensor

    def edit(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.where[..., None], self.inner.edit(x), x)


def selected_tokens(enc, positions: str) -> torch.Tensor:
    """[B, T] bool: the real tokens of ``positions`` (last | post_instruction | prompt_mean | all)."""
    sel = torch.zeros_like(enc.attention_mask, dtype=torch.bool)
    for b, idx in enumerate(enc.positions(positions)):
        sel[b, idx.to(sel.device)] = True
    return sel & enc.attention_mask.bool()


@torch.inference_mode()
def sae_quality(model, formatter, saes: dict[str, SparseAutoencoder], prompts: list[str],
                batch_size: int, positions: str = "all") -> list[dict]:
    """One row per hook: explained variance, L0, CE_orig, CE_sae, CE_zero and CE loss recovered."""
    device = next(model.parameters()).device
    acc = {h: {"sse": 0.0, "sum": None, "sumsq": 0.0, "l0": 0.0, "ce_sae": 0.0, "ce_zero": 0.0} for h in saes}
    ce_orig, n_tok, n_rows = 0.0, 0, 0
    for start in range(0, len(prompts), batch_size):
        enc = formatter.encode(prompts[start:start + batch_size]).to(device)
        inputs, mask = enc.model_inputs(), enc.attention_mask
        with capture_activations(model, list(saes), stop_early=False) as cache:
            logits = model(**inputs, use_cache=False).logits
        real = selected_tokens(enc, positions)
        ce, n = _ce_sum(logits, enc.input_ids, mask, real)
        ce_orig, n_tok = ce_orig + ce, n_tok + n
        n_rows += int(real.sum())
        for h, sae in saes.items():
            a = acc[h]
            x = cache[h][real].to(sae.W_enc.dtype)
            f = sae.encode(x)
            x_hat = sae.decode(f)
            a["sse"] += float((x - x_hat).double().pow(2).sum())
            a["sumsq"] += float(x.double().pow(2).sum())
            a["sum"] = x.double().sum(0) if a["sum"] is None else a["sum"] + x.double().sum(0)
            a["l0"] += float((f > 0).sum())
            for key, iv in (("ce_sae", Reconstruct(h, sae)), ("ce_zero", ZeroAblate(h))):
                with intervene(model, [AtTokens(h, iv, real)]):
                    a[key] += _ce_sum(model(**inputs, use_cache=False).logits, enc.input_ids, mask, real)[0]
    rows = []
    orig = ce_orig / max(n_tok, 1)
    for h, a in acc.items():
        total_var = a["sumsq"] - float(a["sum"].pow(2).sum()) / max(n_rows, 1)
        ce_sae, ce_zero = a["ce_sae"] / max(n_tok, 1), a["ce_zero"] / max(n_tok, 1)
        denom = ce_zero - orig if n_tok else 0.0
        rows.append({"hook": h, "n_prompts": len(prompts), "positions": positions, "n_tokens": n_rows,
                     "n_ce_tokens": n_tok,
                     "explained_variance": 1.0 - a["sse"] / total_var if total_var > 0 else float("nan"),
                     "l0": a["l0"] / max(n_rows, 1), "ce_orig": orig, "ce_sae": ce_sae, "ce_zero": ce_zero,
                     "ce_loss_recovered": (ce_zero - ce_sae) / denom if denom != 0 else float("nan")})
    return rows
