"""The evaluation report's sections, built from JSON-able results only (what the stages and earlier runs wrote),
so a report can be rendered for any run: a stage that did not run or whose inputs are absent becomes a section
marked missing with the reason.

``build_report(data)``: ``data`` has the keys ``meta`` (dict), ``data_analysis``, ``train_manifest``,
``discovery``, ``discover_dir``, ``baseline``, ``sae_quality``, ``faithfulness``, ``transfer``, ``direction``,
``cast``, ``neurons``, ``verdict``, ``organism`` (the organism card's warning, design check and source, or None),
``dashboards`` (the discover run's dashboards.json), ``patching``, ``ablation_curve``, ``eap``, ``lens``,
``probes``, ``bottleneck``; each stage
value is its result dict or ``{"status": "missing" | "skipped", "reason": ...}`` or None.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from refusal.evaluation.answer import TITLE as ANSWER, answer_section
from refusal.evaluation.bottleneck_section import (KEY as BOTTLENECK_KEY, TITLE as BOTTLENECK_TITLE,
                                                   bottleneck_section)
from refusal.evaluation.dashboard_section import KEY as DASHBOARDS_KEY, TITLE as DASHBOARDS_TITLE, dashboards_section
from refusal.evaluation.graph_section import KEY as GRAPH_KEY, TITLE as GRAPH_TITLE, graph_section
from refusal.evaluation.eap_section import EAP_KEY, EAP_TITLE, eap_section
from refusal.evaluation.lens_section import LENS, PROBES, lens_section, probes_section
from refusal.evaluation.patching_section import (ABLATION_KEY, ABLATION_TITLE, PATCHING_KEY, PATCHING_TITLE,
                                                 ablation_curve_section, patching_section)
from refusal.evaluation.report import Image, Report, Section, Table, Text, fmt, fmt_ci

SECTIONS = (("verdict", ANSWER), (BOTTLENECK_KEY, BOTTLENECK_TITLE), ("transfer", "Transfer matrix"),
            ("circuits", "Circuits and similarity"),
            (GRAPH_KEY, GRAPH_TITLE), ("statistics", "Statistics"), ("faithfulness", "Faithfulness and completeness"),
            ("baseline", "Baseline refusal per category"), ("sae_quality", "SAE quality"), ("data", "Data summary"),
            ("direction", "Refusal direction (reference method)"), ("cast", "Conditional steering (CAST)"),
            ("neurons", "Refusal-writing MLP neurons"), (PATCHING_KEY, PATCHING_TITLE), (ABLATION_KEY, ABLATION_TITLE),
            (EAP_KEY, EAP_TITLE), LENS, PROBES, (DASHBOARDS_KEY, DASHBOARDS_TITLE))
TITLES = dict(SECTIONS)


def _ci(value, low, high) -> str:
    return fmt_ci(value, low, high)


def _missing(key: str, result, default: str) -> Section | None:
    """A missing section when ``result`` is absent or marks itself missing, a not-run one when it marks itself
    skipped (its stage is not in evaluation.stages)."""
    if not result:
        return Section(key, TITLES[key], missing=default)
    if isinstance(result, dict) and result.get("status") in ("missing", "skipped"):
        return Section(key, TITLES[key], missing=result.get("reason") or default,
                       not_run=result.get("status") == "skipped")
    return None


# ----------------------------------------------------------------------------------------------- sections
def data_section(analysis: dict | None) -> Section:
    if not analysis:
        return Section("data", TITLES["data"], missing="no data_analysis.json (no train run dir given)")
    cells: dict[tuple[str, str], dict[str, int]] = {}
    for c in analysis.get("counts", []):
        cells.setdefault((c["category"], c["label"]), {})[c["split"]] = c["n"]
    splits = ("train", "val", "test")
    rows = [[cat, label, *(v.get(s, 0) for s in splits), sum(v.values())] for (cat, label), v in sorted(cells.items())]
    blocks = [Table(["category", "label", *splits, "total"], rows, "prompts per category × label × split")]
    totals = analysis.get("totals", {})
    if totals:
        blocks.append(Text(f"{totals.get('prompts')} prompts; by label: " +
                           ", ".join(f"{k} {v}" for k, v in totals.get("by_label", {}).items())))
    for w in analysis.get("warnings", []):
        blocks.append(Text(f"Warning: {w}"))
    return Section("data", TITLES["data"], blocks)


def baseline_section(result) -> Section:
    miss = _missing("baseline", result, "the baseline stage did not run")
    if miss:
        return miss
    rows = [[r["label"], r["category"], r["n"], _ci(r["refusal_rate"], r["refusal_rate_ci_low"], r["refusal_rate_ci_high"]),
             _ci(r["refusal_score_mean"], r["refusal_score_ci_low"], r["refusal_score_ci_high"])] for r in result["rows"]]
    return Section("baseline", TITLES["baseline"], [
        Text(f"Greedy responses ({result.get('max_new_tokens')} new tokens) on the {result.get('split')} split, judged by "
             f"{result.get('judge')}; refusal score = log-odds of the refusal tokens at the first response position. "
             f"Rates of hard prompts are over-refusal. Brackets: {result.get('ci_level')} CIs."),
        Table(["label", "category", "n", "refusal rate [CI]", "mean refusal score [CI]"], rows)])


def sae_section(train_manifest: dict | None, result) -> Section:
    blocks = []
    metrics = (train_manifest or {}).get("metrics", {})
    hooks = (train_manifest or {}).get("hooks", [])
    if hooks and metrics:
        names = ("explained_variance", "mse", "l0", "dead_fraction")
        blocks.append(Table(["hook", *names], [[h, *(metrics.get(f"val/{h}/{n}") for n in names)] for h in hooks],
                            "at the end of training (validation activations)"))
    if result and result.get("status") not in ("missing", "skipped"):
        cols = ("explained_variance", "l0", "ce_orig", "ce_sae", "ce_zero", "ce_loss_recovered")
        blocks.append(Table(["hook", "prompts", *cols], [[r["hook"], r["n_prompts"], *(r[c] for c in cols)]
                                                         for r in result["rows"]],
                            f"held-out {result.get('split')} prompts, every token; CE loss recovered = "
                            "(CE_zero − CE_sae)/(CE_zero − CE_orig)"))
    elif result:
        blocks.append(Text(f"Held-out SAE metrics missing: {result.get('reason')}"))
    if not blocks:
        return Section("sae_quality", TITLES["sae_quality"], missing="no train manifest metrics and no sae_quality stage")
    return Section("sae_quality", TITLES["sae_quality"], blocks)


def _discover_png(discover_dir: str | None, path: str) -> Path:
    p = Path(path)
    if discover_dir and not p.is_file():
        return Path(discover_dir) / "heatmaps" / p.name
    return p


def circuits_section(discovery: dict | None, discover_dir: str | None) -> Section:
    if not discovery:
        return Section("circuits", TITLES["circuits"], missing="no discover run dir given")
    rows = [[c["category"], c["kind"], c["n_nodes"], c["n_edges"], c.get("metric_clean"), c.get("metric_patch"),
             c.get("error_mass_fraction")] for c in discovery.get("circuits", [])]
    sim = discovery.get("similarity", {})
    blocks = [Table(["category", "kind", "nodes", "edges", "metric clean", "metric patch", "error mass fraction"], rows,
                    f"circuit files: {{model}}_{{category}}_{{toxic|safe}}_circuit.json ({discovery.get('metric', {}).get('name')})"),
              Text(f"Similarities over feature nodes, sizes equalised to the top {sim.get('n_equalised')} nodes; mean "
                   "off-diagonal: " + ", ".join(f"{k} {fmt(v)}" for k, v in sim.get("mean_offdiagonal", {}).items()))]
    for key, path in discovery.get("heatmaps", {}).items():
        blocks.append(Image(_discover_png(discover_dir, path), key.replace("_", " ")))
    return Section("circuits", TITLES["circuits"], blocks)


def statistics_section(discovery: dict | None) -> Section:
    if not discovery:
        return Section("statistics", TITLES["statistics"], missing="no discover run dir given")
    g = discovery.get("global_test", {})
    core = discovery.get("shared_core", {})
    ci = core.get("mean_core_mass_ci") or {}
    blocks = [Table(["test", "statistic", "p", "null mean", "permutations"],
                    [[g.get("statistic_name", "global"), g.get("statistic"), g.get("p_value"), g.get("null_mean"),
                      g.get("n_permutations")]], "global permutation test (category labels permuted)"),
              Table(["category A", "category B", "statistic", "p", "p (BH)", "differs"],
                    [[p["a"], p["b"], p.get("statistic"), p.get("p_value"), p.get("p_adjusted"), p.get("differs")]
                     for p in discovery.get("pairwise_tests", [])], "pairwise permutation tests"),
              Table(["category", "core mass"], [[c, v] for c, v in core.get("core_mass", {}).items()],
                    f"shared core: {core.get('n_nodes')} feature nodes in every category's circuit; mean core mass "
                    f"{_ci(core.get('mean_core_mass'), ci.get('low'), ci.get('high'))}")]
    return Section("statistics", TITLES["statistics"], blocks)


def faithfulness_section(result) -> Section:
    miss = _missing("faithfulness", result, "the faithfulness stage did not run")
    if miss:
        return miss
    rows = []
    for name, c in result["curves"].items():
        d = c.get("discovered") or {}
        rf, rc = d.get("random", {}).get("faithfulness", {}), d.get("random", {}).get("completeness", {})
        rows.append([name, c.get("n_prompts"), d.get("n_nodes"), d.get("faithfulness"), d.get("completeness"),
                     rf.get("mean"), rc.get("mean"), c.get("m_full"), c.get("m_empty")])
    blocks = [Text(f"m = {result.get('metric', {}).get('name')} on held-out toxic prompts of the circuit's category; "
                   "nodes outside the circuit ablated (faithfulness) or the circuit's own nodes ablated "
                   "(completeness, low is good). Raw values, not clamped. Thresholds "
                   f"({result.get('threshold_mode')}): {fmt(result.get('thresholds'))}; {result.get('n_random')} "
                   "random circuits of the same size per hook per point.")]
    if result.get("plot"):
        blocks.append(Image(Path(result["plot"]), "faithfulness (blue) and completeness (red) against circuit size; "
                                                  "dotted: random circuits; stars: the discovered circuits"))
    blocks.append(Table(["circuit", "prompts", "nodes", "faithfulness", "completeness", "random faithfulness",
                         "random completeness", "m(M)", "m(∅)"], rows, "the discovered circuits"))
    for name, why in result.get("skipped", {}).items():
        blocks.append(Text(f"{name}: skipped ({why})"))
    return Section("faithfulness", TITLES["faithfulness"], blocks)


def _cell_table(result: dict, key: str, caption: str) -> Table:
    by = {(c["circuit"], c["prompts"]): c for c in result["cells"]}
    rows = [[r, *(_ci(by[(r, col)].get(key), by[(r, col)].get(f"{key}_ci_low"), by[(r, col)].get(f"{key}_ci_high"))
                  for col in result["columns"])] for r in result["rows"]]
    return Table(["circuit ablated ↓ / prompts →", *result["columns"]], rows, caption)


def transfer_section(result) -> Section:
    miss = _missing("transfer", result, "the transfer stage did not run")
    if miss:
        return miss
    size = result.get("size")
    rows_are = (f"the top {size} feature nodes per hook of each category (every row the same size)" if size is not None
                else "the circuit as discovered (" + ("all nodes" if result.get("include_error_nodes") else
                                                      "feature nodes only") + ")")
    blocks = [Text(f"Rows: what is ablated: {rows_are}; columns: held-out prompts.")]
    head = result.get("headroom") or {}
    if head:
        blocks.append(Table(["category", "headroom (mean score − safe mean) [CI]", "counted"],
                            [[c, _ci(h["headroom"], h["ci_low"], h["ci_high"]),
                              "yes" if h["counted"] else "no (headroom CI not above 0)"] for c, h in head.items()],
                            "only counted categories (the model refuses them) enter the statistic"))
    for note in result.get("notes") or []:
        blocks.append(Text(note))
    for key, caption in (("score_drop_share", "share of each category's refusal removed (score drop ÷ its headroom) "
                                              "[CI]"),
                         ("score_drop", "refusal-score drop (baseline − ablated) [CI]"),
                         ("random_score_drop", f"score drop for {result.get('n_random')} random circuits of the same size [CI]"),
                         ("refusal_rate", "refusal rate with the circuit ablated [CI]")):
        if key in result.get("matrices", {}):
            if key in result.get("plots", {}):
                blocks.append(Image(Path(result["plots"][key])))
            blocks.append(_cell_table(result, key, caption))
    st = result.get("statistic")
    if st:
        ci = st.get("ci", {})
        rows = [[k, st.get(k), ci.get(k, {}).get("low"), ci.get(k, {}).get("high")]
                for k in ("specificity", "mean_diagonal", "mean_offdiagonal", "transfer_ratio", "beats_random")
                if k in st]
        blocks.append(Table(["statistic (score)", "value", "CI low", "CI high"], rows,
                            f"specificity S: permutation p = {fmt(st.get('p_value'))} ({st.get('n_permutations')} "
                            f"permutations, null mean {fmt(st.get('null_mean'))})"))
    sr = result.get("statistic_rate")
    if sr:
        blocks.append(Text(f"Same statistic on generated refusal: S = {fmt(sr.get('specificity'))}, p = "
                           f"{fmt(sr.get('p_value'))}, transfer ratio = {fmt(sr.get('transfer_ratio'))}"))
    dec = result.get("decision", {})
    blocks.append(Text(f"Transfer rule (descriptive, not the verdict): {dec.get('verdict')}", strong=True))
    blocks.append(Text("Read it as how much each category's top SAE features also carry the other categories' refusal, "
                       "not as whether their mechanisms are shared: on tiny models with hand-wired refusal "
                       "(python bench/verdict.py) it reads the modular ones as monolithic when the SAEs are trained "
                       "(their latents merge the categories' wired directions), while the verdict gets them right."))
    if dec.get("evidence", {}).get("transfer_ratio_ci"):
        low, high = dec["evidence"]["transfer_ratio_ci"]
        own = dec["evidence"].get("own_share_ci_low")
        blocks.append(Text(f"Transfer ratio {fmt(dec['evidence'].get('transfer_ratio'))} [{fmt(low)}, {fmt(high)}] "
                           f"against the margins {fmt(dec['thresholds']['modular_max_transfer'])} and "
                           f"{fmt(dec['thresholds']['monolithic_min_transfer'])}" +
                           (f"; own-category share CI low {fmt(own)} (a reading needs ≥ "
                            f"{fmt(dec['thresholds'].get('min_own_share'))})" if own is not None else "")))
    blocks.append(Text(f"Rule: {dec.get('rule')}"))
    if result.get("categories_without_prompts"):
        blocks.append(Text("Circuits without held-out prompts: " + fmt(result["categories_without_prompts"])))
    return Section("transfer", TITLES["transfer"], blocks)


def _held_out_kl(result) -> str:
    """The direction's KL on the held-out safe prompts: all of them, and those the model answers unintervened."""
    def part(kl):
        return _ci(kl.get("mean"), kl.get("ci_low"), kl.get("ci_high")) + (f" (n = {kl['n']})" if kl.get("n") else "")

    text = "KL(baseline ‖ ablated) on held-out safe prompts: " + part(result.get("kl_safe", {}))
    answered = result.get("kl_safe_answered") or {}
    if answered.get("n"):
        text += (f"; on the ones the model answers unintervened: {part(answered)} (on a refused one the ablation's "
                 "KL is the refusal it removes)")
    return text


