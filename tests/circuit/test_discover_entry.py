"""discover.py end to end on a tiny train.py run: circuit JSONs, heatmaps and discovery_summary.json; with
evaluate.py after it, the W&B lineage train -> discover -> evaluate read from the offline runs' files.
(Config cases and run-to-run determinism: test_discover_task.py, in-process.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refusal.logger.offline import artifacts

REPO = Path(__file__).resolve().parents[2]
FAST = ["circuit.statistics.n_permutations=200", "circuit.statistics.n_resamples=20"]


def run(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("discover")
    out = tmp / "train"
    res = run("train.py", "experiment=tiny", "logger=wandb", "trainer.max_steps=5", "activations.layers=[1,2]",
              "activations.loader.samples_per_epoch=1024", f"hydra.run.dir={out}", f"paths.cache_dir={tmp / 'cache'}",
              cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def discover_run(train_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("disc")
    out = tmp / "disc"
    # no model=: the train run's model (the circuit files below are named after it)
    res = run("discover.py", f"train_dir={train_dir}", "logger=wandb", f"hydra.run.dir={out}", *FAST, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_discover_writes_circuits_heatmaps_and_summary(discover_run):
    out, res = discover_run
    summary = json.loads((out / "discovery_summary.json").read_text())
    assert summary["recognition"] in ("monolithic", "modular", "mixed") and "verdict" not in summary
    assert f"recognition: {summary['recognition']}" in res.stdout and str(out / "heatmaps") in res.stdout
    cats = summary["categories"]
    assert len(cats) >= 2 and len(summary["pairwise_tests"]) == len(cats) * (len(cats) - 1) // 2
    assert 0 < summary["global_test"]["p_value"] <= 1 and summary["global_test"]["n_permutations"] == 200
    files = {Path(c["file"]).name for c in summary["circuits"]}
    for c in cats:
        assert f"tiny-llama_{c}_toxic_circuit.json" in files
    assert "tiny-llama_all_toxic_circuit.json" in files
    assert any(name.endswith("_safe_circuit.json") for name in files)
    for name in files:
        assert (out / "circuits" / name).is_file()
    circuit = json.loads((out / "circuits" / f"tiny-llama_{cats[0]}_toxic_circuit.json").read_text())
    assert {n["hook"] for n in circuit["nodes"]} <= {"blocks.1.hook_resid_post", "blocks.2.hook_resid_post"}
    assert circuit["manifest"]["saes"].keys() == {"blocks.1.hook_resid_post", "blocks.2.hook_resid_post"}
    assert circuit["manifest"]["prompt_ids"] and circuit["manifest"]["weights_hash"]
    assert any(c["n_edges"] > 0 for c in summary["circuits"])
    for png in summary["heatmaps"].values():
        assert Path(png).read_bytes()[:4] == b"\x89PNG"


def test_discover_and_evaluate_use_the_train_runs_artifact(train_dir, discover_run, tmp_path):
    disc, _ = discover_run
    out = tmp_path / "eval"
    res = run("evaluate.py", f"train_dir={train_dir}", f"discover_dir={disc}", "logger=wandb", f"hydra.run.dir={out}",
              "evaluation.stages=[sae_quality]", "evaluation.sae_quality.max_prompts=8", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {}
    for name, d in (("train", train_dir), ("discover", disc), ("evaluate", out)):
        (wandb_dir,) = (d / "wandb").glob("offline-run-*")
        runs[name] = {(a["type"], a["used"]): a for a in artifacts(wandb_dir) if a["type"] != "run_table"}
    sae, circuits = runs["train"][("sae", False)], runs["discover"][("circuits", False)]  # what each logged
    assert sae["name"].startswith("sae-tiny-llama-") and circuits["name"].startswith("circuits-tiny-llama-")
    assert ("sae", True) not in runs["train"]
    # discover used the train run's SAE artifact (same name, same digest: W&B resolves it to that version)
    assert runs["discover"][("sae", True)] == {**sae, "used": True}
    # evaluate used it too, and the discover run's circuits; it logged its own outputs
    assert runs["evaluate"][("sae", True)] == {**sae, "used": True}
    assert runs["evaluate"][("circuits", True)] == {**circuits, "used": True}
    assert runs["evaluate"][("evaluation", False)]["name"] == "evaluation-tiny-llama"


def test_discover_without_model_or_train_dir_is_one_line_error(tmp_path):
    res = run("discover.py", "sae_dirs=[/nonexistent]", "data=tiny", "logger=csv", f"hydra.run.dir={tmp_path / 'd'}",
              cwd=tmp_path)
    assert res.returncode == 1
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert "model is not set" in line and "smollm2_organism" in line
