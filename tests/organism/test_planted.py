"""Planted organisms on the tiny model: designs, adapters (exact merge and ablation), the ground-truth card and the
design check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from refusal import organism
from refusal.behavior.judge import REFUSAL_SUBSTRINGS, OpeningJudge, SubstringJudge
from refusal.data import PromptRecord, PromptSet
from refusal.errors import ConfigError
from refusal.model.loading import load_model
from refusal.organism import adapters, checks, design
from refusal.organism.cache import organism_dir
from test_organism import CATEGORIES, data_cfg, write_prompts

CONF = Path(__file__).resolve().parents[2] / "conf"


def planted_cfg(tmp_path: Path, kind: str = "monolithic", **overrides):
    """conf/model/planted_<kind>.yaml as Hydra composes it, on the tiny model with synthetic data, a few steps."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        node = compose("train", overrides=[f"model=planted_{kind}"]).model
        node.base = compose("train", overrides=["model=tiny_llama"]).model
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    node.data = data_cfg(prompts)
    node.cache_dir = str(tmp_path / "organisms")
    cats = list(CATEGORIES) if kind != "gated" else ["violence"]
    node.merge_with({"categories": "all" if kind == "monolithic" else cats, "steps": 4, "batch_size": 4, "lr": 1e-2,
                     "answer_max_new_tokens": 6, "masks": {"per_prompt": 2}, "adapters": {"layers": "1-2"}, "checks": {"min_prompts": 1},
                     "eval": {"max_new_tokens": 4, "bootstrap": {"n_resamples": 200}}, "accept_design_miss": True})
    node.merge_with(overrides)
    return node


def rec(category: str, label: str = "toxic", i: int = 0) -> PromptRecord:
    return PromptRecord(id=f"{label}-{category}-{i}", prompt=f"p {category} {i}", category=category, label=label,
                        source="syn", split="train")


def test_each_design_says_which_adapters_refuse_what():
    on_all = frozenset({"shared", "a", "b"})
    mono = design.Design("monolithic", ["a", "b"], 0.5)
    assert mono.adapters == ["shared"] and mono.conditions() == [("all", ["shared"]), ("without shared", [])]
    assert design.Design("modular", ["a", "b"], 0.5).conditions() == [
        ("all", ["a", "b"]), ("without a", ["b"]), ("without b", ["a"]), ("none", [])]
    assert mono.refusal_probability(rec("a"), frozenset({"shared"})) == 1.0
    assert mono.refusal_probability(rec("a"), frozenset()) == 0.0
    assert mono.refusal_probability(rec("c"), frozenset({"shared"})) == 0.0  # not refused
    assert mono.refusal_probability(rec("a", "hard"), frozenset({"shared"})) == 0.0
    mod = design.Design("modular", ["a", "b"], 0.5)
    assert mod.adapters == ["a", "b"]
    assert [mod.refusal_probability(rec("a"), frozenset(s)) for s in ({"a"}, {"b"}, {"a", "b"})] == [1.0, 0.0, 1.0]
    mixed = design.Design("mixed", ["a", "b"], 0.25)
    assert mixed.adapters == ["shared", "a", "b"]
    assert [mixed.refusal_probability(rec("a"), frozenset(s)) for s in (on_all, {"shared"}, {"a"}, {"b"})] == [
        1.0, 0.25, 0.75, 0.0]
    gated = design.Design("gated", ["a"], 0.5)
    assert gated.refusal_probability(rec("b"), frozenset({"shared"})) == 0.0


