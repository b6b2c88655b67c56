"""What the evaluation reads from earlier stages: a train.py run and/or a discover.py run (their run records,
:mod:`refusal.runs`). Either may be absent; a discover dir alone names its train dir in its saved config. With
neither, the prompts come from ``data`` and only the stages that need no SAEs or circuits run (baseline, direction).
Mismatches between them (other prompts, other SAE weights) are refused with a one-line error."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from refusal.data import PromptSet, build_prompt_set
from refusal.errors import ConfigError
from refusal.runs import DiscoverRecord, DiscoverRun, TrainRecord, TrainRun
from refusal.utils.io import read_json


@dataclass
class RunInputs:
    train: TrainRecord | None = None
    found: DiscoverRecord | None = None
    prompts: PromptSet | None = None
    sae_dirs: list[tuple[str, str]] = field(default_factory=list)  # (hook, SAELens dir)

    train_dir = property(lambda self: self.train.run.dir if self.train else None)
    discover_dir = property(lambda self: self.found.run.dir if self.found else None)
    train_manifest = property(lambda self: self.train.manifest if self.train else None)
    data_analysis = property(lambda self: self.train.data_analysis if self.train else None)
    discovery = property(lambda self: self.found.summary if self.found else None)  # discovery_summary.json
    # toxic circuits by category name (incl. "all")
    circuits = property(lambda self: self.found.circuits if self.found else {})
    # {"ie" [n_prompts, n_nodes], "m_clean", "m_patch", "rows": [{id, category}]}
    attributions = property(lambda self: self.found.attributions if self.found else None)
    # dashboards.json of the discover run (refusal/circuit/dashboards.py), None when it wrote none
    dashboards = property(lambda self: read_json(self.found.run.dashboards)
                          if self.found and self.found.run.dashboards.is_file() else None)

    def trained_positions(self) -> str:
        """The token positions the SAEs were trained on (``all`` when they come from elsewhere)."""
        return self.train.positions() if self.train else "all"


def load_inputs(train_dir, discover_dir, data_cfg=None) -> RunInputs:
    """Everything the evaluation can use from ``train_dir`` and/or ``discover_dir`` (prompts from the train dir,
    else built from ``data_cfg``); with neither dir, the prompts of ``data_cfg`` alone."""
    if not train_dir and not discover_dir and data_cfg is None:
        raise ConfigError("give train_dir=<train.py run dir> and/or discover_dir=<discover.py run dir>, or "
                          "data=<group> for the stages without SAEs (baseline, direction)")
    inputs = RunInputs()
    discover = DiscoverRun(discover_dir) if discover_dir else None
    if not train_dir and discover is not None:
        train_dir = discover.train_dir()
    if train_dir:
        inputs.train = TrainRun(train_dir).read()
        inputs.prompts, inputs.sae_dirs = inputs.train.prompts, list(inputs.train.sae_dirs)
    if discover is not None:
        inputs.found = discover.read()
        inputs.sae_dirs = inputs.found.sae_dirs(inputs.sae_dirs)
    if inputs.prompts is None:
        if data_cfg is None:
            raise ConfigError("no prompts: the discover run has no train_dir; add data=<group> (the discover run's data)")
        inputs.prompts = build_prompt_set(data_cfg)
    if inputs.found is not None:
        inputs.found.check_prompts(inputs.prompts)
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
