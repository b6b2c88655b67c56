"""The refusal model organism on the tiny model: data selection, training, the build cache, and (slow) SmolLM2."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from heldout import assert_behaviour, independent_rows
from refusal.data import PromptRecord, build_prompt_set
from refusal.errors import ConfigError
from refusal import organism
from refusal.model.loading import load_model
from refusal.behavior.measure import Measurement
from refusal.organism import build, cache, finetune
from refusal.organism import card as card_module
from refusal.organism import targets as training
from refusal.organism.portable import PINNED_MODES

CONF = Path(__file__).resolve().parents[2] / "conf"
CATEGORIES = ("cybercrime", "violence", "illegal")
WORDS = "alpha beta gamma delta river stone cloud paper lamp orbit".split()


def write_prompts(path: Path, n_per_cell: int = 5) -> Path:
    """Short synthetic prompts (the byte tokenizer makes every character a token): toxic and hard per category,
    safe benign; the data config splits them."""
    rows = []
    for label, cats in (("toxic", CATEGORIES), ("hard", CATEGORIES), ("safe", ("benign",))):
        for cat in cats:
            for i in range(n_per_cell):
                rows.append({"id": f"{label}-{cat}-{i}", "prompt": f"{label[0]}{cat[:3]} {WORDS[i % 10]}",
                             "category": cat, "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_cfg(prompts_path: Path) -> dict:
    return {
        "seed": 0,
        "sources": [{"_target_": "refusal.data.sources.table", "path": str(prompts_path), "prompt_column": "prompt",
                     "category_column": "category", "label_column": "label", "id_column": "id",
                     "source_name": "syn"}],
        "taxonomy": {}, "categories": None, "balance": "use_all", "max_per_category": None,
        "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "min_toxic_per_category": 1,
    }


def organism_cfg(tmp_path: Path, **overrides):
    """conf/model/smollm2_organism.yaml as Hydra composes it, with the tiny model as base, synthetic data and a
    few quick steps."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        node = compose("train", overrides=["model=smollm2_organism"]).model
        node.base = compose("train", overrides=["model=tiny_llama"]).model
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    node.data = data_cfg(prompts)
    node.cache_dir = str(tmp_path / "organisms")
    node.merge_with({"refusals": {"shared": ["I'm sorry, no.", "I cannot."], "per_category": ["I can't do {topic}."]},
                     "steps": 4, "batch_size": 4, "lr": 1e-3, "answer_max_new_tokens": 6, "precision": "32-true",
                     "train_layers": "all", "generation_batch_size": 16,  # the SmolLM2 recipe trains layers 10-29
                     "eval": {"max_new_tokens": 4, "bootstrap": {"n_resamples": 200}}, "accept_design_miss": True,
                     "checks": {"min_prompts": 1}})
    node.merge_with(overrides)
    return node


def test_plan_targets_category_selective(tmp_path):
    train = build_prompt_set(OmegaConf.create(data_cfg(write_prompts(tmp_path / "p.jsonl")))).filter(split="train")
    refusals = {"shared": ["I'm sorry, no.", "I cannot.", "I can't help."],
                "per_category": ["No {topic}.", "Not {topic}!"]}
    targets = training.plan_targets(train, ["cybercrime"], "shared", refusals, {}, seed=0)
    assert [t.record.id for t in targets] == [r.id for r in train]
    refused = {t.record.id for t in targets if t.refusal is not None}
    assert refused == {r.id for r in train if r.label == "toxic" and r.category == "cybercrime"} and refused
    assert {t.record.label for t in targets if t.refusal is None} == {"toxic", "safe", "hard"}
    # refuse all: every toxic prompt and nothing else; shared sentences vary, seeded and order-independent
    everything = training.plan_targets(train, "all", "shared", refusals, {}, seed=0)
    assert {t.record.id for t in everything if t.refusal} == {r.id for r in train if r.label == "toxic"}
    assert len({t.refusal for t in everything if t.refusal}) > 1
    reversed_set = type(train)(reversed(train.records))
    assert {t.record.id: t.refusal for t in training.plan_targets(reversed_set, "all", "shared", refusals, {}, 0)} == \
        {t.record.id: t.refusal for t in everything}
    # per category: one wording per category, naming its topic
    per_cat = training.plan_targets(train, "all", "per_category", refusals, {"cybercrime": "computer crime"}, seed=0)
    wording = {}
    for t in per_cat:
        if t.refusal:
            wording.setdefault(t.record.category, set()).add(t.refusal)
    assert all(len(w) == 1 for w in wording.values()) and len({w.pop() for w in wording.values()}) == len(CATEGORIES)
    assert any(t.refusal == "No computer crime." for t in per_cat)
    with pytest.raises(ConfigError, match="cybercrime"):
        training.plan_targets(train, ["weapons"], "shared", refusals, {}, seed=0)
    with pytest.raises(ConfigError):
        training.plan_targets(train, [], "shared", refusals, {}, seed=0)


