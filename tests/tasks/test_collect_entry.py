"""python -m refusal.collect as two concurrent SLURM array tasks fills the store one such process writes, byte for byte."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=tiny", "activations.shard_prompts=16"]


def _env(cache: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE")}
    # PYTHONPATH: ``-m refusal.collect`` from a temp dir imports this tree's package, not an installed one
    return {**env, "PYTHONPATH": str(REPO), "REFUSAL_CACHE": str(cache), "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "0", **extra}


def _store(cache: Path) -> Path:
    (store,) = (cache / "activations").iterdir()
    return store


def _collected(stdout: str) -> int:
    """How many shards a collect process computed (the rest it found complete)."""
    (n,) = re.findall(r"collect task \d+/\d+: collected (\d+) of its \d+ shards", stdout)
    return int(n)


def test_slurm_array_tasks_build_the_one_process_store(tmp_path):
    array = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    procs = [subprocess.Popen([sys.executable, "-m", "refusal.collect", *TINY, "activations.collect_tasks=env",
                               f"hydra.run.dir=task{i}"], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_env(tmp_path / "split", SLURM_ARRAY_TASK_ID=str(i), **array))
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert any("activation store (complete)" in out for out, _ in outs)  # the last task to finish completed it
    one = subprocess.run([sys.executable, "-m", "refusal.collect", *TINY, "hydra.run.dir=single"], cwd=tmp_path,
                         env=_env(tmp_path / "single"), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    split, single = _store(tmp_path / "split"), _store(tmp_path / "single")
    assert split.name == single.name
    files = sorted(p.name for p in single.iterdir())
    n_shards = len([f for f in files if f.startswith("shard_")])
    assert n_shards > 2
    assert [_collected(out) for out, _ in outs] == [n_shards // 2, n_shards - n_shards // 2]  # each shard once
    assert _collected(one.stdout) == n_shards
    assert sorted(p.name for p in split.iterdir()) == files
    for name in files:
        assert (split / name).read_bytes() == (single / name).read_bytes(), name
