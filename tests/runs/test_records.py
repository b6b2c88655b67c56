"""Run records: one owner for each run-dir file name, and run dirs written before them still read."""
import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from refusal.errors import ConfigError
from refusal.runs import DiscoverRun, TrainRun, adopt_run_config
from refusal.utils.io import write_json

REFUSAL = Path(__file__).resolve().parents[2] / "refusal"
OWNED = ("train_manifest.json", "prompts.jsonl", "data_analysis.json", "run_settings.json", "last.ckpt",
         "discovery_summary.json", "verdict.json", "report.md", "report.html", ".hydra", "_prompts.json")


def _docstrings(tree) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)}


def test_run_file_names_are_written_only_in_the_run_records():
    found = []
    for path in REFUSAL.rglob("*.py"):
        if path.parent.name == "runs":
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value \
                    and id(node) not in docs:  # names in paths, not in messages
                found += [f"{path.relative_to(REFUSAL)}:{node.lineno} {name}" for name in OWNED if name in node.value]
    assert not found, found


def _train_dir(root: Path, sae_dir: str) -> Path:
    root.mkdir()
    (root / "prompts.jsonl").write_text("")
    write_json(root / "train_manifest.json", {"task": "train", "model": "m", "sae_dirs": {"blocks.0.hook_x": sae_dir}})
    return root


def test_train_record_reads_a_moved_run_dir(tmp_path):
    run = _train_dir(tmp_path / "moved", "/old/place/saes/blocks.0.hook_x")
    record = TrainRun(run).read()
    assert record.sae_dirs == [("blocks.0.hook_x", str(run / "saes" / "blocks.0.hook_x"))]
    assert record.model == "m" and record.data_analysis is None and len(record.prompts) == 0
    assert record.positions() == "all"  # no saved config
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("activations:\n  positions: post_instruction\n")
    assert record.positions() == "post_instruction"


def test_unfinished_runs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="has no train_manifest.json"):
        TrainRun(tmp_path).read()
    with pytest.raises(ConfigError, match="has no discovery_summary.json"):
        DiscoverRun(tmp_path).read()


def test_adopt_takes_unset_keys_from_the_first_run_that_saved_them(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for d, text in ((first, "data:\n  name: d1\n"), (second, "data:\n  name: d2\nmodel:\n  name: m2\n")):
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "config.yaml").write_text(text + "train_dir: /x/train\n")
    cfg = OmegaConf.create({"data": None, "model": None})
    adopt_run_config(cfg, None, first, second)
    assert cfg.data.name == "d1" and cfg.model.name == "m2"
    assert DiscoverRun(first).train_dir() == Path("/x/train") and DiscoverRun(tmp_path).train_dir() is None
    with pytest.raises(ConfigError, match="model is not set"):
        adopt_run_config(OmegaConf.create({"data": None, "model": None}), first)