def direction_section(result) -> Section:
    miss = _missing("direction", result, "the direction stage did not run")
    if miss:
        return miss
    sel = result["selected"]
    blocks = [Table(["layer", "position", "ablation score", "KL (selection)", "induced score", "filters passed",
                     "candidates"],
                    [[sel["layer"], sel["position"], sel["ablation_score"], sel["kl_safe"], sel["induce_score"],
                      result.get("filters_passed"), result.get("n_candidates")]],
                    f"selected direction (estimator: {result.get('method', 'dim')})"),
              Text(_held_out_kl(result))]
    if result.get("fallback"):
        blocks.insert(1, Text(f"No candidate passed every filter; selected with {result['fallback']}.", strong=True))
    if result.get("layer_plot"):
        blocks.append(Image(Path(result["layer_plot"]), "layer scan: every candidate's refusal score under ablation "
                            "(toxic) and actadd (safe), and the ablation's KL on safe prompts (dashed: the baseline "
                            "toxic score and the filters); star: selected"))
    cells = {(r["condition"], r["label"], r["category"]): r for r in result.get("rates", [])}
    conditions = ("baseline", "ablation", "actadd") + (("abliterated",) if result.get("export") else ())
    keys = [(lb, c) for cond, lb, c in cells if cond == "baseline"]  # rates.summarize order

    def rate(cond, lb, c):
        r = cells.get((cond, lb, c))
        return _ci(r["refusal_rate"], r["refusal_rate_ci_low"], r["refusal_rate_ci_high"]) if r else None

    def score(cond, lb, c):
        return (cells.get((cond, lb, c)) or {}).get("refusal_score_mean")
    rows = [[lb, c, cells[("baseline", lb, c)]["n"], *(rate(k, lb, c) for k in conditions),
             *(score(k, lb, c) for k in conditions)] for lb, c in keys]
    blocks.append(Table(["label", "category", "n", *(f"{k} rate [CI]" for k in conditions),
                         *(f"{k} score" for k in conditions)], rows,
                        "ablation: direction projected out at every layer (toxic, hard, safe prompts); actadd: "
                        "direction added at the selected layer (safe, hard prompts)"
                        + ("; abliterated: the exported model with the direction orthogonalised out of its weights, "
                           "loaded from its dir" if result.get("export") else "")))
    blocks += _methods_blocks(result.get("methods")) + _export_blocks(result.get("export"))
    pc = result.get("per_category", {})
    if pc.get("categories"):
        if result.get("plot"):
            blocks.append(Image(Path(result["plot"]), "cosine similarity of per-category directions"))
        blocks.append(Table(["category", "cosine with selected direction"],
                            [[c, v] for c, v in zip(pc["categories"], pc["cosine_with_selected"])]))
    return Section("direction", TITLES["direction"], blocks)


