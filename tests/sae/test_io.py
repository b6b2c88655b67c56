import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from refusal.errors import ConfigError
from refusal.sae.io import load_saelens, save_saelens
from refusal.sae.model import SparseAutoencoder

HOOK = "blocks.3.hook_resid_post"


def _trained_like(arch, k=None, scale=True):
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 48, arch, k=k)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if sae.threshold is not None:
            sae.threshold.fill_(0.05)
    if scale:
        sae.init_from_sample(5.0 * torch.randn(200, 16) + 1.0)
    return sae.eval()


@pytest.mark.parametrize("arch,k", [("topk", 4), ("relu_l1", None), ("jumprelu", None)])
def test_round_trip_is_lossless(tmp_path, arch, k):
    sae = _trained_like(arch, k, scale=False)
    path = save_saelens(sae, tmp_path / HOOK, HOOK, "tiny-model", {"context": "post_instruction"})
    loaded, cfg = load_saelens(path, d_in=16)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    x = torch.randn(20, 16)
    assert torch.equal(loaded(x), sae(x)) and torch.equal(loaded.encode(x), sae.encode(x))
    assert cfg["hook_name"] == HOOK and cfg["metadata"]["hook_layer"] == 3 and cfg["model_name"] == "tiny-model"
    assert cfg["metadata"]["context"] == "post_instruction"
    assert cfg["architecture"] == {"topk": "topk", "relu_l1": "standard", "jumprelu": "jumprelu"}[arch]
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert (arch == "topk") == ("k" in cfg) and cfg.get("k") == k
    assert set(load_file(str(path / "sae_weights.safetensors"))) == \
        {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())


@pytest.mark.parametrize("arch,k", [("topk", 4), ("relu_l1", None), ("batchtopk", 3)])
def test_export_folds_input_scale(tmp_path, arch, k):
    sae = _trained_like(arch, k)
    assert sae.input_scale.item() != 1.0
    x = 5.0 * torch.randn(64, 16) + 1.0
    loaded, cfg = load_saelens(save_saelens(sae, tmp_path / HOOK, HOOK, "m"))
    assert loaded.input_scale.item() == 1.0
    assert torch.allclose(loaded(x), sae(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(loaded.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    if arch == "batchtopk":
        assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["trained_architecture"] == "batchtopk"


def test_d_in_mismatch_raises(tmp_path):
    path = save_saelens(_trained_like("topk", 4), tmp_path / HOOK, HOOK, "m")
    with pytest.raises(ConfigError, match=r"has d_in=16 but the activations have width 32"):
        load_saelens(path, d_in=32)


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(tmp_path):
    save_saelens(_trained_like("topk", 4), tmp_path / HOOK, HOOK, "m")
    sae2 = SparseAutoencoder(16, 48, "topk", k=2)
    save_saelens(sae2, tmp_path / HOOK, HOOK, "m2")
    assert [p.name for p in tmp_path.iterdir()] == [HOOK]
    loaded, cfg = load_saelens(tmp_path / HOOK)
    assert cfg["k"] == 2 and cfg["model_name"] == "m2" and torch.equal(loaded.W_dec, sae2.W_dec)
    with pytest.raises(ConfigError, match="must contain"):
        load_saelens(tmp_path / "missing")


def _write_foreign(path, cfg, tensors):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def test_loads_gemma_scope_style_jumprelu(tmp_path):
    torch.manual_seed(1)
    d_in, d_sae = 8, 24
    w = {"W_enc": torch.randn(d_in, d_sae), "b_enc": torch.randn(d_sae), "W_dec": torch.randn(d_sae, d_in),
         "b_dec": torch.randn(d_in), "threshold": torch.rand(d_sae)}
    cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
           "apply_b_dec_to_input": False, "normalize_activations": None, "hook_name": "blocks.5.hook_resid_post",
           "model_name": "gemma-2-2b"}
    _write_foreign(tmp_path / "gs", cfg, w)
    sae, out = load_saelens(tmp_path / "gs", d_in=d_in)
    x = torch.randn(10, d_in)
    pre = x @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input False: b_dec is not subtracted
    f = pre.relu() * (pre > w["threshold"])
    assert torch.allclose(sae.encode(x), f) and torch.allclose(sae(x), f @ w["W_dec"] + w["b_dec"])
    assert out["hook_name"] == "blocks.5.hook_resid_post" and out["model_name"] == "gemma-2-2b"


def test_loads_standard_relu_and_old_topk(tmp_path):
    torch.manual_seed(2)
    w = {"W_enc": torch.randn(8, 16), "b_enc": torch.randn(16), "W_dec": torch.randn(16, 8), "b_dec": torch.randn(8)}
    _write_foreign(tmp_path / "std", {"architecture": "standard", "d_in": 8, "d_sae": 16,
                                      "metadata": {"hook_name": "blocks.1.hook_mlp_out"}}, w)
    sae, cfg = load_saelens(tmp_path / "std")
    x = torch.randn(4, 8)
    assert torch.allclose(sae.encode(x), ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu())
    assert sae.architecture == "relu_l1" and cfg["hook_name"] == "blocks.1.hook_mlp_out"
    _write_foreign(tmp_path / "old", {"architecture": "standard", "d_in": 8, "d_sae": 16, "activation_fn_str": "topk",
                                      "activation_fn_kwargs": {"k": 3}}, w)
    sae, _ = load_saelens(tmp_path / "old")
    assert sae.architecture == "topk" and sae.k == 3
    _write_foreign(tmp_path / "gated", {"architecture": "gated", "d_in": 8, "d_sae": 16}, w)
    with pytest.raises(ConfigError, match="gated"):
        load_saelens(tmp_path / "gated")
