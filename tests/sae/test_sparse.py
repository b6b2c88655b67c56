"""The sparse TopK kernels against the dense path: same loss, codes and gradients in float64."""
import pytest
import torch

from refusal.errors import ConfigError
from refusal.sae.config import SPARSE_MAX_DENSITY, SAEConfig
from refusal.sae.loss import sae_loss
from refusal.sae.model import SparseAutoencoder
from refusal.sae.optim import build_optimizer
from refusal.sae.sparse import Pattern, active_values, decode

D_IN, D_SAE = 12, 48


def _pair(make_cfg, arch: str, k: int, aux_k: int = 8, **extra):
    cfgs = {kernel: SAEConfig.from_cfg(make_cfg(arch, k=k, k_percent=None, expansion_factor=None, d_sae=D_SAE,
                                                aux_k=aux_k, dead_tokens_threshold=50, kernel=kernel), D_IN)
            for kernel in ("dense", "sparse")}
    torch.manual_seed(0)
    sae = SparseAutoencoder(D_IN, D_SAE, arch, k=k, dtype=torch.float64, **extra)
    sae.init_from_sample(torch.randn(200, D_IN, dtype=torch.float64) * 2 + 1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    twin = SparseAutoencoder(D_IN, D_SAE, arch, k=k, dtype=torch.float64, **extra)
    twin.load_state_dict(sae.state_dict())
    return cfgs, sae.train(), twin.train()


def _grads(sae):
    return {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("arch,b_dec_in", [("topk", True), ("topk", False), ("batchtopk", True)])
def test_sparse_kernels_equal_the_dense_path_in_float64(make_cfg, arch, b_dec_in):
    cfgs, dense, sparse = _pair(make_cfg, arch, k=4, apply_b_dec_to_input=b_dec_in)
    assert (cfgs["dense"].kernel, cfgs["sparse"].kernel) == ("dense", "sparse")
    x = torch.randn(40, D_IN, dtype=torch.float64) * 2 + 1
    for sae in (dense, sparse):  # a third of the latents dead: the AuxK term is on and has entries to use
        with torch.no_grad():
            sae.tokens_since_fired[::3] = 1000
    terms = {}
    for kernel, sae in (("dense", dense), ("sparse", sparse)):
        t = sae_loss(sae, x, cfgs[kernel], step=0)
        t.loss.backward()
        terms[kernel] = t
    d, s = terms["dense"], terms["sparse"]
    assert d.aux.item() > 0  # the comparison covers AuxK
    for name in ("loss", "mse", "aux"):
        assert torch.allclose(getattr(s, name), getattr(d, name), rtol=1e-12, atol=1e-14), name
    assert torch.allclose(s.x_hat_s, d.x_hat_s, rtol=1e-12, atol=1e-13)
    assert torch.equal(s.l0, d.l0)
    gd, gs = _grads(dense), _grads(sparse)
    for name in gd:
        assert gd[name].abs().max() > 0, name
        assert torch.allclose(gs[name], gd[name], rtol=1e-10, atol=1e-13), name
    assert torch.equal(sparse.tokens_since_fired, dense.tokens_since_fired)
    if arch == "batchtopk":
        assert torch.equal(sparse.threshold, dense.threshold)


def test_training_with_sparse_kernels_follows_the_dense_trajectory(make_cfg):
    cfgs, dense, sparse = _pair(make_cfg, "topk", k=3)
    torch.manual_seed(1)
    batches = [torch.randn(32, D_IN, dtype=torch.float64) * 2 + 1 for _ in range(15)]
    for kernel, sae in (("dense", dense), ("sparse", sparse)):
        opt, sched = build_optimizer(sae.parameters(), cfgs[kernel], total_steps=15)
        for step, x in enumerate(batches):
            opt.zero_grad()
            sae_loss(sae, x, cfgs[kernel], step).loss.backward()
            sae.remove_parallel_decoder_grad()
            opt.step()
            sched.step()
            sae.normalize_decoder()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        assert torch.allclose(q, p, rtol=1e-9, atol=1e-11), name
    assert (dense.W_dec != SparseAutoencoder(D_IN, D_SAE, "topk", k=3).W_dec).any()


def test_eval_mode_uses_the_same_codes(make_cfg):
    cfgs, dense, sparse = _pair(make_cfg, "topk", k=5)
    x = torch.randn(20, D_IN, dtype=torch.float64)
    with torch.no_grad():
        d, s = (sae_loss(m.eval(), x, cfgs[k], 0) for k, m in (("dense", dense), ("sparse", sparse)))
    assert torch.allclose(s.x_hat_s, d.x_hat_s, rtol=1e-12, atol=1e-13) and torch.equal(s.l0, d.l0)
    assert torch.equal(dense.tokens_since_fired, torch.zeros(D_SAE, dtype=torch.long))  # eval does not count


def test_pattern_matrices_are_the_entries_and_their_transpose():
    rows, cols = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([4, 1, 2, 0, 4, 2])
    vals = torch.arange(1.0, 7.0)
    p = Pattern.from_entries(rows, cols, n_rows=5, n_cols=6)
    dense = torch.zeros(5, 6)
    dense[rows, cols] = vals
    assert torch.equal(p.matrix(vals).to_dense(), dense)
    assert torch.equal(p.transposed(vals).to_dense(), dense.T)
    assert torch.equal(p.columns(vals).to_dense(), dense)


def test_kernel_gradients_match_autograd_on_dense_products():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64)
    w_enc = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    w_dec = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    pre = x @ w_enc + bias
    p = Pattern.from_rows(pre.detach().topk(3, dim=-1).indices, 9)
    out = decode(active_values(pre.detach(), x, w_enc, bias, None, p), w_dec, p)
    mask = torch.zeros(6, 9, dtype=torch.float64)
    mask[p.rows, p.cols] = 1
    ref = (pre * mask) @ w_dec
    assert torch.allclose(out, ref)
    g = torch.randn(6, 5, dtype=torch.float64)
    got = torch.autograd.grad(out, (w_enc, bias, w_dec), g)
    want = torch.autograd.grad(ref, (w_enc, bias, w_dec), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="x_c"):
        active_values(pre.detach(), x.requires_grad_(), w_enc, bias, None, p)


def test_kernel_auto_picks_sparse_for_small_k_over_d_sae_and_bad_values_fail(make_cfg):
    small = SAEConfig.from_cfg(make_cfg(k=2, k_percent=None, expansion_factor=4, kernel="auto"), d_in=16)
    assert 2 / 64 <= SPARSE_MAX_DENSITY and small.kernel == "sparse"
    big = SAEConfig.from_cfg(make_cfg(k=32, k_percent=None, expansion_factor=4, kernel="auto"), d_in=16)
    assert 32 / 64 > SPARSE_MAX_DENSITY and big.kernel == "dense"
    forced = SAEConfig.from_cfg(make_cfg(k=32, k_percent=None, expansion_factor=4, kernel="sparse"), d_in=16)
    assert forced.kernel == "sparse"
    assert SAEConfig.from_cfg(make_cfg("relu_l1"), d_in=16).kernel == "dense"
    with pytest.raises(ConfigError, match="sae.kernel.*'fast'.*auto.*dense.*sparse"):
        SAEConfig.from_cfg(make_cfg(kernel="fast"), d_in=16)


def test_sparse_kernels_under_bf16_autocast_stay_close_to_the_dense_path(make_cfg):
    cfgs, dense, sparse = _pair(make_cfg, "topk", k=4)
    dense, sparse = dense.float(), sparse.float()
    x = torch.randn(64, D_IN) * 2 + 1
    out = {}
    for kernel, sae in (("dense", dense), ("sparse", sparse)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t = sae_loss(sae, x, cfgs[kernel], 0)
        t.loss.backward()
        out[kernel] = (t.mse.float(), sae.W_dec.grad.clone())
    assert torch.isfinite(out["sparse"][0]) and out["sparse"][1].dtype == torch.float32
    assert abs(out["sparse"][0] - out["dense"][0]) < 0.05 * out["dense"][0]
    cos = torch.nn.functional.cosine_similarity(out["sparse"][1].flatten(), out["dense"][1].flatten(), dim=0)
    assert cos > 0.95
