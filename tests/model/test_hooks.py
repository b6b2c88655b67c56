import pytest
import torch

from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations, expand_hook_names, parse_hook_name, parse_layers, run_until_stop


def test_layer_specs():
    assert parse_layers(3, 10) == [3]
    assert parse_layers(-1, 10) == [9]
    assert parse_layers("2-4", 10) == [2, 3, 4]
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("mid", 30) == [15]
    assert parse_layers([1, "3", -1], 6) == [1, 3, 5]


@pytest.mark.parametrize("spec", [10, -11, "x", "3-12"])
def test_layer_out_of_range_is_one_line_error(spec):
    with pytest.raises(ConfigError) as e:
        parse_layers(spec, 10)
    assert "\n" not in str(e.value)


def test_bad_hook_names():
    with pytest.raises(ConfigError, match="hook_resid_mid"):
        parse_hook_name("blocks.1.hook_resid_mid", 4)
    with pytest.raises(ConfigError, match="out of range"):
        parse_hook_name("blocks.7.hook_resid_post", 4)
    with pytest.raises(ConfigError, match="resid"):
        expand_hook_names(["resid"], 1, 4)


def test_expand_orders_by_model_depth():
    names = expand_hook_names(["hook_resid_post", "hook_resid_pre"], "0-1", 4)
    assert names == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]


def _batch(tiny):
    fmt = ChatFormatter(tiny.tokenizer)
    return fmt.encode(["hi", "a much longer prompt about rivers and stones"])


def test_resid_hooks_equal_hidden_states_with_padding(tiny):
    enc = _batch(tiny)
    assert (enc.attention_mask == 0).any()  # the short prompt is left-padded
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(4)] + ["blocks.2.hook_resid_pre"]
    with torch.no_grad(), capture_activations(tiny.model, hooks, stop_early=False) as cache:
        out = tiny.model(**enc.model_inputs(), output_hidden_states=True)
    real = enc.attention_mask.bool()
    for i in range(3):  # the last hidden state is after the final norm in HF
        assert torch.equal(cache[f"blocks.{i}.hook_resid_post"][real], out.hidden_states[i + 1][real])
    assert torch.equal(cache["blocks.2.hook_resid_pre"][real], out.hidden_states[2][real])


def test_sublayer_hooks_sum_to_residual(tiny):
    enc = _batch(tiny)
    hooks = ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
    with torch.no_grad(), capture_activations(tiny.model, hooks, stop_early=False) as c:
        tiny.model(**enc.model_inputs())
    total = c["blocks.1.hook_resid_pre"] + c["blocks.1.hook_attn_out"] + c["blocks.1.hook_mlp_out"]
    torch.testing.assert_close(total, c["blocks.1.hook_resid_post"])
    assert c["blocks.1.mlp.hook_post"].shape[-1] == tiny.model.config.intermediate_size
    down = tiny.model.model.layers[1].mlp.down_proj
    torch.testing.assert_close(down(c["blocks.1.mlp.hook_post"]), c["blocks.1.hook_mlp_out"])


def test_early_stop_gives_identical_values_and_skips_later_layers(tiny):
    enc = _batch(tiny)
    calls = []
    h = tiny.model.model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad(), capture_activations(tiny.model, ["blocks.1.hook_resid_post"], stop_early=True) as early:
            assert run_until_stop(lambda: tiny.model(**enc.model_inputs())) is None
        assert calls == []
        with torch.no_grad(), capture_activations(tiny.model, ["blocks.1.hook_resid_post"], stop_early=False) as full:
            tiny.model(**enc.model_inputs())
        assert calls == [1]
    finally:
        h.remove()
    assert torch.equal(early["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])


def test_hooks_removed_after_context(tiny):
    with capture_activations(tiny.model, ["blocks.0.hook_resid_post"], stop_early=True):
        pass
    enc = _batch(tiny)
    with torch.no_grad():
        assert tiny.model(**enc.model_inputs()).logits is not None
