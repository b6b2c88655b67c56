"""Train sparse autoencoders on a chat model's activations.  python train.py --help"""
import hydra
from omegaconf import DictConfig

from refusal.tasks.runner import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from refusal.tasks.train import train

    return run_task(train, cfg)


if __name__ == "__main__":
    main()
