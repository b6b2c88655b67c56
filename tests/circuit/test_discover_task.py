"""discover's config handling, in-process on a train-run-shaped dir built in code (random SAEs, no training)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from circuits_testlib import random_sae
from hydra import compose, initialize_config_dir

from refusal.data import PromptRecord, PromptSet
from refusal.sae.io import save_saelens
from refusal.tasks.discover import discover
from refusal.tasks.runner import run_task
from refusal.utils.io import write_json

REPO = Path(__file__).resolve().parents[2]
HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
WORDS = "how can I quietly get rid of the evidence and the witness before anyone notices".split()


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    return fake_train_dir(tmp_path_factory.mktemp("fake_train"))


def fake_train_dir(d: Path, n_toxic: dict[str, int] | None = None) -> Path:
    """prompts.jsonl, two random SAEs in SAELens format and a train_manifest.json, as train.py leaves them;
    ``n_toxic``: prompts per toxic category (default 5 each, one of them in the test split)."""
    recs = []
    n_toxic = n_toxic or {"cyber": 5, "fraud": 5, "violence": 5}
    for label, cats in (("toxic", n_toxic), ("safe", {"benign": 8}), ("hard", {"fraud": 4})):
        for c, n in cats.items():
            for i in range(n):
                text = f"{c} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i))
                recs.append(PromptRecord(f"{label}:{c}:{i}", text, c, label, "test", "test" if i == 0 else "train"))
    prompts = PromptSet(recs)
    prompts.to_jsonl(d / "prompts.jsonl")
    dirs = {h: str(save_saelens(random_sae(64, 24, i), d / "saes" / h, hook_name=h, model_name="tiny-llama"))
            for i, h in enumerate(HOOKS)}
    write_json(d / "train_manifest.json", {"model": "tiny-llama", "hooks": list(HOOKS), "sae_dirs": dirs,
                                           "prompts_hash": prompts.content_hash(), "n_layers": 4})
    return d


def _compose(train_dir: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("discover", overrides=[
            f"train_dir={train_dir}", "model=tiny_llama", "logger=csv", f"paths.output_dir={out}",
            f"paths.root_dir={out}", "circuit.statistics.n_permutations=200", "circuit.statistics.n_resamples=10",
            *overrides])


def _run(train_dir, out, *overrides) -> dict:
    run_task(discover, _compose(train_dir, out, *overrides))
    return json.loads((out / "discovery_summary.json").read_text())


@pytest.mark.parametrize("overrides,needle", [
    (["model.name=other-model"], "the train run used model 'tiny-llama' but the loaded model is 'other-model'"),
    (["circuit.attribution_method=magic"], "circuit.attribution_method='magic'"),
    (["circuit.discovery_split=test"], "circuit.discovery_split='test'"),
    (["sae_dirs=[/x]"], "give exactly one of train_dir"),
    (["circuit.node_threshold=null", "circuit.top_n_per_layer=null"], "enable at least one"),
    (["circuit.min_prompts_per_category=5"], "comparing categories needs at least 2"),
    (["circuit.exact_max_nodes=10", "circuit.attribution_method=exact"], "circuit.exact_max_nodes=10"),
    (["circuit.safe_labels=[toxic]"], "circuit.safe_labels entry='toxic'"),
    (["circuit.statistics.alpha=2"], "circuit.statistics.alpha=2"),
])
def test_bad_input_is_one_line_error(train_dir, tmp_path, capsys, overrides, needle):
    with pytest.raises(SystemExit) as e:
        run_task(discover, _compose(train_dir, tmp_path, *overrides))
    assert e.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and needle in err[0], err


def test_safe_circuits_follow_safe_labels_and_switch(train_dir, tmp_path):
    both = _run(train_dir, tmp_path / "both")
    assert {(c["category"], c["kind"]) for c in both["circuits"] if c["kind"] == "safe"} == \
        {("benign", "safe"), ("fraud", "safe")}  # safe prompts (benign) and hard prompts (fraud)
    only_safe = _run(train_dir, tmp_path / "only_safe", "circuit.safe_labels=[safe]")
    assert {c["category"] for c in only_safe["circuits"] if c["kind"] == "safe"} == {"benign"}
    off = _run(train_dir, tmp_path / "off", "circuit.separate_safe_toxic=false", "circuit.statistics.n_resamples=0")
    assert {c["kind"] for c in off["circuits"]} == {"toxic"}
    assert off["similarity"]["ci"] == {} and off["shared_core"]["mean_core_mass_ci"] is None
    assert both["categories"] == ["cyber", "fraud", "violence"]
    assert both["similarity"]["ci"]["cosine"]["level"] == 0.95


def test_min_prompts_per_category_skips_small_categories(tmp_path):
    train_dir = fake_train_dir(tmp_path / "train", {"cyber": 5, "fraud": 6, "violence": 4})
    s = _run(train_dir, tmp_path / "a", "circuit.min_prompts_per_category=4", "circuit.separate_safe_toxic=false")
    assert s["skipped_categories"]["toxic"] == {"violence": 3}  # train split only: one prompt per category is test
    assert s["categories"] == ["cyber", "fraud"]
    sizes = {c["category"]: len(json.loads(Path(c["file"]).read_text())["manifest"]["prompt_ids"])
             for c in s["circuits"]}
    assert sizes == {"cyber": 4, "fraud": 5, "all": 9}  # the pooled circuit leaves the skipped category out too


def test_patch_and_metric_options_reach_the_circuits(train_dir, tmp_path):
    base = _run(train_dir, tmp_path / "base", "circuit.separate_safe_toxic=false", "circuit.statistics.n_resamples=0")
    paired = _run(train_dir, tmp_path / "paired", "circuit.separate_safe_toxic=false",
                  "circuit.statistics.n_resamples=0", "circuit.patch=paired", "circuit.metric=logit_diff")
    f_base = json.loads(Path(base["circuits"][0]["file"]).read_text())
    f_paired = json.loads(Path(paired["circuits"][0]["file"]).read_text())
    assert f_base["manifest"]["paired_prompt_ids"] is None
    assert len(f_paired["manifest"]["paired_prompt_ids"]) == len(f_paired["manifest"]["prompt_ids"])
    assert f_paired["metric"]["name"] == "logit_diff" and f_base["metric"]["name"] == "refusal_score"
    assert f_paired["metric"]["clean"] != f_base["metric"]["clean"]


def test_same_config_gives_byte_identical_circuit_files(train_dir, tmp_path):
    args = ("circuit.separate_safe_toxic=false", "circuit.statistics.n_resamples=0")
    a = _run(train_dir, tmp_path / "a", *args)
    b = _run(train_dir, tmp_path / "b", *args)
    names = [Path(c["file"]).name for c in a["circuits"]]
    assert names and names == [Path(c["file"]).name for c in b["circuits"]]
    for name in names:
        assert (tmp_path / "a" / "circuits" / name).read_bytes() == (tmp_path / "b" / "circuits" / name).read_bytes()
    assert a["global_test"] == b["global_test"] and a["recognition"] == b["recognition"]
