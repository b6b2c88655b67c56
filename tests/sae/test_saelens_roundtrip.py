"""Our SAELens export read by the real sae_lens library (6.x, a dev dependency): for topk, batchtopk (exported as
jumprelu) and relu_l1 SAEs trained a few steps by SAELightningModule from the real conf/sae configs (input scaling
and the batchtopk threshold learned, so the export folds them), ``SAE.load_from_disk`` gives the class of the
architecture, our metadata, and encode / decode / forward equal to ours on random activations.

Tolerances: float32, the same formulas in another operation order; the latents agree to 1e-5 relative + 1e-5
absolute and the same latents fire (exactly), reconstructions to 1e-4 relative + 1e-4 absolute (activations of
norm ~10)."""
from __future__ import annotations

import pytest
import torch

from refusal.sae.module import SAELightningModule

HOOK = "blocks.2.hook_resid_post"
D_IN = 32
SAELENS_CLASS = {"topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "relu_l1": "StandardSAE"}


def _acts(n: int, seed: int) -> torch.Tensor:
    """Activations off the origin and far from unit scale, as a residual stream is."""
    g = torch.Generator().manual_seed(seed)
    return 4.0 * torch.randn(n, D_IN, generator=g) + torch.linspace(-2, 2, D_IN)


def _trained(arch: str, make_cfg) -> SAELightningModule:
    torch.manual_seed(0)
    sizes = {"k": 6, "k_percent": None} if arch != "relu_l1" else {}
    module = SAELightningModule(make_cfg(arch, expansion_factor=4, lr=1e-3, **sizes), [HOOK], D_IN, [],
                                total_steps=20)
    module.init_from_sample({HOOK: _acts(512, 1)})
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    for step in range(20):  # moves every weight and, for batchtopk, sets the threshold
        loss = module.training_step({"acts": {HOOK: _acts(256, 10 + step)}}, step)
        loss.backward()
        module.on_before_optimizer_step(opt)
        opt.step()
        opt.zero_grad()
        for sae in module.saes.values():
            sae.normalize_decoder()
    return module.eval()


@pytest.fixture(scope="module")
def saelens_sae():
    from sae_lens import SAE  # a dev dependency: missing, the test fails (CI installs it)

    return SAE


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu_l1"])
def test_saelens_loads_our_export_with_the_same_encode_and_decode(arch, make_cfg, saelens_sae, tmp_path):
    module = _trained(arch, make_cfg)
    ours = module.sae(HOOK)
    assert ours.input_scale.item() != 1.0  # the export has a scale to fold in
    if arch == "batchtopk":
        assert (ours.threshold > 0).all()  # a learned threshold, not the unset -1
    path = module.export_saelens(tmp_path, model_name="tiny-llama", extra_metadata={"n_layers": 4})[HOOK]

    theirs = saelens_sae.load_from_disk(str(path), device="cpu")
    assert type(theirs).__name__ == SAELENS_CLASS[arch]
    assert (theirs.cfg.d_in, theirs.cfg.d_sae) == (D_IN, ours.d_sae) and theirs.cfg.apply_b_dec_to_input
    assert getattr(theirs.cfg, "k", None) == (ours.k if arch == "topk" else None)  # batchtopk: a threshold
    meta = theirs.cfg.metadata  # our metadata block survives SAELens's reading
    assert (meta.hook_name, meta.model_name, meta.n_layers, meta.trained_architecture) == (HOOK, "tiny-llama", 4,
                                                                                          arch)

    x = _acts(64, 99)
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        assert torch.equal(f_ours > 0, f_theirs > 0)
        assert (f_ours > 0).sum(1).float().mean() > 0  # latents fire: the comparison is not of zeros
        torch.testing.assert_close(f_theirs, f_ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(f_ours), ours.decode(f_ours), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)
        if arch == "topk":
            assert ((f_theirs > 0).sum(1) <= ours.k).all()
