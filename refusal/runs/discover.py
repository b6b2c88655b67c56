"""A discover.py run dir: its file names, what it writes, how a later run reads it, and what it must agree with.

Layout: ``circuits/`` (one JSON per circuit), ``attributions/<kind>.safetensors`` with ``<kind>_prompts.json``
(per-prompt attributions and their prompts), ``heatmaps/``, ``graph.json`` and ``graph.html`` (the toxic circuits
as one interactive graph, refusal.circuit.graph) and ``discovery_summary.json`` (written last: a run with it is
finished). Its ``manifest`` entry names the model, weights, prompts and SAEs the circuits came from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from refusal.data import PromptSet
from refusal.errors import ConfigError
from refusal.runs.layout import RunDir, entry
from refusal.runs.saved import saved_value
from refusal.sae.io import WEIGHTS_FILE
from refusal.utils.io import atomic_path, file_hash, read_json, write_json


class DiscoverRun(RunDir):
    """The files of one discover run dir."""

    summary = entry("discovery_summary.json")
    circuits = entry("circuits")
    attributions = entry("attributions")
    heatmaps = entry("heatmaps")
    graph = entry("graph.json")  # refusal.circuit.graph: the toxic circuits as one graph
    graph_page = entry("graph.html")  # the graph drawn, standalone
    dashboards = entry("dashboards.json")  # refusal.circuit.dashboards: a dashboard per feature node of any circuit

    def write_attributions(self, kind: str, tensors: dict[str, torch.Tensor], rows: list[dict]) -> None:
        """Per-prompt attributions of one group (``toxic``/``safe``) and the prompts they belong to, in order."""
        with atomic_path(self.attributions / f"{kind}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        write_json(self.attributions / f"{kind}_prompts.json", rows)

    def read_attributions(self, kind: str) -> dict | None:
        """{"ie", "m_clean", "m_patch", "rows"} of the group, or None when the run kept none."""
        tensors, rows = self.attributions / f"{kind}.safetensors", self.attributions / f"{kind}_prompts.json"
        if not (tensors.is_file() and rows.is_file()):
            return None
        return {**load_file(str(tensors)), "rows": read_json(rows)}

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary, summary)

    def artifact(self, summary: dict) -> dict:
        """The W&B artifact of the run's circuits, as ``log_artifact``/``use_artifact`` keyword arguments: discover
        logs it, evaluate uses it."""
        m = summary["manifest"]
        return {"name": f"circuits-{m['model']}-{m['config_hash']}", "kind": "circuits", "paths": self.circuits,
                "metadata": {"recognition": summary.get("recognition")}}

    def train_dir(self) -> Path | None:
        """The train run whose SAEs this run used (its saved ``train_dir``), None when it used other SAEs."""
        value = saved_value(self.dir, "train_dir")
        return Path(value) if value else None

    def read(self) -> "DiscoverRecord":
        """The finished run's summary and toxic circuits; a one-line error when it is not a finished discover run."""
        if not self.summary.is_file():
            raise ConfigError(f"discover_dir={str(self.dir)!r} has no {self.summary.name}; give a finished "
                              "discover.py run dir")
        summary = read_json(self.summary)
        circuits = {}
        for c in summary.get("circuits", []):
            if c.get("kind") != "toxic":
                continue
            path = self.circuits / Path(c["file"]).name  # the run dir may have moved since
            if not path.is_file():
                raise ConfigError(f"circuit file {path} listed in {self.summary.name} is missing")
            circuits[c["category"]] = json.loads(path.read_text())
        return DiscoverRecord(self, summary, circuits, self.read_attributions("toxic"))


@dataclass
class DiscoverRecord:
    """A finished discover run as a later stage sees it."""
    run: DiscoverRun
    summary: dict
    circuits: dict[str, dict] = field(default_factory=dict)  # toxic circuits by category name (incl. "all")
    attributions: dict | None = None

    @property
    def manifest(self) -> dict:
        return self.summary.get("manifest", {})

    def sae_dirs(self, known: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(hook, dir) of the SAEs the circuits were found with (``known`` dirs first, e.g. the train run's),
        each checked to hold the very weights the run used."""
        by_hook = dict(known)
        for hook, info in sorted(self.manifest.get("saes", {}).items()):
            d = Path(by_hook.get(hook, info["dir"]))
            if not (d / WEIGHTS_FILE).is_file():
                raise ConfigError(f"SAE dir {d} used by the discover run (hook {hook}) is missing")
            if info.get("weights_hash") and file_hash(d / WEIGHTS_FILE) != info["weights_hash"]:
                raise ConfigError(f"SAE {d} has other weights than the discover run used for {hook}; the train and "
                                  "discover dirs do not belong together")
            by_hook[hook] = str(d)
        return sorted(by_hook.items())

    def check_prompts(self, prompts: PromptSet) -> None:
        want = self.manifest.get("prompts_hash")
        if want and want != prompts.content_hash():
            raise ConfigError(f"the discover run used prompt set {want} but the prompts here are "
                              f"{prompts.content_hash()}; give the train/data the discover run used")

    def check_held_out(self, split: str, splits) -> None:
        """Evaluating on the split the circuits were discovered on would not be held out."""
        found_on = self.manifest.get("discovery_split")
        if found_on == split:
            raise ConfigError(f"evaluation.split={split!r} is the split the circuits were discovered on; choose a "
                              f"held-out one from {[x for x in splits if x not in ('train', found_on)]}")