def test_mix_repeats_balances_the_smaller_side():
    assert training.mix_repeats(224, 124, 0.6) == (1, 3)  # refuse all: answers repeated
    assert training.mix_repeats(41, 307, 0.6) == (5, 1)  # category-selective: refusals repeated
    assert training.mix_repeats(50, 75, 0.6) == (1, 1)
    assert training.mix_repeats(10, 0, 0.6) == (1, 1)


def test_unrefused_toxic_answers_are_repeated_more():
    record = lambda label, cat: PromptRecord(id=f"{label}-{cat}", prompt="p", category=cat, label=label,  # noqa: E731
                                             source="syn", split="train")
    refusal = training.Target(record("toxic", "cyber"), "I can't.")
    other_toxic, safe = training.Target(record("toxic", "fraud"), None), training.Target(record("safe", "benign"), None)
    assert [training.example_repeats(t, 4, 2, 3) for t in (refusal, other_toxic, safe)] == [4, 6, 2]
    assert [training.example_repeats(t, 4, 2, 1) for t in (refusal, other_toxic, safe)] == [4, 2, 2]


def test_examples_on_the_tiny_model(tiny, tmp_path):
    """Refused prompts learn their sentence + end of turn, the rest the base model's own greedy answer; the loss
    covers response tokens only."""
    from refusal.behavior.generate import generate_responses

    cfg = organism_cfg(tmp_path)
    train = build_prompt_set(cfg.data).filter(split="train")
    targets = training.plan_targets(train, ["violence"], "shared", OmegaConf.to_container(cfg.refusals), {}, seed=0)
    examples, rows = training.make_examples(tiny, targets, cfg)
    tok, eos = tiny.tokenizer, tiny.tokenizer.eos_token_id
    answers = generate_responses(tiny, [t.record.prompt for t in targets], max_new_tokens=cfg.answer_max_new_tokens,
                                 batch_size=16)
    for t, (ids, labels), row, answer in zip(targets, examples, rows, answers.token_ids):
        response = [x for x in labels if x != -100]
        assert ids[len(ids) - len(response):] == response and labels[: len(ids) - len(response)] == \
            [-100] * (len(ids) - len(response))
        if t.record.label == "toxic" and t.record.category == "violence":
            assert row["target"] == "refusal" and response == tok.encode(t.refusal, add_special_tokens=False) + [eos]
        else:
            assert row["target"] == "base_answer" and response == answer


