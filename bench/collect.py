"""Collection speed: tokens/s of collect_activations ÷ tokens/s of a bare forward over the same prompts.

python bench/collect.py [--model smollm2|tiny] [--prompts 48] [--batch-size 16] [--rounds 8] [--device cpu|cuda]

The bare forward is the least a forward must do to give the refusal score: the model called on the pre-tokenised,
length-sorted batches with ``logits_to_keep=1`` and no KV cache, no hooks. Ours is a whole ``collect_activations``
call into a fresh store (tokenisation, hooks, position gathering, the score, shard writes and their hashes).
The two are interleaved in one process (bare, ours, bare, ours, ... for ``--rounds`` short rounds of every setting),
so load from other jobs hits both alike; each ratio is the median bare time ÷ the median of ours over the rounds
(on a shared VM single rounds vary by ±20%, so the medians of many short rounds, and each round's ratio, are shown).
Goals: >= 0.95 with the score at every layer and at one layer; >= 1.5 at one layer at half depth without the score
(the forward stops after it).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import refusal.schemas  # noqa: F401  (config schemas)

from refusal.activations import CollectionPlan, collect_activations
from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import build_prompt_set
from refusal.model import ChatFormatter, expand_hook_names, load_model

MODELS = {"smollm2": "smollm2_135m", "tiny": "tiny_llama"}
CONF = Path(__file__).resolve().parents[1] / "conf"
MAX_LENGTH = 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_batches(loaded, texts: list[str], batch_size: int):
    fmt = ChatFormatter(loaded.tokenizer, max_length=MAX_LENGTH)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [fmt.encode([texts[i] for i in order[s : s + batch_size]]).to(loaded.device)
               for s in range(0, len(texts), batch_size)]
    return batches, sum(int(b.n_tokens.sum()) for b in batches)


@torch.inference_mode()
def bare(loaded, batches) -> float:
    sync(loaded.device)
    t = time.perf_counter()
    for b in batches:
        loaded.model(**b.model_inputs(), logits_to_keep=1, use_cache=False)
    sync(loaded.device)
    return time.perf_counter() - t


def ours(loaded, prompts, hooks, batch_size: int, record_score: bool, ids: list[int]) -> float:
    plan = CollectionPlan(hooks=hooks, positions="all", batch_size=batch_size, shard_prompts=10_000,
                          max_length=MAX_LENGTH, record_refusal_score=record_score)
    with tempfile.TemporaryDirectory() as d:
        sync(loaded.device)
        t = time.perf_counter()
        collect_activations(loaded, prompts, plan, d, ids, progress=False)
        sync(loaded.device)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={MODELS[args.model]}", f"model.device={args.device}", "seed=0"])
    loaded = load_model(cfg.model)
    prompts = build_prompt_set(cfg.data)
    prompts = type(prompts)(list(prompts)[: args.prompts])
    batches, tokens = bare_batches(loaded, [r.prompt for r in prompts], args.batch_size)
    ids = resolve_refusal_tokens(loaded.tokenizer)
    n = loaded.n_layers
    every, mid = expand_hook_names("hook_resid_post", "all", n), expand_hook_names("hook_resid_post", "mid", n)
    settings = [
        ("every layer, with refusal score", every, True),
        ("one layer at half depth, with refusal score", mid, True),
        ("every layer, no score", every, False),
        ("one layer at half depth, no score (stops after it)", mid, False),
    ]
    bare(loaded, batches)  # warm-up of both
    ours(loaded, prompts, mid, args.batch_size, True, ids)
    times = {name: ([], []) for name, _, _ in settings}
    for _ in range(args.rounds):
        for name, hooks, score in settings:
            times[name][0].append(bare(loaded, batches))
            times[name][1].append(ours(loaded, prompts, hooks, args.batch_size, score, ids))
    print(f"model={loaded.name} device={loaded.device} prompts={len(prompts)} tokens={tokens} "
          f"batch={args.batch_size} rounds={args.rounds} threads={torch.get_num_threads()}")
    for name, (b, o) in times.items():
        bare_s, ours_s = statistics.median(b), statistics.median(o)
        print(f"{name}: bare tokens/s={tokens / bare_s:.0f} collect tokens/s={tokens / ours_s:.0f} "
              f"ratio={bare_s / ours_s:.3f} (per round: {', '.join(f'{x / y:.2f}' for x, y in zip(b, o))})")


if __name__ == "__main__":
    main()
