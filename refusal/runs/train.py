"""A train.py run dir: its file names, what it writes, how a later run reads it, and when a resume may use it.

Layout: ``prompts.jsonl`` and ``data_analysis.json`` (the prompt set and its split analysis), ``behavior/``
(the refusal behaviour before any SAE), ``checkpoints/`` (Lightning checkpoints and ``run_settings.json``),
``saes/<hook>/`` (SAELens format) and ``train_manifest.json`` (written last: a run with it is finished).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from refusal.behavior.baseline import write_responses
from refusal.data import PromptSet
from refusal.errors import ConfigError, check_choice
from refusal.model.chat import POSITION_MODES
from refusal.runs.checkpoints import resume_checkpoint
from refusal.runs.layout import RunDir, entry
from refusal.runs.saved import saved_value
from refusal.utils.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)
RESUME_KEYS = ("model", "data", "activations", "sae", "seed")


class TrainRun(RunDir):
    """The files of one train (or collect) run dir."""

    manifest = entry("train_manifest.json")
    prompts = entry("prompts.jsonl")
    data_analysis = entry("data_analysis.json")
    saes = entry("saes")
    checkpoints = entry("checkpoints")
    run_settings = entry("checkpoints", "run_settings.json")
    behavior = entry("behavior")
    baseline = entry("behavior", "baseline.json")
    responses = entry("behavior", "responses.jsonl")

    def write_prompts(self, prompts: PromptSet, analysis: dict) -> None:
        prompts.to_jsonl(self.prompts)
        write_json(self.data_analysis, analysis)

    def write_behavior(self, summary: dict, items: list[dict]) -> None:
        """The baseline behavior: per-prompt responses first, then the summary (its presence marks it complete)."""
        write_responses(self.responses, items)
        write_json(self.baseline, summary)

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest, {"task": "train", **manifest})

    def artifact(self, manifest: dict) -> dict:
        """The W&B artifact of the run's SAEs, as ``log_artifact``/``use_artifact`` keyword arguments: train logs
        it, the stages that read the SAEs use it (the same name and files: W&B's lineage links them)."""
        return {"name": f"sae-{manifest['model']}-{stable_hash(manifest['hooks'], 6)}", "kind": "sae",
                "paths": self.saes, "metadata": {"hooks": manifest["hooks"], **manifest.get("metrics", {})}}

    def resume_from(self, ckpt_path) -> str | None:
        """The checkpoint ``ckpt_path`` (null, ``last`` or a file) resumes from; see :mod:`refusal.runs.checkpoints`."""
        return resume_checkpoint(ckpt_path, self.checkpoints)

    def check_resume_settings(self, cfg: DictConfig, resuming: bool) -> None:
        """A checkpoint is only resumed under the settings that produced it; record them for later resumes."""
        resolved = OmegaConf.to_container(cfg, resolve=True)
        current = {k: resolved.get(k) for k in RESUME_KEYS}
        if resuming and self.run_settings.exists():
            saved = read_json(self.run_settings)
            diff = sorted(k for k in RESUME_KEYS if saved.get(k) != current.get(k))
            if diff:
                raise ConfigError(f"the checkpoint in {self.checkpoints} was trained with different "
                                  f"{', '.join(diff)} settings; use a new run dir or ckpt_path=null")
        write_json(self.run_settings, current)

    def read(self) -> "TrainRecord":
        """What the finished run left; a one-line error when it is not a finished train run."""
        if not self.manifest.is_file():
            raise ConfigError(f"train_dir={str(self.dir)!r} has no {self.manifest.name}; give a finished train.py "
                              "run dir")
        manifest = read_json(self.manifest)
        sae_dirs = []
        for hook, d in sorted(manifest.get("sae_dirs", {}).items()):  # the run dir may have moved since
            p = Path(d)
            sae_dirs.append((hook, str(p if p.is_dir() else self.saes / hook)))
        analysis = read_json(self.data_analysis) if self.data_analysis.is_file() else None
        return TrainRecord(self, manifest, PromptSet.from_jsonl(self.prompts), analysis, sae_dirs)


@dataclass
class TrainRecord:
    """A finished train run as a later stage sees it."""
    run: TrainRun
    manifest: dict
    prompts: PromptSet
    data_analysis: dict | None
    sae_dirs: list[tuple[str, str]] = field(default_factory=list)  # (hook, SAELens dir)

    @property
    def model(self) -> str | None:
        return self.manifest.get("model")

    def positions(self) -> str:
        """The token positions the SAEs were trained on (the run's ``activations.positions``)."""
        positions = saved_value(self.run.dir, "activations.positions", default="all")
        check_choice("the train run's activations.positions", positions, POSITION_MODES)
        return positions

    def check_prompts(self, built: PromptSet) -> None:
        """Prompts built from a ``data`` override must be the ones the run trained on."""
        if built.content_hash() != self.prompts.content_hash():
            raise ConfigError(f"data builds prompt set {built.content_hash()} but train_dir used "
                              f"{self.prompts.content_hash()}; drop the data override to use the run's "
                              f"{self.run.prompts.name}")