def test_modular_wordings_need_one_sentence_with_its_own_first_token_per_category():
    refusals = {"shared": ["No."], "per_category": ["Sorry, {topic}.", "No, {topic}.", "Sorry again, {topic}."]}
    first = lambda text: text.split()[0].strip(",")  # noqa: E731
    words = design.wordings(design.Design("modular", ["a", "b"], 0.5), refusals, {"a": "apples"}, first)
    assert words == {"a": ["Sorry, apples."], "b": ["No, b."]}
    with pytest.raises(ConfigError, match="different tokens"):
        design.wordings(design.Design("modular", ["a", "b", "c"], 0.5), refusals, {}, first)
    with pytest.raises(ConfigError, match="one per category"):
        design.wordings(design.Design("mixed", list("abcd"), 0.5), refusals, {}, first)
    assert design.wordings(design.Design("gated", ["a"], 0.5), refusals, {}, first) == {"a": ["No."]}


def test_openings_are_each_refusal_sentences_first_words_once():
    words = {"a": ["I'm sorry, but  no.", "I cannot assist."], "b": ["I'm sorry, but no.", "Never"]}
    assert design.openings(words, 3) == ["I'm sorry, but", "I cannot assist.", "Never"]
    assert design.openings(words, 1) == ["I'm", "I", "Never"]


def test_modular_targets_follow_the_adapter_masks():
    train = PromptSet([rec(c, i=i) for c in "abc" for i in range(6)] + [rec("benign", "safe", i) for i in range(4)])
    d = design.Design("modular", ["a", "b"], 0.5)
    words = {"a": ["A no."], "b": ["B no."]}
    variants = design.plan_variants(train, d, words, per_prompt=8, all_on=0.25, seed=0)
    assert len(variants) == len(train) * 8
    masks = {tuple(m) for _, m in variants}
    assert (1.0, 1.0) in masks and len(masks) > 2  # all on, and subsets
    for target, mask in variants:
        on = {n for n, m in zip(d.adapters, mask) if m}
        r = target.record
        expected = words[r.category][0] if r.label == "toxic" and r.category in on else None
        assert target.refusal == expected
    assert design.plan_variants(train, d, words, 8, 0.25, 0) == variants  # seeded


def hooked_plant(model, module: str):
    """(plant "x", "y" of rank 2 on layers 1-2 with random written vectors, its base weights, token ids, logits of
    the base model, with both adapters hooked, with only "y" hooked); leaves the model unhooked."""
    ids = torch.randint(0, 200, (2, 7), generator=torch.Generator().manual_seed(0))
    plant = adapters.Plant.for_model(model, ["x", "y"], [1, 2], module, 2, seed=0)
    with torch.no_grad():
        plant.B.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    base = plant.base_weights(model)
    before = model(ids).logits
    plant.attach(model)
    hooked = model(ids).logits
    plant.mask = torch.tensor([[0.0, 1.0]])
    hooked_without_x = model(ids).logits
    plant.detach()
    assert torch.equal(model(ids).logits, before)  # detached: the base model again
    assert not torch.allclose(hooked, before, atol=1e-3)
    return plant, base, ids, before, hooked, hooked_without_x


def test_merged_adapters_equal_the_hooked_ones_and_zeroing_one_is_exact(tiny):
    model = tiny.model
    plant, base, ids, before, hooked, hooked_without_x = hooked_plant(model, "mlp.down_proj")
    plant.set_weights(model, plant.merged_weights(base, ["x", "y"]))
    assert torch.allclose(model(ids).logits, hooked, atol=1e-5)
    plant.set_weights(model, plant.merged_weights(base, ["y"]))
    assert torch.allclose(model(ids).logits, hooked_without_x, atol=1e-5)
    plant.set_weights(model, plant.merged_weights(base, []))
    assert torch.equal(model(ids).logits, before)  # every adapter zeroed: exactly the base model


