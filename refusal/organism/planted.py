"""Build a planted organism: the base model frozen, refusal trained into low-rank adapters only (design.py says
which), the adapters merged into the saved weights, and the ground truth (truth.py) measured and checked
(checks.py) into the card."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from refusal.behavior.baseline import write_responses
from refusal.behavior.measure import Measurement
from refusal.config import plain
from refusal.data.records import PromptSet
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import parse_layers
from refusal.model.loading import LoadedModel, ModelFiles, hf_weight_files, load_pretrained, resolve_device
from refusal.organism.adapters import Plant, load_plant, save_plant
from refusal.organism.cache import CARD_JSON, CARD_MD
from refusal.organism.card import Build, build_hash, card_markdown, make_card, truth_markdown
from refusal.organism.checks import check
from refusal.organism.design import Design, plan_variants, wordings
from refusal.organism.energy import energy_of, residual_energy
from refusal.organism.finetune import fine_tune, trainable_copy
from refusal.organism.portable import portable_attention
from refusal.organism.separability import (gates, inseparable_message, probe_layers, prompt_features,
                                           separability)
from refusal.organism.targets import example_repeats, make_examples, mix_repeats, refused_categories
from refusal.organism.truth import measure_truth, planted_judge
from refusal.utils.io import write_json

log = logging.getLogger(__name__)


def planted_design(cfg, train: PromptSet) -> Design:
    return Design(str(cfg.design), refused_categories(train, plain(cfg.categories), "model.categories"),
                  float(cfg.share))


def check_separable(cfg, design: Design, train: PromptSet, loaded: LoadedModel, layers: list[int]) -> dict | None:
    """A selective design's categories as the base model separates them (refusal/organism/separability.py), at up
    to four of the adapters' layers; stops before training when they are not, unless a design miss is accepted."""
    needed = gates(design.kind, design.refused)
    if not needed:
        return None
    toxic = list(train.filter(label="toxic"))
    fmt = ChatFormatter(loaded.tokenizer, cfg.system_prompt)
    feats = prompt_features(loaded.model, fmt, toxic, probe_layers(layers), int(cfg.generation_batch_size))
    result = separability(feats, [r.category for r in toxic], needed, float(cfg.checks.refuse_min),
                          float(cfg.checks.probe_max_fpr), int(cfg.seed))
    log.info("planted organism: categories %s: %s (%s)", design.refused, result["word"],
             ", ".join(f"{n} {g['tpr']:.0%}" for n, g in result["gates"].items()))
    if result["word"] == "inseparable":
        if not bool(cfg.accept_design_miss):
            raise ConfigError(inseparable_message(result, "model.categories", plain(cfg.categories)))
        log.warning("%s", inseparable_message(result, "model.categories", plain(cfg.categories)))
    return result


def training_examples(cfg, design: Design, train: PromptSet, loaded: LoadedModel, base_hash: str):
    """(token examples with adapter masks, repeated to the answer share; one JSON row per variant; mix facts)."""
    tok = loaded.tokenizer
    words = wordings(design, plain(cfg.refusals), plain(cfg.category_topics) or {},
                     lambda text: tok.encode(text, add_special_tokens=False)[0])
    variants = plan_variants(train, design, words, int(cfg.masks.per_prompt), float(cfg.masks.all_on), int(cfg.seed))
    targets = [t for t, _ in variants]
    examples, rows = make_examples(loaded, targets, cfg, Path(str(cfg.cache_dir)), base_hash, True)
    for row, (_, on) in zip(rows, variants):
        row["adapters_on"] = [n for n, m in zip(design.adapters, on) if m]
    n_ref = sum(t.refusal is not None for t in targets)
    rep_ref, rep_ans = mix_repeats(n_ref, len(targets) - n_ref, float(cfg.answer_share))
    distil = str(cfg.answer_target) == "distribution"
    toxic = int(cfg.unrefused_toxic_repeats)
    out = [(ids, labels, on, distil and t.refusal is None) for (ids, labels), (t, on) in zip(examples, variants)
           for _ in range(example_repeats(t, rep_ref, rep_ans, toxic))]
    mix = {"refused": design.refused, "n_refusal_targets": n_ref, "n_base_answer_targets": len(targets) - n_ref,
           "repeats": {"refusal": rep_ref, "base_answer": rep_ans, "unrefused_toxic_answer": rep_ans * toxic},
           "n_training_examples": len(out),
           "answer_target": str(cfg.answer_target),
           "wordings": words}
    return out, rows, mix


