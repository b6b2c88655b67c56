"""measure_baseline on the tiny model with the real conf/behavior config: files, rows, verdicts, config checks."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from refusal.behavior.baseline import measure_baseline
from refusal.runs import TrainRun
from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.errors import ConfigError

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def behavior_cfg(*overrides):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny_llama", "behavior.max_new_tokens=6",
                                          "behavior.bootstrap.n_resamples=200", *overrides])
    return cfg.behavior


class RecordingLogger:
    def __init__(self):
        self.metrics = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append(metrics)


def test_measure_baseline_writes_rates_and_responses(tiny, prompts, tmp_path):
    cfg = behavior_cfg()
    assert cfg.split == "test" and cfg.judge._target_.endswith("SubstringJudge") and cfg.max_new_tokens == 6
    logger = RecordingLogger()
    summary, items = measure_baseline(tiny, prompts, cfg, loggers=[logger])
    run = TrainRun(tmp_path)
    run.write_behavior(summary, items)
    test = prompts.filter(split="test")
    assert json.loads(run.baseline.read_text()) == json.loads(json.dumps(summary))
    lines = [json.loads(x) for x in run.responses.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r.id for r in test]
    judge = SubstringJudge(REFUSAL_SUBSTRINGS)
    assert [x["refused"] for x in lines] == [judge.is_refusal(x["response"]) for x in lines]
    assert all(x["split"] == "test" and isinstance(x["refusal_score"], float) for x in lines)
    cells = {(r["label"], r["category"]) for r in summary["rows"]}
    assert cells == {(r.label, r.category) for r in test} | {(lab, "all") for lab in ("toxic", "safe", "hard")}
    assert set(summary["refusal_rate"]) == {"toxic", "safe", "hard"}
    assert summary["over_refusal_rate"] == summary["refusal_rate"]["hard"]
    assert logger.metrics and "behavior/toxic/refusal_rate" in logger.metrics[0]
    assert not list(run.behavior.glob(".*.tmp"))  # atomic writes leave nothing behind
    # deterministic: same model, prompts and seed -> same file
    again, again_items = measure_baseline(tiny, prompts, cfg)
    assert (again, again_items) == (summary, items)


def test_behavior_config_checks(tiny, prompts, tmp_path):
    with pytest.raises(ConfigError, match="behavior.split"):
        measure_baseline(tiny, prompts, behavior_cfg("behavior.split=dev"))
    with pytest.raises(ConfigError, match=r"behavior.bootstrap.n_resamples=10 .* >= 100"):
        measure_baseline(tiny, prompts, behavior_cfg("behavior.bootstrap.n_resamples=10"))
    with pytest.raises(ConfigCompositionException, match="max_new_tokens"):  # a wrong type: Hydra's own error
        behavior_cfg("behavior.max_new_tokens=many")


@pytest.mark.parametrize("files,override,needle", [
    ({"behavior/mine.yaml": "defaults: [default, _self_]\ntemperature: 0.7\n"}, "behavior=mine", "temperature"),
    ({"behavior/mine.yaml": "defaults: [default, _self_]\nbootstrap: {n_bootstrap: 50}\n"}, "behavior=mine",
     "n_bootstrap"),
    ({"behavior/judge/mine.yaml": "defaults: [substring, _self_]\nlenient: true\n"}, "behavior/judge=mine",
     "lenient"),
])
def test_an_unknown_behavior_key_is_a_hydra_error(compose_user, files, override, needle):
    """The schemas (refusal/behavior/config.py) refuse a key no code reads, in a user's own config file too."""
    with pytest.raises(ConfigCompositionException, match=needle):
        compose_user(files, "model=tiny_llama", override)
    compose_user({}, "model=tiny_llama")  # the shipped files compose


def test_judge_switch_by_override():
    cfg = behavior_cfg("behavior/judge=classifier", "behavior.judge.path=/nowhere", "behavior.judge.positive_label=x")
    assert cfg.judge._target_ == "refusal.behavior.judge.ClassifierJudge"
    assert cfg.judge.path == "/nowhere"