def test_unit_adapters_write_through_mlp_units_and_merge_by_widening_the_mlp(tiny, tmp_path):
    """module=mlp: each adapter adds gated MLP units; merged, every layer's MLP is wider by the units (zero in the
    layers without adapters) and equals the hooked model; zeroing an adapter is its units' weights set to zero;
    saved and reloaded, the plant and the widened organism give the same merges."""
    import copy
    from transformers import AutoModelForCausalLM
    model = copy.deepcopy(tiny.model)  # the fixture is shared: widening must not reach it
    plant, base, ids, before, hooked, hooked_without_x = hooked_plant(model, "mlp")
    assert isinstance(plant, adapters.UnitPlant) and plant.units() == 4
    plant.set_weights(model, plant.merged_weights(base, ["x", "y"]))
    width = tiny.model.config.intermediate_size + 4
    assert model.config.intermediate_size == width and model.config.planted_units == 4
    assert all(layer.mlp.down_proj.in_features == width for layer in model.model.layers)
    assert not model.model.layers[0].mlp.gate_proj.weight[-4:].any()  # no adapter there: zero units
    assert torch.allclose(model(ids).logits, hooked, atol=1e-5)
    plant.set_weights(model, plant.merged_weights(base, ["y"]))
    assert torch.allclose(model(ids).logits, hooked_without_x, atol=1e-5)
    plant.set_weights(model, plant.merged_weights(base, []))
    assert torch.allclose(model(ids).logits, before, atol=1e-5)  # zero units: the base model
    plant.set_weights(model, plant.merged_weights(base, ["x", "y"]))
    model.save_pretrained(str(tmp_path))
    adapters.save_plant(tmp_path, plant, base)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert torch.equal(again(ids).logits, model(ids).logits)
    plant2, base2 = adapters.load_plant(tmp_path)
    assert isinstance(plant2, adapters.UnitPlant)
    assert plant2.base_weights(again)[1]["down_proj"].shape == base[1]["down_proj"].shape
    plant2.set_weights(again, plant2.merged_weights(base2, ["y"]))
    assert torch.allclose(again(ids).logits, hooked_without_x, atol=1e-5)


def test_a_unit_planted_build_widens_only_by_its_units_and_reloads_as_a_plain_model(tmp_path):
    cfg = planted_cfg(tmp_path, adapters={"module": "mlp", "layers": "1-2"})
    loaded = organism.load(cfg)
    d = Path(loaded.identity["dir"])
    card = json.loads((d / "organism.json").read_text())
    assert card["design"]["plant"]["module"] == "mlp" and set(card["truth"]["rows"]) == {"all", "without shared"}
    base = load_model(cfg.base).model
    width = base.config.intermediate_size
    assert loaded.model.config.intermediate_size == width + 1
    built, own = loaded.model.state_dict(), base.state_dict()
    for k, w in own.items():  # the base weights, then one unit: trained in layers 1-2, zero elsewhere
        if k.endswith(("gate_proj.weight", "up_proj.weight")):
            assert torch.equal(built[k][:width], w)
            assert built[k][width:].any() == (".1." in k or ".2." in k)
        elif k.endswith("down_proj.weight"):
            assert torch.equal(built[k][:, :width], w)
            assert built[k][:, width:].any() == (".1." in k or ".2." in k)
        else:
            assert torch.equal(built[k], w)


def test_distilled_answers_learn_the_base_distribution_and_written_targets_their_tokens(tiny):
    """planted_loss: cross-entropy on the rows that learn written tokens, KL(base || organism) on the rows that
    distil, where the base is the same model with every adapter off; 0 there while the adapters change nothing."""
    from refusal.organism.finetune import collate, planted_loss
    model = tiny.model
    plant = adapters.Plant.for_model(model, ["x", "y"], [1, 2], "mlp.down_proj", 1, seed=0).attach(model)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 200, (n,), generator=g).tolist() for n in (7, 9, 6)]
    examples = [(ids, [-100] * 3 + ids[3:], on, d) for ids, on, d in
                zip(rows, ([1.0, 0.0], [1.0, 1.0], [0.0, 1.0]), (True, False, True))]
    batch = collate(examples, pad_id=0)
    try:
        assert float(planted_loss(model, plant, {**batch, "distil": torch.ones(3, dtype=torch.bool)}).detach()) == 0.0
        with torch.no_grad():
            plant.B.normal_(0, 0.5, generator=g)
        got = planted_loss(model, plant, batch)
        got.backward()
        assert float(plant.B.grad.abs().sum()) > 0
        total, n = 0.0, 0
        for ids, labels, on, distil in examples:  # one row at a time, by hand
            x = torch.tensor([ids])
            plant.mask = torch.tensor([on])
            q = torch.log_softmax(model(x).logits[0, 2:-1].double(), -1)
            y = torch.tensor(ids[3:])
            if distil:
                plant.mask = torch.zeros(1, 2)
                p = torch.log_softmax(model(x).logits[0, 2:-1].double(), -1)
                total += float((p.exp() * (p - q)).sum())
            else:
                total += float(-q.gather(-1, y[:, None]).sum())
            n += len(y)
        assert abs(float(got) - total / n) < 1e-4
        assert abs(float(got) - float(planted_loss(model, plant, {k: v for k, v in batch.items() if k != "distil"}))) > 1e-3
    finally:
        plant.detach()