def _methods_blocks(methods: dict | None) -> list:
    if not methods:
        return []
    return [Table(["estimator", "ablation score (toxic)", "induced score (safe)", "KL (safe)", "filters passed",
                   "|cos| with reference"],
                  [[r["method"], r["ablation_score"], r["induce_score"], r["kl_safe"], r["passes"],
                    r["abs_cos_with_reference"]] for r in methods["rows"]],
                  f"estimators compared at layer {methods['layer']}, position {methods['position']} (the "
                  f"{methods['at']} candidate's; selection prompts); reference: {methods['reference']}"),
            Image(Path(methods["plot"]), "estimators compared: refusal score under ablation and actadd, KL")]


def _export_blocks(export: dict | None) -> list:
    if not export:
        return []
    return [Text(f"Abliterated model written to {export['dir']} ({export['n_edited_tensors']} tensors edited; load "
                 f"it with {export['load']}); largest next-token logit difference from the ablation hooks on the "
                 f"held-out safe prompts: {export['max_logit_diff_vs_hooks']}"
                 + ("" if export["hooks_match_weights"] else " (the stage's ablation_hooks are not the full set the "
                    "weights edit, so the two need not agree)"))]


def _rates_by_condition(rates: list[dict], names: list[str], caption: str) -> Table:
    """One row per (label, category) of the baseline rows, its n and the refusal rate under each condition."""
    cells = {(r["condition"], r["label"], r["category"]): r for r in rates}
    keys = [(lb, c) for cond, lb, c in cells if cond == "baseline"]
    return Table(["label", "category", "n", *names],
                 [[lb, c, cells[("baseline", lb, c)]["n"],
                   *(fmt((cells.get((n, lb, c)) or {}).get("refusal_rate")) for n in names)] for lb, c in keys],
                 caption)


