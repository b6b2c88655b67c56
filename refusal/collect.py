"""Collect the activation store of a train config (optionally as one of N tasks): python -m refusal.collect --help"""
import hydra
from omegaconf import DictConfig

from refusal.tasks.runner import run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="collect")
def main(cfg: DictConfig) -> None:
    from refusal.tasks.collect import collect

    return run_task(collect, cfg)


if __name__ == "__main__":
    main()