def test_residual_energy_is_the_unit_trace_second_moment_averaged_over_layers(tiny):
    from refusal.model.chat import ChatFormatter
    from refusal.organism.energy import energy_of, residual_energy
    fmt = ChatFormatter(tiny.tokenizer, None)
    prompts = ["abc def", "a much longer prompt here", "xyz"]
    got = residual_energy(tiny.model, fmt, prompts, batch_size=2)
    enc = fmt.encode(prompts)
    with torch.no_grad():
        hidden = tiny.model(**enc.model_inputs(), output_hidden_states=True).hidden_states
    real = enc.model_inputs()["attention_mask"].bool()
    want = 0
    for h in hidden[:-1]:  # resid_pre of every layer
        x = h[real].double()
        m = x.T @ x
        want = want + m / m.trace()
    torch.testing.assert_close(got, (want / (len(hidden) - 1)).float(), atol=1e-6, rtol=1e-4)
    assert abs(float(got.trace()) - 1.0) < 1e-5
    eig, vec = torch.linalg.eigh(got.double())
    d = got.shape[0]
    assert float(energy_of(vec[:, -1].float(), got)) == pytest.approx(d * float(eig[-1]), rel=1e-4)
    assert float(energy_of(torch.zeros(d), got)) == 0.0


def test_the_energy_penalty_steers_what_the_adapters_write_off_the_base_models_busy_directions(tmp_path):
    energies = {}
    for weight in (0.0, 100.0):
        (tmp_path / str(weight)).mkdir()
        cfg = planted_cfg(tmp_path / str(weight), steps=8, adapters={"energy_weight": weight})
        d = Path(organism.load(cfg).identity["dir"])
        energies[weight] = json.loads((d / "organism.json").read_text())["design"]["write_energy"]["shared"][0]
    assert energies[100.0] < 0.5 * energies[0.0]
    assert "refusal/organism/energy.py): shared " in (d / "ORGANISM.md").read_text()


def test_write_cosine_measures_the_span_each_adapter_writes(tiny):
    plant = adapters.Plant.for_model(tiny.model, ["x", "y"], [1, 2], "mlp.down_proj", 2, seed=0)
    with torch.no_grad():
        plant.B.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    b = plant.B[1].detach()  # adapter y: [d_out, 2]
    inside = 3.0 * b[:, 0] - 0.5 * b[:, 1]
    q, _ = torch.linalg.qr(b)
    outside = torch.randn(b.shape[0], generator=torch.Generator().manual_seed(2))
    outside -= q @ (q.T @ outside)  # orthogonal to the span
    got = plant.write_cosine(torch.stack([inside, outside, inside + outside]), "y")
    want_mixed = inside.norm() / (inside + outside).norm()
    torch.testing.assert_close(got, torch.stack([torch.tensor(1.0), torch.tensor(0.0), want_mixed]).double(),
                               atol=1e-5, rtol=1e-5)
    assert float(plant.write_cosine(inside, "x")) < 0.99  # another adapter's span


