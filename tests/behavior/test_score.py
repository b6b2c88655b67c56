"""The refusal score against a hand computation: a known logits vector and the real tiny-model forward."""
import math

import torch

from refusal.behavior.generate import generate_responses
from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.model.chat import ChatFormatter


def by_hand(logits: list[float], ids: list[int]) -> float:
    m = max(logits)
    exps = [math.exp(x - m) for x in logits]
    p = sum(exps[i] for i in ids) / sum(exps)
    return math.log(p) - math.log(1 - p)


def test_known_logits_vector():
    logits = [1.0, 2.0, 3.0, 0.5, -1.0]
    got = float(refusal_score(torch.tensor(logits), [1, 3]))
    # p = (e^2 + e^0.5) / (e^1 + e^2 + e^3 + e^0.5 + e^-1)
    p = (math.e**2 + math.e**0.5) / (math.e + math.e**2 + math.e**3 + math.e**0.5 + math.e**-1)
    assert math.isclose(got, math.log(p / (1 - p)), rel_tol=1e-9)
    assert math.isclose(got, by_hand(logits, [1, 3]), rel_tol=1e-9)
    # more refusal mass -> higher score; batched input keeps the batch shape
    assert float(refusal_score(torch.tensor(logits), [1, 2, 3])) > got
    assert refusal_score(torch.tensor([logits, logits]), [1, 3]).shape == (2,)


def test_tiny_forward_and_generation_score_match_hand_computation(tiny):
    ids = resolve_refusal_tokens(tiny.tokenizer)
    assert ids == sorted(set(ids)) and tiny.tokenizer.encode("I", add_special_tokens=False)[0] in ids
    prompts = ["hi", "please tell me a much longer story"]
    enc = ChatFormatter(tiny.tokenizer).encode(prompts)
    with torch.no_grad():
        last = tiny.model(**enc.model_inputs()).logits[:, -1]  # first response position of every (left-padded) row
    for b in range(len(prompts)):
        expected = by_hand(last[b].double().tolist(), ids)
        assert math.isclose(float(refusal_score(last[b], ids)), expected, rel_tol=1e-6, abs_tol=1e-9)
    # the score generate_responses reports comes from the first generation step: the same position
    gen = generate_responses(tiny, prompts, max_new_tokens=2, batch_size=2, refusal_token_ids=ids)
    for b in range(len(prompts)):
        assert math.isclose(gen.scores[b], by_hand(last[b].double().tolist(), ids), rel_tol=1e-4, abs_tol=1e-6)
