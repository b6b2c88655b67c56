"""Shared fixtures: a tiny random Llama model built in code and a small synthetic prompt set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from refusal.organism.portable import pin_mkl

pin_mkl()  # before any matrix product: tiny organisms are built in this process, with every CPU's bits (portable.py)

XDIST = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if XDIST:  # one torch thread per worker: two workers share the machine's cores
    import torch

    torch.set_num_threads(1)

import refusal.schemas  # noqa: F401  (config schemas for tests that compose configs)
from refusal.data import PromptRecord, PromptSet
from refusal.model.loading import LoadedModel
from refusal.model.tiny import tiny_llama

WORDS = "alpha beta gamma delta river stone cloud paper lamp orbit".split()


def synthetic_prompts(n_per_cell: int = 6, categories=("cyber", "violence", "fraud")) -> PromptSet:
    """Toxic prompts in each category, safe benign prompts, and hard prompts; fixed splits."""
    recs = []
    splits = ("train", "train", "train", "val", "test", "train")
    for label, cats in (("toxic", categories), ("hard", categories), ("safe", ("benign",))):
        for cat in cats:
            for i in range(n_per_cell):
                text = f"{label} {cat} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 7))
                recs.append(PromptRecord(f"syn:{label}:{cat}:{i}", text, cat, label, "synthetic", splits[i % len(splits)]))
    return PromptSet(recs)


@pytest.fixture(scope="session")
def tiny():
    model, tok = tiny_llama(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=0)
    tok.padding_side = "left"
    return LoadedModel(model=model, tokenizer=tok, name="tiny-llama")


@pytest.fixture
def prompts() -> PromptSet:
    return synthetic_prompts()


@pytest.fixture(scope="session")
def make_prompts():
    """The synthetic prompt-set factory, for fixtures of wider scope."""
    return synthetic_prompts


@pytest.fixture(scope="session")
def real_model_cache(tmp_path_factory):
    """One cache dir (organisms, activation stores) for the slow tests on the real embedded model, so the
    organism one test builds is the one the demo pipeline test loads."""
    return tmp_path_factory.mktemp("refusal-cache")


@pytest.fixture
def compose_user(tmp_path):
    """Compose ``train`` with a user's own config files (``{"model/mine.yaml": text}``) on Hydra's search path, as
    a user adds configs of their own; unknown keys in them meet the groups' schemas."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"

    def run(files: dict[str, str], *overrides: str):
        user = tmp_path / "user_conf"
        user.mkdir(exist_ok=True)
        for name, text in files.items():
            (user / name).parent.mkdir(parents=True, exist_ok=True)
            (user / name).write_text(text)
        with initialize_config_dir(str(conf), version_base="1.3"):
            return compose("train", overrides=[f"hydra.searchpath=[file://{user}]", *overrides])

    return run


@pytest.fixture
def failing_apt(monkeypatch):
    """Root, apt-get present, and every apt-get call fails (tests/apt_install.py stubbed); the calls made."""
    import subprocess

    import apt_install

    calls = []

    def failing_sh(*cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(list(cmd), 100, "", f"E: Unable to locate package {cmd[-1]}")

    monkeypatch.setattr(apt_install.shutil, "which", lambda b: "/usr/bin/apt-get" if b == "apt-get" else None)
    monkeypatch.setattr(apt_install.os, "geteuid", lambda: 0)
    monkeypatch.setattr(apt_install, "sh", failing_sh)
    return calls


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """Under pytest-xdist a slow test (an organism built in this process) gets every core back: by the time the slow
    worker reaches the long builds the other worker is mostly done, and one thread doubled the build's time."""
    if XDIST and request.node.get_closest_marker("slow"):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        yield
        torch.set_num_threads(1)
    else:
        yield


def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (``-n 2 --dist loadgroup``, the Makefile's), each test file runs whole on one worker, so
    module and file-local fixtures are built once; every test under tests/slurm/ shares one worker, as one SLURM
    cluster serves them; the slow tests share one worker in collection order, so the organism the organism test
    builds in ``real_model_cache`` is the one the demo test loads."""
    root = Path(__file__).resolve().parent
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(root)
        group = "slow" if item.get_closest_marker("slow") else "slurm" if rel.parts[0] == "slurm" else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
