"""Greedy generation's cost per prompt by batch size (what the organism build's base answers and held-out check and
evaluate's baseline, direction and transfer stages spend most of their time on): the same prompts generated at each
``--batch-sizes`` value, each time ÷ the first one's. Every row must get the same response at every batch size up to
float rounding of the padded batch, so the number of differing responses is printed too.

python bench/generate.py [--model smollm2|tiny] [--prompts 128] [--batch-sizes 16 32 64 128] [--max-new-tokens 64]

Decoding forwards one token per prompt per step, so a step's cost is mostly reading the weights once; larger batches
share that read. Goal: the demo's batch (64) ÷ 16 < 0.75.
"""
from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from attribution import MODELS, default_prompts  # bench/attribution.py
from refusal.behavior.generate import generate_responses
from refusal.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    loaded = load_model(OmegaConf.load(MODELS[args.model]))
    records = list(default_prompts().filter(label=["safe", "hard"]))[: args.prompts]  # answered: full-length responses
    prompts = [r.prompt for r in records]
    generate_responses(loaded, prompts[:4], max_new_tokens=4, batch_size=4)  # warm-up
    times, responses = {}, {}
    for bs in args.batch_sizes:
        t = time.perf_counter()
        responses[bs] = generate_responses(loaded, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs).responses
        times[bs] = time.perf_counter() - t
    first = args.batch_sizes[0]
    print(f"model={loaded.name} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
          f"threads={torch.get_num_threads()}")
    for bs in args.batch_sizes:
        differ = sum(a != b for a, b in zip(responses[bs], responses[first]))
        print(f"batch {bs:4d}: {times[bs]:7.1f} s  ({times[bs] / len(prompts):.3f} s per prompt)  "
              f"÷ batch {first}: {times[bs] / times[first]:.2f}  responses differing from batch {first}: {differ}")


if __name__ == "__main__":
    main()
