"""A discover run's ``dashboards.json`` (:mod:`refusal.circuit.dashboards`): written once per run, after the circuits;
reused as it is when a file with the same inputs (config hash, circuit nodes, activation source) is already there.

The activations come from the train run's activation store (no model forward). Only where no usable store exists
(SAEs given as ``sae_dirs``, a store deleted or built for other weights or prompts) are they captured by forwards
of the discovery split's prompts, stopped after the deepest hooked layer: the dashboards' frequencies and top
examples then cover that split only (``source`` says which).
"""
from __future__ import annotations

import logging
from pathlib import Path

from refusal.circuit.dashboard_stats import forward_batches, store_batches, usable_store
from refusal.circuit.dashboards import build_dashboards, inputs_hash
from refusal.model.chat import ChatFormatter
from refusal.utils.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)


def _source(circuits: list[dict], loaded, prompts, store_dir, split: str, formatter: ChatFormatter, batch_size: int):
    """(source description, prompt rows, formatter of the activations' tokens, batches factory)."""
    hooks = sorted({n["hook"] for c in circuits for n in c["nodes"] if n["feature"] != "error"})
    store, why = usable_store(store_dir, loaded.weights_hash, prompts.content_hash(), hooks)
    if store is not None:
        fp = store.manifest["fingerprint"]
        fmt = ChatFormatter(loaded.tokenizer, fp.get("system_prompt"), fp.get("max_length"))
        return ({"kind": "store", "fingerprint": stable_hash(fp)}, store.prompts, fmt,
                lambda: store_batches(store, hooks))
    log.info("dashboards: %s; capturing the %s split's activations instead", why, split)
    recs = list(prompts.filter(split=split))
    rows = [{"id": r.id, "category": r.category, "label": r.label, "split": r.split} for r in recs]
    batches = (lambda: forward_batches(loaded.model, formatter, [r.prompt for r in recs], hooks, loaded.n_layers,
                                       batch_size)) if hooks else (lambda: [])
    return {"kind": "forward", "split": split, "reason": why}, rows, formatter, batches


def write_run_dashboards(path: Path, circuit_files: list, saes: dict, loaded, prompts, store_dir, s,
                         formatter: ChatFormatter, config_hash: str) -> dict | None:
    """Write (or reuse) ``path``; returns the dashboards, or None with ``circuit.dashboards.enabled`` false (an
    older file there is then removed, so no report shows dashboards of other circuits). ``s``: the checked
    ``circuit`` settings (:class:`refusal.circuit.config.DiscoverySettings`)."""
    path = Path(path)
    if not s.dashboards.enabled:
        if path.is_file():
            log.info("dashboards: circuit.dashboards.enabled=false; removing the older %s", path)
            path.unlink()
        return None
    circuits = [read_json(f) for f in circuit_files]
    source, rows, fmt, batches = _source(circuits, loaded, prompts, store_dir, s.discovery_split, formatter,
                                         s.batch_size)
    key = inputs_hash(config_hash, circuits, {**source, "settings": [s.dashboards.top_examples,
                                                                     s.dashboards.top_tokens]})
    if path.is_file():
        done = read_json(path)
        if done.get("inputs_hash") == key:
            log.info("dashboards: reusing %s (same config, circuits and activations)", path)
            return done
    texts = {r.id: r.prompt for r in prompts}
    meta = {"config_hash": config_hash, "inputs_hash": key,
            "source": {**source, **({"dir": str(store_dir)} if source["kind"] == "store" else {})}}
    out = build_dashboards(circuits, saes, loaded.model, loaded.tokenizer,
                           lambda pid: fmt.encode([texts[pid]]).input_ids[0].tolist(), rows, batches(),
                           s.dashboards, meta)
    write_json(path, out)
    log.info("dashboards: %d feature nodes -> %s", len(out["nodes"]), path)
    return out
