"""SAE quality counts and splices only the tokens the SAE was trained on; explained variance by hand."""
import pytest
import torch

from refusal.evaluation.sae_quality import sae_quality, selected_tokens
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations

HOOK = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("positions", ["all", "post_instruction"])
def test_explained_variance_and_counts_at_the_trained_positions(loaded, texts, random_sae, positions):
    fmt = ChatFormatter(loaded.tokenizer)
    sae = random_sae(seed=7)
    prompts = texts["toxic"] + texts["safe"]
    row, = sae_quality(loaded.model, fmt, {HOOK: sae}, prompts, batch_size=len(prompts), positions=positions)
    enc = fmt.encode(prompts)
    sel = selected_tokens(enc, positions)
    if positions == "post_instruction":
        assert int(sel.sum()) == len(prompts) * fmt.n_post_instruction
    assert row["n_tokens"] == int(sel.sum()) < int(enc.attention_mask.sum())  # the system prompt is left out
    with torch.no_grad(), capture_activations(loaded.model, [HOOK], stop_early=False) as cache:
        loaded.model(**enc.model_inputs(), use_cache=False)
    x = cache[HOOK][sel].double()
    x_hat = sae.decode(sae.encode(x.float())).double()
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert row["explained_variance"] == pytest.approx(float(ev), rel=1e-4)
    assert row["positions"] == positions and row["n_ce_tokens"] > 0


def test_last_position_has_no_next_token_to_score(loaded, texts, random_sae):
    row, = sae_quality(loaded.model, ChatFormatter(loaded.tokenizer), {HOOK: random_sae(seed=7)}, texts["safe"],
                       batch_size=2, positions="last")
    assert row["n_tokens"] == len(texts["safe"]) and row["n_ce_tokens"] == 0
    assert row["ce_loss_recovered"] != row["ce_loss_recovered"]  # NaN, not a made-up number
