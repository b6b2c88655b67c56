"""Batched greedy generation: padding does not change the answers, runs repeat exactly, end of turn stops a row."""
import io
import sys

import pytest
import torch

from refusal.behavior.generate import generate_responses, stop_token_ids
from refusal.model.loading import LoadedModel

PROMPTS = ["hi", "tell me about rivers and stones", "x", "what is a lamp?"]


def test_batched_equals_one_by_one_and_is_deterministic(tiny):
    batched = generate_responses(tiny, PROMPTS, max_new_tokens=8, batch_size=4)
    again = generate_responses(tiny, PROMPTS, max_new_tokens=8, batch_size=4)
    single = [generate_responses(tiny, [p], max_new_tokens=8, batch_size=1) for p in PROMPTS]
    assert batched.token_ids == again.token_ids
    assert batched.token_ids == [s.token_ids[0] for s in single]
    assert batched.responses == [s.responses[0] for s in single]
    assert all(len(t) == 8 for t in batched.token_ids)  # the random model never ends its turn
    assert not any(batched.finished)


def test_end_of_turn_stops_the_response(tiny):
    eos = tiny.tokenizer.eos_token_id
    assert stop_token_ids(tiny) == [eos]
    calls = []

    def eos_after_two_steps(module, inputs, output):  # the 3rd generation step ends every turn
        calls.append(1)
        if len(calls) >= 3:
            output = output.clone()
            output[..., eos] = 1e4
        return output

    handle = tiny.model.lm_head.register_forward_hook(eos_after_two_steps)
    try:
        gen = generate_responses(tiny, PROMPTS, max_new_tokens=8, batch_size=4)
    finally:
        handle.remove()
    assert all(gen.finished)
    for ids, text in zip(gen.token_ids, gen.responses):
        assert len(ids) == 3 and ids[-1] == eos and eos not in ids[:-1]
        assert "<|im_end|>" not in text


def test_restores_training_mode(tiny):
    m = LoadedModel(model=tiny.model, tokenizer=tiny.tokenizer, name="t")
    tiny.model.train()
    try:
        generate_responses(m, ["a"], max_new_tokens=1, batch_size=1)
        assert tiny.model.training
    finally:
        tiny.model.eval()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_generation_shows_a_progress_bar_on_a_terminal_only(tiny, monkeypatch, terminal):
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    generate_responses(tiny, ["one", "two", "three"], max_new_tokens=2, batch_size=2)
    assert ("generate:" in err.getvalue() and "/3 " in err.getvalue()) == terminal
