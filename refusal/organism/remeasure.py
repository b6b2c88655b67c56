"""Measure a cached planted build again instead of training it again. A build is decided by its cache key's parts;
all but the measurement's (the ``eval`` settings: generation length, judge, intervals; and the test prompts) decide
the trained weights. A planted config that differs from a cached build only in those gets a copy of that build,
measured again on its own test prompts with its own ``eval`` (minutes), not a new training run (tens of minutes).
Training is deterministic on a CPU (same config, same bits: refusal/organism/portable.py) and a planted build is
measured as saved, so the copy's card is the card a new build would write; it also says which build trained it
(``measured_again``). Fine-tuned organisms are always built: their card is measured on the model in memory."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from refusal.behavior.measure import Measurement
from refusal.data.records import PromptSet
from refusal.organism.cache import CARD_JSON, CARD_MD, is_complete
from refusal.organism.card import heldout_record
from refusal.organism.design import Design
from refusal.organism.planted import measure_planted, write_truth
from refusal.organism.planted_config import organism_build_config
from refusal.utils.io import read_json, stable_hash

log = logging.getLogger(__name__)

MEASURE_KEYS = ("eval",)  # build keys that decide only how the build is measured, not what is trained
MEASURE_PARTS = ("test_prompts_hash",)  # the same for the cache key's other parts


def trained_key(what: dict) -> str:
    """The hash of what decides the trained weights: a cache key's parts without the measurement's."""
    build = {k: v for k, v in what["build"].items() if k not in MEASURE_KEYS}
    return stable_hash({**{k: v for k, v in what.items() if k not in MEASURE_PARTS}, "build": build}, length=16)


def trained_build(cache_dir: Path, what: dict) -> Path | None:
    """A complete cached planted build trained exactly as ``what`` (a cache key's parts) says, if there is one."""
    if what.get("source") != "planted":
        return None
    want = trained_key(what)
    for card_path in sorted(cache_dir.glob(f"*/{CARD_JSON}")):
        try:
            card = read_json(card_path)
        except (ValueError, OSError):
            continue
        hashed = card.get("what_is_hashed")
        if (isinstance(hashed, dict) and isinstance(hashed.get("build"), dict) and trained_key(hashed) == want
                and is_complete(card_path.parent, str(card.get("cache_key")))):
            return card_path.parent
    return None


def measure_again(cfg, source: Path, directory: Path, key: str, key_parts: dict, test: PromptSet) -> dict:
    """Copy the planted build in ``source`` into ``directory`` (a fresh temp dir), measure it with ``cfg``'s
    ``eval``, check it and write its card (last); the card."""
    t0 = time.time()
    old = read_json(source / CARD_JSON)
    for f in source.iterdir():
        if f.is_file() and f.name not in (CARD_JSON, CARD_MD) and not f.name.startswith("eval_responses"):
            shutil.copy2(f, directory / f.name)
    refused = list(old["refused_categories"])
    card = {**old, "cache_key": key, "what_is_hashed": key_parts, "config": organism_build_config(cfg),
            "data": {**old["data"], "test_prompts_hash": test.content_hash(), "n_test": len(test)},
            "measured_again": {"trained_by": old.get("measured_again", {}).get("trained_by", old["cache_key"])}}
    log.info("organism: measuring the build %s again with this config's eval settings (trained identically)", source)
    design = Design(old["design"]["kind"], refused, float(old["design"]["share"]))
    truth, judge = measure_planted(cfg, directory, test, design, old["design"]["wordings"])
    card["heldout"] = heldout_record(cfg, Measurement(truth["rows"]["all"], truth["items"]["all"]), judge)
    seconds = round(time.time() - t0, 1)
    card["build_seconds"] = {**old["build_seconds"], "heldout_eval": seconds}
    card["measured_again"]["seconds"] = seconds
    return write_truth(cfg, directory, card, truth, design)
