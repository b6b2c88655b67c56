"""The ``activations`` config group (conf/activations/): its schema, and what it turns into: the collection plan,
the store dir, this process's collection task and the ActivationDataModule the SAEs train from."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from omegaconf import MISSING

from refusal.activations.collect_tasks import CollectTask
from refusal.activations.collector import CollectionPlan, default_store_dir
from refusal.activations.datamodule import ActivationDataModule
from refusal.config import integer, plain, register
from refusal.model.hooks import expand_hook_names


@dataclass
class LoaderSchema:
    batch_size: int = MISSING
    samples_per_epoch: Optional[int] = MISSING
    balance_safe_toxic: bool = MISSING
    use_category_weights: bool = MISSING
    shards_in_memory: int = MISSING
    val_batch_size: int = MISSING
    init_rows: int = MISSING


@dataclass
class ActivationsSchema:
    hook_points: List[str] = MISSING
    layers: Any = MISSING  # int, list, "all", "mid", "a-b"
    positions: str = MISSING
    max_length: Optional[int] = MISSING
    batch_size: int = MISSING
    shard_prompts: int = MISSING
    dtype: str = MISSING
    record_refusal_score: bool = MISSING
    stop_early: bool = MISSING
    dir: Optional[str] = MISSING
    collect_tasks: Any = MISSING  # an int >= 1 or "env"
    collect_task_index: int = MISSING
    loader: LoaderSchema = field(default_factory=LoaderSchema)


register("activations", ActivationsSchema)


def collection_plan(a, n_layers: int, system_prompt: str | None, seed: int) -> CollectionPlan:
    """What to capture, from the ``activations`` node, for a model of ``n_layers`` layers."""
    hooks = expand_hook_names(plain(a.hook_points), plain(a.layers), n_layers)
    return CollectionPlan(hooks=hooks, positions=a.positions, batch_size=integer("activations.batch_size",
                          a.batch_size, 1), shard_prompts=integer("activations.shard_prompts", a.shard_prompts, 1),
                          dtype=a.dtype, max_length=a.max_length, record_refusal_score=a.record_refusal_score,
                          stop_early=a.stop_early, system_prompt=system_prompt, seed=seed)


def collect_task(a) -> CollectTask:
    """This process's share of the collection (``collect_tasks``, ``collect_task_index``)."""
    return CollectTask.from_config(a.collect_tasks, a.collect_task_index)


def store_dir(a, cache_dir: str, fingerprint: dict) -> Path:
    """``dir`` when set, else the cache dir named by the collection's fingerprint."""
    return Path(a.dir) if a.dir else default_store_dir(cache_dir, fingerprint)


def datamodule(a, store: Path, hooks: list[str], seed: int,
               collect_fn: Callable[[], object] | None) -> ActivationDataModule:
    """The ActivationDataModule of the ``loader`` settings over the store at ``store``."""
    ld = a.loader
    return ActivationDataModule(
        str(store), hooks, batch_size=integer("activations.loader.batch_size", ld.batch_size, 1),
        samples_per_epoch=ld.samples_per_epoch, balance_safe_toxic=ld.balance_safe_toxic,
        use_category_weights=ld.use_category_weights,
        shards_in_memory=integer("activations.loader.shards_in_memory", ld.shards_in_memory, 1),
        val_batch_size=integer("activations.loader.val_batch_size", ld.val_batch_size, 1), seed=seed,
        collect_fn=collect_fn)


def init_rows(a) -> int:
    """Rows that set each SAE's b_dec and input scale before training."""
    return integer("activations.loader.init_rows", a.loader.init_rows, 1)