def cast_section(result) -> Section:
    miss = _missing("cast", result, "the cast stage did not run")
    if miss:
        return miss
    conds = result["conditions"]
    blocks = [Text(f"One condition per toxic category at layer {result['condition_layer']} (estimator "
                   f"{result['estimator']}, thresholds chosen on the {result['threshold_split']} split); behaviour: "
                   f"{fmt(result['coeff'])} x the refusal direction added at layer {result['behaviour_layer']} while "
                   "a prompt on which the condition fires is generated."),
              Table(["condition", "threshold (cosine)", "balanced accuracy (threshold split)", "positives there"],
                    [[c, d["threshold"], d["val_balanced_accuracy"], d["n_val_positive"]] for c, d in conds.items()])]
    names = ["baseline", "always"] + [f"cast:{c}" for c in list(conds) + ["any"]]
    keys = [(r["label"], r["category"]) for r in result["rates"] if r["condition"] == "baseline"]
    blocks.append(_rates_by_condition(result["rates"], names, "refusal rate per condition: baseline (no steering), "
                                      "always (steered on every prompt), cast:<c> (steered where c's condition fires)"))
    fire = {(r["condition"], r["label"], r["category"]): r["fire_rate"] for r in result["firing"]}
    firing_names = list(conds) + ["any"]
    blocks.append(Table(["label", "category", *firing_names],
                        [[lb, c, *(fmt(fire.get((n, lb, c))) for n in firing_names)] for lb, c in keys],
                        "share of prompts each condition fires on (on safe and hard prompts: false triggers)"))
    if result.get("plot"):
        blocks.append(Image(Path(result["plot"]), "where each condition fires"))
    return Section("cast", TITLES["cast"], blocks)


