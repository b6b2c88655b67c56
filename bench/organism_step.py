"""Organism fine-tune step: the build's step (output head on response positions only, fused AdamW, clipping by
global norm) ÷ the plain step (the model's own loss with ``labels``, which applies the head to every position,
and the for-loop AdamW), same batch, same precision.

python bench/organism_step.py [--model smollm2|tiny] [--batch-size 8] [--prompt-tokens 50] [--response-tokens 30]
                              [--precision bf16|fp32] [--repeats 5] [--train-layers 10-29]

The batch mimics the organism's: a chat-formatted prompt (no loss) followed by a response (loss). Goal: ratio < 1.
With ``--train-layers`` (the organism's ``model.train_layers``), also the build step with only those layers trainable
(embeddings and the layers below frozen: no backward through them, no optimizer state) ÷ the build step.
"""
from __future__ import annotations

import argparse
import copy

import torch
from omegaconf import OmegaConf

from refusal.model import load_model
from attribution import best_of  # bench/attribution.py: warm-up, then the fastest of ``repeats`` runs
from refusal.organism.finetune import response_loss, set_trainable, trainable_copy

MODELS = {"smollm2": "conf/model/smollm2_135m.yaml", "tiny": "conf/model/tiny_llama.yaml"}


def step_time(model, batch, loss_fn, fused: bool, bf16: bool, repeats: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0, fused=fused)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return best_of(step, repeats)


def batch_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model, batch shape and repeats options (shared with bench/mkl_pin.py)."""
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=50)
    ap.add_argument("--response-tokens", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    return ap


def model_and_batch(args) -> tuple[torch.nn.Module, dict]:
    """The trainable float32 copy of ``args.model`` on the CPU and a seeded random batch shaped by ``args``: a prompt
    (label -100) followed by a response."""
    torch.manual_seed(0)
    model = trainable_copy(load_model(OmegaConf.load(MODELS[args.model])).model, torch.device("cpu"))
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.prompt_tokens + args.response_tokens))
    labels = ids.clone()
    labels[:, : args.prompt_tokens] = -100
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def main() -> None:
    ap = batch_arguments(argparse.ArgumentParser())
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--train-layers", default=None, help='a layer spec, e.g. "10-29": also time that partial step')
    args = ap.parse_args()
    base, batch = model_and_batch(args)
    bf16 = args.precision == "bf16"

    def plain(m, b):
        return m(**b).loss

    times = {}
    for name, fn, fused in (("plain", plain, False), ("build", response_loss, True)):
        model = copy.deepcopy(base).train().requires_grad_(True)
        times[name] = step_time(model, batch, fn, fused, bf16, args.repeats)
    if args.train_layers:
        model = copy.deepcopy(base).train()
        set_trainable(model, args.train_layers, int(model.config.num_hidden_layers))
        times["partial"] = step_time(model, batch, response_loss, True, bf16, args.repeats)
    print(f"model {args.model}, batch {args.batch_size} x ({args.prompt_tokens} prompt + {args.response_tokens} "
          f"response) tokens, {args.precision}, best of {args.repeats}")
    print(f"plain step (head on every position, for-loop AdamW): {times['plain']:.3f} s")
    print(f"build step (head on response positions, fused AdamW): {times['build']:.3f} s")
    print(f"ratio build / plain: {times['build'] / times['plain']:.2f}  (goal < 1)")
    if args.train_layers:
        print(f"build step, layers {args.train_layers} trainable: {times['partial']:.3f} s; ÷ every layer: "
              f"{times['partial'] / times['build']:.2f}")


if __name__ == "__main__":
    main()
