"""discover.py's task: SAEs + prompts -> per-prompt attributions -> circuits per category (JSON) -> comparison,
permutation tests, bootstrap CIs and the recognition rule's reading (discovery_summary.json, heatmaps), and the circuit graph
(graph.json, graph.html)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from refusal.circuit.attribution import node_space
from refusal.circuit.circuit import COMBINED, write_circuit
from refusal.circuit.dashboard_run import write_run_dashboards
from refusal.circuit.discovery import attribute_group, make_circuit
from refusal.circuit.graph import write_graph
from refusal.circuit.metric import build_metric
from refusal.circuit.model import CircuitModel
from refusal.circuit.neurons import neuron_hooks, universal_mask
from refusal.circuit.saes import load_hooked_saes
from refusal.circuit.config import settings_from
from refusal.circuit.summary import analyse
from refusal.config import plain
from refusal.data import PromptSet, build_prompt_set
from refusal.errors import ConfigError
from refusal.evaluation.dashboard_section import log_dashboards
from refusal import organism
from refusal.model import ChatFormatter
from refusal.logger.loggers import (build_loggers, json_metrics, log_artifact, log_config, log_table, use_artifact,
                                    wandb_run)
from refusal.runs import DiscoverRun, TrainRun, adopt_run_config, check_model
from refusal.tasks.common import optimized_metric
from refusal.utils.io import json_safe, read_json, stable_hash

log = logging.getLogger(__name__)
# logged as discover/<path>: the JSON path of the same value in discovery_summary.json
LOGGED_PATHS = ("global_test/statistic", "global_test/p_value", "evidence/pair_fraction_differ",
                "shared_core/mean_core_mass")


def load_sources(cfg: DictConfig, basis: str = "sae") -> tuple[PromptSet, list[tuple[str | None, str]], dict]:
    """(prompt set, [(expected hook, SAE dir)], train manifest or {}). The neuron basis needs no SAEs: its prompts
    come from train_dir (its SAEs unused) or from ``data`` alone."""
    train_dir, sae_dirs = cfg.get("train_dir"), plain(cfg.get("sae_dirs"))
    if basis == "neurons" and not train_dir and not sae_dirs:
        if cfg.get("data") is None:
            raise ConfigError("circuit.basis=neurons needs prompts: give train_dir=<train run dir> or data=<group>")
        return build_prompt_set(cfg.data), [], {}
    if bool(train_dir) == bool(sae_dirs):
        raise ConfigError(f"give exactly one of train_dir=<train run dir> or sae_dirs=[<SAELens dir>, ...] "
                          f"(got train_dir={train_dir!r}, sae_dirs={sae_dirs!r})")
    if sae_dirs:
        if cfg.get("data") is None:
            raise ConfigError("sae_dirs needs prompts: add data=<group> (e.g. data=default)")
        dirs = [sae_dirs] if isinstance(sae_dirs, str) else list(sae_dirs)
        return build_prompt_set(cfg.data), [(None, str(d)) for d in dirs], {}
    train = TrainRun(train_dir).read()
    if cfg.get("data") is not None:
        train.check_prompts(build_prompt_set(cfg.data))
    return train.prompts, train.sae_dirs, train.manifest


def config_hash(cfg: DictConfig) -> str:
    """Hash of what determines the circuits (not where they are written)."""
    keys = ("seed", "model", "data", "circuit", "train_dir", "sae_dirs")
    return stable_hash({k: plain(cfg.get(k)) for k in keys})


def _groups_by_category(records, min_n: int) -> tuple[list[str], dict[str, int]]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.category] = counts.get(r.category, 0) + 1
    kept = sorted(c for c, n in counts.items() if n >= min_n)
    return kept, {c: n for c, n in sorted(counts.items()) if n < min_n}


def _save_attributions(run: DiscoverRun, group) -> None:
    a = group.attributions
    run.write_attributions(group.kind, {"ie": a.ie, "m_clean": a.m_clean, "m_patch": a.m_patch},
                           [{"id": r.id, "category": r.category} for r in group.records])


def _attribute(cm: CircuitModel, prompts: PromptSet, s):
    """Attributions of the discovery split's toxic prompts (categories with enough prompts) and, with
    ``separate_safe_toxic``, of its contrast prompts: (groups by kind, toxic categories, skipped toxic categories,
    contrast categories, skipped contrast categories)."""
    split = prompts.filter(split=s.discovery_split)
    toxic, safe = list(split.filter(label="toxic")), list(split.filter(label=s.safe_labels))
    categories, skipped = _groups_by_category(toxic, s.min_prompts_per_category)
    if len(categories) < 2:
        raise ConfigError(f"the {s.discovery_split} split has {len(categories)} toxic categories with >= "
                          f"circuit.min_prompts_per_category={s.min_prompts_per_category} prompts ({categories}); "
                          "comparing categories needs at least 2")
    toxic = [r for r in toxic if r.category in categories]
    for cat, n in skipped.items():
        log.warning("discover: toxic category %r has %d %s prompts (< %d): no circuit", cat, n, s.discovery_split,
                    s.min_prompts_per_category)
    args = s.attribution
    log.info("discover: attributing %d toxic prompts (%s, %s patch)", len(toxic), args["method"], args["patch"])
    groups = {"toxic": attribute_group(cm, "toxic", toxic, safe, **args)}
    safe_categories, safe_skipped = [], {}
    if s.separate_safe_toxic:
        safe_categories, safe_skipped = _groups_by_category(safe, s.min_prompts_per_category)
        kept_safe = [r for r in safe if r.category in safe_categories]
        if kept_safe:
            log.info("discover: attributing %d safe prompts", len(kept_safe))
            groups["safe"] = attribute_group(cm, "safe", kept_safe, toxic, **args)
    return groups, categories, skipped, safe_categories, safe_skipped


def _universal_neurons(cm: CircuitModel, prompts: PromptSet, s, groups: dict, space) -> torch.Tensor:
    """The universal-neuron mask (refusal/circuit/neurons.py) over the toxic and contrast prompts' attributions
    (the contrast prompts are attributed here when the run has no safe group)."""
    n = s.neurons
    if not n.filter_enabled:
        return torch.zeros(space.n_nodes, dtype=torch.bool)
    rows = [groups["toxic"].attributions.ie]
    if "safe" in groups:
        rows.append(groups["safe"].attributions.ie)
    else:
        split = prompts.filter(split=s.discovery_split)
        safe, toxic = list(split.filter(label=s.safe_labels)), groups["toxic"].records
        if safe:
            rows.append(attribute_group(cm, "safe", safe, toxic, **s.attribution).attributions.ie)
    mask = universal_mask(torch.cat(rows), space, n.universal_top_k, n.universal_fraction)
    log.info("discover: %d universal neurons excluded from the circuits", int(mask.sum()))
    return mask


def _write_circuits(cm: CircuitModel, run: DiscoverRun, model_name: str, groups: dict, categories: list[str],
                    safe_categories: list[str], space, s, metric_desc: dict, settings: dict, manifest: dict):
    """Select and write one circuit per toxic category, the pooled toxic one and the contrast ones; save the
    attributions. Returns (the summary's circuit rows, {toxic category: Circuit})."""
    circuits_dir = run.circuits
    written, toxic_circuits = [], {}
    plan = [("toxic", cat, cat) for cat in categories] + [("toxic", None, COMBINED)] + \
           [("safe", cat, cat) for cat in safe_categories if "safe" in groups]
    for kind, cat, name in plan:
        group = groups[kind]
        circuit = make_circuit(cm, group, cat, name, space, s.selection)
        payload = circuit.to_json(space, metric_desc, settings, {
            **manifest, "paired_prompt_ids": group.source.paired_ids(group.rows(cat))})
        path = write_circuit(circuits_dir, model_name, circuit, payload)
        written.append({"file": str(path), "category": name, "kind": kind, "n_nodes": circuit.n_nodes,
                        "n_edges": len(circuit.edges), "metric_clean": payload["metric"]["clean"],
                        "metric_patch": payload["metric"]["patch"],
                        "error_mass_fraction": payload["error_mass_fraction"]})
        if kind == "toxic" and cat is not None:
            toxic_circuits[cat] = circuit
    for group in groups.values():
        _save_attributions(run, group)
    return written, toxic_circuits


def _manifest(cfg: DictConfig, loaded, prompts: PromptSet, s, saes: dict, space, universal) -> dict:
    """What the circuits were found with (the neuron basis: no SAEs, and the universal neurons it excluded)."""
    neurons = s.basis == "neurons"
    manifest = {"model": loaded.name, "weights_hash": loaded.weights_hash, "config_hash": config_hash(cfg),
                "prompts_hash": prompts.content_hash(), "discovery_split": s.discovery_split,
                "saes": {} if neurons else {h: {"dir": x.path, "weights_hash": x.weights_hash} for h, x in saes.items()},
                "node_space": {"hooks": list(space.hooks), "d_sae": list(space.d_sae),
                               "n_positions": space.n_positions, "aggregation": space.aggregation}}
    if universal is not None:
        manifest["universal_neurons"] = [space.node_id(i) for i in torch.nonzero(universal).flatten().tolist()]
    return manifest


def discover(cfg: DictConfig) -> float:
    torch.manual_seed(cfg.seed)
    s = settings_from(cfg.circuit)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = DiscoverRun(run_dir)
    adopt_run_config(cfg, cfg.get("train_dir"))
    prompts, sae_dirs, train_manifest = load_sources(cfg, s.basis)
    loggers = build_loggers(cfg.get("logger"), cfg.task_name, run_dir)
    log_config(loggers, cfg)

    loaded = organism.load(cfg.model)
    torch.manual_seed(cfg.seed)  # an organism built on first use drew random numbers: the same state either way
    check_model(loaded, train_manifest)
    neurons = s.basis == "neurons"
    saes = neuron_hooks(loaded.model, s.neurons.layers, loaded.n_layers) if neurons else \
        load_hooked_saes(sae_dirs, loaded)
    metric_fn, metric_desc = build_metric(s.metric, loaded.tokenizer, loaded.refusal_tokens,
                                          s.compliance_tokens)
    formatter = ChatFormatter(loaded.tokenizer, loaded.system_prompt, s.max_length)
    cm = CircuitModel(loaded.model, formatter, saes, s.positions, metric_fn, s.batch_size)
    space = node_space(cm, s.aggregation)

    groups, categories, skipped, safe_categories, safe_skipped = _attribute(cm, prompts, s)
    universal = _universal_neurons(cm, prompts, s, groups, space) if neurons else None
    if universal is not None:
        s = replace(s, selection=replace(s.selection, exclude=universal))

    manifest = _manifest(cfg, loaded, prompts, s, saes, space, universal)
    settings = plain(cfg.circuit)
    written, toxic_circuits = _write_circuits(cm, run, loaded.name, groups, categories, safe_categories,
                                              space, s, metric_desc, settings, manifest)
    circuits_dir = run.circuits
    graph_file, graph_page = write_graph(run.dir, [read_json(w["file"]) for w in written])
    write_run_dashboards(run.dashboards, [w["file"] for w in written], saes, loaded, prompts,
                         train_manifest.get("activation_store"), s, formatter, manifest["config_hash"])

    summary = analyse(groups["toxic"], toxic_circuits, space, s.selection, s.stats, s.rule, cfg.seed, run.heatmaps)
    summary = json_safe({**summary, "circuits": written, "metric": metric_desc,
                          "skipped_categories": {"toxic": skipped, "safe": safe_skipped},
                          "settings": settings, "manifest": manifest})
    run.write_summary(summary)
    metrics = json_metrics("discover", summary, LOGGED_PATHS)
    used = [TrainRun(cfg.train_dir).artifact(train_manifest)] if cfg.get("train_dir") else []
    _log(loggers, metrics, summary, run, used)

    g = summary["global_test"]
    print(f"recognition: {summary['recognition']} (global p = {g['p_value']:.4g}, "
          f"pairs differing = {summary['evidence']['pair_fraction_differ']}, "
          f"mean core mass = {summary['shared_core']['mean_core_mass']})")
    print(f"circuits: {circuits_dir}")
    print(f"heatmaps: {run.heatmaps}")
    print(f"graph: {graph_page} ({graph_file.name})")
    print(f"summary: {run.summary}")
    return optimized_metric(cfg, metrics)


def _log(loggers, metrics: dict, summary: dict, run_dir: DiscoverRun, used: list[dict]) -> None:
    """Metrics, tables, heatmaps; the artifacts the run read (``used``: the train run's SAEs) and its circuits."""
    for art in used:
        use_artifact(loggers, **art)
    for lg in loggers:
        lg.log_metrics(metrics, step=0)
        lg.save()
    log_table(loggers, "discover/circuits", summary["circuits"])
    log_table(loggers, "discover/pairwise_tests", summary["pairwise_tests"])
    cats = summary["categories"]
    for k in ("jaccard", "weighted_jaccard", "cosine"):
        log_table(loggers, f"discover/{k}", [{"category": a, **dict(zip(cats, row))}
                                            for a, row in zip(cats, summary["similarity"][k])])
    run = wandb_run(loggers)
    if run is not None:
        import wandb

        run.log({f"discover/heatmap/{k}": wandb.Image(p) for k, p in summary["heatmaps"].items()})
        run.summary["recognition"] = summary["recognition"]
        log_dashboards(run, read_json(run_dir.dashboards) if run_dir.dashboards.is_file() else None)
    log_artifact(loggers, **run_dir.artifact(summary))
