"""SparseAutoencoder: SAELens weight layout, four activation rules, input scaling and dead-latent bookkeeping.

    pre   = (s·x − b_dec) @ W_enc + b_enc        (b_dec is not subtracted when apply_b_dec_to_input is False)
    f     = act(pre)
    x_hat = (f @ W_dec + b_dec) / s

W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]; s = ``input_scale`` (a buffer, 1 after
loading or export). Activation rules:
- ``topk``: keep the k largest pre-activations of each row, ReLU'd (at most k nonzero per row).
- ``batchtopk``: in train mode keep the k·B largest ReLU'd pre-activations over the whole batch. In eval mode a
  per-latent JumpReLU with ``threshold``: every entry holds an exponential moving average (decay
  ``THRESHOLD_DECAY``) of the smallest activation kept in each training batch (Bussmann et al. 2024 use the
  mean of that value). Until the first training step the threshold is unset (−1) and eval mode acts as ReLU.
  Exported as a SAELens ``jumprelu`` SAE.
- ``relu_l1``: ReLU (SAELens "standard").
- ``jumprelu``: relu(pre) · (pre > threshold), loading only (e.g. Gemma Scope).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from refusal.errors import ConfigError, check_choice
from refusal.sae.ranks import min_over_ranks, sum_over_ranks, world_size
from refusal.sae.sparse import Pattern

ARCHITECTURES = ("topk", "batchtopk", "relu_l1", "jumprelu")
WEISZFELD_STEPS = 20


class SparseAutoencoder(nn.Module):
    THRESHOLD_DECAY = 0.99

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = None,
                 apply_b_dec_to_input: bool = True, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_choice("architecture", architecture, ARCHITECTURES)
        if architecture in ("topk", "batchtopk") and not (isinstance(k, int) and 1 <= k <= d_sae):
            raise ConfigError(f"k={k!r} is not valid for architecture={architecture!r}; give an int in [1, {d_sae}]")
        self.d_in, self.d_sae, self.architecture = d_in, d_sae, architecture
        self.k = k if architecture in ("topk", "batchtopk") else None
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.register_buffer("input_scale", torch.ones((), dtype=dtype))
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))
        if architecture in ("batchtopk", "jumprelu"):
            self.register_buffer("threshold", torch.full((d_sae,), -1.0 if architecture == "batchtopk" else 0.0,
                                                         dtype=dtype))
        else:
            self.threshold = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit decoder rows, encoder = decoder transposed, zero biases."""
        w = torch.randn(self.d_sae, self.d_in, dtype=torch.float32)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ---- forward pieces (scaled units) -------------------------------------------------------------------
    def pre_acts(self, x_s: Tensor) -> Tensor:
        if self.apply_b_dec_to_input:
            # value: (x_s − b_dec) @ W_enc + b_enc exactly; b_dec's gradient comes through the (zero-valued) vector
            # term, which saves the [B, d_sae] x [d_sae, d_in] matmul autograd would spend on it
            b = self.b_dec.detach()
            return (x_s - b) @ self.W_enc + (self.b_enc - (self.b_dec - b) @ self.W_enc)
        return x_s @ self.W_enc + self.b_enc

    def selects_top(self) -> bool:
        """Whether ``activate`` keeps a top set (topk; batchtopk in train mode) rather than applying a threshold."""
        return self.architecture == "topk" or (self.architecture == "batchtopk" and self.training)

    def top_indices(self, pre: Tensor) -> Tensor:
        """The kept entries: [B, k] latent indices per row (topk), or flat indices into pre (batchtopk, training)."""
        if self.architecture == "topk":
            return pre.topk(self.k, dim=-1, sorted=False).indices
        flat = pre.relu().reshape(-1)
        return flat.topk(min(self.k * pre.shape[0], flat.numel()), sorted=False).indices

    def active_pattern(self, pre: Tensor) -> Pattern:
        """The kept entries of ``pre`` as a sparse pattern (for the sparse kernels; requires ``selects_top()``)."""
        idx = self.top_indices(pre)
        if self.architecture == "topk":
            return Pattern.from_rows(idx, self.d_sae)
        idx = idx.sort().values
        return Pattern.from_entries(idx // self.d_sae, idx % self.d_sae, pre.shape[0], self.d_sae)

    def activate(self, pre: Tensor) -> Tensor:
        arch = self.architecture
        if arch == "topk":
            idx = self.top_indices(pre)
            return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())
        if self.selects_top():
            flat, idx = pre.reshape(-1), self.top_indices(pre)
            return torch.zeros_like(flat).scatter(0, idx, flat[idx].relu()).view_as(pre)
        if arch in ("batchtopk", "jumprelu"):
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def decode_scaled(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    # ---- raw units ----------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self.activate(self.pre_acts(x.to(self.W_enc.dtype) * self.input_scale))

    def decode(self, f: Tensor) -> Tensor:
        return self.decode_scaled(f) / self.input_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # ---- training support -----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_sample(self, x: Tensor, b_dec_init: str = "mean") -> None:
        """Set ``input_scale`` so that E‖s·x‖ = √d_in on the sample, and b_dec (in scaled units) from it."""
        check_choice("b_dec_init", b_dec_init, ("mean", "geometric_median", "zeros"))
        if x.ndim != 2 or x.shape[1] != self.d_in or x.shape[0] < 1:
            raise ConfigError(f"init sample has shape {tuple(x.shape)}; expected [N >= 1, d_in={self.d_in}]")
        x = x.to(device=self.W_enc.device, dtype=torch.float32)
        mean_norm = x.norm(dim=1).mean()
        if not torch.isfinite(mean_norm) or mean_norm <= 0:
            raise ConfigError(f"init sample has mean norm {float(mean_norm)}; it must be finite and > 0")
        scale = math.sqrt(self.d_in) / mean_norm
        self.input_scale.fill_(scale)
        x = x * scale
        if b_dec_init == "zeros":
            center = torch.zeros(self.d_in, device=x.device)
        elif b_dec_init == "mean":
            center = x.mean(0)
        else:
            center = geometric_median(x)
        self.b_dec.copy_(center)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out of each decoder row's gradient its component along the (unit) row."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def record_firing(self, fired: Tensor, n_tokens: int) -> None:
        """Reset the counter of every latent that fired (``fired`` [d_sae] bool) in a batch of ``n_tokens``, add the
        batch's tokens to the others. Under DDP the batch is the global one (all ranks' rows), so every rank keeps
        the one-process counters."""
        if world_size() > 1:
            summed = sum_over_ranks(torch.cat([fired.long(), fired.new_full((1,), n_tokens, dtype=torch.long)]))
            fired, n_tokens = summed[:-1] > 0, summed[-1]
        self.tokens_since_fired.copy_(torch.where(fired, 0, self.tokens_since_fired + n_tokens))

    def dead_mask(self, dead_tokens_threshold: int) -> Tensor:
        return self.tokens_since_fired > dead_tokens_threshold

    @torch.no_grad()
    def update_threshold(self, smallest: Tensor) -> None:
        """batchtopk: move the inference threshold toward ``smallest``, the smallest activation kept in this batch
        (inf when none; under DDP: in any rank's batch, so the threshold stays equal on every rank)."""
        smallest = min_over_ranks(smallest)
        ema = torch.where(self.threshold < 0, smallest,
                          self.THRESHOLD_DECAY * self.threshold + (1 - self.THRESHOLD_DECAY) * smallest)
        self.threshold.copy_(torch.where(torch.isfinite(smallest), ema, self.threshold))

    # ---- export ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def folded(self) -> "SparseAutoencoder":
        """An inference copy that works on raw activations (input_scale folded into the weights; batchtopk
        becomes the equivalent jumprelu). In eval mode both give the same x_hat on raw x."""
        arch = "jumprelu" if self.architecture == "batchtopk" else self.architecture
        out = SparseAutoencoder(self.d_in, self.d_sae, arch, k=self.k, apply_b_dec_to_input=self.apply_b_dec_to_input,
                                dtype=self.W_enc.dtype).to(self.W_enc.device)
        s = self.input_scale
        out.W_enc.copy_(self.W_enc * s)
        out.b_enc.copy_(self.b_enc)
        out.W_dec.copy_(self.W_dec / s)
        out.b_dec.copy_(self.b_dec / s)
        if self.threshold is not None:
            out.threshold.copy_(self.threshold)
        out.tokens_since_fired.copy_(self.tokens_since_fired)
        return out.eval()


@torch.no_grad()
def geometric_median(x: Tensor, steps: int = WEISZFELD_STEPS, eps: float = 1e-8) -> Tensor:
    """Weiszfeld iterations from the mean."""
    m = x.mean(0)
    for _ in range(steps):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m
