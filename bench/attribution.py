"""Attribution cost: AtP for every feature (+ error node) of every hooked layer ÷ one plain forward, same batches.

python bench/attribution.py [--model tiny|smollm2] [--hook-points hook_resid_post] [--layers all]
                            [--expansion 16] [--prompts 64] [--batch-size 8] [--repeats 5]

Plain forward: ``model(**inputs)`` under inference_mode (what a user runs to get the logits). AtP: the spliced
forward + backward that gives ∂m/∂f and ∂m/∂e for all nodes, and the products (a_clean − a_patch)·grad, with the
mean-safe patch values computed once beforehand (reported separately, like the m(patch) forward that
discovery also runs per batch for the metric values, which AtP does not need). Goal: ratio ≤ 3.
SAEs are random TopK SAEs of the given width: the cost does not depend on their training.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import refusal.schemas  # noqa: F401  (config schemas)

from refusal.circuit.attribution import _atp
from refusal.circuit.metric import build_metric
from refusal.circuit.model import CircuitModel
from refusal.circuit.patch import mean_values
from refusal.circuit.splice import HookedSAE
from refusal.data import build_prompt_set
from refusal.model import ChatFormatter, expand_hook_names, load_model
from refusal.model.hooks import hook_width
from refusal.sae.model import SparseAutoencoder

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = {"smollm2": "conf/model/smollm2_135m.yaml", "tiny": "conf/model/tiny_llama.yaml"}


def default_prompts():
    """The prompt set of the default data config with seed 0, composed as train.py composes it."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["seed=0"])
    return build_prompt_set(cfg.data)


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--hook-points", nargs="+", default=["hook_resid_post"])
    ap.add_argument("--layers", default="all")
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(OmegaConf.load(MODELS[args.model]))
    hooks = expand_hook_names(args.hook_points, args.layers, loaded.n_layers)
    saes = {}
    for h in hooks:
        d_in = hook_width(loaded.model, h)
        sae = SparseAutoencoder(d_in, d_in * args.expansion, "topk", k=min(args.k, d_in * args.expansion))
        saes[h] = HookedSAE(h, sae.eval().requires_grad_(False))
    prompts = default_prompts()
    toxic = [r.prompt for r in prompts.filter(label="toxic")][: args.prompts]
    safe = [r.prompt for r in prompts.filter(label="safe")][: args.prompts]
    metric, _ = build_metric("refusal_score", loaded.tokenizer)
    cm = CircuitModel(loaded.model, ChatFormatter(loaded.tokenizer, max_length=256), saes, "post_instruction", metric,
                      args.batch_size)
    batches = [enc for _, enc in cm.batches(toxic)]

    def plain():
        with torch.inference_mode():
            for enc in batches:
                loaded.model(**enc.model_inputs())

    t_mean = time.perf_counter()
    patch = mean_values(cm, safe)
    t_mean = time.perf_counter() - t_mean

    def atp():
        for enc in batches:
            m, clean, grads = cm.read(enc)
            _atp(cm, enc, clean, {h: (f.expand_as(clean[h][0]), e.expand_as(clean[h][1]))
                                  for h, (f, e) in patch.items()}, grads)

    def m_patch():
        for enc in batches:
            cm.patched(enc, patch)

    t_plain, t_atp, t_patch = (best_of(fn, args.repeats) for fn in (plain, atp, m_patch))
    n_nodes = sum(s.sae.d_sae + 1 for s in saes.values())
    print(f"model={loaded.name} hooks={len(hooks)} nodes/position={n_nodes} node positions={cm.n_positions} "
          f"prompts={len(toxic)} batch={args.batch_size} threads={torch.get_num_threads()}")
    print(f"plain forward: {t_plain:.3f} s   AtP (all nodes, all hooks): {t_atp:.3f} s   "
          f"m(patch) forward: {t_patch:.3f} s   mean-safe patch (once, {len(safe)} prompts): {t_mean:.3f} s")
    print(f"AtP / plain forward = {t_atp / t_plain:.2f}  (goal <= 3)")
    print(f"AtP + m(patch) forward / plain forward = {(t_atp + t_patch) / t_plain:.2f}")


if __name__ == "__main__":
    main()