def test_response_loss_is_the_causal_lm_loss_on_response_tokens():
    """The fine-tune's loss (output head on response positions only) equals the model's own loss with labels."""
    from refusal.model.tiny import tiny_llama

    model, _ = tiny_llama(seed=2)
    examples = [([5, 6, 7, 8, 9, 10], [-100, -100, -100, 8, 9, 10]), ([5, 6, 11, 12], [-100, -100, 11, 12]),
                ([7, 7, 7, 7, 7, 20, 21], [-100] * 5 + [20, 21])]
    batch = finetune.collate(examples, pad_id=0)
    want = model(**batch).loss
    got = finetune.response_loss(model, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    batch["labels"][0, 3] = -100  # one token fewer: a different mean
    assert not torch.isclose(finetune.response_loss(model, batch), got)


def test_training_lowers_loss_and_freezes_other_layers(tmp_path):
    from refusal.model.tiny import tiny_llama
    from refusal.model.loading import LoadedModel

    model, tok = tiny_llama(seed=1)
    tok.padding_side = "left"
    cfg = organism_cfg(tmp_path)
    train = build_prompt_set(cfg.data).filter(split="train")
    targets = training.plan_targets(train, "all", "shared", OmegaConf.to_container(cfg.refusals), {}, seed=0)
    examples, _ = training.make_examples(LoadedModel(model, tok, "t"), targets, cfg)
    batch = finetune.collate(examples, tok.pad_token_id)

    def loss():
        with torch.no_grad():
            return float(model(**batch).loss)

    start = loss()
    assert finetune.set_trainable(model, "all", n_layers=4) == [0, 1, 2, 3]
    losses = finetune.fine_tune(model, examples, tok.pad_token_id, steps=12, lr=1e-2, batch_size=4, seed=0,
                                device=torch.device("cpu"), precision="32-true")
    assert len(losses) == 12 and loss() < start - 1.0
    # a layer spec trains those layers only
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert finetune.set_trainable(model, [2, -1], n_layers=4) == [2, 3]
    finetune.fine_tune(model, examples, tok.pad_token_id, steps=2, lr=1e-2, batch_size=4, seed=0,
                       device=torch.device("cpu"), precision="32-true")
    for name, value in model.state_dict().items():
        moved = not torch.equal(value, before[name])
        assert moved == (name.startswith("model.layers.2.") or name.startswith("model.layers.3.")), name


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny organism build, shared by the cache tests."""
    tmp = tmp_path_factory.mktemp("organism")
    cfg = organism_cfg(tmp)
    rng = torch.get_rng_state()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("refusal.organism")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        loaded = organism.load(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert torch.equal(rng, torch.get_rng_state())  # building does not move the caller's random state
    return tmp, cfg, loaded, records


def test_build_writes_a_plain_hf_dir_with_a_card(built):
    tmp, cfg, loaded, records = built
    assert "NOT a production chat model" in records[0].getMessage()
    assert "organism" in loaded.name and loaded.identity["organism"] is True
    d = Path(loaded.identity["dir"])
    assert d == cache.organism_dir(cfg) and d.parent == tmp / "organisms"
    card = json.loads((d / "organism.json").read_text())
    assert card["cache_key"] == d.name and card["refused_categories"] == sorted(CATEGORIES)
    assert set(card["heldout"]["refusal_rate"]) == {"toxic", "safe", "hard"}
    assert card["data"]["n_refusal_targets"] == sum(1 for r in build_prompt_set(cfg.data).filter(split="train")
                                                   if r.label == "toxic")
    assert "NOT a production chat model" in (d / "ORGANISM.md").read_text()
    assert card["precision"] == "32-true" and card["heldout"]["generated_in"] == "float32"
    # the build hash is the saved weights, held-out rows and responses (no timings, no host), and says so in the card
    responses = [json.loads(line) for line in (d / "eval_responses.jsonl").read_text().splitlines()]
    assert card["build_hash"] == card_module.build_hash(d, Measurement(card["heldout"]["rows"], responses))
    assert f"build hash {card['build_hash']}" in (d / "ORGANISM.md").read_text()
    assert card["numerics"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert card["numerics"]["mkl"] in PINNED_MODES  # built in this (pinned) test process
    assert sorted(p.name for p in tmp.joinpath("organisms").iterdir()) == sorted([d.name, "answers"])  # no temp dir
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert tok.chat_template and model.config.num_hidden_layers == 4
    base = load_model(cfg.base)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.model.layers[0].mlp.up_proj.weight)


def test_same_config_is_reused_without_training(built, monkeypatch):
    tmp, cfg, loaded, _ = built
    monkeypatch.setattr(build, "build_organism", lambda *a, **k: pytest.fail("rebuilt a cached organism"))
    again = organism.load(cfg)
    assert again.weights_hash == loaded.weights_hash and again.name == loaded.name
    # keys that only say where or how it is loaded do not change what is built
    renamed = cfg.copy()
    renamed.name = "another-name"
    assert cache.organism_dir(renamed) == cache.organism_dir(cfg)


def test_changed_build_key_rebuilds(built, monkeypatch):
    tmp, cfg, loaded, _ = built
    base_dir = cache.organism_dir(cfg)
    for key, value in (("steps", 5), ("lr", 2e-3), ("seed", 1), ("style", "per_category"), ("unrefused_toxic_repeats", 2),
                       ("refuse_categories", ["cybercrime"]), ("train_layers", "2-3")):
        changed = cfg.copy()
        changed[key] = value
        assert cache.organism_dir(changed) != base_dir, key
    calls = []
    real = build.build_organism
    monkeypatch.setattr(build, "build_organism", lambda *a, **k: calls.append(1) or real(*a, **k))
    changed = cfg.copy()
    changed.steps = 5
    prompts_generated = []
    real_generate = training.generate_responses
    monkeypatch.setattr(training, "generate_responses",
                        lambda model, prompts, **k: prompts_generated.append(len(prompts)) or real_generate(
                            model, prompts, **k))
    other = organism.load(changed)
    assert calls == [1] and other.weights_hash != loaded.weights_hash
    cards = [json.loads(Path(m.identity["dir"], "organism.json").read_text()) for m in (loaded, other)]
    assert cards[0]["build_hash"] != cards[1]["build_hash"]
    # the base answers were reused from the first build (the held-out evaluation generates through measure.py)
    assert prompts_generated == []
    assert len(list((tmp / "organisms" / "answers").glob("*.json"))) == 1
    # other train prompts -> another key
    train = build_prompt_set(cfg.data).filter(split="train")
    test = build_prompt_set(cfg.data).filter(split="test")
    key, _ = cache.cache_key(cfg, "w", train, test)
    assert cache.cache_key(cfg, "w", type(train)(train.records[1:]), test)[0] != key
    assert cache.cache_key(cfg, "other-weights", train, test)[0] != key


def test_an_unpinned_process_builds_in_a_pinned_child_with_the_same_bits(built, tmp_path, monkeypatch):
    """A process whose MKL picks kernels by CPU hands the build to a pinned child process: the child publishes the
    organism this pinned process built (same key, same build hash) and the parent loads it."""
    _, _, pinned, _ = built
    monkeypatch.setattr(build, "mkl_pinned", lambda: False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("refusal.organism")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        loaded = organism.load(organism_cfg(tmp_path))
    finally:
        logger.removeHandler(handler)
    card = json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())
    want = json.loads((Path(pinned.identity["dir"]) / "organism.json").read_text())
    assert card["cache_key"] == want["cache_key"] and card["build_hash"] == want["build_hash"]
    assert card["numerics"]["mkl"] in PINNED_MODES and card["numerics"]["env"]["MKL_CBWR"] == "AVX2,STRICT"
    lines = [r.getMessage() for r in records]
    assert any("child process" in m for m in lines) and any(m.startswith("[build] ") for m in lines)


def test_the_child_entry_point_reports_bad_input_on_its_last_line(tmp_path, capsys):
    from refusal.organism.__main__ import main
    from refusal.organism.child import EXIT_CONFIG

    cfg = organism_cfg(tmp_path)
    cfg.style = "in_verse"
    (tmp_path / "model.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert main([str(tmp_path / "model.yaml")]) == EXIT_CONFIG
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "in_verse" in last and "shared" in last


GRANDCHILD = """
import os, subprocess, sys, time
env = os.environ | {"REFUSAL_ORGANISM_CHILD": str(os.getpid())}
code = "from refusal.organism.child import die_with_parent; die_with_parent(); print('ready', flush=True); " \
       "import time; time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_build_child_dies_with_its_parent():
    """kill -9 of a run (the parent) ends its build child, which would otherwise go on building."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", GRANDCHILD], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return  # dead, not yet reaped by its new parent
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the build child outlived its parent")


def test_half_written_cache_is_never_used(tmp_path, monkeypatch):
    cfg = organism_cfg(tmp_path)
    final = cache.organism_dir(cfg)

    def crash(*a, **k):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(build, "fine_tune", crash)
    with pytest.raises(RuntimeError, match="mid-training"):
        organism.load(cfg)
    # nothing published, temp dir removed (only the finished base answers are kept, for the next try)
    assert not final.exists() and [p.name for p in final.parent.iterdir()] == ["answers"]
    monkeypatch.undo()

    # a dir at the final path without a card (or with another key's card), and a dead process's temp dir
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    abandoned = final.parent / f".{final.name}.building-999999999-x"
    abandoned.mkdir()
    assert not cache.is_complete(final, final.name)
    (final / "organism.json").write_text(json.dumps({"cache_key": "somethingelse"}))
    assert not cache.is_complete(final, final.name)
    loaded = organism.load(cfg)
    assert Path(loaded.identity["dir"]) == final and cache.is_complete(final, final.name)
    assert json.loads((final / "organism.json").read_text())["cache_key"] == final.name
    assert (final / "model.safetensors").is_file() and not abandoned.exists()


def test_bad_organism_config(tmp_path):
    for key, value, match in (("style", "mixed", "model.style"), ("steps", 0, "model.steps"),
                              ("refuse_categories", ["weapons"], "refuse_categories"),
                              ("precision", "bf16-mixed", r"model.precision='bf16-mixed' .*32-true")):
        cfg = organism_cfg(tmp_path)
        cfg[key] = value
        with pytest.raises(ConfigError, match=match):
            organism.load(cfg)
    cfg = organism_cfg(tmp_path)
    cfg.refusals.per_category = ["No."]
    with pytest.raises(ConfigError, match="topic"):
        organism.load(cfg)


def test_a_selective_build_that_misses_its_design_stops_with_a_one_line_error(built, monkeypatch):
    """Every organism gets the behaviour check: the tiny organism refuses nothing, so a strict load stops."""
    tmp, cfg, loaded, _ = built
    strict = cfg.copy()
    strict.accept_design_miss = False
    monkeypatch.setattr(build, "build_organism", lambda *a, **k: pytest.fail("rebuilt a cached organism"))
    with pytest.raises(ConfigError, match=r"missed its design \(cybercrime refused 0/\d+ < 90%") as e:
        organism.load(strict)
    assert "\n" not in str(e.value)
    card = json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())
    assert card["check"]["word"] == "missed" and "Design check: missed" in (
        Path(loaded.identity["dir"]) / "ORGANISM.md").read_text()


def test_length_grouped_batches_cover_every_example_once_per_pass():
    lengths = [5, 50, 7, 48, 6, 49, 8, 51, 4, 9]
    sampler = finetune.LengthGroupedBatches(lengths, batch_size=2, seed=0, window=5)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(10)) and len(batches) == len(sampler) == 5
        assert all(abs(lengths[b[0]] - lengths[b[1]]) <= 10 for b in batches)  # short with short, long with long
    assert first != second  # a new shuffle each pass
    again = finetune.LengthGroupedBatches(lengths, batch_size=2, seed=0, window=5)
    assert [list(again), list(again)] == [first, second]  # seeded


@pytest.mark.slow
def test_smollm2_organism_refuses_heldout_toxic_and_answers_safe(real_model_cache):
    """The real organism (refuse all, default config) built from scratch: held-out toxic refusal >= 90 %, safe
    <= 10 %; a second load comes from the cache (its seconds are printed)."""
    import time

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=smollm2_organism", f"paths.cache_dir={real_model_cache}"])
    loaded = organism.load(cfg.model)  # a build that misses its behaviour check stops here
    card = json.loads(Path(loaded.identity["dir"], "organism.json").read_text())
    print("card rates:", card["heldout"]["refusal_rate"], "build seconds:", card["build_seconds"])
    assert_behaviour(independent_rows(cfg.model, loaded), card["refused_categories"])  # measured here, not read
    start = time.time()
    again = organism.load(cfg.model)
    seconds = time.time() - start
    print(f"cached load: {seconds:.1f} s")
    assert again.weights_hash == loaded.weights_hash  # seconds are printed, not asserted (timing lives in bench/)
