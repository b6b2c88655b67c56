"""Float32 arithmetic whose bits do not depend on the CPU's vector width, for the organism's build.

ATen's fused softmax, log-softmax and scaled-dot-product-attention kernels reduce in an order set by the SIMD width,
so a CPU with AVX-512 and one with AVX2 only round them differently, and after a fine-tune the two hold different
organisms under one cache key. The same functions written with amax, exp, sum and matmul give the same bits under
ATEN_CPU_CAPABILITY=avx512 and avx2 (tests/organism/test_organism_numerics.py). The build runs the model with
``attention`` (eager attention, this softmax) and its loss with ``logsumexp``; the saved organism is loaded with the
model's usual attention.

Matrix products run in MKL, which picks its kernels by CPU: AVX-512 ones on an Intel AVX-512 CPU, AVX2 ones on an
AVX2-only CPU, and with a different thread count a different split of the work; each rounds differently. MKL's
conditional numerical reproducibility pins one branch (``MKL_CBWR=AVX2,STRICT``: the AVX2 kernels, whatever the thread
count), but only before the process's first MKL call, and the AVX2 kernels are about half as fast on an AVX-512 CPU.
So a process is not pinned for its whole run: the build runs in a child process that is (refusal/organism/child.py),
unless this one already is (``mkl_pinned``; the test suite pins itself).

MKL offers its AVX2 branch on Intel CPUs only. Elsewhere (an AMD CPU) it refuses it and ``MKL_CBWR=AVX2,STRICT``
runs the AUTO branch in strict mode (mode AUTO|STRICT, measured): deterministic and thread-count independent, but
with the kernels MKL dispatches for that CPU, so its bits differ from the Intel AVX2 branch's and may differ between
CPU families. The one branch MKL documents as the same on every x86 CPU is COMPATIBLE (SSE2 without the approximate
rcpps/rsqrtps), at a cost ``bench/mkl_pin.py`` measures (its compatible / pinned ratio). The organism's
cache key therefore names the branch and, for the AUTO one, the CPU (refusal/organism/cache.py ``build_kernels``):
one key, one set of bits."""
from __future__ import annotations

import ctypes
import glob
import os
import platform
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
_CBWR_ALL, _CBWR_BRANCH_OFF, _CBWR_AUTO, _CBWR_COMPATIBLE, _CBWR_AVX2, _CBWR_STRICT = -1, 1, 2, 3, 10, 0x10000
MODES = {_CBWR_AVX2 | _CBWR_STRICT: "avx2-strict", _CBWR_AUTO | _CBWR_STRICT: "auto-strict",
         _CBWR_COMPATIBLE | _CBWR_STRICT: "compatible-strict", _CBWR_BRANCH_OFF: "unpinned"}
PINNED_MODES = ("avx2-strict", "auto-strict", "compatible-strict", "absent")
CPU_DEPENDENT_MODES = ("auto-strict", "absent")  # their bits depend on the CPU's kernels: the key names the CPU


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
    """This process's MKL mode: "avx2-strict" (pinned, an Intel CPU), "auto-strict" (pinned where MKL refuses its
    AVX2 branch: a non-Intel CPU), "compatible-strict" (pinned by ``MKL_CBWR=COMPATIBLE,STRICT``), "unpinned" (MKL
    picks by CPU and thread count), "absent" (no MKL) or the raw mode number."""
    service = _mkl_service()
    if service is None:
        return "absent"
    mode = service[0](_CBWR_ALL)
    return MODES.get(mode, str(mode))


def mkl_pinned() -> bool:
    """Whether this process's MKL runs one fixed, thread-count independent branch (or there is no MKL)."""
    return mkl_mode() in PINNED_MODES


def pin_mkl() -> bool:
    """Pin this process's MKL to ``MKL_CBWR`` if no MKL call has run yet (MKL refuses a change after its first
    call); whether it is pinned now. Where MKL refuses its AVX2 branch (a non-Intel CPU), AUTO in strict mode, as the
    ``MKL_CBWR`` environment variable gets there."""
    service = _mkl_service()
    if service is not None and not mkl_pinned():
        if service[1](_CBWR_AVX2 | _CBWR_STRICT) != 0:
            service[1](_CBWR_AUTO | _CBWR_STRICT)
    return mkl_pinned()


def cpu_vendor() -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD, ...) from /proc/cpuinfo, else the platform's processor name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_mode() -> str:
    """The MKL mode an organism build runs in: this process's when it is pinned (it builds here), else the one a
    pinned child gets on this CPU: avx2-strict on an Intel CPU with AVX2, auto-strict on others (absent: no MKL)."""
    if _mkl_service() is None:
        return "absent"
    if mkl_pinned():
        return mkl_mode()
    intel = cpu_vendor() == "GenuineIntel"
    return "avx2-strict" if intel and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "auto-strict"


def build_numerics_key() -> dict:
    """What a CPU build's cache key adds about its arithmetic: nothing for the AVX2 branch (the same bits on every
    Intel CPU with AVX2, keys as before); the branch otherwise, and the CPU (vendor and ATen's vector capability)
    where the branch's kernels depend on it."""
    mode = build_mode()
    if mode == "avx2-strict":
        return {}
    out = {"mkl": mode}
    if mode in CPU_DEPENDENT_MODES:
        out["cpu"] = f"{cpu_vendor()} {torch.backends.cpu.get_cpu_capability()}"
    return out