def train_adapters(cfg, loaded: LoadedModel, plant: Plant, examples: list, train: PromptSet, device):
    """Train the plant's adapters (the model frozen), with the energy penalty measured on the safe train prompts;
    (per-step losses, {adapter: energy of each vector it writes})."""
    model, tokenizer = loaded.model, loaded.tokenizer
    energy = residual_energy(model, ChatFormatter(tokenizer, cfg.system_prompt),
                             [r.prompt for r in train.filter(label="safe")], int(cfg.generation_batch_size))
    weight = float(cfg.adapters.energy_weight)
    plant.attach(model)
    try:
        losses = fine_tune(model, examples, tokenizer.pad_token_id, steps=int(cfg.steps), lr=float(cfg.lr),
                           batch_size=int(cfg.batch_size), seed=int(cfg.seed), device=device, precision="32-true",
                           plant=plant,
                           penalty=(lambda: weight * energy_of(plant.written(), energy).mean()) if weight else None)
    finally:
        plant.detach()
    plant.requires_grad_(False)
    written = {n: energy_of(plant.written()[k], energy).tolist() for k, n in enumerate(plant.names)}
    log.info("planted organism: energy of the written vectors (1 = a random direction's) %s", written)
    return losses, written


def build_planted(cfg, directory: Path, key: str, key_parts: dict, train: PromptSet, test: PromptSet,
                  base: LoadedModel) -> dict:
    """Train the adapters, merge them, measure and check the ground truth, save into ``directory``; its card."""
    t0, device = time.time(), resolve_device(cfg.device)
    model, tokenizer = trainable_copy(base.model, device), base.tokenizer
    del base
    model.requires_grad_(False)
    design = planted_design(cfg, train)
    layers = parse_layers(plain(cfg.adapters.layers), int(model.config.num_hidden_layers))
    plant = Plant.for_model(model, design.adapters, layers, str(cfg.adapters.module), int(cfg.adapters.rank),
                            int(cfg.seed)).to(device)
    loaded = LoadedModel(model, tokenizer, str(cfg.name))
    with portable_attention(model):  # the same bits whatever the CPU's vector width
        separable = check_separable(cfg, design, train, loaded, layers)
        examples, rows, mix = training_examples(cfg, design, train, loaded, key_parts["base"]["weights_hash"])
        mix["layers"] = layers
        t1 = time.time()
        log.info("planted organism (%s): training adapters %s at layers %s (%s, rank %d) on %d examples, %d steps",
                 design.kind, design.adapters, layers, cfg.adapters.module, cfg.adapters.rank, len(examples),
                 cfg.steps)
        losses, mix["write_energy"] = train_adapters(cfg, loaded, plant, examples, train, device)
        base_w = plant.base_weights(model)
        plant.set_weights(model, plant.merged_weights(base_w, design.adapters))
    t2 = time.time()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    save_plant(directory, plant, base_w)
    del model, loaded
    write_responses(directory / "train_targets.jsonl", rows)
    truth, judge = measure_planted(cfg, directory, test, design, mix["wordings"])
    seconds = {"data_and_answers": t1 - t0, "train": t2 - t1, "heldout_eval": time.time() - t2}
    heldout = Measurement(truth["rows"]["all"], truth["items"]["all"])
    card = make_card(cfg, Build(key, key_parts, train, test, mix, losses, heldout, seconds, str(device), "", judge))
    card["design"] = {"kind": design.kind, "share": float(cfg.share), "plant": plant.describe(),
                      "wordings": mix["wordings"], "energy_weight": float(cfg.adapters.energy_weight),
                      "write_energy": mix["write_energy"]}
    card["separability"] = separable
    return write_truth(cfg, directory, card, truth, design)


def measure_planted(cfg, directory: Path, test: PromptSet, design: Design, words: dict[str, list[str]]
                    ) -> tuple[dict, str]:
    """(the ground truth, how it was judged) of the organism saved in ``directory``: loaded as a user loads it
    (so a build and a later measurement of the same weights agree to the bit), every condition judged by the
    planted sentences' openings."""
    files = ModelFiles(str(directory), {"local_files_only": True}, hf_weight_files(directory))
    loaded = load_pretrained(files, str(cfg.name), "float32", str(cfg.device))
    plant, base_w = load_plant(directory)
    judge = planted_judge(cfg, words)
    described = (f"opening (begins with the first {int(cfg.eval.opening_words)} words of a planted refusal sentence: "
                 + " | ".join(" ".join(o) for o in judge.openings) + ")")
    with portable_attention(loaded.model):  # the same bits whatever the CPU's vector width
        return measure_truth(cfg, loaded, plant, base_w, test, design, judge), described


def write_truth(cfg, directory: Path, card: dict, truth: dict, design: Design) -> dict:
    """Write the ground truth's responses, its design check and the card (last) into ``directory``; the card."""
    for name, items in truth["items"].items():
        write_responses(directory / f"eval_responses.{name.replace(' ', '_')}.jsonl", items)
    result = check(truth["rows"]["all"], design.refused, cfg.checks, design.kind, truth["residual"])
    log.info("planted organism: design %s %s", result["word"], "; ".join(result["failures"]))
    card["build_hash"] = build_hash(directory, Measurement(truth["rows"]["all"], truth["items"]["all"]))
    card["design"]["conditions"] = truth["conditions"]
    card["truth"] = {"rows": truth["rows"], "residual": truth["residual"], "rows_substring": truth["rows_substring"]}
    card["check"] = result
    (directory / CARD_MD).write_text(card_markdown(card) + truth_markdown(card))
    write_json(directory / CARD_JSON, card)  # last: its presence with this key marks the dir complete
    return card
