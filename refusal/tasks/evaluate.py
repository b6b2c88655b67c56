"""evaluate.py's task: a train and/or discover run dir -> baseline behavior, SAE quality, faithfulness and
completeness curves, the cross-category transfer matrix, the refusal direction (a reference method), the verdict, and
report.md / report.html (every stage's JSON next to them). A stage whose inputs are absent is reported missing."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from refusal.behavior.judge import build_judge
from refusal.behavior.rates import check_ci_options
from refusal.behavior.score import refusal_token_ids
from refusal.circuit.saes import load_hooked_saes
from refusal.circuit.verdict import TransferRule, combine
from refusal.data.records import SPLITS
from refusal.errors import ConfigError, check_choice
from refusal.evaluation.circuit_setup import ABLATIONS, build_circuit_setup
from refusal.evaluation.context import Bootstrap, EvalContext
from refusal.evaluation.direction import DirectionSettings, run_direction
from refusal.evaluation.faithfulness import run_faithfulness
from refusal.evaluation.inputs import RunInputs, load_inputs
from refusal.evaluation.interventions import ARDITI_KINDS
from refusal.evaluation.sae_quality import sae_quality
from refusal.evaluation.sections import build_report
from refusal.evaluation.transfer import TransferSettings, run_transfer
from refusal.model import ChatFormatter, load_model
from refusal.model.hooks import HOOK_KINDS, parse_layers
from refusal.logger.loggers import build_loggers, log_config, log_table, wandb_run
from refusal.evaluation.report import log_report, write_report
from refusal.runs import EvaluateRun, adopt_run_config, check_model
from refusal.utils.io import json_safe

log = logging.getLogger(__name__)
STAGES = ("baseline", "sae_quality", "faithfulness", "transfer", "direction")


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"evaluation.{name}={value!r} is not valid; use an int >= {lo}")
    return value


def _layer_spec(name: str, value):
    value = _plain(value)
    try:
        parse_layers(value, 10**6)  # the form; the range is checked against the loaded model
    except (ConfigError, TypeError, ValueError):
        raise ConfigError(f"evaluation.{name}={value!r} is not valid; use all, mid, an int, a list or 'a-b'") from None
    return value


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"evaluation.{name}={value!r} is not valid; use true or false")
    return value


def _number(name: str, value, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
        raise ConfigError(f"evaluation.{name}={value!r} is not valid; use a number >= {lo}")
    return float(value)


@dataclass
class EvalSettings:
    stages: list[str]
    split: str
    batch_size: int
    max_new_tokens: int
    max_length: int | None
    ablation: str
    boot: Bootstrap
    sae_max_prompts: int
    thresholds: list[float]
    faith_n_random: int
    transfer: TransferSettings
    direction: DirectionSettings


def settings_from(e: DictConfig) -> EvalSettings:
    """Check the evaluation config before anything is loaded."""
    stages = _plain(e.stages)
    if not isinstance(stages, list):
        raise ConfigError(f"evaluation.stages={stages!r} is not valid; use a list drawn from {list(STAGES)}")
    for s in stages:
        check_choice("evaluation.stages entry", s, STAGES)
    check_choice("evaluation.split", e.split, [s for s in SPLITS if s != "train"])
    check_choice("evaluation.ablation", e.ablation, ABLATIONS)
    b = e.bootstrap
    try:
        check_ci_options(b.ci_level, b.n_resamples, b.ci_method)
    except ConfigError as err:
        raise ConfigError(str(err).replace("behavior.", "evaluation.bootstrap.")) from None
    thresholds = _plain(e.faithfulness.thresholds)
    if not isinstance(thresholds, list) or not thresholds:
        raise ConfigError(f"evaluation.faithfulness.thresholds={thresholds!r} is not valid; use a non-empty list of "
                          "numbers >= 0")
    thresholds = [_number("faithfulness.thresholds entry", t) for t in thresholds]
    t, d = e.transfer, e.direction
    rule = TransferRule(t.alpha, t.modular_max_transfer, t.monolithic_min_transfer)
    hooks = tuple(_plain(d.ablation_hooks))
    for k in hooks:
        check_choice("evaluation.direction.ablation_hooks entry", k, HOOK_KINDS)
    for name in ("candidate_split", "selection_split"):
        check_choice(f"evaluation.direction.{name}", d[name], SPLITS)
    max_length = e.max_length if e.max_length is None else _int("max_length", e.max_length, 1)
    frac = _number("direction.max_layer_fraction", d.max_layer_fraction)
    if not 0 < frac <= 1:
        raise ConfigError(f"evaluation.direction.max_layer_fraction={frac} is not valid; use a number in (0, 1]")
    return EvalSettings(
        stages=stages, split=e.split, batch_size=_int("batch_size", e.batch_size, 1),
        max_new_tokens=_int("max_new_tokens", e.max_new_tokens, 1), max_length=max_length, ablation=e.ablation,
        boot=Bootstrap(b.n_resamples, b.ci_level, b.ci_method),
        sae_max_prompts=_int("sae_quality.max_prompts", e.sae_quality.max_prompts, 1), thresholds=thresholds,
        faith_n_random=_int("faithfulness.n_random", e.faithfulness.n_random, 0),
        transfer=TransferSettings(_bool("transfer.generate", t.generate),
                                  _bool("transfer.include_error_nodes", t.include_error_nodes),
                                  _int("transfer.n_random", t.n_random, 0),
                                  _int("transfer.n_permutations", t.n_permutations, 1), rule),
        direction=DirectionSettings(d.candidate_split, d.selection_split,
                                    _int("direction.n_selection_prompts", d.n_selection_prompts, 1),
                                    hooks or ARDITI_KINDS, _number("direction.max_kl", d.max_kl), frac,
                                    _number("direction.induce_min_score", d.induce_min_score, -np.inf),
                                    _number("direction.actadd_coeff", d.actadd_coeff, -np.inf),
                                    _layer_spec("direction.candidate_layers", d.candidate_layers)))


def _missing_reasons(s: EvalSettings, inputs: RunInputs) -> dict[str, dict | None]:
    """{stage: None (runs) or a missing/skipped marker}."""
    out: dict[str, dict | None] = {}
    for stage in STAGES:
        if stage not in s.stages:
            out[stage] = {"status": "skipped", "reason": "not in evaluation.stages"}
        elif stage in ("faithfulness", "transfer") and inputs.discovery is None:
            out[stage] = {"status": "missing", "reason": "no discover run (give discover_dir=<discover.py run dir>)"}
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
    model_name = (inputs.train_manifest or {}).get("model") or cfg.model.get("name")
    if any(v is None for v in results.values()):
        loaded = load_model(cfg.model)
        model_name = loaded.name
        check_model(loaded, inputs.train_manifest, inputs.found.manifest if inputs.found else None)
        formatter = ChatFormatter(loaded.tokenizer, cfg.model.get("system_prompt"), s.max_length)
        ctx = EvalContext(loaded, formatter, eval_prompts, build_judge(cfg.evaluation.judge),
                          refusal_token_ids(loaded.tokenizer, _plain(cfg.model.get("refusal_tokens"))), s.batch_size,
                          s.max_new_tokens, s.boot, int(cfg.seed), run_dir, s.max_length)
        _run_stages(ctx, s, inputs, results, run_dir, loaded)

    log.info("evaluate: report")
    transfer = results["transfer"] if results["transfer"] and "decision" in results["transfer"] else None
    verdict = combine(inputs.discovery.get("verdict") if inputs.discovery else None,
                      transfer["decision"]["verdict"] if transfer else None)
    run.write_results({stage: json_safe(res) for stage, res in results.items()}, json_safe(verdict))
    meta = {"model": model_name, "train_dir": str(inputs.train_dir) if inputs.train_dir else None,
            "discover_dir": str(inputs.discover_dir) if inputs.discover_dir else None, "evaluation split": s.split,
            "stages": ", ".join(f"{k}: {(v or {}).get('status', 'done')}" for k, v in results.items()),
            "seed": int(cfg.seed)}
    report = build_report(json_safe({"meta": meta, "data_analysis": inputs.data_analysis,
                                 "train_manifest": inputs.train_manifest, "discovery": inputs.discovery,
                                 "discover_dir": str(inputs.discover_dir) if inputs.discover_dir else None,
                                 **results, "verdict": verdict}))
    _, html_path = write_report(report, run.report_md, run.report_html)
    _log(loggers, results, verdict, report, html_path)
    print(f"verdict: {verdict['verdict']} ({verdict['basis']})")
    print(f"report: {html_path}")
    st = (results.get("transfer") or {}).get("statistic")
    return float(st["specificity"]) if st else None


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
    if results["faithfulness"] is None or results["transfer"] is None:
        setup = build_circuit_setup(inputs, loaded, ctx.formatter, s.ablation, s.batch_size)
        if results["faithfulness"] is None:
            log.info("evaluate: faithfulness and completeness")
            results["faithfulness"] = {"status": "done", "ablation": s.ablation, **run_faithfulness(
                ctx, setup, inputs, s.thresholds, s.faith_n_random, run_dir / "faithfulness.png")}
        if results["transfer"] is None:
            log.info("evaluate: transfer matrix")
            results["transfer"] = {"status": "done", "ablation": s.ablation,
                                   **run_transfer(ctx, setup, s.transfer, run_dir)}
    if results["direction"] is None:
        log.info("evaluate: refusal direction")
        results["direction"] = {"status": "done", **run_direction(ctx, inputs.prompts, s.direction, run_dir, s.split)}


def _log(loggers, results: dict, verdict: dict, report, html_path: Path) -> None:
    metrics = {}
    for r in (results.get("baseline") or {}).get("rows", []):
        if r["category"] == "all":
            metrics[f"evaluate/baseline/{r['label']}/refusal_rate"] = r["refusal_rate"]
    for name, c in (results.get("faithfulness") or {}).get("curves", {}).items():
        d = c.get("discovered") or {}
        for k in ("faithfulness", "completeness"):
            if d.get(k) is not None:
                metrics[f"evaluate/{k}/{name}"] = d[k]
    st = (results.get("transfer") or {}).get("statistic") or {}
    for k in ("specificity", "p_value", "transfer_ratio"):
        if st.get(k) is not None:
            metrics[f"evaluate/transfer/{k}"] = st[k]
    kl = ((results.get("direction") or {}).get("kl_safe") or {}).get("mean")
    if kl is not None:
        metrics["evaluate/direction/kl_safe"] = kl
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    for lg in loggers:
        lg.log_metrics(metrics, step=0)
        lg.save()
    log_table(loggers, "evaluate/transfer_cells", (results.get("transfer") or {}).get("cells", []))
    log_table(loggers, "evaluate/baseline", (results.get("baseline") or {}).get("rows", []))
    run = wandb_run(loggers)
    if run is not None:
        run.summary["verdict"] = verdict.get("verdict")
        log_report(run, report, html_path)
