"""Collect activations at named hook points over a prompt set into a sharded, resumable store, in one process
or split over several tasks (:mod:`collect_tasks`) that write into the same store."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from refusal.activations.collect_tasks import CollectTask
from refusal.activations.store import (
    ActivationStore, check_fingerprint, damaged_shards, file_record, known_record, record_path, shard_damage,
    shard_name, write_manifest, write_shard)
from refusal.behavior.score import refusal_score
from refusal.errors import check_choice
from refusal.model.chat import POSITION_MODES, ChatFormatter, EncodedBatch
from refusal.model.hooks import capture_activations, parse_hook_name, run_until_stop
from refusal.model.loading import LoadedModel
from refusal.utils.io import stable_hash

log = logging.getLogger(__name__)
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CollectionPlan:
    hooks: list[str]
    positions: str = "all"
    batch_size: int = 16
    shard_prompts: int = 256
    dtype: str = "float32"
    max_length: int | None = 256
    record_refusal_score: bool = True
    stop_early: bool = True
    system_prompt: str | None = None
    seed: int = 0

    def __post_init__(self):
        check_choice("activations.positions", self.positions, POSITION_MODES)
        check_choice("activations.dtype", self.dtype, STORE_DTYPES)


def store_order(prompt_ids: list[str], seed: int) -> list[int]:
    """Seeded shuffle of the prompts, so every shard mixes categories and labels."""
    order = sorted(range(len(prompt_ids)), key=lambda i: prompt_ids[i])
    random.Random(seed).shuffle(order)
    return order


def fingerprint(loaded: LoadedModel, prompts, plan: CollectionPlan, refusal_token_ids: list[int]) -> dict:
    return {
        "model": loaded.name,
        "weights_hash": loaded.weights_hash,
        "hooks": plan.hooks,
        "positions": plan.positions,
        "dtype": plan.dtype,
        "max_length": plan.max_length,
        "system_prompt": plan.system_prompt,
        "shard_prompts": plan.shard_prompts,
        "prompts_hash": prompts.content_hash(),
        "seed": plan.seed,
        "refusal_token_ids": refusal_token_ids if plan.record_refusal_score else None,
    }


def default_store_dir(cache_dir: str | Path, fp: dict) -> Path:
    safe_name = fp["model"].replace("/", "-")
    return Path(cache_dir) / "activations" / f"{safe_name}-{stable_hash(fp)}"


def _batch_rows(enc: EncodedBatch, mode: str, prompt_index: list[int]):
    """Where the batch's store rows come from and their metadata: (batch row of each store row, token index of each
    store row or None for ``prompt_mean``, per-row token indices for ``prompt_mean`` else None, metadata)."""
    T = enc.seq_len
    idx = enc.positions(mode)
    counts = [1 if mode == "prompt_mean" else len(i) for i in idx]
    b_idx = torch.repeat_interleave(torch.arange(len(idx)), torch.tensor(counts))
    first = torch.tensor(prompt_index, dtype=torch.long)[b_idx]
    if mode == "prompt_mean":
        meta = {"prompt_index": first, "position": torch.full((len(idx),), -1, dtype=torch.int32),
                "from_end": torch.zeros(len(idx), dtype=torch.int32)}
        return b_idx, None, idx, meta
    t_idx = torch.cat(idx)
    pad = T - enc.n_tokens.cpu().long()
    meta = {"prompt_index": first, "position": (t_idx - pad[b_idx]).to(torch.int32),
            "from_end": (T - t_idx).to(torch.int32)}
    return b_idx, t_idx, None, meta


def _gather(act: torch.Tensor, b_idx: torch.Tensor, t_idx: torch.Tensor | None, spans) -> torch.Tensor:
    """The store rows of one hook's [B, T, d] activation: the selected tokens in one indexing op, or (``spans``:
    prompt_mean) the mean of each row's span."""
    if t_idx is not None:
        return act[b_idx, t_idx]
    return torch.cat([act[b, i].float().mean(0, keepdim=True) for b, i in enumerate(spans)])


