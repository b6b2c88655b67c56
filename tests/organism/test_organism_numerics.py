"""The same organism whichever CPU kernels build it: the tiny organism, built in fresh processes with oneDNN, ATen and
MKL limited to different instruction sets, with one thread, and with MKL told to pick its own kernels, has one build
hash (slow). Without the build's composed softmax (portable.py) ATen's AVX2 kernels gave another hash on an AVX-512
CPU; with bf16-mixed, which the organism no longer offers, ONEDNN_MAX_CPU_ISA=AVX2 did too; with MKL unpinned, MKL
limited to AVX2 did on an Intel AVX-512 CPU (not on an AMD one), and so did one thread instead of two."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refusal.organism import portable
from refusal.organism.card import ISA_ENV
from refusal.organism.portable import ATTENTION, portable_attention

ROOT = Path(__file__).resolve().parents[2]
PRECISION = "32-true"
BUILD = """
import json, sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
import refusal.schemas
from refusal import organism
from test_organism import organism_cfg
loaded = organism.load(organism_cfg(Path(sys.argv[1]), precision=sys.argv[2]))
print(json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())["build_hash"])
"""


def build_hash_in_a_fresh_process(tmp: Path, isa_env: dict[str, str]) -> str:
    """Build the tiny organism into an empty ``tmp`` in a new Python process with only ``isa_env`` of the
    instruction-set settings; its card's build hash."""
    tmp.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ISA_ENV} | isa_env
    code = BUILD.format(root=str(ROOT), tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code, str(tmp), PRECISION], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()[-1]


ISA_SETTINGS = {"unset": {}, "onednn-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
                "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
                "no-avx512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
                "mkl-auto": {"MKL_CBWR": "AUTO"}, "one-thread": {"OMP_NUM_THREADS": "1"}}


@pytest.mark.slow
def test_the_organism_is_the_same_whatever_instruction_sets_the_kernels_use(tmp_path):
    hashes = {name: build_hash_in_a_fresh_process(tmp_path / name, env) for name, env in ISA_SETTINGS.items()}
    assert len(set(hashes.values())) == 1, hashes
    assert all(len(h) == 16 for h in hashes.values())


def test_the_build_attention_is_the_models_own_attention_and_is_restored(tiny):
    """The build's attention (composed softmax, eager mask) computes what the model's attention computes, padding
    and causal mask included; the model's own attention is back afterwards."""
    model, before = tiny.model, tiny.model.config._attn_implementation
    enc = tiny.tokenizer(["a short one", "a rather longer prompt than that"], return_tensors="pt", padding=True)
    assert not bool(enc["attention_mask"].all())  # left padding is in the batch
    with torch.no_grad():
        want = model(**enc).logits
        with portable_attention(model):
            assert model.config._attn_implementation == ATTENTION
            got = model(**enc).logits
    assert model.config._attn_implementation == before != ATTENTION
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-4, atol=1e-5)


def test_the_composed_softmax_is_softmax():
    x = torch.randn(3, 5, 40) * 8
    x[0, 0, 7:] = torch.finfo(torch.float32).min  # masked entries
    torch.testing.assert_close(portable.softmax(x), torch.softmax(x, -1), rtol=1e-6, atol=1e-7)