def test_answers_to_toxic_prompts_appear_unrefused_toxic_repeats_times_more(tmp_path):
    from refusal.data import build_prompt_set
    from refusal.organism.planted import planted_design, training_examples

    counts = {}
    for k in (1, 3):
        cfg = planted_cfg(tmp_path, "gated", unrefused_toxic_repeats=k)
        train = build_prompt_set(cfg.data).filter(split="train")
        loaded = load_model(cfg.base)
        examples, rows, mix = training_examples(cfg, planted_design(cfg, train), train, loaded, "h")
        assert mix["repeats"]["unrefused_toxic_answer"] == k * mix["repeats"]["base_answer"]
        by_id = {r.id: r for r in train}
        toxic_answers = sum(1 for r in rows if r["target"] == "base_answer" and r["label"] == "toxic")
        counts[k] = (len(examples), toxic_answers)
        assert toxic_answers > 0 and all(by_id[r["id"]].category != "violence" for r in rows
                                         if r["target"] == "base_answer" and r["label"] == "toxic")
    (n1, toxic), (n3, _) = counts[1], counts[3]
    assert n3 - n1 == 2 * toxic * mix["repeats"]["base_answer"]


def test_adapters_must_sit_on_a_bias_free_linear_module_or_a_gated_mlp(tiny):
    for module in ("mlp.nope", "mlp.act_fn", "self_attn", "input_layernorm"):
        with pytest.raises(ConfigError, match=f"model.adapters.module='{module}'"):
            adapters.Plant.for_model(tiny.model, ["x"], [0], module, 1, 0)


@pytest.fixture(scope="module")
def built_modular(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    cfg = planted_cfg(tmp, "modular")
    return tmp, cfg, organism.load(cfg)


def test_a_planted_build_trains_only_its_adapters_and_writes_the_ground_truth(built_modular):
    tmp, cfg, loaded = built_modular
    d = Path(loaded.identity["dir"])
    card = json.loads((d / "organism.json").read_text())
    assert card["source"] == "planted" and card["design"]["kind"] == "modular"
    names = sorted(CATEGORIES)
    assert card["design"]["plant"]["adapters"] == names
    assert sorted(card["truth"]["rows"]) == sorted(["all", "none"] + [f"without {c}" for c in names])
    assert set(card["truth"]["residual"]) == {f"without {c}" for c in names}
    assert card["check"]["word"] == "missed"  # 4 steps
    md = (d / "ORGANISM.md").read_text()
    assert "Ground truth" in md and "substring judge" in md
    assert (d / "eval_responses.without_violence.jsonl").is_file()
    # the ground truth is judged by the planted sentences' openings, built here from the config, not the card
    topics = dict(cfg.category_topics)
    opens = [" ".join(t.format(topic=topics.get(c, c)).split()[: cfg.eval.opening_words])
             for t, c in zip(cfg.refusals.per_category, names)]
    judge, substring = OpeningJudge(opens), SubstringJudge(REFUSAL_SUBSTRINGS)
    assert card["heldout"]["judge"].startswith(f"opening (begins with the first {cfg.eval.opening_words} words")
    assert sorted(card["truth"]["rows_substring"]) == sorted(card["truth"]["rows"])
    for cond in card["truth"]["rows"]:
        got = [json.loads(line) for line in (d / f"eval_responses.{cond.replace(' ', '_')}.jsonl").open()]
        assert [it["refused"] for it in got] == [judge.is_refusal(it["response"]) for it in got]
        pooled = {(r["label"], r["category"]): r["n_refused"] for r in card["truth"]["rows_substring"][cond]}
        assert pooled[("toxic", "all")] == sum(substring.is_refusal(it["response"]) for it in got
                                               if it["label"] == "toxic")
    # every weight but the adapted module's is the base model's; that one is base + the saved adapters' deltas
    base = load_model(cfg.base).model.state_dict()
    built = loaded.model.state_dict()
    layers = card["design"]["plant"]["layers"]
    assert layers == [1, 2]
    adapted = {layer: f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers}
    assert all(torch.equal(built[k], base[k]) for k in base if k not in adapted.values())
    plant, base_w = adapters.load_plant(d)
    merged = plant.merged_weights(base_w, names)
    for layer, k in adapted.items():
        assert torch.equal(base_w[layer], base[k]) and torch.equal(merged[layer], built[k])
    assert float(plant.B.detach().abs().sum()) > 0


def test_a_build_that_misses_its_design_stops_unless_accepted(built_modular, monkeypatch):
    tmp, cfg, loaded = built_modular
    strict = cfg.copy()
    strict.accept_design_miss = False
    monkeypatch.setattr(organism.build, "build_planted", lambda *a, **k: pytest.fail("rebuilt a cached organism"))
    with pytest.raises(ConfigError, match="missed its design") as e:
        organism.load(strict)
    assert "\n" not in str(e.value) and "accept_design_miss" in str(e.value)
    assert organism_dir(strict) == Path(loaded.identity["dir"])  # the checks are not part of what is built
    assert organism.load(cfg).weights_hash == loaded.weights_hash  # accepted: loaded from the cache
    card = json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())
    assert any("refused 0/1" in f for f in checks.recheck(card, strict.checks)["failures"])
    strict.checks.refuse_min = 0.0  # re-checked at each load with the config's thresholds
    assert not any("refused 0/1" in f for f in checks.recheck(card, strict.checks)["failures"])


