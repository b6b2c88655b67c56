"""Cost of one circuit-ablation measurement (the refusal score of held-out prompts with SAE features ablated at the
node positions, what the faithfulness, transfer and bottleneck stages repeat hundreds of times): the stages' forward
(refusal/evaluation/prefix.py: the prompts' last node-position tokens over a cached clean prefix, from the hooked
layer) and the earlier one (every token from the cached residual stream at the hooked layer), each ÷ a full forward
under the same intervention, same prompts and batches. All three must give the same logits.

python bench/ablation.py [--model smollm2|tiny] [--layer 15] [--prompts 64] [--batch-size 32] [--features 16]
                         [--repeats 3]

The one-off cost of each cache (per prompt set) is printed beside it. Goal: tail ÷ full < 0.25.
"""
from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from attribution import MODELS, best_of, default_prompts  # bench/attribution.py
from refusal.evaluation.interventions import FeatureEdit, intervene
from refusal.evaluation.measure import last_logits
from refusal.evaluation.prefix import PrefixCachedLogits
from refusal.model import ChatFormatter, load_model
from refusal.sae.model import SparseAutoencoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--layer", type=int, default=None, help="hooked layer (default: the middle one)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--features", type=int, default=16, help="SAE features zero-ablated")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(OmegaConf.load(MODELS[args.model]))
    layer = loaded.n_layers // 2 if args.layer is None else args.layer
    hook = f"blocks.{layer}.hook_resid_pre"
    d = loaded.model.config.hidden_size
    sae = SparseAutoencoder(d, 4 * d, "topk", k=32).eval().requires_grad_(False)
    feats = torch.zeros(sae.d_sae, dtype=torch.bool)
    feats[torch.randperm(sae.d_sae)[: args.features]] = True
    prompts = [r.prompt for r in default_prompts().filter(label="toxic")][: args.prompts]
    fmt = ChatFormatter(loaded.tokenizer, max_length=256)
    P = fmt.n_post_instruction
    edit = [FeatureEdit(hook, sae, feats, "zero")]

    built = {}
    for name, tail in (("layer", 0), ("tail", P)):
        t = time.perf_counter()
        built[name] = PrefixCachedLogits(loaded.model, fmt, prompts, args.batch_size, layer, tail)
        built[name + "_setup"] = time.perf_counter() - t
    built["layer"]()  # the layer path's cache is made on first use
    runs = {"full": lambda: last_logits(loaded.model, fmt, prompts, args.batch_size),
            "layer": built["layer"], "tail": built["tail"]}
    times, logits = {}, {}
    with intervene(loaded.model, edit, positions=P):
        for name, fn in runs.items():
            logits[name] = fn()
            times[name] = best_of(fn, args.repeats)
    scale = float(logits["full"].abs().max())
    gaps = {name: float((logits[name] - logits["full"]).abs().max()) / scale for name in ("layer", "tail")}
    print(f"model={loaded.name} hook={hook} prompts={len(prompts)} batch={args.batch_size} node positions={P} "
          f"features ablated={args.features} threads={torch.get_num_threads()}")
    print(f"full forward: {times['full']:.3f} s   from layer {layer}: {times['layer']:.3f} s   tail ({P} tokens) "
          f"from layer {layer}: {times['tail']:.3f} s   (tail cache made once: {built['tail_setup']:.3f} s)")
    print(f"largest logit gap / largest logit: from layer {gaps['layer']:.1e}, tail {gaps['tail']:.1e}")
    print(f"layer / full = {times['layer'] / times['full']:.2f}")
    print(f"tail / full = {times['tail'] / times['full']:.2f}  (goal < 0.25)")


if __name__ == "__main__":
    main()
