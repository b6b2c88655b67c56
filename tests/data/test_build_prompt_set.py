"""build_prompt_set end to end on table fixtures and the fake benchmark layouts."""
import collections

import pytest

from refusal.data import build_prompt_set
from refusal.errors import ConfigError

TOXIC = {"cbrn": 10, "violence": 25, "illegal": 5}
HARD = {"violence": 5, "privacy": 4}


def test_build_assigns_splits_deterministically(make_table, make_cfg):
    cfg = make_cfg(make_table(TOXIC, n_safe=12, n_hard=HARD))
    a, b = build_prompt_set(cfg), build_prompt_set(cfg)
    assert a == b and a.content_hash() == b.content_hash()
    assert len(a) == sum(TOXIC.values()) + 12 + sum(HARD.values())
    assert {r.split for r in a} == {"train", "val", "test"}
    assert [r.split for r in a] == sorted((r.split for r in a), key=["train", "val", "test"].index)
    cfg.seed = 1
    assert build_prompt_set(cfg).content_hash() != a.content_hash()


def test_build_with_benchmark_layouts(make_cfg, make_table, orbench_dir, harmbench_root, strongreject_root):
    # the table supplies 3 prompts of each label so every split gets every label; the fixtures add 1-2 per stratum
    cfg = make_cfg(make_table({"violence": 3}, n_safe=3, n_hard={"violence": 3}))
    cfg.sources += [
        {"_target_": "refusal.data.sources.harmbench", "root": str(harmbench_root),
         "functional_categories": ["standard", "contextual"]},
        {"_target_": "refusal.data.sources.strongreject", "root": str(strongreject_root)},
        {"_target_": "refusal.data.sources.orbench", "root": str(orbench_dir), "max_safe": 3, "seed": 0},
    ]
    cfg.taxonomy = {
        "harmbench": {"chemical_biological": "cbrn", "misinformation_disinformation": "deception",
                      "harassment_bullying": "harassment", "cybercrime_intrusion": "cybercrime"},
        "strongreject": {"Violence": "violence", "Disinformation and deception": "deception",
                         "Sexual content": "sexual"},
        "orbench": {"hate": "harassment", "self-harm": "self_harm"},
    }
    ps = build_prompt_set(cfg)
    by_id = {r.id: r for r in ps}
    assert len(ps) == 9 + 5 + 3 + (3 + 2 + 3)
    assert by_id["harmbench:gas_steps"].category == "cbrn"
    assert by_id["harmbench:sqli_site"].prompt.startswith("<html>login form</html>")
    assert by_id["strongreject:full:1"].category == "deception"
    assert by_id["orbench:or-bench-hard-1k:0"].label == "hard"
    assert {r.category for r in ps if r.source == "orbench"} <= {"violence", "harassment", "illegal", "harmful",
                                                                  "deception", "self_harm", "privacy"}
    assert all(r.split in ("train", "val", "test") for r in ps)


def test_duplicate_prompt_across_sources_kept_once(tmp_path, make_cfg):
    a = tmp_path / "a.csv"
    a.write_text("uid,text,cat,label\n1,Same words here,cbrn,toxic\n2,other,cbrn,toxic\n3,third,cbrn,toxic\n"
                 "4,benign one,benign,safe\n5,benign two,benign,safe\n6,benign three,benign,safe\n")
    b = tmp_path / "b.csv"
    b.write_text("uid,text,cat,label\n1,same   WORDS here,cbrn,toxic\n")
    ps = build_prompt_set(make_cfg([a, b]))
    assert len(ps) == 6 and "t0:1" in {r.id for r in ps} and "t1:1" not in {r.id for r in ps}
    b.write_text("uid,text,cat,label\n1,Same words here,benign,safe\n")
    with pytest.raises(ConfigError, match="same text but different labels"):
        build_prompt_set(make_cfg([a, b]))


def test_balance_and_cap_through_config(make_table, make_cfg):
    path = make_table(TOXIC, n_safe=12, n_hard=HARD)
    eq = collections.Counter((r.category, r.label) for r in build_prompt_set(make_cfg(path, balance="equalize")))
    assert [eq[(c, "toxic")] for c in TOXIC] == [5, 5, 5] and eq[("benign", "safe")] == 12
    cap = collections.Counter((r.category, r.label) for r in build_prompt_set(make_cfg(path, max_per_category=6)))
    assert cap[("violence", "toxic")] == 6 and cap[("illegal", "toxic")] == 5 and cap[("benign", "safe")] == 6


def test_categories_filter(make_table, make_cfg):
    ps = build_prompt_set(make_cfg(make_table(TOXIC, n_safe=12, n_hard=HARD), categories=["violence"]))
    assert set(ps.categories()) == {"violence", "benign"}


def one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_bad_inputs_raise_one_line_config_errors(tmp_path, make_table, make_cfg):
    path = make_table(TOXIC, n_safe=12, n_hard=HARD)
    missing = tmp_path / "or-bench-missing"
    cfg = make_cfg(path)
    cfg.sources = [{"_target_": "refusal.data.sources.orbench", "root": str(missing)}]
    with pytest.raises(ConfigError) as e:
        build_prompt_set(cfg)
    one_line(e, str(missing), "or-bench-toxic.csv")

    with pytest.raises(ConfigError) as e:
        build_prompt_set(make_cfg(path, categories=["violence", "weapons"]))
    one_line(e, "'weapons'", "cybercrime")

    odd = make_table({"weapons": 3}, n_safe=3, name="odd.jsonl")
    with pytest.raises(ConfigError) as e:
        build_prompt_set(make_cfg(odd, taxonomy={"t0": {"guns": "violence"}}))
    one_line(e, "'weapons'", "'guns'")

    with pytest.raises(ConfigError) as e:  # illegal has 5 toxic prompts; capping at 1 leaves val/test empty
        build_prompt_set(make_cfg(path, categories=["illegal"], max_per_category=1))
    one_line(e, "no toxic prompts")

    with pytest.raises(ConfigError) as e:
        build_prompt_set(make_cfg(path, balance="stratified"))
    one_line(e, "'stratified'", "use_all", "equalize")

    with pytest.raises(ConfigError) as e:
        build_prompt_set(make_cfg(path, max_per_categroy=3))
    one_line(e, "max_per_categroy")

    cfg = make_cfg(path)
    cfg.sources[0].pop("prompt_column")
    with pytest.raises(ConfigError) as e:
        build_prompt_set(cfg)
    one_line(e, "data.sources[0]", "prompt_column")
