"""Float32 arithmetic whose bits do not depend on the CPU's vector width, for the organism's build.

ATen's fused softmax, log-softmax and scaled-dot-product-attention kernels reduce in an order set by the SIMD width,
so a CPU with AVX-512 and one with AVX2 only round them differently, and after a fine-tune the two hold different
organisms under one cache key. The same functions written with amax, exp, sum and matmul give the same bits under
ATEN_CPU_CAPABILITY=avx512 and avx2 (tests/organism/test_organism_numerics.py). The build runs the model with
``attention`` (eager attention, this softmax) and its loss with ``logsumexp``; the saved organism is loaded with the
model's usual attention.

Matrix products run in MKL, which picks its kernels by CPU: AVX-512 ones on an Intel AVX-512 CPU, AVX2 ones on an
AVX2-only CPU (and on AMD), and with a different thread count a different split of the work; each rounds differently.
MKL's conditional numerical reproducibility pins one branch (``MKL_CBWR=AVX2,STRICT``: the AVX2 kernels, whatever
the thread count), but only before the process's first MKL call, and the AVX2 kernels are about half as fast on an
AVX-512 CPU. So a process is not pinned for its whole run: the build runs in a child process that is
(refusal/organism/child.py), unless this one already is (``mkl_pinned``; the test suite pins itself)."""
from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from functools import cache

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION = "organism_portable"


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim from amax, exp and sum (no fused kernel)."""
    e = torch.exp(x - x.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention (transformers' attention-function signature) with ``softmax``; ``attention_mask`` is the
    additive float mask of eager attention."""
    groups = module.num_key_value_groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = softmax(weights)
    if dropout:
        weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)  # without a mask function, transformers passes no mask


@contextmanager
def portable_attention(model):
    """``model`` runs ``attention`` inside the block; its own attention implementation is restored after."""
    before = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


# MKL's conditional numerical reproducibility (mkl_service.h): the AVX2 branch, strict (thread-count independent).
MKL_CBWR = "AVX2,STRICT"
_CBWR_ALL, _CBWR_COMPATIBLE, _CBWR_AVX2, _CBWR_STRICT = -1, 2, 10, 0x10000
PINNED_MODES = ("avx2-strict", "compatible-strict", "absent")


@cache
def _mkl_service():
    """MKL's service functions inside torch's CPU library, or None (torch without MKL, or a build not exporting them)."""
    if not torch.backends.mkl.is_available():
        return None
    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "*torch_cpu*")):
        try:
            lib = ctypes.CDLL(path)
            get, set_ = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
        except (OSError, AttributeError):
            continue
        get.argtypes = set_.argtypes = [ctypes.c_int]
        return get, set_
    return None


def mkl_mode() -> str:
    """This process's MKL branch: "avx2-strict" (pinned on an Intel CPU), "compatible-strict" (pinned on another
    vendor's CPU: MKL serves ``AVX2,STRICT`` there with its generic COMPATIBLE branch), "auto" (MKL picks by CPU),
    "absent" (no MKL) or the raw mode number."""
    service = _mkl_service()
    if service is None:
        return "absent"
    mode = service[0](_CBWR_ALL)
    return {_CBWR_AVX2 | _CBWR_STRICT: "avx2-strict", _CBWR_COMPATIBLE | _CBWR_STRICT: "compatible-strict",
            1: "auto"}.get(mode, str(mode))


def mkl_pinned() -> bool:
    """Whether this process's MKL runs one fixed, thread-count independent branch (or there is no MKL). Pinned
    processes on Intel CPUs share bits; on other vendors' CPUs MKL pins its COMPATIBLE branch instead, whose bits
    differ from the Intel branch's (measured: one cache key, two build hashes; the card records the mode)."""
    return mkl_mode() in PINNED_MODES


def pin_mkl() -> bool:
    """Pin this process's MKL to ``MKL_CBWR`` if no MKL call has run yet (MKL refuses a change after its first
    call); whether it is pinned now. Where MKL refuses its AVX2 branch (a non-Intel CPU), the COMPATIBLE one, as the
    ``MKL_CBWR`` environment variable gets there."""
    service = _mkl_service()
    if service is not None and not mkl_pinned():
        if service[1](_CBWR_AVX2 | _CBWR_STRICT) != 0:
            service[1](_CBWR_COMPATIBLE | _CBWR_STRICT)
    return mkl_pinned()
