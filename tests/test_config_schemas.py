"""Every config group with a schema refuses, while composing, a key its schema does not have in any YAML file of the
group, and a value of the wrong type; so does every entry point's top level. (A plain override of an unknown key,
``sae.foo=1``, was refused before the schemas too: Hydra composes in struct mode. ``+sae.foo=1`` asks Hydra to
add the key and it does.)"""
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

CONF = Path(__file__).resolve().parents[1] / "conf"
# group -> the entry point that composes it (and what that entry point needs to compose)
GROUPS = {"activations": ("train", []), "sae": ("train", []), "data": ("train", []), "logger": ("train", []),
          "circuit": ("discover", ["train_dir=/runs/train"]), "evaluation": ("evaluate", ["train_dir=/runs/train"])}
CASES = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
TOP = ["train", "collect", "discover", "evaluate"]


def _compose(conf_dir: Path, primary: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(primary, overrides=["model=tiny_llama", *overrides])


@pytest.mark.parametrize("group,name", CASES)
def test_an_unknown_key_in_a_group_file_is_refused(tmp_path, group, name):
    primary, needs = GROUPS[group]
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    _compose(conf, primary, [*needs, f"{group}={name}"])  # the shipped file composes
    path = conf / group / f"{name}.yaml"
    path.write_text(path.read_text() + "\nnot_a_key: 1\n")
    with pytest.raises(ConfigCompositionException) as err:
        _compose(conf, primary, [*needs, f"{group}={name}"])
    assert "not_a_key" in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("primary", TOP)
def test_an_unknown_top_level_key_is_refused(tmp_path, primary):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    needs = ["train_dir=/runs/train"] if primary in ("discover", "evaluate") else []
    _compose(conf, primary, needs)
    path = conf / f"{primary}.yaml"
    path.write_text(path.read_text() + "\nnot_a_key: 1\n")
    with pytest.raises(ConfigCompositionException) as err:
        _compose(conf, primary, needs)
    assert "not_a_key" in str(err.value) + str(err.value.__cause__)


def test_a_wrong_type_is_refused():
    with pytest.raises(ConfigCompositionException, match="activations.batch_size=many"):
        _compose(CONF, "train", ["activations.batch_size=many"])
    with pytest.raises(ConfigCompositionException, match="sae.lr=fast"):
        _compose(CONF, "train", ["sae.lr=fast"])
