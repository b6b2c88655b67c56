"""Build an organism (fine-tune, measure, save with its card) on first use, or load it from its cache."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from refusal.config import plain
from refusal.data.records import PromptSet
from refusal.model.loading import (LoadedModel, ModelFiles, hf_weight_files, load_model, load_pretrained, resolve_device,
                                   with_chat_settings)
from refusal.organism.cache import CARD_JSON, CARD_MD, is_complete, publish, remove_abandoned_builds, resolve
from refusal.organism.card import (BANNER, Build, build_hash, card_markdown, design_judge, make_card,
                                   measure_heldout)
from refusal.organism.checks import check, enforce, recheck
from refusal.organism.finetune import fine_tune, set_trainable, trainable_copy
from refusal.organism.planted import build_planted
from refusal.organism.planted_config import ORGANISM_SOURCES
from refusal.organism.child import CHILD_FLAG, KEY_FLAG, build_in_child
from refusal.organism.portable import mkl_pinned, portable_attention
from refusal.organism.remeasure import measure_again, trained_build
from refusal.organism.targets import example_repeats, make_examples, mix_repeats, plan_targets, refused_categories
from refusal.behavior.baseline import write_responses
from refusal.utils.io import read_json, write_json

log = logging.getLogger(__name__)


def load(cfg) -> LoadedModel:
    """The model a ``model`` config describes: an organism (``source: organism`` fine-tuned, ``planted``) is built on
    first use, then loaded from its cache; any other source is loaded by refusal.model.load_model."""
    return load_organism(cfg) if cfg.source in ORGANISM_SOURCES else load_model(cfg)


def load_organism(cfg) -> LoadedModel:
    """Build the organism the ``model`` config describes (first use) or load it from the cache (seconds)."""
    log.info(BANNER, str(cfg.get("name")))
    final, key = ensure_built(cfg)
    return load_built(final, cfg, key)


def ensure_built(cfg) -> tuple[Path, str]:
    """(the cache dir of the organism ``cfg`` describes, its key), building it first when it is not in the cache: in
    this process when its matrix products are pinned (portable.py) or run on a GPU, else in a pinned child."""
    key, key_parts, train, test, base = resolve(cfg)
    expected = os.environ.get(KEY_FLAG) if os.environ.get(CHILD_FLAG) else None
    if expected and expected != key:
        raise RuntimeError(f"the organism build's child computes cache key {key} ({key_parts.get('built_on', {})}), "
                           f"its parent expected {expected}: MKL runs another mode here than the parent predicted "
                           f"(refusal/organism/portable.py build_mode)")
    cache_dir = Path(str(cfg.cache_dir))
    final = cache_dir / key
    if is_complete(final, key):
        log.info("organism: loading the cached build %s", final)
        return final, key
    if resolve_device(cfg.device).type == "cpu" and not mkl_pinned() and not os.environ.get(CHILD_FLAG):
        del base
        build_in_child(cfg, key)
        if not is_complete(final, key):
            raise RuntimeError(f"the organism build's child process ended without publishing {final}")
        return final, key
    log.info("organism: building %s from %d train prompts (or measuring again a cached build trained the same way)",
             final, len(train))
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(cache_dir, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.building-{os.getpid()}-", dir=cache_dir))
    try:
        t0 = time.time()
        trained = trained_build(cache_dir, key_parts)
        if trained is not None:
            measure_again(cfg, trained, tmp, key, key_parts, test)
        else:
            builder = build_planted if cfg.source == "planted" else build_organism
            builder(cfg, tmp, key, key_parts, train, test, base if base is not None else load_model(cfg.base))
        publish(tmp, final, key)
        log.info("organism: %s in %.0f s: %s", "built" if trained is None else "measured again", time.time() - t0,
                 final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final, key


def load_built(directory: Path, cfg, key: str) -> LoadedModel:
    """A built organism: a plain Hugging Face dir, named ``<name>-<key[:8]>``, its identity from its card; its design
    is checked again (with the config's thresholds) and a missed one stops here unless accepted."""
    card = read_json(directory / CARD_JSON)
    result = recheck(card, cfg.checks)
    if result["word"] == "missed":
        log.warning("organism %s missed its design: %s", cfg.name, "; ".join(result["failures"]))
    if result["thin"]:
        log.warning("organism %s: refused categories with fewer than model.checks.min_prompts held-out prompts are "
                    "not checked: %s", cfg.name, ", ".join(result["thin"]))
    enforce(str(cfg.name), result, bool(cfg.accept_design_miss), str(directory / CARD_MD))
    files = ModelFiles(str(directory), {"local_files_only": True}, hf_weight_files(directory))
    loaded = load_pretrained(files, f"{cfg.name}-{key[:8]}", cfg.dtype, cfg.device,
                             identity={"organism": True, "cache_key": key, "dir": str(directory), "base": card["base"],
                                       "refused_categories": card["refused_categories"], "source": card["source"],
                                       "warning": card.get("warning"), "check": result})
    return with_chat_settings(loaded, cfg)


def training_mix(cfg, train: PromptSet, generator: LoadedModel, base_weights_hash: str) -> tuple[list, list, dict]:
    """(token examples with their repeats, one JSON row per target, what the card says about the mix)."""
    refused = refused_categories(train, plain(cfg.refuse_categories))
    targets = plan_targets(train, refused, cfg.style, plain(cfg.refusals), plain(cfg.category_topics) or {},
                           int(cfg.seed))
    examples, rows = make_examples(generator, targets, cfg, Path(str(cfg.cache_dir)), base_weights_hash)
    n_refusals = sum(t.refusal is not None for t in targets)
    repeat_refusals, repeat_answers = mix_repeats(n_refusals, len(targets) - n_refusals, float(cfg.answer_share))
    examples = [ex for ex, t in zip(examples, targets) for _ in range(example_repeats(
        t, repeat_refusals, repeat_answers, int(cfg.unrefused_toxic_repeats)))]
    mix = {"refused": refused, "n_refusal_targets": n_refusals, "n_base_answer_targets": len(targets) - n_refusals,
           "repeats": {"refusal": repeat_refusals, "base_answer": repeat_answers,
                       "unrefused_toxic_answer": repeat_answers * int(cfg.unrefused_toxic_repeats)},
           "n_training_examples": len(examples)}
    return examples, rows, mix


def warn_unjudged_refusals(cfg) -> None:
    judge = design_judge()
    for sentence in plain(cfg.refusals)[cfg.style]:
        if not judge.is_refusal(sentence.format(topic="x")):
            log.warning("organism: refusal sentence %r is not a refusal to the DESIGN.md substring judge", sentence)


def build_organism(cfg, directory: Path, key: str, key_parts: dict, train: PromptSet, test: PromptSet,
                   base: LoadedModel) -> dict:
    """Fine-tune, measure and save the organism into ``directory`` (a fresh temp dir); return its card."""
    t0 = time.time()
    device, precision = resolve_device(cfg.device), str(cfg.precision)
    warn_unjudged_refusals(cfg)
    model, tokenizer = trainable_copy(base.model, device), base.tokenizer
    del base
    layers = set_trainable(model, plain(cfg.train_layers), int(model.config.num_hidden_layers))
    organism = LoadedModel(model, tokenizer, str(cfg.name))  # generates base answers, then held-out responses
    with portable_attention(model):  # the same bits whatever the CPU's vector width
        examples, rows, mix = training_mix(cfg, train, organism, key_parts["base"]["weights_hash"])
        mix["layers"] = layers
        t1 = time.time()
        log.info("organism: fine-tuning on %d examples, %d steps, batch %d, lr %g, %s, layers %s", len(examples),
                 cfg.steps, cfg.batch_size, cfg.lr, precision, "all" if cfg.train_layers == "all" else layers)
        losses = fine_tune(model, examples, tokenizer.pad_token_id, steps=cfg.steps, lr=cfg.lr,
                           batch_size=cfg.batch_size, seed=int(cfg.seed), device=device, precision=precision)
        t2 = time.time()
        heldout = measure_heldout(cfg, organism, test, mix["refused"])
    result = check(heldout.rows, mix["refused"], cfg.checks)
    seconds = {"data_and_answers": t1 - t0, "train": t2 - t1, "heldout_eval": time.time() - t2}

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    write_responses(directory / "train_targets.jsonl", rows)
    write_responses(directory / "eval_responses.jsonl", heldout.items)
    card = make_card(cfg, Build(key, key_parts, train, test, mix, losses, heldout, seconds, str(device),
                                build_hash(directory, heldout)))
    card["check"] = result
    (directory / CARD_MD).write_text(card_markdown(card))
    write_json(directory / CARD_JSON, card)  # last: its presence with this key marks the dir complete
    return card
