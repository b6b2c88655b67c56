"""Discover causal sparse feature circuits per refusal category.  python discover.py --help"""
import hydra
from omegaconf import DictConfig

from refusal.tasks.runner import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    from refusal.tasks.discover import discover

    return run_task(discover, cfg)


if __name__ == "__main__":
    main()