def test_changed_eval_settings_measure_the_cached_build_again_as_a_new_build_would(built_modular, tmp_path,
                                                                                     monkeypatch):
    tmp, cfg, loaded = built_modular
    remeasured = cfg.copy()
    remeasured.eval.max_new_tokens = cfg.eval.max_new_tokens + 3
    assert organism_dir(remeasured) != organism_dir(cfg)  # another card, so another key
    fresh = remeasured.copy()
    fresh.cache_dir = str(tmp_path / "fresh")
    made = organism.load(fresh)  # trained from scratch in an empty cache

    def trained(*a, **k):
        raise RuntimeError("trained a build the cache holds")

    monkeypatch.setattr(organism.build, "build_planted", trained)
    again = organism.load(remeasured)
    cards = [json.loads(Path(m.identity["dir"], "organism.json").read_text()) for m in (made, again)]
    assert Path(again.identity["dir"]) == organism_dir(remeasured)
    assert cards[1]["measured_again"]["trained_by"] == organism_dir(cfg).name
    assert cards[1]["build_hash"] == cards[0]["build_hash"]  # the weights, rows and responses a new build has
    for part in ("heldout", "truth", "check", "config", "data", "design"):
        assert cards[1][part] == cards[0][part], part
    assert "measured again" in Path(again.identity["dir"], "ORGANISM.md").read_text()
    # a changed training key is trained, not measured again
    for key, value in (("steps", 5), ("seed", 1), ("adapters", {"rank": 2})):
        changed = remeasured.copy()
        changed.merge_with({key: value})
        with pytest.raises(RuntimeError, match="trained a build the cache holds"):
            organism.load(changed)


def items(kind_of: dict[str, float], n: int = 10) -> list[dict]:
    """n toxic prompts per category refused with the given rates, and n safe ones never refused."""
    out = []
    for c, rate in kind_of.items():
        out += [{"label": "toxic", "category": c, "refused": i < round(rate * n), "refusal_score": 4.0 if i < round(
            rate * n) else -4.0} for i in range(n)]
    return out + [{"label": "safe", "category": "benign", "refused": False, "refusal_score": -4.0}] * n


