"""How separable are the harm categories in a model's own representations? The ceiling on any category-selective
organism (gated, modular, mixed, the selective fine-tune): a gate that reads the model cannot be more selective than
a probe that reads the same activations.

python bench/category_separability.py [hydra overrides, e.g. model=smollm2_135m data=default]

A multinomial logistic probe (L2, standardised features) on the residual stream (``resid_pre``: mean over the user's
text and the last prompt token, concatenated) at several layers, trained on the train split's toxic prompts and
scored on the test split's, for: all categories, the four of ``planted_modular``, two pairs, and the two groupings
"refused vs answered" of two gated choices. Prints held-out accuracy and per-class recall; then, for every category
and pair of categories, the test a planted build runs before training (refusal/organism/separability.py), to choose
categories a selective organism can be built on.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import refusal.schemas  # noqa: F401  (config schemas)
from refusal.data import build_prompt_set
from refusal.model.chat import ChatFormatter
from refusal.model.loading import load_model
from refusal.config import plain
from refusal.model.hooks import parse_layers
from refusal.organism.separability import fit_logistic, probe_layers, prompt_features, separability

CONF = Path(__file__).resolve().parents[1] / "conf"
LAYERS = [8, 12, 16, 20]
MODULAR = ["deception", "harassment", "illegal", "violence"]
GATED = [["harassment", "violence"], ["deception", "illegal"]]
PAIRS = [["harassment", "violence"], ["cbrn", "cybercrime"]]


def main() -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=smollm2_135m", *sys.argv[1:]])
        planted = compose("train", overrides=["model=planted_monolithic"]).model  # its default adapter layers
    loaded = load_model(cfg.model)
    fmt = ChatFormatter(loaded.tokenizer, cfg.model.system_prompt)
    prompts = build_prompt_set(cfg.data)
    train, test = (list(prompts.filter(split=s, label="toxic")) for s in ("train", "test"))
    f_train, f_test = (prompt_features(loaded.model, fmt, records, LAYERS) for records in (train, test))
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
            pred = fit_logistic(f_train[layer][i_tr], y_tr, len(classes))(f_test[layer][i_te]).argmax(1)
            recall = " ".join(f"{c} {float((pred[y_te == k] == k).float().mean()):.2f}" for k, c in enumerate(classes))
            print(f"layer {layer:>2}  {name:<40} accuracy {float((pred == y_te).float().mean()):.2f} "
                  f"(n {len(i_te)})  recall: {recall}", flush=True)
    bound, need = float(planted.checks.probe_max_fpr), float(planted.checks.refuse_min)
    print("\nthe build's own test (refusal/organism/separability.py): every category and pair as a gate against the "
          "other toxic categories, cross-validated on the train split at planted_monolithic's adapter layers; tpr = share "
          f"caught at <= {bound:.0%} false alarms (model.checks.probe_max_fpr), best layer (>= {need:.2f}: separable)")
    gates = {c: [c] for c in every} | {"+".join(p): list(p) for p in itertools.combinations(every, 2)}
    at = probe_layers(parse_layers(plain(planted.adapters.layers), loaded.model.config.num_hidden_layers))
    f_gates = prompt_features(loaded.model, fmt, train, at)
    got = separability(f_gates, [r.category for r in train], gates, refuse_min=need, max_fpr=bound, seed=0)["gates"]
    for name, g in sorted(got.items(), key=lambda kv: -kv[1]["tpr"]):
        by_layer = " ".join(f"L{layer} {v:.2f}" for layer, v in g["tpr_by_layer"].items())
        print(f"{name:<28} tpr {g['tpr']:.2f}  {'separable' if g['separable'] else 'inseparable':<11}  {by_layer}")


if __name__ == "__main__":
    main()
