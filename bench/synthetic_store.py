"""A complete activation store in this project's format filled with synthetic activations (for the benches: no
model needed, any width and size). Rows come from a fixed random dictionary: each row is a sparse non-negative
mix of 16 of its atoms plus noise and a shared offset, so an SAE has structure to learn."""
from __future__ import annotations

from pathlib import Path

import torch

from refusal.activations.store import shard_name, write_manifest, write_shard

CATEGORIES = ("cyber", "violence", "fraud", "benign")
ROWS_PER_PROMPT = 64
ACTIVE_ATOMS = 16


def write_synthetic_store(store_dir: str | Path, hook: str, d_in: int, n_shards: int, shard_rows: int,
                          seed: int = 0) -> Path:
    """``n_shards`` shards of ``shard_rows`` float32 rows (``shard_rows`` a multiple of 64: 64 rows per prompt);
    every 10th prompt is in the val split, the rest in train."""
    if shard_rows % ROWS_PER_PROMPT:
        raise ValueError(f"shard_rows={shard_rows} must be a multiple of {ROWS_PER_PROMPT}")
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(8 * d_in, d_in, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = torch.randn(d_in, generator=gen)
    per_shard = shard_rows // ROWS_PER_PROMPT
    prompts, shards = [], []
    for s in range(n_shards):
        first = s * per_shard
        acts = 0.1 * torch.randn(shard_rows, d_in, generator=gen) + offset
        for _ in range(ACTIVE_ATOMS):
            pick = torch.randint(len(atoms), (shard_rows,), generator=gen)
            acts += 4 * torch.rand(shard_rows, 1, generator=gen) * atoms[pick]
        prompt_index = torch.arange(first, first + per_shard).repeat_interleave(ROWS_PER_PROMPT)
        position = torch.arange(ROWS_PER_PROMPT, dtype=torch.int32).repeat(per_shard)
        write_shard(store_dir / shard_name(s), {
            f"acts.{hook}": acts, "prompt_index": prompt_index, "position": position,
            "from_end": ROWS_PER_PROMPT - position, "refusal_score": torch.zeros(per_shard, dtype=torch.float64),
            "n_tokens": torch.full((per_shard,), ROWS_PER_PROMPT, dtype=torch.int32)})
        for p in range(first, first + per_shard):
            category = CATEGORIES[p % len(CATEGORIES)]
            prompts.append({"id": f"synthetic:{p}", "category": category, "source": "synthetic",
                            "label": "safe" if category == "benign" else "toxic",
                            "split": "val" if p % 10 == 9 else "train"})
        shards.append({"file": shard_name(s), "prompt_range": [first, first + per_shard]})
    fingerprint = {"synthetic": True, "hook": hook, "d_in": d_in, "n_shards": n_shards, "shard_rows": shard_rows,
                   "seed": seed}
    write_manifest(store_dir, {
        "fingerprint": fingerprint, "complete": True, "hooks": [hook], "d_model_by_hook": {hook: d_in},
        "positions": "all", "dtype": "float32", "model": {"name": "synthetic", "weights_hash": None, "n_layers": 0},
        "refusal_token_ids": [], "prompts": prompts, "shards": shards})
    return store_dir
