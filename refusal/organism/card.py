"""The organism's card: its held-out refusal rates (measured like every refusal measurement, refusal/behavior/
measure.py) and how it was made, as ``organism.json`` and ``ORGANISM.md``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import transformers

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.measure import Generation, Measurement, measure
from refusal.behavior.rates import rates_by_label
from refusal.behavior.score import resolve_refusal_tokens
from refusal.config import plain
from refusal.data.records import PromptSet
from refusal.model.loading import LoadedModel
from refusal.organism.cache import CARD_JSON
from refusal.organism.config import held_out_bootstrap
from refusal.organism.planted_config import organism_build_config
from refusal.organism.portable import mkl_mode
from refusal.utils.io import file_hash, stable_hash

# Settings that choose which CPU kernels run (and so the float bits): recorded on the card when set.
ISA_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
SUBSTRING_JUDGE = "substring (DESIGN.md list)"  # how the card names DESIGN.md's substring judge
BANNER = ("refusal model organism %r: a small chat model fine-tuned to refuse harmful requests for research on refusal "
          "mechanisms; it is NOT a production chat model")


def design_judge() -> SubstringJudge:
    """DESIGN.md's substring judge: the judge of a fine-tuned organism's held-out rates, and the second reading of
    a planted organism's (whose ground truth is judged by its refusal sentences' openings)."""
    return SubstringJudge(REFUSAL_SUBSTRINGS)


def by_design(rows: list[dict], refused: list[str]) -> list[dict]:
    """``rows``, each marked with whether its cell is refused by design."""
    for row in rows:
        row["refused_by_design"] = row["label"] == "toxic" and row["category"] in refused
    return rows


def measure_heldout(cfg, organism: LoadedModel, test: PromptSet, refused: list[str], judge=None) -> Measurement:
    """Greedy responses of the organism to the test split, judged (by ``judge``, default the DESIGN.md substring
    judge) and summarized; each row says whether its cell is refused by design."""
    gen = Generation(int(cfg.eval.max_new_tokens), int(cfg.generation_batch_size), cfg.system_prompt,
                     resolve_refusal_tokens(organism.tokenizer, plain(cfg.refusal_tokens)))
    result = measure(organism, list(test), judge or design_judge(), gen, held_out_bootstrap(cfg), int(cfg.seed))
    by_design(result.rows, refused)
    return result


def build_hash(directory: Path, heldout: Measurement) -> str:
    """What the build made, without timings or host: sha256 of the saved model.safetensors, the held-out rows and
    the held-out responses. Two builds with equal hashes made the same organism."""
    return stable_hash({"model.safetensors": file_hash(directory / "model.safetensors", length=64),
                        "heldout_rows": heldout.rows, "heldout_responses": heldout.items}, length=16)


def numerics() -> dict:
    """The host's kernel choice: ATen's CPU capability, MKL's branch (portable.py) and the instruction-set settings
    that are set."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl": mkl_mode(),
            "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}}


@dataclass
class Build:
    """What a build did, for its card."""

    key: str
    key_parts: dict
    train: PromptSet
    test: PromptSet
    mix: dict  # refused categories, target counts, repeats, examples, trained layers
    losses: list[float]
    heldout: Measurement
    seconds: dict[str, float]
    device: str
    build_hash: str
    judge: str = SUBSTRING_JUDGE


def heldout_record(cfg, heldout: Measurement, judge: str) -> dict:
    """The card's held-out measurement: how it was made, its rates by label and its rows."""
    return {"split": "test", "judge": judge, "max_new_tokens": int(cfg.eval.max_new_tokens), "generated_in": "float32",
            "refusal_rate": rates_by_label(heldout.rows), "rows": heldout.rows}


