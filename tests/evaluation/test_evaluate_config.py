"""evaluate.py's config and inputs are checked before anything is loaded: a bad value or a mismatched run dir is
a one-line ConfigError naming it."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from refusal.errors import ConfigError
from refusal.evaluation.inputs import load_inputs
from refusal.evaluation.config import STAGES, settings_from
from refusal.utils.io import write_json

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=["model=tiny_llama", "logger=csv", *overrides])


def test_defaults_are_valid():
    s = settings_from(_cfg().evaluation)
    opt_in = ("cast", "neurons", "patching", "ablation_curve", "eap", "lens", "probes")
    assert s.stages == [st for st in STAGES if st not in opt_in] and s.split == "test" and s.ablation == "mean_safe"
    assert s.transfer.rule.alpha == 0.05 and not s.transfer.include_error_nodes and s.transfer.size == 16
    assert settings_from(_cfg("evaluation.transfer.size=null", "evaluation.transfer.include_error_nodes=true")
                         .evaluation).transfer.size is None
    assert s.direction.max_kl == 0.1 and s.direction.max_layer_fraction == 0.8


@pytest.mark.parametrize("override,needle", [
    ("evaluation.stages=[baseline,report]", "evaluation.stages entry='report'"),
    ("evaluation.split=train", "evaluation.split='train'"),
    ("evaluation.ablation=resample", "evaluation.ablation='resample'"),
    ("evaluation.bootstrap.ci_level=1.5", "evaluation.bootstrap.ci_level=1.5"),
    ("evaluation.faithfulness.thresholds=[]", "evaluation.faithfulness.thresholds"),
    ("evaluation.faithfulness.thresholds=[-1]", "evaluation.faithfulness.thresholds entry=-1"),
    ("evaluation.transfer.n_permutations=0", "evaluation.transfer.n_permutations=0"),
    ("evaluation.transfer.alpha=3", "evaluation.transfer.alpha=3"),
    ("evaluation.transfer.min_own_share=2", "evaluation.transfer.min_own_share=2"),
    ("evaluation.transfer.size=0", "evaluation.transfer.size=0"),
    ("evaluation.transfer.size=1.5", "evaluation.transfer.size=1.5"),
    ("evaluation.transfer.include_error_nodes=true", "include_error_nodes=true needs evaluation.transfer.size=null"),
    ("evaluation.direction.ablation_hooks=[hook_resid_mid]", "hook_resid_mid"),
    ("evaluation.direction.max_layer_fraction=0", "evaluation.direction.max_layer_fraction=0"),
    ("evaluation.direction.selection_split=dev", "evaluation.direction.selection_split='dev'"),
    ("evaluation.direction.candidate_layers=top", "evaluation.direction.candidate_layers='top'"),
    ("evaluation.max_new_tokens=0", "evaluation.max_new_tokens=0"),
])
def test_bad_values_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        settings_from(_cfg(override).evaluation)


def test_wrong_types_and_unknown_keys_are_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match="evaluation.transfer.generate=maybe"):
        _cfg("evaluation.transfer.generate=maybe")
    with pytest.raises(ConfigCompositionException, match="evaluation.transfer.n_bootstrap"):
        _cfg("evaluation.transfer.n_bootstrap=10")


def test_run_dirs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="train_dir=<train.py run dir> and/or discover_dir.*or data=<group>"):
        load_inputs(None, None)
    with pytest.raises(ConfigError, match="has no train_manifest.json"):
        load_inputs(tmp_path, None)
    with pytest.raises(ConfigError, match="has no discovery_summary.json"):
        load_inputs(None, tmp_path)
    write_json(tmp_path / "discovery_summary.json", {"circuits": [], "manifest": {}})
    with pytest.raises(ConfigError, match="no prompts"):
        load_inputs(None, tmp_path)
