"""Sparse TopK kernels: decode from the active latents only, and send gradients through them only.

With k of d_sae latents active per token, x̂ = f @ W_dec needs B·k·d_in multiply-adds instead of B·d_sae·d_in, and so
do the gradients of W_dec, of the active codes and of W_enc (only the active pre-activations receive a gradient).
Only the encoder's forward stays dense: every pre-activation is needed to find the top k (Gao et al. 2024 train
their TopK SAEs this way). The results equal the dense path's up to float summation order; the weights' gradients
stay dense tensors, so the optimizer step is the same.

A batch's active set is a :class:`Pattern` (the CSR structure of the [B, d_sae] code matrix, plus its transpose for
the weight gradients); :func:`active_values` and :func:`decode` are the two differentiable pieces. Both compute in
the weights' dtype (under bf16 autocast the dense pre-activations are bf16, the sparse products float32).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

# torch says once per process that CSR support is "beta"; the products used here are tested against dense ones
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


@dataclass(frozen=True)
class Pattern:
    """The entries (rows[e], cols[e]) of a sparse [n_rows, n_cols] matrix, sorted by row.

    ``crow`` are the CSR row pointers; ``order`` sorts the entries by column and ``ccol`` are the column pointers of
    that order (the CSR structure of the transpose)."""
    rows: Tensor
    cols: Tensor
    crow: Tensor
    order: Tensor
    ccol: Tensor
    n_rows: int
    n_cols: int

    @classmethod
    def from_entries(cls, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> "Pattern":
        """Entries already sorted by row (any number per row)."""
        crow = _pointers(rows, n_rows)
        order = torch.argsort(cols, stable=True)
        return cls(rows, cols, crow, order, _pointers(cols, n_cols), n_rows, n_cols)

    @classmethod
    def from_rows(cls, idx: Tensor, n_cols: int, keep: Tensor | None = None) -> "Pattern":
        """``idx`` [B, k]: the columns of each row (k per row); ``keep`` [B·k] bool: only those entries."""
        b, k = idx.shape
        rows, cols = torch.arange(b, device=idx.device).repeat_interleave(k), idx.reshape(-1)
        if keep is not None:
            rows, cols = rows[keep], cols[keep]
        return cls.from_entries(rows, cols, b, n_cols)

    def matrix(self, values: Tensor) -> Tensor:
        """The [n_rows, n_cols] sparse CSR matrix with these entry values."""
        return torch.sparse_csr_tensor(self.crow, self.cols, values, (self.n_rows, self.n_cols),
                                       check_invariants=False)

    def transposed(self, values: Tensor) -> Tensor:
        """The [n_cols, n_rows] sparse CSR transpose with these entry values (in row order)."""
        return torch.sparse_csr_tensor(self.ccol, self.rows[self.order], values[self.order],
                                       (self.n_cols, self.n_rows), check_invariants=False)

    def columns(self, values: Tensor) -> Tensor:
        """The same [n_rows, n_cols] matrix in sparse CSC layout (for products whose result has n_cols columns)."""
        return torch.sparse_csc_tensor(self.ccol, self.rows[self.order], values[self.order],
                                       (self.n_rows, self.n_cols), check_invariants=False)


def _pointers(index: Tensor, n: int) -> Tensor:
    """Compressed pointers of ``index`` (values in [0, n)): where each value's run starts in sorted order."""
    counts = torch.bincount(index, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _ActiveValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, x_c: Tensor, w_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None,
                pattern: Pattern) -> Tensor:
        ctx.save_for_backward(x_c, w_enc)
        ctx.pattern = pattern
        return pre[pattern.rows, pattern.cols]

    @staticmethod
    def backward(ctx, g: Tensor):
        x_c, w_enc = ctx.saved_tensors
        p, g = ctx.pattern, g.to(w_enc.dtype)
        g_w = g_b = g_b_dec = None
        if ctx.needs_input_grad[2]:  # [d_in, d_sae]: on CPU straight from the CSC layout (faster than a transpose)
            x_c = x_c.to(w_enc.dtype)
            g_w = x_c.t() @ p.columns(g) if x_c.device.type == "cpu" else (p.transposed(g) @ x_c).t()
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            g_b = g.new_zeros(p.n_cols).index_add_(0, p.cols, g)
            if ctx.needs_input_grad[4]:  # pre = (x − b_dec) @ W_enc + b_enc: ∂/∂b_dec = −W_enc Σ_rows g = −W_enc g_b
                g_b_dec = -(w_enc @ g_b)
        return None, None, g_w, g_b if ctx.needs_input_grad[3] else None, g_b_dec, None


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, w_dec: Tensor, pattern: Pattern) -> Tensor:
        v = values.to(w_dec.dtype)
        ctx.save_for_backward(v, w_dec)
        ctx.pattern, ctx.v_dtype = pattern, values.dtype
        with torch.autocast(w_dec.device.type, enabled=False):  # sparse products in the weights' dtype
            return pattern.matrix(v) @ w_dec

    @staticmethod
    def backward(ctx, g: Tensor):
        v, w_dec = ctx.saved_tensors
        p, g = ctx.pattern, g.to(w_dec.dtype).contiguous()
        g_v = g_w = None
        if ctx.needs_input_grad[0]:  # <g_row, W_dec[col]> at each entry: the sampled product (g @ W_decᵀ)[rows, cols]
            g_v = torch.sparse.sampled_addmm(p.matrix(v), g, w_dec.t(), beta=0.0).values().to(ctx.v_dtype)
        if ctx.needs_input_grad[1]:
            g_w = p.transposed(v) @ g
        return g_v, g_w, None


def active_values(pre: Tensor, x_c: Tensor, w_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None,
                  pattern: Pattern) -> Tensor:
    """``pre[rows, cols]`` for pre = x_c @ w_enc + b_enc computed without a graph, where x_c = x − b_dec (or x when
    ``b_dec`` is None). The gradient reaches ``w_enc``, ``b_enc`` and ``b_dec`` through the pattern's entries only;
    ``x_c`` gets none (it is the data)."""
    if x_c.requires_grad:
        raise ValueError("active_values sends no gradient to x_c; pass the input detached")
    return _ActiveValues.apply(pre, x_c, w_enc, b_enc, b_dec, pattern)


def decode(values: Tensor, w_dec: Tensor, pattern: Pattern) -> Tensor:
    """[n_rows, d_in]: each row's Σ values[e] · w_dec[cols[e]] over its entries."""
    return _Decode.apply(values, w_dec, pattern)
