"""The tuned lens (Belrose et al. 2023): one affine translator per residual stream l < n_layers, T_l(h) = h + A_l h +
b_l (A_l, b_l zero at the start: the identity, so an untrained tuned lens is the logit lens), trained so that
unembed(final_norm(T_l(h_l))) predicts what the model predicts: the loss is Σ_l KL(p_final ‖ p_l) averaged over
tokens, p_final the model's own next-token distribution at the token. The last stream is read as it is (its
translator would be the identity). Training tokens: the residual streams of ``max_prompts`` prompts of the ``split``
(seeded), at ``positions`` (``all``: the user text and the post-instruction tokens, not the template's prefix, the
same in every prompt; or ``post_instruction``), at most ``max_tokens`` of them (seeded). AdamW (its weight decay pulls
A_l towards 0, the translator towards the identity), ``steps`` steps of ``batch_size`` tokens, by a Lightning Trainer;
seeded, deterministic on one device. (The paper trains with SGD-Nesterov on pretraining text; this trains on the
project's prompts, the distribution the lens is read on.)

Saved to ``tuned_lens.safetensors`` in the run dir (``weight`` [n_layers, d, d] = A, ``bias`` [n_layers, d] = b) with
a key in its metadata: the model's weights hash, the training prompts' content hash, the settings, the chat settings
and the seed; a later run with the same key loads it instead of training.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from refusal.config import choice, flag, integer, number
from refusal.data.records import SPLITS
from refusal.errors import ConfigError
from refusal.evaluation.residual import readout, residual_batches
from refusal.utils.io import atomic_path, stable_hash
from refusal.utils.quiet import silence_known_noise

log = logging.getLogger(__name__)
FILE = "tuned_lens.safetensors"
TRAIN_POSITIONS = ("all", "post_instruction")


@dataclass
class TunedLensSchema:
    """The config schema of ``evaluation.lens.tuned`` (values: conf/evaluation/*.yaml)."""
    enabled: bool = MISSING
    split: str = MISSING
    max_prompts: int = MISSING
    positions: str = MISSING
    max_tokens: int = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass(frozen=True)
class TunedLensSettings:
    """``evaluation.lens.tuned``."""
    enabled: bool  # false: the logit lens only
    split: str  # the prompts the translators are trained on (not the evaluation split)
    max_prompts: int
    positions: str  # all (user text + post-instruction tokens) | post_instruction: the training tokens
    max_tokens: int
    steps: int
    batch_size: int  # tokens per step
    lr: float
    weight_decay: float

    @classmethod
    def from_config(cls, node, key: str = "evaluation.lens.tuned") -> "TunedLensSettings":
        return cls(flag(f"{key}.enabled", node.enabled), choice(f"{key}.split", node.split, SPLITS),
                   integer(f"{key}.max_prompts", node.max_prompts, 1),
                   choice(f"{key}.positions", node.positions, TRAIN_POSITIONS),
                   integer(f"{key}.max_tokens", node.max_tokens, 1), integer(f"{key}.steps", node.steps, 0),
                   integer(f"{key}.batch_size", node.batch_size, 1),
                   number(f"{key}.lr", node.lr, 0, open_lo=True), number(f"{key}.weight_decay", node.weight_decay, 0))


class TunedLens(nn.Module):
    """The translators of streams 0..n_layers-1; ``lens(layer, h)`` -> the translated stream (float32), stream
    n_layers unchanged."""

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.n_layers = n_layers
        self.weight = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = nn.Parameter(torch.zeros(n_layers, d_model))

    def forward(self, layer: int, h: Tensor) -> Tensor:
        if layer == self.n_layers:
            return h
        x = h.float()
        return x + x @ self.weight[layer].T + self.bias[layer]


class TunedLensModule(L.LightningModule):
    """Trains a TunedLens through the frozen ``model``'s final norm and unembedding. Batches: ([B, n_layers, d]
    streams 0..n_layers-1, [B, d] the last stream). One backward per layer (memory: one [B, vocab] graph at a time)."""

    def __init__(self, lens: TunedLens, model, lr: float, weight_decay: float):
        super().__init__()
        self.lens, self.lr, self.weight_decay = lens, lr, weight_decay
        self._model = (model,)  # a tuple: read through, never registered, moved or saved with the lens
        self.automatic_optimization = False
        self.losses: list[float] = []

    def configure_optimizers(self):
        return torch.optim.AdamW(self.lens.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def kl(self, layer: int, h: Tensor, target: Tensor) -> Tensor:
        """KL(target ‖ lens at ``layer``), mean over the batch (``target``: the final log-probabilities)."""
        logits = readout(self._model[0], self.lens(layer, h))
        return F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="batchmean")

    def training_step(self, batch, batch_idx):
        x, final = batch
        opt = self.optimizers()
        opt.zero_grad()
        with torch.no_grad():
            target = F.log_softmax(readout(self._model[0], final), -1)
        total = 0.0
        for layer in range(self.lens.n_layers):
            kl = self.kl(layer, x[:, layer], target)
            self.manual_backward(kl)
            total += float(kl.detach())
        opt.step()
        self.losses.append(total / self.lens.n_layers)


def training_tokens(ctx, prompts: list[str], s: TunedLensSettings) -> tuple[Tensor, Tensor]:
    """([N, n_layers, d] streams 0..n_layers-1, [N, d] the last stream), float32 on CPU, at ``s.positions`` of
    ``prompts``, at most ``s.max_tokens`` of them (seeded by ``ctx.seed``)."""
    n_post, rows = ctx.formatter.n_post_instruction, []
    for enc, acts in residual_batches(ctx, prompts):
        if s.positions == "post_instruction":
            rows.append(acts[:, :, -n_post:].transpose(1, 2).reshape(-1, *acts.shape[1::2]).cpu())
        else:
            idx = torch.arange(acts.shape[2], device=acts.device)
            rows.append(acts.transpose(1, 2)[idx[None] >= enc.content_start[:, None]].cpu())
    tokens = torch.cat(rows)
    if len(tokens) > s.max_tokens:
        keep = np.sort(np.random.default_rng([ctx.seed, 7]).choice(len(tokens), s.max_tokens, replace=False))
        tokens = tokens[torch.as_tensor(keep)]
    tokens = tokens.float()
    return tokens[:, :-1].contiguous(), tokens[:, -1].contiguous()


def train_lens(ctx, x: Tensor, final: Tensor, s: TunedLensSettings) -> tuple[TunedLens, list[float]]:
    """A TunedLens trained on the tokens (x, final) for ``s.steps`` steps, seeded by ``ctx.seed``."""
    silence_known_noise()
    lens = TunedLens(ctx.loaded.n_layers, ctx.loaded.d_model)
    if s.steps == 0:
        return lens, []
    device = ctx.loaded.device
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, final), batch_size=s.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(ctx.seed))
    module = TunedLensModule(lens, ctx.model, s.lr, s.weight_decay)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=s.steps,
                        max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=None)
    frozen = [p.requires_grad for p in ctx.model.parameters()]
    ctx.model.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ctx.seed)
            trainer.fit(module, train_dataloaders=loader)
    finally:
        for p, was in zip(ctx.model.parameters(), frozen):
            p.requires_grad_(was)
    return lens.to(device).eval().requires_grad_(False), module.losses


def lens_key(ctx, train_set, s: TunedLensSettings) -> str:
    return stable_hash({"weights": ctx.loaded.weights_hash, "prompts": train_set.content_hash(),
                        "settings": {k: v for k, v in asdict(s).items() if k != "enabled"}, "seed": ctx.seed,
                        "system_prompt": ctx.formatter.system_prompt, "max_length": ctx.formatter.max_length}, 16)


def save_lens(lens: TunedLens, path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({"weight": lens.weight.detach().cpu().contiguous(), "bias": lens.bias.detach().cpu().contiguous()},
                  str(tmp), metadata=metadata)


def load_lens(path: Path, key: str | None = None, device="cpu") -> tuple[TunedLens, dict] | None:
    """(the saved lens, its metadata), or None when there is none or (with ``key``) its key differs."""
    if not Path(path).is_file():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if key is not None and meta.get("key") != key:
        return None
    tensors = load_file(str(path))
    lens = TunedLens(*tensors["weight"].shape[:2])
    lens.load_state_dict(tensors)
    return lens.to(device).eval().requires_grad_(False), meta


def fit_tuned_lens(ctx, prompts, s: TunedLensSettings, run_dir: Path) -> tuple[TunedLens, dict]:
    """The tuned lens of ``ctx.model`` trained on ``prompts``' ``s.split`` (reused from run_dir when its key matches),
    and a summary of its training."""
    path = Path(run_dir) / FILE
    pool = prompts.filter(split=s.split)
    if len(pool) > s.max_prompts:
        keep = set(np.random.default_rng([ctx.seed, 11]).choice(len(pool), s.max_prompts, replace=False).tolist())
        pool = type(prompts)(r for i, r in enumerate(pool) if i in keep)
    if not len(pool):
        raise ConfigError(f"evaluation.lens.tuned.split={s.split!r} has no prompts to train the tuned lens on")
    key = lens_key(ctx, pool, s)
    found = load_lens(path, key, ctx.loaded.device)
    if found is not None:
        log.info("lens: reusing the tuned lens %s", path)
        return found[0], {**json.loads(found[1].get("summary", "{}")), "reused": True, "path": str(path)}
    start = time.perf_counter()
    x, final = training_tokens(ctx, [r.prompt for r in pool], s)
    log.info("lens: training the tuned lens on %d tokens of %d %s prompts", len(x), len(pool), s.split)
    lens, losses = train_lens(ctx, x, final, s)
    summary = {"n_prompts": len(pool), "n_tokens": len(x), "steps": s.steps,
               "seconds": round(time.perf_counter() - start, 2),
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    save_lens(lens, path, {"key": key, "summary": json.dumps(summary)})
    return lens, {**summary, "reused": False, "path": str(path)}
