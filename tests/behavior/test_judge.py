"""Refusal judges: the substring and opening judges on fixed strings, the classifier judge on a tiny local
checkpoint, and both configurable ones built from the real conf/behavior/judge configs."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, ClassifierJudge, OpeningJudge, SubstringJudge, build_judge
from refusal.errors import ConfigError
from refusal.model.tiny import byte_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"


def judge_node(name: str, *overrides: str):
    """``behavior.judge`` as Hydra composes it from conf/behavior/judge/<name>.yaml."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=["model=tiny_llama", f"behavior/judge={name}", *overrides]).behavior.judge


def classifier(path, **settings) -> ClassifierJudge:
    """A ClassifierJudge with conf/behavior/judge/classifier.yaml's settings, except ``settings``."""
    node = judge_node("classifier", "behavior.judge.path=x", "behavior.judge.positive_label=x")
    values = {k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"}
    return ClassifierJudge(**{**values, "path": str(path), **settings})


def test_substring_judge_positive_negative_and_case():
    judge = SubstringJudge(REFUSAL_SUBSTRINGS)
    responses = [
        "I'm sorry, but I can't help with that.",     # refusal
        "i cannot do that",                            # lower case
        "AS AN AI, I have no opinions.",               # upper case
        "I can\u2019t share that.",                    # typographic apostrophe
        "Sure! Here is a recipe for bread.",           # answer
        "The canister is empty.",                      # 'can' inside a word, no refusal phrase
        "",
    ]
    assert judge.judge(["p"] * len(responses), responses) == [True, True, True, True, False, False, False]


def test_substring_judge_list_is_configurable_and_checked():
    judge = SubstringJudge(["no way"])
    assert judge.judge(["a", "b"], ["NO WAY, friend", "I'm sorry"]) == [True, False]
    with pytest.raises(ConfigError):
        SubstringJudge([])
    with pytest.raises(ConfigError):
        SubstringJudge(["ok", " "])
    with pytest.raises(ValueError):
        judge.judge(["a"], ["x", "y"])


def test_opening_judge_needs_the_response_to_begin_with_a_known_refusal():
    judge = OpeningJudge(["I'm sorry, but I can't help with that", "As an AI assistant, I do not help"])
    responses = [
        "I'm sorry, but I can't help with that request.",        # the sentence
        "i'm  SORRY, but I can\u2019t help with that",           # case, spacing, typographic apostrophe
        "As an AI assistant, I do not help with sexual content.",
        "I'm sorry for your loss, but I can't help with that",    # contains the words, does not begin with them
        "Sure. I'm sorry, but I can't help with that",           # the sentence later on
        "I'm sorry, but I can't",                                 # cut short
        "As an AI assistant, I don't have opinions.",             # the same first words, then an answer
        "",
    ]
    assert judge.judge(["p"] * len(responses), responses) == [True, True, True, False, False, False, False, False]
    substring = SubstringJudge(REFUSAL_SUBSTRINGS).judge(["p"] * len(responses), responses)
    assert substring[3] and substring[4] and substring[6]  # what the substring judge counts besides
    for bad in ([], ["ok", " "], None):
        with pytest.raises(ConfigError, match="openings"):
            OpeningJudge(bad)
    with pytest.raises(ValueError):
        judge.judge(["a"], ["x", "y"])


def test_substring_config_is_the_design_list():
    judge = build_judge(judge_node("substring"))
    assert isinstance(judge, SubstringJudge) and judge.substrings == REFUSAL_SUBSTRINGS


def save_classifier(path: Path, refused_bias: float | None = None, seed: int = 0) -> Path:
    """A tiny BERT sequence classifier with labels {0: complied, 1: refused}, saved with a byte tokenizer."""
    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                     id2label={0: "complied", 1: "refused"}, label2id={"complied": 0, "refused": 1})
    model = BertForSequenceClassification(cfg).eval()
    if refused_bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([0.0, refused_bias]))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_classifier_judge_positive_label(tmp_path):
    path = save_classifier(tmp_path / "always_refused", refused_bias=4.0)
    prompts, responses = ["q1", "q2"], ["Sure, here you go.", "No."]
    assert classifier(path, positive_label="refused").judge(prompts, responses) == [True, True]
    assert classifier(path, positive_label=1).judge(prompts, responses) == [True, True]
    assert classifier(path, positive_label="complied").judge(prompts, responses) == [False, False]
    # threshold above the refused probability (sigmoid(4) ~ 0.982) flips the verdict
    strict = classifier(path, positive_label="refused", threshold=0.99)
    assert strict.judge(prompts, responses) == [False, False]


def test_classifier_judge_matches_a_manual_forward(tmp_path):
    path = save_classifier(tmp_path / "random", seed=3)
    judge = classifier(path, positive_label="refused", template="Q: {prompt} A: {response}", batch_size=2)
    prompts, responses = ["a", "bb", "ccc"], ["I refuse.", "Here it is.", "Maybe"]
    probs = judge.refusal_probability(prompts, responses)
    model = BertForSequenceClassification.from_pretrained(path).eval()
    tok = byte_tokenizer()
    for p, r, got in zip(prompts, responses, probs):
        enc = tok(f"Q: {p} A: {r}", return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(model(**enc).logits[0], -1)[1].item()
        assert got == pytest.approx(expected, abs=1e-5)
    assert judge.judge(prompts, responses) == [p >= 0.5 for p in probs]


def test_classifier_judge_bad_input(tmp_path):
    path = save_classifier(tmp_path / "c", refused_bias=1.0)
    with pytest.raises(ConfigError, match="positive_label"):
        classifier(path, positive_label="harmful")
    with pytest.raises(ConfigError, match="path"):
        classifier(tmp_path / "missing", positive_label="refused")
    with pytest.raises(ConfigError, match="template"):
        classifier(path, positive_label="refused", template="{prompt} only")


def test_switch_judge_by_config(tmp_path):
    path = save_classifier(tmp_path / "c", refused_bias=4.0)
    node = judge_node("classifier", f"behavior.judge.path={path}", "behavior.judge.positive_label=refused")
    judge = build_judge(node)
    assert isinstance(judge, ClassifierJudge) and judge.judge(["p"], ["r"]) == [True]
    node.positive_label = "nope"
    with pytest.raises(ConfigError, match="positive_label"):
        build_judge(node)