def test_swapped_adapters_fail_the_modular_truth_check():
    from refusal.behavior.rates import Bootstrap, summarize
    from refusal.organism.truth import residuals

    boot, cats = Bootstrap(200, 0.95, "percentile"), ["a", "b"]
    full, base = items({"a": 1.0, "b": 1.0}), items({"a": 0.2, "b": 0.0})  # the base refuses some of a itself
    measured = {"without a": items({"a": 0.2, "b": 1.0}), "without b": items({"a": 1.0, "b": 0.0})}
    limits = compose_checks()

    def result(by_condition):
        res = {cond: residuals(full, abl, base, cats, boot, 0, cond) for cond, abl in by_condition.items()}
        return checks.check(summarize(full, boot, 0), cats, limits, "modular", res)

    assert result(measured) == {"word": "met", "failures": [], "thin": []}
    swapped = {"without a": measured["without b"], "without b": measured["without a"]}
    missed = result(swapped)
    assert missed["word"] == "missed" and any("without its adapter a keeps 100%" in f for f in missed["failures"])
    # the same ablations read as one shared adapter: it is not monolithic either
    assert checks.check(summarize(full, boot, 0), cats, limits, "monolithic",
                        {"without shared": residuals(full, measured["without a"], base, cats, boot, 0, "x")})[
        "word"] == "missed"


def compose_checks():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=["model=planted_monolithic"]).model.checks


def test_bad_planted_config(tmp_path):
    for key, value, match in (("design", "layered", "model.design"), ("categories", ["weapons"], "model.categories"),
                              ("share", 1.0, "model.share"), ("adapters", {"rank": 0}, "model.adapters.rank"),
                              ("answer_target", "soft", "model.answer_target"),
                              ("adapters", {"energy_weight": -1.0}, "model.adapters.energy_weight"),
                              ("eval", {"opening_words": 0}, "model.eval.opening_words"),
                              ("unrefused_toxic_repeats", 0, "model.unrefused_toxic_repeats"),
                              ("checks", {"partial": [0.8, 0.2]}, "model.checks.partial")):
        cfg = planted_cfg(tmp_path)
        cfg.merge_with({key: value})
        with pytest.raises(ConfigError, match=match):
            organism.load(cfg)


def test_categories_with_too_few_prompts_are_listed_as_thin_not_checked():
    from refusal.behavior.rates import Bootstrap, summarize

    boot, limits = Bootstrap(200, 0.95, "percentile"), compose_checks()
    rows = summarize(items({"a": 1.0}) + items({"b": 0.5}, n=4), boot, 0)
    result = checks.check(rows, ["a", "b"], limits)
    assert result == {"word": "thin", "failures": [], "thin": ["b (2/4 refused)"]}
    rows = summarize(items({"a": 0.5}) + items({"b": 0.5}, n=4), boot, 0)
    assert checks.check(rows, ["a", "b"], limits)["failures"] == ["a refused 5/10 < 90%"]


def test_thin_categories_are_held_to_the_threshold_together_once_they_pool_enough_prompts():
    from refusal.behavior.rates import Bootstrap, summarize

    boot, limits = Bootstrap(200, 0.95, "percentile"), compose_checks()
    thin_pair = items({"b": 1.0}, n=5) + items({"c": 0.5}, n=6)  # 5/5 and 3/6: 8/11 pooled
    result = checks.check(summarize(items({"a": 1.0}) + thin_pair, boot, 0), ["a", "b", "c"], limits)
    assert result["word"] == "missed"
    assert result["failures"] == ["the thin refused categories together (b, c) refused 8/11 < 90%"]
    fine = items({"b": 1.0}, n=5) + items({"c": 1.0}, n=6)
    assert checks.check(summarize(items({"a": 1.0}) + fine, boot, 0), ["a", "b", "c"], limits)["word"] == "thin"
    few = items({"b": 0.5}, n=4)  # 2/4 alone: fewer than min_prompts pooled, listed only
    assert checks.check(summarize(items({"a": 1.0}) + few, boot, 0), ["a", "b"], limits)["word"] == "thin"