def neurons_section(result) -> Section:
    miss = _missing("neurons", result, "the neurons stage did not run")
    if miss:
        return miss
    total = result["total"]
    blocks = [Text(f"Difference of means along the direction at layer {result['layer']}, position "
                   f"{result['position']}: {fmt(total)} = embedding {fmt(result['embedding'])} + attention "
                   f"{fmt(result['attention_total'])} + MLP neurons {fmt(result['mlp_total'])} (closure "
                   f"{fmt(result['closure'])})."),
              Table(["top k neurons", "share of the direction"], [[k, v] for k, v in result["top_k_share"].items()]),
              Table(["layer", "neuron", "part", "share", "cos(write, direction)"],
                    [[x["layer"], x["neuron"], x["part"], x["share"], x["cos_write"]] for x in result["top"]],
                    "the neurons steered, largest part first")]
    for hook, dec in result.get("sae_decoders", {}).items():
        blocks.append(Table(["top k decoder directions", "share of |direction|² spanned"],
                            [[k, v] for k, v in dec["shares"].items()], f"SAE at {hook}"))
    names = ["baseline", "neurons_ablate", "neurons_ablate_random", "neurons_induce"]
    blocks.append(_rates_by_condition(result["rates"], names, "refusal rate: the top neurons ablated (toxic, hard), "
                                      "as many random neurons of the same layers ablated, the top neurons clamped to "
                                      "their mean toxic activation (safe, hard)"))
    return Section("neurons", TITLES["neurons"], blocks)


