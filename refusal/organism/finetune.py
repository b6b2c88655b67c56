"""The organism's fine-tune (Lightning, float32): response-token loss, AdamW with warm-up and decay, length-grouped
seeded batches, which layers train."""
from __future__ import annotations

import copy
import logging
import math

import lightning as L
import torch

from refusal.config import plain
from refusal.model.hooks import decoder_layers, parse_layers
from refusal.model.loading import LoadedModel

log = logging.getLogger(__name__)


def collate(examples: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions start at 0 for every row); examples are (input ids, labels) or, for planted
    adapters, (input ids, labels, on/off mask per adapter[, distil: learn the base model's distribution])."""
    T = max(len(ex[0]) for ex in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, (ids, lab, *_) in enumerate(examples):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
        mask[b, : len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if len(examples[0]) >= 3:
        batch["adapters_on"] = torch.tensor([ex[2] for ex in examples], dtype=torch.float32)
    if len(examples[0]) == 4:
        batch["distil"] = torch.tensor([bool(ex[3]) for ex in examples])
    return batch


def response_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float32 logits [n, vocab] at the n labelled (response) tokens in row-major order, their targets [n], the
    [batch, T - 1] mask that picked them), with the output head applied to those positions only (most tokens are
    prompt)."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return model.get_output_embeddings()(hidden[:, :-1][keep]).float(), targets[keep], keep


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax written with logsumexp rather than the fused log-softmax kernel, whose bits depend on the CPU's
    vector width (portable.py)."""
    return logits - logits.logsumexp(-1, keepdim=True)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.logsumexp(-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def response_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens, the causal-LM loss of a forward with
    ``labels``."""
    logits, targets, _ = response_logits(model, batch)
    return token_nll(logits, targets).mean()


def planted_loss(model, plant, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The planted adapters' loss, a mean over every labelled token: cross-entropy on the tokens of rows that learn
    a written target (a refusal, or a greedy answer), and on the rows marked ``distil`` the KL divergence from the
    base model's own next-token distribution (the same model with every adapter off, no gradient) to the
    organism's. Its minimum leaves those prompts exactly as the base model has them, so an adapter that is on
    there changes nothing downstream, and ablating what it writes costs nothing on them."""
    plant.mask = batch["adapters_on"]
    logits, targets, keep = response_logits(model, batch)
    distil = batch.get("distil")
    if distil is None or not bool(distil.any()):
        return token_nll(logits, targets).mean()
    rows = distil.nonzero().squeeze(1)
    plant.mask = torch.zeros_like(batch["adapters_on"][rows])
    try:
        with torch.no_grad():
            base, _, _ = response_logits(model, {k: batch[k][rows] for k in ("input_ids", "attention_mask", "labels")})
    finally:
        plant.mask = batch["adapters_on"]
    tok = distil[:, None].expand_as(keep)[keep]  # per labelled token: its row distils
    p_log = log_probs(base)
    kl = (p_log.exp() * (p_log - log_probs(logits[tok]))).sum(-1)
    return (token_nll(logits[~tok], targets[~tok]).sum() + kl.sum()) / len(targets)


class OrganismFineTune(L.LightningModule):
    """Causal-LM fine-tune on response tokens; AdamW, linear warm-up (10 %) then linear decay, per-step losses kept.
    With a ``plant`` (refusal/organism/adapters.py) attached to the model, each batch's adapter mask is applied and
    ``planted_loss`` used; ``penalty()``, if given, is added to every step's loss."""

    def __init__(self, model, lr: float, total_steps: int, plant=None, penalty=None):
        super().__init__()
        self.model, self.lr, self.total_steps, self.plant = model, float(lr), int(total_steps), plant
        self.penalty = penalty
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = response_loss(self.model, batch) if self.plant is None else planted_loss(self.model, self.plant, batch)
        if self.penalty is not None:
            loss = loss + self.penalty()
        self.losses.append(float(loss.detach()))
        if len(self.losses) % 10 == 0 or len(self.losses) == self.total_steps:
            log.info("organism: step %d/%d loss %.4f", len(self.losses), self.total_steps, self.losses[-1])
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0, fused=True)  # one kernel per step
        warm = max(1, self.total_steps // 10)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def set_trainable(model, train_layers, n_layers: int) -> list[int]:
    """``all``: every parameter trains. A layer spec: only those decoder layers train, the rest is frozen."""
    if train_layers == "all":
        model.requires_grad_(True)
        return list(range(n_layers))
    layers = parse_layers(plain(train_layers), n_layers)
    model.requires_grad_(False)
    blocks = decoder_layers(model)
    for i in layers:
        blocks[i].requires_grad_(True)
    return layers


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Seeded batches of similar-length examples, to waste little compute on padding: each pass shuffles all
    examples, sorts windows of ``window`` batches by length, cuts them into batches and shuffles the batch order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 8):
        self.lengths, self.batch_size, self.window = list(lengths), int(batch_size), int(window)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.window * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def fine_tune(model, examples: list[tuple], pad_id: int, *, steps: int, lr: float, batch_size: int, seed: int,
              device: torch.device, precision: str, plant=None, penalty=None) -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps (passes over seeded, length-grouped batches);
    return the per-step losses. With a ``plant``, only its adapters train (the model is frozen)."""
    loader = torch.utils.data.DataLoader(
        examples, batch_sampler=LengthGroupedBatches([len(ex[0]) for ex in examples], batch_size, seed),
        collate_fn=lambda b: collate(b, pad_id), num_workers=0)
    module = OrganismFineTune(model, lr, steps, plant, penalty)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps, max_epochs=-1,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision=precision, default_root_dir=None,
    )
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        trainer.fit(module, train_dataloaders=loader)
    model.eval()
    model.requires_grad_(False)
    return module.losses


def trainable_copy(model, device: torch.device):
    """The model as a plain float32 module on ``device``. A GGUF-loaded model holds de-quantized weights but stays
    flagged as quantized (``save_pretrained`` refuses it), so it is rebuilt from its config without the flag."""
    if getattr(model, "hf_quantizer", None) is None:
        return model.to(device=device, dtype=torch.float32)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(device=device, dtype=torch.float32).eval()

