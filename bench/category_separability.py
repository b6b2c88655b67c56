"""How separable are the harm categories in a model's own representations? The ceiling on any category-selective
organism (gated, modular, mixed, the selective fine-tune): a gate that reads the model cannot be more selective than
a probe that reads the same activations.

python bench/category_separability.py [hydra overrides, e.g. model=smollm2_135m data=default]

A multinomial logistic probe (L2, standardised features) on the residual stream (``resid_pre``: mean over the user's
text and the last prompt token, concatenated) at several layers, trained on the train split's toxic prompts and
scored on the test split's, for: all categories, the four of ``planted_modular``, two pairs, and the two groupings
"refused vs answered" of two gated choices. Prints held-out accuracy and per-class recall.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import refusal.schemas  # noqa: F401  (config schemas)
from refusal.data import build_prompt_set
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations, run_until_stop
from refusal.model.loading import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"
LAYERS = [8, 12, 16, 20]
MODULAR = ["deception", "harassment", "illegal", "violence"]
GATED = [["harassment", "violence"], ["deception", "illegal"]]
PAIRS = [["harassment", "violence"], ["cbrn", "cybercrime"]]


@torch.inference_mode()
def features(model, fmt, records, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{layer: [n, 2d] float64}: mean over the user's text and the last prompt token of ``resid_pre``."""
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in LAYERS]
    out = {layer: [] for layer in LAYERS}
    for start in range(0, len(records), batch_size):
        enc = fmt.encode([r.prompt for r in records[start:start + batch_size]])
        with capture_activations(model, hooks, stop_early=True) as cache:
            run_until_stop(lambda: model(**enc.model_inputs(), use_cache=False))
        spans = enc.positions("prompt_mean")
        for layer, hook in zip(LAYERS, hooks):
            a = cache[hook].double()
            out[layer].append(torch.stack([torch.cat([a[b, p].mean(0), a[b, -1]]) for b, p in enumerate(spans)]))
    return {layer: torch.cat(v) for layer, v in out.items()}


def probe(x_train, y_train, x_test, n_classes: int, l2: float = 1e-2) -> torch.Tensor:
    """Predicted classes of ``x_test`` by a multinomial logistic regression fitted on the train features."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(x_train.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ w, y_train) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (x_test @ w.detach()).argmax(1)


def main() -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=smollm2_135m", *sys.argv[1:]])
    loaded = load_model(cfg.model)
    fmt = ChatFormatter(loaded.tokenizer, cfg.model.system_prompt)
    prompts = build_prompt_set(cfg.data)
    train, test = (list(prompts.filter(split=s, label="toxic")) for s in ("train", "test"))
    f_train, f_test = features(loaded.model, fmt, train), features(loaded.model, fmt, test)
    every = sorted({r.category for r in train})
    tasks = [("all", {c: c for c in every}), ("modular four", {c: c for c in MODULAR})]
    tasks += [(" vs ".join(p), {c: c for c in p}) for p in PAIRS]
    tasks += [(f"gated {'+'.join(g)} vs other toxic", {c: "refused" if c in g else "answered" for c in every})
              for g in GATED]
    for layer in LAYERS:
        for name, group in tasks:
            classes = sorted(set(group.values()))
            i_tr = [i for i, r in enumerate(train) if r.category in group]
            i_te = [i for i, r in enumerate(test) if r.category in group]
            y_tr = torch.tensor([classes.index(group[train[i].category]) for i in i_tr])
            y_te = torch.tensor([classes.index(group[test[i].category]) for i in i_te])
            pred = probe(f_train[layer][i_tr], y_tr, f_test[layer][i_te], len(classes))
            recall = " ".join(f"{c} {float((pred[y_te == k] == k).float().mean()):.2f}" for k, c in enumerate(classes))
            print(f"layer {layer:>2}  {name:<40} accuracy {float((pred == y_te).float().mean()):.2f} "
                  f"(n {len(i_te)})  recall: {recall}", flush=True)


if __name__ == "__main__":
    main()
