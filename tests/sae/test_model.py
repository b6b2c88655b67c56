import pytest
import torch

from refusal.errors import ConfigError
from refusal.sae.config import SAEConfig
from refusal.sae.loss import l1_lambda, sae_loss
from refusal.sae.model import SparseAutoencoder, geometric_median
from refusal.sae.optim import build_optimizer


def _positive_pre(sae):
    """Make every pre-activation positive so the ReLU after top-k cannot hide a selection bug."""
    with torch.no_grad():
        sae.b_enc.fill_(100.0)


def test_topk_keeps_exactly_k_per_row():
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 64, "topk", k=5)
    _positive_pre(sae)
    x = torch.randn(30, 16)
    f = sae.encode(x)
    assert ((f > 0).sum(-1) == 5).all()
    pre = sae.pre_acts(x)
    kept = torch.gather(pre, 1, pre.topk(5, dim=-1).indices)
    assert torch.equal(torch.sort(f.topk(5, dim=-1).values, -1).values, torch.sort(kept, -1).values)


def test_topk_relus_negative_preactivations():
    sae = SparseAutoencoder(4, 8, "topk", k=3)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    assert (sae.encode(torch.randn(5, 4)) == 0).all()


def test_batchtopk_keeps_k_times_batch_and_thresholds_in_eval():
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 64, "batchtopk", k=4)
    _positive_pre(sae)
    x = torch.randn(10, 16)
    f = sae.train().encode(x)
    assert int((f > 0).sum()) == 40
    assert (f > 0).sum(-1).float().std() > 0  # per row it varies: selection is over the batch
    smallest = f[f > 0].min()
    sae.update_threshold(smallest)
    assert torch.allclose(sae.threshold, smallest.expand(64))
    f_eval = sae.eval().encode(x)
    pre = sae.pre_acts(x)
    assert torch.equal(f_eval, pre * (pre > smallest))


def test_input_scale_and_b_dec_from_sample():
    torch.manual_seed(0)
    x = 7.0 * torch.randn(500, 16) + 3.0
    for init in ("mean", "geometric_median", "zeros"):
        sae = SparseAutoencoder(16, 32, "relu_l1")
        sae.init_from_sample(x, init)
        assert (x * sae.input_scale).norm(dim=1).mean() == pytest.approx(4.0, rel=1e-5)
        expect = {"mean": (x * sae.input_scale).mean(0), "zeros": torch.zeros(16),
                  "geometric_median": geometric_median(x * sae.input_scale)}[init]
        assert torch.allclose(sae.b_dec, expect, atol=1e-5)
    with pytest.raises(ConfigError):
        sae.init_from_sample(torch.randn(5, 15))


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.zeros(50, 3), torch.full((5, 3), 1000.0)])
    assert geometric_median(x).abs().max() < 1.0 < x.mean(0).abs().max()


def test_decoder_rows_unit_norm_after_steps_and_grad_projection(make_cfg):
    torch.manual_seed(0)
    cfg = SAEConfig.from_cfg(make_cfg(k=4, k_percent=None, expansion_factor=4, lr=1e-2), d_in=16)
    sae = SparseAutoencoder(16, cfg.d_sae, "topk", k=4)
    sae.init_from_sample(torch.randn(256, 16))
    opt, sched = build_optimizer(sae.parameters(), cfg, total_steps=20)
    for step in range(20):
        opt.zero_grad()
        sae_loss(sae, torch.randn(64, 16) * 3, cfg, step).loss.backward()
        sae.remove_parallel_decoder_grad()
        assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5
        opt.step()
        sched.step()
        sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(cfg.d_sae), atol=1e-6)


def test_auxk_loss_nonzero_for_dead_latents_and_trains_them(make_cfg):
    torch.manual_seed(0)
    cfg = SAEConfig.from_cfg(make_cfg(k=2, k_percent=None, expansion_factor=4, aux_k=8, dead_tokens_threshold=100),
                             d_in=16)
    sae = SparseAutoencoder(16, cfg.d_sae, "topk", k=2).train()
    x = torch.randn(32, 16)
    t = sae_loss(sae, x, cfg, 0)
    assert t.aux.item() == 0.0  # nothing dead yet
    with torch.no_grad():
        sae.tokens_since_fired.fill_(1000)  # every latent dead ...
    t = sae_loss(sae, x, cfg, 1)  # ... except those that fired on this batch (record_firing resets them)
    dead = sae.dead_mask(cfg.dead_tokens_threshold)
    assert dead.any() and t.aux.item() > 0
    t.aux.backward()
    assert sae.W_enc.grad[:, dead].abs().sum() > 0 and sae.W_dec.grad[dead].abs().sum() > 0
    assert sae.W_enc.grad[:, ~dead].abs().sum() == 0  # only dead latents get the aux gradient


def test_dead_counter_counts_tokens():
    sae = SparseAutoencoder(4, 6, "relu_l1")
    f = torch.zeros(10, 6)
    f[:, 0] = 1.0
    sae.record_firing((f > 0).any(0), f.shape[0])
    sae.record_firing((f > 0).any(0), f.shape[0])
    assert sae.tokens_since_fired.tolist() == [0, 20, 20, 20, 20, 20]
    assert sae.dead_mask(15).tolist() == [False] + [True] * 5


def test_relu_l1_lambda_warms_up_from_zero(make_cfg):
    cfg = SAEConfig.from_cfg(make_cfg("relu_l1", sparsity_warmup_steps=100, l1_coeff=0.5), d_in=16)
    assert l1_lambda(cfg, 0) == 0.0 and l1_lambda(cfg, 50) == 0.25 and l1_lambda(cfg, 500) == 0.5
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, cfg.d_sae, "relu_l1")
    _positive_pre(sae)
    x = torch.randn(8, 16)
    assert sae_loss(sae, x, cfg, 0).sparsity.item() == 0.0
    assert sae_loss(sae, x, cfg, 50).sparsity.item() > 0.0


def test_bad_k_raises():
    with pytest.raises(ConfigError):
        SparseAutoencoder(4, 8, "topk", k=None)
    with pytest.raises(ConfigError):
        SparseAutoencoder(4, 8, "gated")


def test_pre_acts_value_and_gradients_match_the_plain_formula():
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 20, "relu_l1")
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(6, 8)
    w = torch.randn(6, 20)
    (sae.pre_acts(x) * w).sum().backward()
    got = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    sae.zero_grad()
    ref = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    (ref * w).sum().backward()
    assert torch.equal(sae.pre_acts(x), ref)
    for n, p in sae.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-5), n
