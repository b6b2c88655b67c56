"""A local model dir that lacks its config, weights or tokenizer is a one-line error naming what is missing."""
import pytest
import torch
from omegaconf import OmegaConf

from refusal.errors import ConfigError
from refusal.model import load_model
from refusal.model.tiny import tiny_llama


def _hf(path) -> OmegaConf:
    return OmegaConf.create({"source": "hf", "path": str(path), "name": "local", "dtype": "float32", "device": "cpu",
                              "system_prompt": None, "refusal_tokens": None})


@pytest.mark.parametrize("files, missing, present", [
    ((), ["config.json", "weights (*.safetensors or *.bin)", "tokenizer files"], []),
    (("config.json", "tokenizer.json"), ["weights (*.safetensors or *.bin)"], ["config.json", "tokenizer files"]),
    (("model.safetensors", "vocab.json"), ["config.json"], ["weights", "tokenizer files"]),
    (("config.json", "pytorch_model.bin"), ["tokenizer files (one of tokenizer.json"], ["config.json", "weights"]),
])
def test_incomplete_model_dir_names_what_it_lacks(tmp_path, files, missing, present):
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(ConfigError) as e:
        load_model(_hf(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and f"model.path={str(tmp_path)!r}" in msg
    lacks = msg.split("it lacks", 1)[1]
    assert all(m in lacks for m in missing), msg
    assert not any(p in lacks for p in present), msg


def test_complete_model_dir_loads(tmp_path):
    model, tok = tiny_llama(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_model(_hf(tmp_path))
    assert loaded.weight_files == [tmp_path / "model.safetensors"]
    for name, p in model.state_dict().items():
        assert torch.equal(p, loaded.model.state_dict()[name]), name