def build_report(data: dict) -> Report:
    """The answer first (verdict, key figure, caveats), then the evidence in the order a reader checks it: the causal
    test, the circuits, their statistics and faithfulness, the model's behaviour and the SAEs, the reference methods
    (direction, steering, neurons), the localisation methods (patching, ablation curves, lens, probes), and last the
    feature dashboards every circuit node links to."""
    discovery, transfer = data.get("discovery"), data.get("transfer")
    transfer_ok = transfer if transfer and transfer.get("status") not in ("missing", "skipped") else None
    discover_dir = data.get("discover_dir")
    built = {"verdict": answer_section(data, discovery, transfer_ok, partial(_discover_png, discover_dir)),
             "transfer": transfer_section(transfer), "circuits": circuits_section(discovery, discover_dir),
             GRAPH_KEY: graph_section(discover_dir),
             "statistics": statistics_section(discovery), "faithfulness": faithfulness_section(data.get("faithfulness")),
             "baseline": baseline_section(data.get("baseline")),
             "sae_quality": sae_section(data.get("train_manifest"), data.get("sae_quality")),
             "data": data_section(data.get("data_analysis")), "direction": direction_section(data.get("direction")),
             "cast": cast_section(data.get("cast")), "neurons": neurons_section(data.get("neurons")),
             PATCHING_KEY: patching_section(data.get("patching")),
             ABLATION_KEY: ablation_curve_section(data.get("ablation_curve")), EAP_KEY: eap_section(data.get("eap")),
             LENS[0]: lens_section(data.get("lens")),
             PROBES[0]: probes_section(data.get("probes")),
             BOTTLENECK_KEY: bottleneck_section(data.get("bottleneck")),
             DASHBOARDS_KEY: dashboards_section(data.get("dashboards"))}
    sections = [built[key] for key, _ in SECTIONS]
    return Report("refusal-circuits evaluation report", sections, data.get("meta", {}), lead=True)