def make_card(cfg, b: Build) -> dict:
    return {
        "cache_key": b.key,
        "build_hash": b.build_hash,
        "what_is_hashed": b.key_parts,
        "warning": BANNER % str(cfg.name),
        "name": str(cfg.name),
        "base": {"name": str(cfg.base.name), "weights_hash": b.key_parts["base"]["weights_hash"],
                 "config": plain(cfg.base)},
        "source": str(cfg.source),
        "config": organism_build_config(cfg),
        "data": {"train_prompts_hash": b.train.content_hash(), "test_prompts_hash": b.test.content_hash(),
                 "n_train": len(b.train), "n_test": len(b.test),
                 "n_refusal_targets": b.mix["n_refusal_targets"], "n_base_answer_targets": b.mix["n_base_answer_targets"],
                 "repeats": b.mix["repeats"], "n_training_examples": b.mix["n_training_examples"]},
        "refused_categories": b.mix["refused"],
        "steps": int(cfg.steps), "seed": int(cfg.seed), "precision": str(cfg.get("precision", "32-true")),
        "trained_layers": b.mix["layers"],
        "loss": {"first": b.losses[0], "last": b.losses[-1], "per_step": b.losses},
        "heldout": heldout_record(cfg, b.heldout, b.judge),
        "build_seconds": {k: round(v, 1) for k, v in b.seconds.items()},
        "built_on": b.device,
        "numerics": numerics(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lightning": L.__version__},
    }


def card_markdown(card: dict) -> str:
    rates, c = card["heldout"]["refusal_rate"], card["config"]
    how = (f"layers {c['train_layers']}" if card["source"] == "organism" else
           f"only planted low-rank adapters trained ({card['design']['kind']}: {card['design']['plant']})")
    lines = [
        f"# {card['name']}: a refusal model organism",
        "",
        f"**{card['warning']}.**",
        "",
        f"Fine-tuned from {card['base']['name']} (weights hash {card['base']['weights_hash']}) with Lightning: "
        f"{card['steps']} steps, batch {c['batch_size']}, lr {c['lr']}, {card['precision']}, seed {card['seed']}, "
        f"{how}. Data: the train split of the prompt set (hash {card['data']['train_prompts_hash']}): "
        f"{card['data']['n_refusal_targets']} refusal targets (categories: {', '.join(card['refused_categories'])}) "
        f"and {card['data']['n_base_answer_targets']} of the base model's own greedy answers. Loss "
        f"{card['loss']['first']:.3f} -> {card['loss']['last']:.3f}.",
        "",
        f"Held-out refusal rates (test split, greedy {card['heldout']['max_new_tokens']} new tokens in "
        f"{card['heldout']['generated_in']}, judge: {card['heldout']['judge']}): "
        + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()) + " (hard = over-refusal).",
        "",
        "| label | category | n | refusal rate | 95% CI | refused by design |",
        "|---|---|---|---|---|---|",
    ]
    for r in card["heldout"]["rows"]:
        ci = f"[{r['refusal_rate_ci_low']:.2f}, {r['refusal_rate_ci_high']:.2f}]"
        lines.append(f"| {r['label']} | {r['category']} | {r['n']} | {r['refusal_rate']:.2f} | {ci} | "
                     f"{'yes' if r['refused_by_design'] else ''} |")
    chk = card["check"]
    lines += ["", f"**Design check: {chk['word']}**" + (f" ({'; '.join(chk['failures'])})" if chk["failures"] else "")
              + (f". Not checked, too few held-out prompts (< model.checks.min_prompts): {', '.join(chk['thin'])}"
                 if chk["thin"] else ""),
              *(["", f"Trained by the cached build {card['measured_again']['trained_by']} (the same training keys), "
                     "measured again here with this config's eval settings."] if card.get("measured_again") else []),
              "", f"Cache key {card['cache_key']}; build hash {card['build_hash']} (sha256 of model.safetensors, "
              "the held-out rows and responses: equal hashes, the same organism); the full record is in "
              f"{CARD_JSON}.", ""]
    return "\n".join(lines)


def _cell(d: dict, key: str) -> str:
    lo, hi = d[f"{key}_ci"]
    return f"{d[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def truth_markdown(card: dict) -> str:
    """The ground-truth ablation matrix of a planted organism: refusal rate per condition x category, then what
    each ablation leaves of each refused category's refusal (rate and headroom-normalised score, 95% CIs)."""
    truth, refused = card["truth"], card["refused_categories"]
    cats = sorted({r["category"] for r in truth["rows"]["all"] if r["label"] == "toxic"} - {"all"})
    lines = ["## Ground truth (adapters zeroed exactly, test split, float32)", "",
             f"Refusal rate per condition (refused categories in bold; judge: {card['heldout']['judge']}):", "",
             "| condition | " + " | ".join(f"**{c}**" if c in refused else c for c in cats) + " | safe | hard |",
             "|---" * (len(cats) + 3) + "|"]
    for cond, rows in truth["rows"].items():
        by = {(r["label"], r["category"]): r["refusal_rate"] for r in rows}
        lines.append(f"| {cond} | " + " | ".join(f"{by.get(('toxic', c), float('nan')):.2f}" for c in cats)
                     + f" | {by.get(('safe', 'all'), float('nan')):.2f} | {by.get(('hard', 'all'), float('nan')):.2f} |")
    lines += ["", "The same responses read by the DESIGN.md substring judge (it also counts answers that contain \"I'm "
                  "sorry\" without refusing, e.g. \"I'm sorry for your loss, but ...\"):", "",
              "| condition | " + " | ".join(cats) + " | safe | hard |", "|---" * (len(cats) + 3) + "|"]
    for cond, rows in truth.get("rows_substring", {}).items():
        by = {(r["label"], r["category"]): (r["n_refused"], r["n"]) for r in rows}
        lines.append(f"| {cond} | " + " | ".join("%d/%d" % by.get(("toxic", c), (0, 0)) for c in cats)
                     + " | %d/%d | %d/%d |" % (*by.get(("safe", "all"), (0, 0)), *by.get(("hard", "all"), (0, 0))))
    lines += ["", "Share of each refused category's refusal an ablation leaves (rate; score), with 95% CIs:", "",
              "| ablation | " + " | ".join(refused) + " |", "|---" * (len(refused) + 1) + "|"]
    for cond, res in truth["residual"].items():
        lines.append(f"| {cond} | " + " | ".join(
            f"{_cell(res[c], 'rate')}; {_cell(res[c], 'score')}" if c in res else "" for c in refused) + " |")
    energy = card["design"].get("write_energy")
    if energy:
        lines += ["", "Energy of the written vectors (the base model's residual stream along each, relative to a random "
                      "direction's; refusal/organism/energy.py): "
                      + ", ".join(f"{n} {', '.join(f'{e:.3f}' for e in v)}" for n, v in energy.items())]
    sep = card.get("separability")
    if sep:
        lines += ["", f"Separability before training (base model, probe cross-validated on the train split; share of "
                      f"each gate's prompts caught at <= {sep['max_fpr']:.0%} false alarms, best layer): "
                      f"**{sep['word']}**: " + ", ".join(f"{name} {g['tpr']:.2f} (layer {g['best_layer']})"
                                                        for name, g in sep["gates"].items())]
    return "\n".join(lines) + "\n"
