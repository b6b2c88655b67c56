"""Causal evaluation of circuits, the transfer test, the refusal direction and the report.  python evaluate.py --help"""
import hydra
from omegaconf import DictConfig

from refusal.tasks.runner import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from refusal.tasks.evaluate import evaluate

    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