@torch.inference_mode()
def collect_activations(
    loaded: LoadedModel,
    prompts,
    plan: CollectionPlan,
    store_dir: str | Path,
    refusal_token_ids: list[int],
    progress: bool = True,
    task: CollectTask = CollectTask(),
) -> ActivationStore | None:
    """Collect ``task``'s shards into ``store_dir`` (resuming: complete shards whose size and hash match their
    records are kept, damaged ones collected again). If every shard is then present, mark the store complete and
    return it; else (other tasks still collecting) return None."""
    store_dir = Path(store_dir)
    deepest = max(parse_hook_name(h, loaded.n_layers).layer for h in plan.hooks)
    # The score needs the final layer. One full pass that yields both is cheaper than an early-stopped pass
    # plus a second full one, so early stopping applies when no score is recorded.
    stop = plan.stop_early and not plan.record_refusal_score and deepest < loaded.n_layers - 1
    fp = fingerprint(loaded, prompts, plan, refusal_token_ids)
    existing = check_fingerprint(store_dir, fp)
    if existing and existing.get("complete"):
        damaged = damaged_shards(store_dir, existing)
        if not damaged:
            return ActivationStore(store_dir)
        _reopen(store_dir, existing, damaged)

    records, shards, manifest = _layout(loaded, prompts, plan, fp, refusal_token_ids)
    store_dir.mkdir(parents=True, exist_ok=True)
    if existing is None:  # an existing one has the same fingerprint, hence the same content
        write_manifest(store_dir, manifest)
    entries = (existing or manifest)["shards"]  # with the records of a completed store's intact shards

    mine = task.shard_range(len(shards))
    bar = tqdm(total=sum(b - a for a, b in shards[mine.start : mine.stop]), desc="collect", unit="prompt",
               disable=not progress)
    collected = []
    for i in mine:
        path = store_dir / shard_name(i)
        if path.exists() and _intact(path, entries[i]):
            bar.update(shards[i][1] - shards[i][0])
            continue
        write_shard(path, _collect_shard(loaded, plan, refusal_token_ids, records, shards[i], stop, bar))
        collected.append(i)
    bar.close()
    log.info("collect task %d/%d: collected %d of its %d shards, kept %d already complete", task.index,
             task.count, len(collected), len(mine), len(mine) - len(collected))
    missing = [i for i in range(len(shards)) if not (store_dir / shard_name(i)).exists()]
    if missing:  # another task is still collecting these; whichever finishes last completes the store
        log.info("collect task %d/%d done; %d of %d shards still missing in %s", task.index, task.count,
                 len(missing), len(shards), store_dir)
        return None
    _complete(store_dir, manifest, entries)
    return ActivationStore(store_dir)


def _layout(loaded: LoadedModel, prompts, plan: CollectionPlan, fp: dict, refusal_token_ids: list[int]):
    """(records in store order, [(first, end) prompt range per shard], the manifest of a fresh store)."""
    records = list(prompts)
    order = store_order([r.id for r in records], plan.seed)
    records = [records[i] for i in order]
    shards = [(a, min(a + plan.shard_prompts, len(records))) for a in range(0, len(records), plan.shard_prompts)]
    manifest = {
        "fingerprint": fp,
        "complete": False,
        "hooks": plan.hooks,
        "d_model_by_hook": {},
        "positions": plan.positions,
        "dtype": plan.dtype,
        "model": {"name": loaded.name, "weights_hash": loaded.weights_hash, "n_layers": loaded.n_layers},
        "refusal_token_ids": refusal_token_ids,
        "prompts": [{"id": r.id, "category": r.category, "label": r.label, "split": r.split, "source": r.source} for r in records],
        "shards": [{"file": shard_name(i), "prompt_range": [a, b]} for i, (a, b) in enumerate(shards)],
    }
    return records, shards, manifest


def _intact(path: Path, entry: dict) -> bool:
    """Whether a shard left by an earlier run matches its record (size, header and hash); if not it is removed."""
    problem = shard_damage(path, known_record(path, entry), full=True)
    if problem is not None:
        log.warning("activation store %s: %s is damaged (%s); collecting it again", path.parent, path.name, problem)
        path.unlink()
    return problem is None


