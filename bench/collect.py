"""Collection speed: tokens/s of collect_activations ÷ tokens/s of a bare HF forward over the same batches.

python bench/collect.py [--model smollm2|tiny] [--prompts 128] [--batch-size 16]

Prints one line per setting and its ratio. Goals: >= 0.95 capturing every layer, >= 1.5 capturing one layer at
half depth (the forward stops after it). Our side includes tokenization, position gathering and shard writes.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from omegaconf import OmegaConf

from refusal.activations import CollectionPlan, collect_activations
from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import build_prompt_set
from refusal.model import ChatFormatter, expand_hook_names, load_model

MODELS = {
    "smollm2": "conf/model/smollm2_135m.yaml",
    "tiny": "conf/model/tiny_llama.yaml",
}


def bare_forward(loaded, texts: list[str], batch_size: int) -> tuple[float, int]:
    fmt = ChatFormatter(loaded.tokenizer, max_length=256)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [fmt.encode([texts[i] for i in order[s : s + batch_size]]) for s in range(0, len(texts), batch_size)]
    tokens = sum(int(b.n_tokens.sum()) for b in batches)
    with torch.inference_mode():
        loaded.model(**batches[0].model_inputs())  # warm-up
        t = time.perf_counter()
        for b in batches:
            loaded.model(**b.model_inputs())
        return time.perf_counter() - t, tokens


def ours(loaded, prompts, hooks, batch_size: int, record_score: bool) -> float:
    plan = CollectionPlan(hooks=hooks, positions="all", batch_size=batch_size, shard_prompts=10_000,
                          max_length=256, record_refusal_score=record_score)
    ids = resolve_refusal_tokens(loaded.tokenizer)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        collect_activations(loaded, prompts, plan, d, ids, progress=False)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(OmegaConf.load(MODELS[args.model]))
    data_cfg = OmegaConf.load("conf/data/default.yaml")
    data_cfg.seed = 0
    prompts = build_prompt_set(data_cfg)
    prompts = type(prompts)(list(prompts)[: args.prompts])
    texts = [r.prompt for r in prompts]
    n = loaded.n_layers
    bare_s, tokens = bare_forward(loaded, texts, args.batch_size)
    print(f"model={loaded.name} prompts={len(texts)} tokens={tokens} bare_forward tokens/s={tokens / bare_s:.0f}")
    settings = [
        ("every layer, with refusal score", expand_hook_names("hook_resid_post", "all", n), True),
        ("every layer, no score", expand_hook_names("hook_resid_post", "all", n), False),
        ("one layer at half depth, no score", expand_hook_names("hook_resid_post", "mid", n), False),
        ("one layer at half depth, with score (full forward)", expand_hook_names("hook_resid_post", "mid", n), True),
    ]
    for name, hooks, score in settings:
        ours_s = ours(loaded, prompts, hooks, args.batch_size, score)
        print(f"{name}: collect tokens/s={tokens / ours_s:.0f} ratio={bare_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
