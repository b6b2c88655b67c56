"""evaluate.py end to end on a tiny train + discover run (train dir built in code, discover run in-process): every
stage runs, report.html holds every section with nothing missing, report.md tables are well formed; and a
train-only run renders with the circuit sections marked missing."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from refusal.data import PromptRecord, PromptSet, analyze_splits
from refusal.sae.io import save_saelens
from refusal.sae.model import SparseAutoencoder
from refusal.tasks.discover import discover
from refusal.tasks.evaluate import evaluate
from refusal.utils.io import write_json
from refusal.verdict import LayerRule, model_verdict
from refusal.verdict.bases import across_bases
from refusal.verdict.final import final_verdict

REPO = Path(__file__).resolve().parents[2]
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
WORDS = "alpha beta gamma delta river stone cloud paper lamp orbit".split()
FAST_EVAL = ["evaluation.max_new_tokens=3", "evaluation.bootstrap.n_resamples=100", "evaluation.batch_size=16",
             "evaluation.faithfulness.thresholds=[0.1,0.0]", "evaluation.faithfulness.n_random=1",
             "evaluation.transfer.n_random=1", "evaluation.transfer.n_permutations=50",
             "evaluation.direction.n_selection_prompts=3", "evaluation.direction.max_layer_fraction=0.5",
             "evaluation.sae_quality.max_prompts=8", "evaluation.bottleneck.size=4", "evaluation.bottleneck.n_random=2",
             "evaluation.bottleneck.curve_sizes=[]"]


def _prompts() -> PromptSet:
    recs = []
    plan = {"toxic": ("cyber", "violence", "fraud"), "hard": ("cyber",), "safe": ("benign",)}
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    for label, cats in plan.items():
        for cat in cats:
            for i, split in enumerate(splits):
                text = f"{label} {cat} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 5))
                recs.append(PromptRecord(f"t:{label}:{cat}:{i}", text, cat, label, "test", split))
    return PromptSet(recs)


def _train_dir(root: Path) -> Path:
    out = root / "train"
    prompts = _prompts()
    prompts.to_jsonl(out / "prompts.jsonl")
    write_json(out / "data_analysis.json", analyze_splits(prompts, {"min_toxic_per_category": 1}))
    dirs = {}
    for i, hook in enumerate(HOOKS):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            sae = SparseAutoencoder(64, 32, "relu_l1")
            with torch.no_grad():
                sae.b_enc.normal_(0.0, 0.3)
        dirs[hook] = str(save_saelens(sae, out / "saes" / hook, hook, "tiny-llama"))
    write_json(out / "train_manifest.json", {
        "task": "train", "model": "tiny-llama", "hooks": HOOKS, "sae_dirs": dirs, "prompts_hash": prompts.content_hash(),
        "metrics": {f"val/{h}/{m}": 0.5 for h in HOOKS for m in ("explained_variance", "mse", "l0", "dead_fraction")}})
    return out


def _compose(name: str, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=["model=tiny_llama", "logger=csv", f"paths.output_dir={out}",
                                        f"paths.root_dir={out}", *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    train = _train_dir(root)
    disc = root / "discover"
    discover(_compose("discover", disc, f"train_dir={train}", "circuit.statistics.n_permutations=50",
                      "circuit.statistics.n_resamples=0", "circuit.separate_safe_toxic=false",
                      "circuit.edge_threshold=1.0"))
    return train, disc


def test_evaluate_end_to_end(runs, tmp_path):
    train, disc = runs
    out = tmp_path / "eval"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"train_dir={train}", f"discover_dir={disc}",
                          "model=tiny_llama", "logger=wandb", f"hydra.run.dir={out}", *FAST_EVAL],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in res.stdout
    (wandb_run,) = (out / "wandb").glob("offline-run-*")  # the outputs are logged as an artifact of the run
    record = next(wandb_run.glob("*.wandb")).read_bytes()
    assert b"evaluation-tiny-llama" in record and b"report.html" in record and b"transfer.json" in record
    page = (out / "report.html").read_text()
    for key in ("data", "baseline", "sae_quality", "circuits", "statistics", "faithfulness", "transfer", "direction",
                "verdict", "bottleneck"):
        body = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert "Missing:" not in body, key
    assert "data:image/png;base64," in page and 'src="http' not in page and 'src="/' not in page
    transfer = json.loads((out / "transfer.json").read_text())
    assert transfer["rows"] == ["cyber", "fraud", "violence", "all"]
    assert transfer["columns"] == ["cyber", "fraud", "violence", "safe", "hard"]
    assert transfer["decision"]["verdict"] in ("modular", "monolithic", "mixed", "inconclusive")
    # the random tiny model refuses no category above its safe prompts (as the bottleneck stage finds): nothing is
    # counted and the transfer rule says so instead of reading noise
    heads = {p["category"]: p["headroom"]["estimate"] for p in json.loads((out / "bottleneck.json").read_text())[
        "layers"][0]["evidence"]["per_category"]}
    assert {c: h["headroom"] for c, h in transfer["headroom"].items()} == pytest.approx(heads, rel=1e-4, abs=1e-6)
    if len(transfer["counted"]) < 2:
        assert "statistic" not in transfer and transfer["decision"]["verdict"] == "inconclusive"
    else:
        assert 0 < transfer["statistic"]["p_value"] <= 1
    # rows of equal size (evaluation.transfer.size: the top 16 feature nodes per hook of each category), columns
    # normalised by headroom for the counted categories only
    assert transfer["size"] == 16 and len({transfer["n_nodes"][c] for c in ("cyber", "fraud", "violence")}) == 1
    assert set(transfer["headroom"]) == {"cyber", "fraud", "violence"} and transfer["normalised"]
    assert transfer["counted"] == [c for c, h in transfer["headroom"].items() if h["ci_low"] > 0]
    shares = {(c["circuit"], c["prompts"]): c.get("score_drop_share") for c in transfer["cells"]}
    assert shares[("cyber", "safe")] is None and shares[("cyber", "fraud")] == pytest.approx(
        [c for c in transfer["cells"] if (c["circuit"], c["prompts"]) == ("cyber", "fraud")][0]["score_drop"]
        / transfer["headroom"]["fraud"]["headroom"])
    faith = json.loads((out / "faithfulness.json").read_text())
    for name in ("cyber", "fraud", "violence", "all"):
        pts = faith["curves"][name]["points"]
        assert pts[-1]["n_nodes"] >= pts[0]["n_nodes"] and faith["curves"][name]["discovered"] is not None
    verdict = json.loads((out / "verdict.json").read_text())  # the rule applied to the recorded evidence
    bottleneck = json.loads((out / "bottleneck.json").read_text())
    def redecide(layers):
        out = [(r["layer"], LayerRule(**r["decision"]["thresholds"]).decide(r["evidence"]), r["evidence"])
               for r in layers]
        assert [d for _, d, _ in out] == [r["decision"] for r in layers]
        return model_verdict(out)

    features, directions = redecide(bottleneck["layers"]), redecide(bottleneck["directions"]["layers"])
    combined = across_bases({"features": (features, bottleneck["layers"]),
                             "directions": (directions, bottleneck["directions"]["layers"])})
    assert verdict == json.loads(json.dumps(final_verdict(
        {**bottleneck, "model": features, "directions": {**bottleneck["directions"], "model": directions},
         "combined": combined}, json.loads((disc / "discovery_summary.json").read_text())["recognition"],
        transfer["decision"]["verdict"])))
    assert set(verdict["by_basis"]) == {"features", "directions"}
    assert verdict["verdict"] in ("modular", "monolithic", "mixed", "inconclusive") and verdict["layers"]
    n = None
    for line in (out / "report.md").read_text().splitlines():  # every table row has as many cells as its header
        if not line.startswith("|"):
            n = None
            continue
        cells = len(re.findall(r"(?<!\\)\|", line))
        n = cells if n is None else n
        assert cells == n, line


def test_transfer_rows_are_the_discovered_circuits_with_size_null(runs, tmp_path):
    train, disc = runs
    out = tmp_path / "circuits"
    evaluate(_compose("evaluate", out, f"train_dir={train}", f"discover_dir={disc}", "evaluation.stages=[transfer]",
                      "evaluation.transfer.size=null", "evaluation.transfer.generate=false", *FAST_EVAL))
    transfer = json.loads((out / "transfer.json").read_text())
    assert transfer["size"] is None
    sizes = {}
    for path in (disc / "circuits").glob("*_toxic_circuit.json"):  # feature nodes of each circuit (no error nodes)
        circuit = json.loads(path.read_text())
        sizes[circuit["category"]] = sum(1 for node in circuit["nodes"] if node["feature"] != "error")
    assert transfer["n_nodes"] == sizes and len(set(sizes.values())) > 1  # the circuits' sizes differ


def test_train_only_run_marks_circuit_sections_missing(runs, tmp_path):
    train, _ = runs
    out = tmp_path / "partial"
    assert evaluate(_compose("evaluate", out, f"train_dir={train}", "evaluation.stages=[baseline,sae_quality,transfer]",
                             *FAST_EVAL)) is None
    page = (out / "report.html").read_text()
    for key in ("circuits", "statistics", "transfer", "verdict"):  # asked for or implied, inputs absent
        body = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert "Missing:" in body, key
    for key in ("faithfulness", "direction", "cast", "neurons"):  # not in evaluation.stages
        body = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert f"Not run:</b> not in evaluation.stages (add {key} to run it)" in body, key
    for key in ("data", "baseline", "sae_quality"):
        body = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert "Missing:" not in body and "<table>" in body, key
    assert json.loads((out / "transfer.json").read_text())["status"] == "missing"
    assert json.loads((out / "direction.json").read_text())["status"] == "skipped"


def test_without_run_dirs_the_data_prompts_feed_baseline_and_direction(tmp_path):
    out = tmp_path / "no_runs"
    evaluate(_compose("evaluate", out, "data=tiny", "evaluation.stages=[baseline,sae_quality,transfer,direction,cast,neurons]",
                      *FAST_EVAL))
    results = {k: json.loads((out / f"{k}.json").read_text()) for k in ("baseline", "sae_quality", "transfer",
                                                                        "direction", "cast")}
    assert results["cast"]["status"] == "done" and results["cast"]["behaviour_layer"] == results["direction"][
        "selected"]["layer"]
    neurons = json.loads((out / "neurons.json").read_text())
    assert neurons["status"] == "done" and abs(neurons["closure"]) < 1e-5 * max(1.0, abs(neurons["total"]))
    page = (out / "report.html").read_text()
    assert "Conditional steering (CAST)" in page and "Refusal-writing MLP neurons" in page
    no_direction = tmp_path / "no_direction"
    evaluate(_compose("evaluate", no_direction, "data=tiny", "evaluation.stages=[baseline,cast,neurons]", *FAST_EVAL))
    for stage in ("cast", "neurons"):
        assert "add direction to evaluation.stages" in json.loads((no_direction / f"{stage}.json").read_text())["reason"]
    assert results["baseline"]["status"] == results["direction"]["status"] == "done"
    assert results["sae_quality"]["status"] == results["transfer"]["status"] == "missing"
    assert results["direction"]["selected"]["layer"] < 2  # max_layer_fraction 0.5 of 4 layers
    assert {r["condition"] for r in results["direction"]["rates"]} == {"baseline", "ablation", "actadd"}


def test_localisation_stages_run_through_the_entry_point(tmp_path):
    out = tmp_path / "localise"
    evaluate(_compose("evaluate", out, "data=tiny", "evaluation.stages=[patching,ablation_curve,eap,lens,probes]", "evaluation.eap.n_per_category=2",
                      "evaluation.eap.n_safe=4", "evaluation.eap.ig_steps=2",
                      "evaluation.patching.n_per_category=2", "evaluation.patching.n_safe=4",
                      "evaluation.ablation_curve.n_per_category=2", "evaluation.ablation_curve.n_random=2",
                      "evaluation.lens.tuned.steps=5", "evaluation.lens.tuned.max_prompts=16",
                      "evaluation.probes.max_prompts=32", *FAST_EVAL))
    for stage in ("patching", "ablation_curve", "eap", "lens", "probes"):
        assert json.loads((out / f"{stage}.json").read_text())["status"] == "done", stage
    page = (out / "report.html").read_text()
    for key in ("patching", "ablation_curve", "eap", "lens", "probes"):
        body = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert "Missing:" not in body and "Not run:" not in body and "<img" in body, key
    alone = tmp_path / "curve_alone"
    evaluate(_compose("evaluate", alone, "data=tiny", "evaluation.stages=[ablation_curve]", *FAST_EVAL))
    assert "add patching to evaluation.stages" in json.loads((alone / "ablation_curve.json").read_text())["reason"]


def test_the_bottleneck_stage_runs_through_the_entry_point_and_renders_its_section(runs, tmp_path):
    train, disc = runs
    out = tmp_path / "bottleneck"
    evaluate(_compose("evaluate", out, f"train_dir={train}", f"discover_dir={disc}", "evaluation.stages=[bottleneck]",
                      *FAST_EVAL, "evaluation.bottleneck.curve_sizes=[2]", "evaluation.bottleneck.rule.min_prompts=2"))
    result = json.loads((out / "bottleneck.json").read_text())
    assert result["status"] == "done" and result["layers"], result.get("notes")
    hooks = [r["hook"] for r in result["layers"]]
    assert hooks == json.loads((disc / "discovery_summary.json").read_text())["manifest"]["node_space"]["hooks"]
    for r in result["layers"]:
        assert r["k"] == 4 and r["decision"]["verdict"] in ("monolithic", "modular", "mixed", "inconclusive")
        assert [c["k"] for c in r["curve"]] == [2, 4]
    assert result["model"]["verdict"] in ("monolithic", "modular", "mixed", "inconclusive")
    body = (out / "report.html").read_text().split('<section id="bottleneck">', 1)[1].split("</section>", 1)[0]
    assert "Missing:" not in body and "Not run:" not in body and "<img" in body
    assert result["model"]["summary"].split(":")[0] in body
    (metrics_csv,) = out.rglob("metrics.csv")  # logged under the path where the value sits in bottleneck.json
    header, row = metrics_csv.read_text().splitlines()[:2]
    logged = dict(zip(header.split(","), row.split(",")))
    key = "evaluate/bottleneck/model/best_layer/mean_shared_share/estimate"
    best = result["model"]["best_layer"]
    if best is None:  # no layer has a counted category: nothing to log
        assert key not in logged
    else:
        assert float(logged[key]) == pytest.approx(best["mean_shared_share"]["estimate"])
    no_discover = tmp_path / "no_discover"
    evaluate(_compose("evaluate", no_discover, f"train_dir={train}", "evaluation.stages=[bottleneck]", *FAST_EVAL))
    assert "no discover run" in json.loads((no_discover / "bottleneck.json").read_text())["reason"]


def test_the_bottleneck_verdicts_numbers_are_logged_under_their_json_paths():
    from refusal.tasks.evaluate import _metrics

    best = {"mean_shared_share": {"estimate": 0.3, "low": 0.2, "high": 0.4},
            "dissociation": {"estimate": 0.05, "low": None, "high": 0.1}}
    logged = {k: v for k, v in _metrics({"bottleneck": {"model": {"best_layer": best}}}).items()
              if k.startswith("evaluate/bottleneck/")}
    assert logged == {"evaluate/bottleneck/model/best_layer/mean_shared_share/estimate": 0.3,
                      "evaluate/bottleneck/model/best_layer/mean_shared_share/low": 0.2,
                      "evaluate/bottleneck/model/best_layer/mean_shared_share/high": 0.4,
                      "evaluate/bottleneck/model/best_layer/dissociation/estimate": 0.05,
                      "evaluate/bottleneck/model/best_layer/dissociation/high": 0.1}  # an undefined bound is not logged
