"""Read what earlier stages wrote: a train.py run dir (train_manifest.json, prompts.jsonl, data_analysis.json,
saes/) and/or a discover.py run dir (discovery_summary.json, circuits/, attributions/). Either may be absent; a
discover dir alone finds its train dir in its own .hydra/config.yaml. Mismatches between them (other prompts,
other SAE weights) are refused with a one-line error."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from refusal.data import PromptSet, build_prompt_set
from refusal.errors import ConfigError
from refusal.sae.io import WEIGHTS_FILE
from refusal.utils.io import file_hash, read_json


@dataclass
class RunInputs:
    train_dir: Path | None = None
    discover_dir: Path | None = None
    train_manifest: dict | None = None
    data_analysis: dict | None = None
    prompts: PromptSet | None = None
    discovery: dict | None = None  # discovery_summary.json
    circuits: dict[str, dict] = field(default_factory=dict)  # toxic circuits by category name (incl. "all")
    attributions: dict | None = None  # {"ie" [n_prompts, n_nodes], "m_clean", "m_patch", "rows": [{id, category}]}
    sae_dirs: list[tuple[str, str]] = field(default_factory=list)  # (hook, SAELens dir)


def _discover_train_dir(discover_dir: Path) -> Path | None:
    cfg_path = discover_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        return None
    value = OmegaConf.load(cfg_path).get("train_dir")
    return Path(value) if value else None


def _load_train(inputs: RunInputs, train_dir: Path) -> None:
    manifest = train_dir / "train_manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"train_dir={str(train_dir)!r} has no train_manifest.json; give a finished train.py run dir")
    inputs.train_dir = train_dir
    inputs.train_manifest = read_json(manifest)
    if (train_dir / "data_analysis.json").is_file():
        inputs.data_analysis = read_json(train_dir / "data_analysis.json")
    inputs.prompts = PromptSet.from_jsonl(train_dir / "prompts.jsonl")
    for hook, d in sorted(inputs.train_manifest.get("sae_dirs", {}).items()):
        p = Path(d)
        inputs.sae_dirs.append((hook, str(p if p.is_dir() else train_dir / "saes" / hook)))


def _load_discover(inputs: RunInputs, discover_dir: Path) -> None:
    summary_path = discover_dir / "discovery_summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"discover_dir={str(discover_dir)!r} has no discovery_summary.json; give a finished "
                          "discover.py run dir")
    inputs.discover_dir = discover_dir
    inputs.discovery = read_json(summary_path)
    for c in inputs.discovery.get("circuits", []):
        if c.get("kind") != "toxic":
            continue
        path = discover_dir / "circuits" / Path(c["file"]).name
        if not path.is_file():
            raise ConfigError(f"circuit file {path} listed in discovery_summary.json is missing")
        inputs.circuits[c["category"]] = json.loads(path.read_text())
    attr = discover_dir / "attributions"
    if (attr / "toxic.safetensors").is_file() and (attr / "toxic_prompts.json").is_file():
        tensors = load_file(str(attr / "toxic.safetensors"))
        inputs.attributions = {**tensors, "rows": read_json(attr / "toxic_prompts.json")}
    saes = inputs.discovery.get("manifest", {}).get("saes", {})
    by_hook = dict(inputs.sae_dirs)
    for hook, info in sorted(saes.items()):
        d = Path(by_hook.get(hook, info["dir"]))
        if not (d / WEIGHTS_FILE).is_file():
            raise ConfigError(f"SAE dir {d} used by the discover run (hook {hook}) is missing")
        if info.get("weights_hash") and file_hash(d / WEIGHTS_FILE) != info["weights_hash"]:
            raise ConfigError(f"SAE {d} has other weights than the discover run used for {hook}; the train and "
                              "discover dirs do not belong together")
        by_hook[hook] = str(d)
    inputs.sae_dirs = sorted(by_hook.items())


def load_inputs(train_dir, discover_dir, data_cfg=None) -> RunInputs:
    """Everything the evaluation can use from ``train_dir`` and/or ``discover_dir`` (prompts from the train dir,
    else built from ``data_cfg``)."""
    if not train_dir and not discover_dir:
        raise ConfigError("give train_dir=<train.py run dir> and/or discover_dir=<discover.py run dir>")
    inputs = RunInputs()
    discover_dir = Path(discover_dir) if discover_dir else None
    if not train_dir and discover_dir is not None:
        train_dir = _discover_train_dir(discover_dir)
    if train_dir:
        _load_train(inputs, Path(train_dir))
    if discover_dir is not None:
        _load_discover(inputs, discover_dir)
    if inputs.prompts is None:
        if data_cfg is None:
            raise ConfigError("no prompts: the discover run has no train_dir; add data=<group> (the discover run's data)")
        inputs.prompts = build_prompt_set(data_cfg)
    if inputs.discovery is not None:
        want = inputs.discovery.get("manifest", {}).get("prompts_hash")
        if want and want != inputs.prompts.content_hash():
            raise ConfigError(f"the discover run used prompt set {want} but the prompts here are "
                              f"{inputs.prompts.content_hash()}; give the train/data the discover run used")
    return inputs


def mean_ie(inputs: RunInputs, category: str | None) -> tuple[torch.Tensor, float] | None:
    """(mean IE over the discovery prompts of ``category`` (None: all), mean m_clean − m_patch), or None when
    the discover run kept no attributions."""
    a = inputs.attributions
    if a is None:
        return None
    rows = [i for i, r in enumerate(a["rows"]) if category is None or r["category"] == category]
    if not rows:
        return None
    idx = torch.tensor(rows)
    return a["ie"][idx].double().mean(0), float((a["m_clean"][idx] - a["m_patch"][idx]).double().mean())
