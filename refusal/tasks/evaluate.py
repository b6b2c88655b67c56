"""evaluate.py's task: a train and/or discover run dir -> baseline behavior, SAE quality, faithfulness and
completeness curves, the cross-category transfer matrix, the shared bottleneck and dissociation per layer (whose model
verdict is the run's verdict, refusal.verdict.final), the refusal direction (a reference method), and
report.md / report.html (every stage's JSON next to them). A stage whose inputs are absent is reported missing."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import load_file

from refusal.behavior.judge import build_judge
from refusal.behavior.score import resolve_refusal_tokens
from refusal.circuit.saes import load_hooked_saes
from refusal.data.records import SPLITS
from refusal.errors import ConfigError
from refusal.evaluation.circuit_setup import build_circuit_setup
from refusal.evaluation.config import STAGES, EvalSettings, settings_from
from refusal.evaluation.context import EvalContext
from refusal.evaluation.cast import run_cast
from refusal.evaluation.direction import contrast
from refusal.evaluation.direction_stage import run_direction
from refusal.evaluation.neurons import run_neurons
from refusal.evaluation.faithfulness import run_faithfulness
from refusal.evaluation.inputs import RunInputs, load_inputs
from refusal.evaluation.report import log_report, write_report
from refusal.evaluation.sae_quality import sae_quality
from refusal.evaluation.sections import build_report
from refusal.evaluation.transfer import run_transfer
from refusal.evaluation.ablation_curve import run_ablation_curve
from refusal.evaluation.eap import run_eap
from refusal.evaluation.lens import run_lens
from refusal.evaluation.patching import run_patching
from refusal.evaluation.bottleneck import run_bottleneck
from refusal.verdict.final import final_verdict
from refusal.evaluation.probes import run_probes
from refusal.logger.loggers import (build_loggers, json_metrics, log_artifact, log_config, log_table, use_artifact,
                                    wandb_run)
from refusal import organism
from refusal.model import ChatFormatter
from refusal.model.loading import configured_name
from refusal.runs import EvaluateRun, adopt_run_config, check_model
from refusal.tasks.common import optimized_metric
from refusal.utils.io import json_safe

log = logging.getLogger(__name__)
# what the run's W&B artifact holds: the stage results, figures, direction, report and generations (not logs)
OUTPUT_SUFFIXES = (".json", ".png", ".md", ".html", ".safetensors")
OUTPUT_DIRS = ("responses",)


def _missing_reasons(s: EvalSettings, inputs: RunInputs) -> dict[str, dict | None]:
    """{stage: None (runs) or a missing/skipped marker}."""
    out: dict[str, dict | None] = {}
    for stage in STAGES:
        if stage not in s.stages:
            out[stage] = {"status": "skipped", "reason": f"not in evaluation.stages (add {stage} to run it)"}
        elif stage in ("faithfulness", "transfer", "bottleneck") and inputs.discovery is None:
            out[stage] = {"status": "missing", "reason": "no discover run (give discover_dir=<discover.py run dir>)"}
        elif stage == "ablation_curve" and "patching" not in s.stages:
            out[stage] = {"status": "missing", "reason": "the ablation curve ranks components by the patching "
                                                         "stage's effects: add patching to evaluation.stages"}
        elif stage in ("cast", "neurons") and "direction" not in s.stages:
            out[stage] = {"status": "missing", "reason": f"{stage} reads the direction stage's direction: add "
                                                         "direction to evaluation.stages"}
        elif stage == "sae_quality" and not inputs.sae_dirs:
            out[stage] = {"status": "missing", "reason": "no SAEs (give train_dir=<train.py run dir>)"}
        else:
            out[stage] = None
    return out


def _sae_prompts(ctx: EvalContext, n: int, seed: int) -> list[str]:
    records = list(ctx.prompts)
    if len(records) > n:
        idx = np.sort(np.random.default_rng(seed).choice(len(records), n, replace=False))
        records = [records[i] for i in idx]
    return [r.prompt for r in records]


def evaluate(cfg: DictConfig) -> float | None:
    torch.manual_seed(cfg.seed)
    s = settings_from(cfg.evaluation)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = EvaluateRun(run_dir)
    inputs = load_inputs(cfg.get("train_dir"), cfg.get("discover_dir"), cfg.get("data"))
    adopt_run_config(cfg, inputs.train_dir, cfg.get("discover_dir"))
    if inputs.found is not None:
        inputs.found.check_held_out(s.split, SPLITS)
    eval_prompts = inputs.prompts.filter(split=s.split)
    if not len(eval_prompts):
        raise ConfigError(f"evaluation.split={s.split!r} has no prompts in this run's prompt set")
    loggers = build_loggers(cfg.get("logger"), cfg.task_name, run_dir)
    log_config(loggers, cfg)

    results: dict[str, dict | None] = _missing_reasons(s, inputs)
    model_name = (inputs.train_manifest or {}).get("model") or configured_name(cfg.model)
    organism_card = None
    if any(v is None for v in results.values()):
        loaded = organism.load(cfg.model)
        torch.manual_seed(cfg.seed)  # an organism built on first use drew random numbers: the same state either way
        model_name = loaded.name
        if loaded.identity.get("organism"):
            organism_card = {k: loaded.identity.get(k) for k in ("source", "warning", "check")}
        check_model(loaded, inputs.train_manifest, inputs.found.manifest if inputs.found else None)
        formatter = ChatFormatter(loaded.tokenizer, loaded.system_prompt, s.max_length)
        ctx = EvalContext(loaded, formatter, eval_prompts, build_judge(s.judge),
                          resolve_refusal_tokens(loaded.tokenizer, loaded.refusal_tokens), s.batch_size,
                          s.max_new_tokens, s.boot, int(cfg.seed), run_dir, s.max_length)
        _run_stages(ctx, s, inputs, results, run_dir, loaded)

    log.info("evaluate: report")
    transfer = results["transfer"] if results["transfer"] and "decision" in results["transfer"] else None
    verdict = final_verdict(results["bottleneck"], inputs.discovery.get("recognition") if inputs.discovery else None,
                            transfer["decision"]["verdict"] if transfer else None)
    run.write_results({stage: json_safe(res) for stage, res in results.items()}, json_safe(verdict))
    meta = {"model": model_name, "train_dir": str(inputs.train_dir) if inputs.train_dir else None,
            "discover_dir": str(inputs.discover_dir) if inputs.discover_dir else None, "evaluation split": s.split,
            "stages": ", ".join(f"{k}: {(v or {}).get('status', 'done')}" for k, v in results.items()),
            "seed": int(cfg.seed)}
    report = build_report(json_safe({"meta": meta, "data_analysis": inputs.data_analysis,
                                 "train_manifest": inputs.train_manifest, "discovery": inputs.discovery,
                                 "discover_dir": str(inputs.discover_dir) if inputs.discover_dir else None,
                                 "dashboards": inputs.dashboards,
                                 **results, "verdict": verdict, "organism": organism_card}))
    _, html_path = write_report(report, run.report_md, run.report_html)
    metrics = _metrics(results)
    used = ([inputs.train.run.artifact(inputs.train_manifest)] if inputs.train else []) + \
        ([inputs.found.run.artifact(inputs.discovery)] if inputs.found else [])
    _log(loggers, metrics, results, verdict, report, html_path, model_name, used)
    print(f"verdict: {verdict['verdict']} ({verdict['basis']})")
    print(f"report: {html_path}")
    return optimized_metric(cfg, metrics)


def _run_stages(ctx: EvalContext, s: EvalSettings, inputs: RunInputs, results: dict, run_dir: Path, loaded) -> None:
    b = s.boot
    if results["baseline"] is None:
        log.info("evaluate: baseline behavior on %d %s prompts", len(ctx.prompts), s.split)
        rows = ctx.summarize(list(ctx.baseline_items.values()))
        results["baseline"] = {"status": "done", "split": s.split, "max_new_tokens": s.max_new_tokens,
                               "judge": type(ctx.judge).__name__, "ci_level": b.ci_level, "rows": rows}
    if results["sae_quality"] is None:
        log.info("evaluate: SAE quality")
        saes = load_hooked_saes(inputs.sae_dirs, loaded)
        positions = inputs.trained_positions()
        rows = sae_quality(ctx.model, ctx.formatter, {h: x.sae for h, x in saes.items()},
                           _sae_prompts(ctx, s.sae_max_prompts, ctx.seed), s.batch_size, positions)
        results["sae_quality"] = {"status": "done", "split": s.split, "rows": rows}
    if any(results[k] is None for k in ("faithfulness", "transfer", "bottleneck")):
        setup = build_circuit_setup(inputs, loaded, ctx.formatter, s.ablation, s.batch_size)
        if results["faithfulness"] is None:
            log.info("evaluate: faithfulness and completeness")
            results["faithfulness"] = {"status": "done", "ablation": s.ablation, **run_faithfulness(
                ctx, setup, inputs, s.thresholds, s.faith_n_random, run_dir / "faithfulness.png")}
        if results["transfer"] is None:
            log.info("evaluate: transfer matrix")
            results["transfer"] = {"status": "done", "ablation": s.ablation,
                                   **run_transfer(ctx, setup, inputs, s.transfer, run_dir)}
        if results["bottleneck"] is None:
            log.info("evaluate: shared bottleneck and dissociation per layer")
            results["bottleneck"] = {"status": "done", "ablation": s.ablation,
                                     **run_bottleneck(ctx, setup, inputs, s.bottleneck, run_dir)}
    _run_direction_stages(ctx, s, inputs, results, run_dir, loaded)
    _run_localisation_stages(ctx, s, inputs, results, run_dir)


def _run_localisation_stages(ctx: EvalContext, s: EvalSettings, inputs: RunInputs, results: dict, run_dir: Path) -> None:
    """Where refusal is decided, the ways other studies localise it: patching sweeps, ablation curves over the
    components they rank, edge attribution patching, logit and tuned lens, linear probes with a control task."""
    if results["patching"] is None:
        log.info("evaluate: activation patching")
        results["patching"] = {"status": "done", **run_patching(ctx, inputs.prompts, s.patching, run_dir)}
    if results["ablation_curve"] is None:
        log.info("evaluate: ablation curves")
        results["ablation_curve"] = {"status": "done", **run_ablation_curve(ctx, inputs.prompts, s.ablation_curve,
                                                                            run_dir, results["patching"])}
    if results["eap"] is None:
        log.info("evaluate: edge attribution patching")
        results["eap"] = {"status": "done", **run_eap(ctx, inputs.prompts, s.eap, run_dir)}
    if results["lens"] is None:
        log.info("evaluate: logit and tuned lens")
        results["lens"] = {"status": "done", **run_lens(ctx, inputs.prompts, s.lens, run_dir, s.split)}
    if results["probes"] is None:
        log.info("evaluate: linear probes")
        results["probes"] = {"status": "done", **run_probes(ctx, inputs.prompts, s.probes, run_dir, s.split)}


def _run_direction_stages(ctx: EvalContext, s: EvalSettings, inputs: RunInputs, results: dict, run_dir: Path,
                          loaded) -> None:
    """The refusal direction, then the stages that read it: conditional steering and the MLP neurons."""
    if results["direction"] is None:
        log.info("evaluate: refusal direction")
        results["direction"] = {"status": "done", **run_direction(ctx, inputs.prompts, s.direction, run_dir, s.split)}
    r = (load_file(str(run_dir / "direction.safetensors"))["direction"]
         if results["cast"] is None or results["neurons"] is None else None)
    if results["cast"] is None:
        log.info("evaluate: conditional activation steering")
        results["cast"] = {"status": "done", **run_cast(ctx, inputs.prompts, results["direction"], r,
                                                        s.direction.candidate_split, s.cast, run_dir)}
    if results["neurons"] is None:
        log.info("evaluate: refusal-writing MLP neurons")
        toxic, safe = contrast(ctx, inputs.prompts, s.direction, s.direction.candidate_split)
        saes = {h: x.sae for h, x in load_hooked_saes(inputs.sae_dirs, loaded).items()} if inputs.sae_dirs else None
        results["neurons"] = {"status": "done", **run_neurons(ctx, [x.prompt for x in toxic], [x.prompt for x in safe],
                                                              results["direction"], r, s.neurons, saes)}


def _metrics(results: dict) -> dict[str, float]:
    """The logged metrics: ``evaluate/<stage>/<JSON path in <stage>.json>``, so a W&B key names where its value
    is written; baseline refusal rates are rows of a table, logged as ``evaluate/baseline/<label>/refusal_rate``."""
    metrics = {f"evaluate/baseline/{r['label']}/refusal_rate": r["refusal_rate"]
               for r in (results.get("baseline") or {}).get("rows", []) if r["category"] == "all"}
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    curves = (results.get("faithfulness") or {}).get("curves", {})
    metrics.update(json_metrics("evaluate/faithfulness", results.get("faithfulness") or {},
                                [f"curves/{name}/discovered/{k}" for name in curves
                                 for k in ("faithfulness", "completeness")]))
    metrics.update(json_metrics("evaluate/transfer", results.get("transfer") or {},
                                [f"statistic/{k}" for k in ("specificity", "p_value", "transfer_ratio")]))
    metrics.update(json_metrics("evaluate/bottleneck", results.get("bottleneck") or {},
                                [f"model/best_layer/{k}/{t}" for k in ("mean_shared_share", "dissociation")
                                 for t in ("estimate", "low", "high")]))
    metrics.update(json_metrics("evaluate/direction", results.get("direction") or {},
                                ["kl_safe/mean", "kl_safe_answered/mean"]))
    return metrics


def _log(loggers, metrics: dict, results: dict, verdict: dict, report, html_path: Path, model_name: str,
         used: list[dict]) -> None:
    """Metrics, tables, the report; the artifacts the run read (``used``: the train run's SAEs, the discover run's
    circuits) and its outputs."""
    for art in used:
        use_artifact(loggers, **art)
    for lg in loggers:
        lg.log_metrics(metrics, step=0)
        lg.save()
    log_table(loggers, "evaluate/transfer_cells", (results.get("transfer") or {}).get("cells", []))
    log_table(loggers, "evaluate/baseline", (results.get("baseline") or {}).get("rows", []))
    run = wandb_run(loggers)
    if run is not None:
        run.summary["verdict"] = verdict.get("verdict")
        log_report(run, report, html_path)
        out = Path(html_path).parent  # the run dir: its results, figures, report and generations
        outputs = sorted(p for p in out.iterdir() if p.suffix in OUTPUT_SUFFIXES or p.name in OUTPUT_DIRS)
        log_artifact(loggers, f"evaluation-{model_name}", "evaluation", outputs,
                     metadata={"verdict": verdict.get("verdict"), "basis": verdict.get("basis")})
