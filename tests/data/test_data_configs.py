"""conf/data/*.yaml compose with Hydra and build what they promise."""
import collections
import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from refusal.data import analyze_splits, build_prompt_set
from refusal.errors import ConfigError

CONF = str(Path(__file__).parents[2] / "conf")


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


def load(name, *overrides):
    """The data node as an entry point sees it: conf/data/<name>.yaml under `data`, with a top-level seed."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(overrides=[f"+data={name}", "+seed=0", *overrides])
    return cfg.data


def test_default_config():
    cfg = load("default")
    ps = build_prompt_set(cfg)
    n = collections.Counter((r.category, r.label) for r in ps)
    assert max(v for (c, label), v in n.items() if label != "safe") == 60
    assert n[("benign", "safe")] == 185 and n[("cbrn", "toxic")] == 28 and n[("illegal", "toxic")] == 60
    assert set(ps.categories(label="toxic")) == {"deception", "illegal", "cybercrime", "cbrn", "harassment",
                                                 "harmful", "violence", "sexual"}
    assert build_prompt_set(load("default")).content_hash() == ps.content_hash()
    assert any("'harmful'" in w for w in analyze_splits(ps, cfg)["warnings"])


def test_tiny_config_keeps_every_label_in_every_split():
    cfg = load("tiny")
    ps = build_prompt_set(cfg)
    n = collections.Counter((r.label, r.split) for r in ps)
    assert all(n[(lb, s)] > 0 for lb in ("toxic", "safe", "hard") for s in ("train", "val", "test"))
    assert max(collections.Counter((r.category, r.label) for r in ps).values()) == 6
    assert len(ps) < 150


def test_orbench_config(tmp_path):
    root = tmp_path / "or-bench"
    cats = ["violence", "hate", "self-harm"]
    write_csv(root / "or-bench-toxic.csv", ["prompt", "category"],
              [[f"toxic {c} {i}", c] for c in cats for i in range(4)])
    write_csv(root / "or-bench-hard-1k.csv", ["prompt", "category"],
              [[f"hard {c} {i}", c] for c in cats for i in range(3)])
    write_csv(root / "or-bench-80k.csv", ["prompt", "category"],
              [[f"safe {c} {i}", c] for c in cats for i in range(3)] + [["hard violence 0", "violence"]])
    cfg = load("orbench", f"+paths.data_dir={tmp_path}")
    assert cfg.sources[0].root == str(root)
    ps = build_prompt_set(cfg)
    n = collections.Counter((r.source, r.label) for r in ps)
    assert n == {("orbench", "toxic"): 12, ("orbench", "hard"): 9, ("orbench", "safe"): 9, ("builtin", "safe"): 60}
    assert set(ps.categories(label="toxic")) == {"violence", "harassment", "self_harm"}

    with pytest.raises(ConfigError, match="absent"):
        build_prompt_set(load("orbench", f"+paths.data_dir={tmp_path / 'absent'}"))