def _reopen(store_dir: Path, manifest: dict, damaged: dict[int, str]) -> None:
    """Mark a complete store with damaged shards incomplete and remove those shards, so they are collected again."""
    entries = [dict(e) for e in manifest["shards"]]
    for i, problem in damaged.items():
        log.warning("activation store %s: %s is damaged (%s); collecting it again", store_dir, entries[i]["file"],
                    problem)
        (store_dir / entries[i]["file"]).unlink(missing_ok=True)
        record_path(store_dir / entries[i]["file"]).unlink(missing_ok=True)
        entries[i] = {k: entries[i][k] for k in ("file", "prompt_range")}
    manifest.update(complete=False, shards=entries)
    write_manifest(store_dir, manifest)


def _complete(store_dir: Path, manifest: dict, entries: list[dict]) -> None:
    """Write the complete manifest with every shard's record, then remove the shards' side files."""
    paths = [store_dir / e["file"] for e in manifest["shards"]]
    manifest["shards"] = [{**e, **(known_record(p, old) or file_record(p))}
                          for e, old, p in zip(manifest["shards"], entries, paths)]
    manifest["d_model_by_hook"] = _hook_widths(store_dir, manifest["hooks"])
    manifest["complete"] = True
    write_manifest(store_dir, manifest)
    for p in paths:
        record_path(p).unlink(missing_ok=True)


def _collect_shard(loaded: LoadedModel, plan: CollectionPlan, refusal_token_ids: list[int], records: list, span, stop: bool,
                   bar) -> dict[str, torch.Tensor]:
    """The tensors of the shard holding the prompts ``records[a:b]`` (``span``); ``stop``: stop each forward after
    the deepest hook. Every batch is tokenised first, so each hook's rows go straight into one tensor of the shard's
    size (no concatenation at the end)."""
    a, b = span
    model = loaded.model
    fmt = ChatFormatter(loaded.tokenizer, plan.system_prompt, plan.max_length)
    out_dtype = STORE_DTYPES[plan.dtype]
    # within a shard, batch prompts of similar length to waste little on padding
    local = sorted(range(a, b), key=lambda j: (len(records[j].prompt), j))
    batches = [local[s : s + plan.batch_size] for s in range(0, len(local), plan.batch_size)]
    encoded = [fmt.encode([records[j].prompt for j in idx]) for idx in batches]
    rows = [_batch_rows(enc, plan.positions, idx) for enc, idx in zip(encoded, batches)]
    n_rows = sum(len(r[0]) for r in rows)
    acts: dict[str, torch.Tensor] = {}
    scores = torch.zeros(b - a, dtype=torch.float64)
    n_tokens = torch.zeros(b - a, dtype=torch.int32)
    offset = 0
    for idx, enc, (b_idx, t_idx, spans, _) in zip(batches, encoded, rows):
        enc = enc.to(loaded.device)
        if t_idx is not None:  # the token indices on the activations' device, once for every hook
            b_idx, t_idx = b_idx.to(loaded.device), t_idx.to(loaded.device)
        with capture_activations(model, plan.hooks, stop_early=stop) as cache:
            out = run_until_stop(lambda: model(**enc.model_inputs(), logits_to_keep=1, use_cache=False))
        local_idx = [j - a for j in idx]
        if plan.record_refusal_score:
            scores[local_idx] = refusal_score(out.logits[:, -1], refusal_token_ids).cpu()
        n_tokens[local_idx] = enc.n_tokens.to(torch.int32).cpu()
        for h in plan.hooks:
            got = _gather(cache[h], b_idx, t_idx, spans)
            if h not in acts:
                acts[h] = torch.empty(n_rows, got.shape[-1], dtype=out_dtype)
            acts[h][offset : offset + len(got)].copy_(got)
        offset += len(got)
        bar.update(len(idx))
    tensors = {f"acts.{h}": t for h, t in acts.items()}
    tensors.update({k: torch.cat([r[3][k] for r in rows]) for k in ("prompt_index", "position", "from_end")})
    tensors.update({"refusal_score": scores, "n_tokens": n_tokens})
    return tensors


def _hook_widths(store_dir: Path, hooks: list[str]) -> dict[str, int]:
    with safe_open(str(store_dir / shard_name(0)), framework="pt") as f:
        return {h: int(f.get_slice(f"acts.{h}").get_shape()[1]) for h in hooks}
