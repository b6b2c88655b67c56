"""Same seed, same SAE whether the model was built in this run (an organism on first use draws random numbers
while it trains) or loaded from the cache: the train task re-seeds after loading the model."""
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import refusal.tasks.train as train_task

REPO = Path(__file__).resolve().parents[2]


def _train(out: Path, cache: Path) -> bytes:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", "logger=csv", "~behavior", "trainer.max_steps=6",
                                          f"paths.output_dir={out}", f"paths.root_dir={out}",
                                          f"paths.cache_dir={cache}"])
    train_task.train(cfg)
    (weights,) = out.glob("saes/*/sae_weights.safetensors")
    return weights.read_bytes()


def test_random_draws_while_loading_the_model_do_not_change_the_sae(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    plain = _train(tmp_path / "plain", cache)
    load = train_task.organism.load

    def load_like_a_first_build(cfg):
        loaded = load(cfg)
        torch.rand(1000)  # what a fine-tune on first use does to the global generator
        return loaded

    monkeypatch.setattr(train_task.organism, "load", load_like_a_first_build)
    assert _train(tmp_path / "built", cache) == plain
