"""The report's sections of the lens and probe stages (refusal/evaluation/lens.py, probes.py), built from their
JSON-able results; a stage that did not run (None, or ``{"status": "missing" | "skipped", "reason": ...}``) becomes a
section marked missing (or not run) with the reason, as in refusal/evaluation/sections.py."""
from __future__ import annotations

from pathlib import Path

from refusal.evaluation.report import Image, Section, Table, Text, fmt_ci

LENS = ("lens", "Logit and tuned lens")
PROBES = ("probes", "Linear probes")


def _missing(key: tuple[str, str], result, default: str) -> Section | None:
    if not result:
        return Section(*key, missing=default)
    if isinstance(result, dict) and result.get("status") in ("missing", "skipped"):
        return Section(*key, missing=result.get("reason") or default, not_run=result.get("status") == "skipped")
    return None


def _at(values, i):
    return values[i] if values and i < len(values) else None


def _training_text(t: dict | None) -> Text:
    if not t:
        return Text("Tuned lens: off (logit lens only).")
    how = "reused from a run with the same model, prompts and settings" if t.get("reused") else \
        f"trained in {t.get('seconds')} s"
    return Text(f"Tuned lens: {how}; {t.get('n_tokens')} tokens of {t.get('n_prompts')} prompts, {t.get('steps')} "
                f"steps; training KL (mean over layers) {t.get('first_loss')} at the first step, "
                f"{t.get('last_loss')} at the last.")


def lens_section(result) -> Section:
    miss = _missing(LENS, result, "the lens stage did not run")
    if miss:
        return miss
    lenses, layers = result["lenses"], result["layers"]
    blocks = [Text(f"Refusal score (log-odds of the refusal tokens) read out of the residual stream at every depth, on "
                   f"the {result.get('split')} split ({result.get('n_prompts')} prompts): logit lens = final norm + "
                   "unembedding; tuned lens = the same after a per-layer affine translator trained to match the final "
                   "layer's next-token distribution. Stream l enters layer l; the last one is the model's own output "
                   "(there both lenses give the model's refusal score)."), _training_text(result.get("tuned_training"))]
    if result.get("plot"):
        blocks.append(Image(Path(result["plot"]), "mean refusal log-odds at the first response position by depth, per "
                            "label (CI bands) and toxic category; KL(final ‖ lens) by depth"))
    first = result["curves"][lenses[0]]
    em = result.get("emergence", {})
    rows = [[g, c["n"], *(em.get(k, {}).get(g) for k in lenses),
             *(fmt_ci(_at(result["curves"][k][g]["last"], len(layers) // 2),
                      _at(result["curves"][k][g]["ci_low"], len(layers) // 2),
                      _at(result["curves"][k][g]["ci_high"], len(layers) // 2)) for k in lenses),
             fmt_ci(c["last"][-1], c["ci_low"][-1], c["ci_high"][-1])] for g, c in first.items()]
    mid = layers[len(layers) // 2]
    blocks.append(Table(["group", "n", *(f"emergence layer ({k})" for k in lenses),
                         *(f"score at stream {mid} ({k}) [CI]" for k in lenses), "final score [CI]"], rows,
                        "emergence layer: the first stream whose gap to the safe prompts' mean score reaches "
                        f"{result.get('settings', {}).get('emergence_fraction')} of the final gap (– : no positive "
                        "final gap)"))
    by_layer = [[layer, *(result["kl"][k][i] for k in lenses),
                 *(result["curves"][k].get(g, {}).get("last", [None] * len(layers))[i] for k in lenses
                   for g in ("toxic", "safe", "hard"))] for i, layer in enumerate(layers)]
    blocks.append(Table(["stream", *(f"KL ({k})" for k in lenses),
                         *(f"{g} score ({k})" for k in lenses for g in ("toxic", "safe", "hard"))], by_layer,
                        "per stream: KL(final ‖ lens) and the mean refusal score per label at the first response "
                        "position"))
    return Section(*LENS, blocks)


def probes_section(result) -> Section:
    miss = _missing(PROBES, result, "the probes stage did not run")
    if miss:
        return miss
    layers = result["layers"]
    blocks = [Text(f"Logistic-regression probes on the residual stream ({result.get('position')} position), trained on "
                   f"the {result.get('train_split')} split, scored on the {result.get('split')} split. Control: the "
                   "same probe on the task's labels shuffled among the prompts (Hewitt and Liang 2019); selectivity = "
                   f"accuracy − control accuracy. Probe directions: {result.get('directions')}.")]
    if result.get("plot"):
        blocks.append(Image(Path(result["plot"]), "held-out accuracy (CI band), control accuracy and selectivity by "
                            "depth per task; dashed: the majority-class rate"))
    rows = []
    for t in result["tasks"]:
        i = layers.index(t["best_layer"])
        rows.append([t["task"], t["n_train"], t["n_eval"], t["best_layer"],
                     fmt_ci(t["accuracy"][i], t["ci_low"][i], t["ci_high"][i]), t["control"][i], t["selectivity"][i],
                     t["majority"], fmt_ci(t["accuracy"][-1], t["ci_low"][-1], t["ci_high"][-1])])
    blocks.append(Table(["task", "n train", "n eval", "most selective stream", "accuracy there [CI]", "control",
                         "selectivity", "majority rate", f"accuracy at stream {layers[-1]} [CI]"], rows,
                        "per task, at its most selective stream"))
    tvs = next((t for t in result["tasks"] if t["task"] == "toxic_vs_safe"), None)
    if tvs:
        hard = result.get("hard_predicted_toxic") or [None] * len(layers)
        blocks.append(Table(["stream", "accuracy [CI]", "control", "selectivity", "hard prompts called toxic"],
                            [[layer, fmt_ci(tvs["accuracy"][i], tvs["ci_low"][i], tvs["ci_high"][i]),
                              tvs["control"][i], tvs["selectivity"][i], hard[i]] for i, layer in enumerate(layers)],
                            "toxic vs safe, per stream"))
    return Section(*PROBES, blocks)
