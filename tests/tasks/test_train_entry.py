import json
import pytest

from refusal.sae.io import load_saelens

TINY = ["experiment=tiny", "trainer.max_steps=6", "activations.loader.samples_per_epoch=1024"]


def test_sweep_gives_two_wandb_runs_in_one_group_and_two_saes(workdir, run_entry):
    res = run_entry("train.py", "-m", "sae.k_percent=0.02,0.05", "logger=wandb", *TINY, cwd=workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    sweeps = list((workdir / "multirun" / "tiny").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    group = f"train-{sweeps[0].name}".encode()
    run_ids, ks = set(), []
    for job in jobs:
        manifest = json.loads((job / "train_manifest.json").read_text())
        (sae_dir,) = manifest["sae_dirs"].values()
        sae, _ = load_saelens(sae_dir)
        ks.append(sae.k)
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # each job its own W&B run
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert group in record  # both runs carry the sweep's group
        assert f"train-{sweeps[0].name}-{job.name}".encode() in record  # and their own name
    assert len(run_ids) == 2
    assert ks == [round(0.02 * 256), round(0.05 * 256)]  # tiny: d_in 64 x expansion 4


def test_a_resumed_run_continues_its_wandb_run(workdir, run_entry):
    run_dir = workdir / "run"
    run = ["logger=wandb", *TINY, f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    for _ in range(2):  # the second resumes the first from its last checkpoint
        res = run_entry("train.py", *run, cwd=workdir)
        assert res.returncode == 0, res.stderr[-2000:]
        out = res.stdout + res.stderr  # and the run's output is the project's own: no known third-party noise
        assert "Tip: For seamless cloud logging" not in out and "LeafSpec" not in out and "/-2" not in out
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[-1] for r in runs} == {run_id}
    fresh = run_entry("train.py", "logger=wandb", *TINY, f"hydra.run.dir={workdir / 'other'}", cwd=workdir)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert (workdir / "other" / "wandb_run_id").read_text().strip() != run_id  # another run, another id


@pytest.mark.parametrize("override,needle", [
    ("activations.layers=9", "layer 9 is out of range"),
    ("activations.positions=middle", "activations.positions='middle'"),
    ("data.categories=[not_a_category]", "not_a_category"),
    ("model.source=onnx", "model.source='onnx'"),
    ("ckpt_path=/nonexistent.ckpt", "ckpt_path='/nonexistent.ckpt'"),
    ("sae.architecture=gated", "sae.architecture='gated'"),
])
def test_bad_input_is_one_line_error(workdir, run_entry, override, needle):
    res = run_entry("train.py", "logger=csv", *TINY, override, cwd=workdir)
    assert res.returncode != 0
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err_lines) == 1, res.stderr[-2000:]
    assert needle in err_lines[0]
    assert "Traceback" not in res.stderr


def test_resume_last_in_same_dir_and_refuse_changed_settings(workdir, run_entry):
    run = ["logger=csv", *TINY, f"hydra.run.dir={workdir / 'run'}", "ckpt_path=last"]
    first = run_entry("train.py", *run, cwd=workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (workdir / "run" / "checkpoints" / "last.ckpt").exists()
    shards = sorted((workdir / "cache" / "activations").glob("*/shard_*.safetensors"))
    stats = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in shards]
    again = run_entry("train.py", *run, cwd=workdir)  # resumes the finished run: nothing left to train
    assert again.returncode == 0, again.stderr[-2000:]
    assert shards and [(p.stat().st_ino, p.stat().st_mtime_ns) for p in shards] == stats  # the store was reused
    baseline = workdir / "run" / "behavior" / "baseline.json"
    summary = json.loads(baseline.read_text())
    assert summary["split"] == "test" and set(summary["refusal_rate"]) == {"toxic", "safe", "hard"}
    assert "behavior: reusing" in again.stdout + again.stderr  # the resumed run did not measure the baseline again
    changed = run_entry("train.py", *run, "sae.k_percent=0.1", cwd=workdir)
    assert changed.returncode != 0
    (line,) = [ln for ln in changed.stderr.splitlines() if ln.startswith("error: ")]
    assert "different sae settings" in line


def test_removing_behavior_skips_the_baseline(workdir, run_entry):
    res = run_entry("train.py", "logger=csv", *TINY, "~behavior", f"hydra.run.dir={workdir / 'run'}", cwd=workdir)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (workdir / "run" / "saes").is_dir() and not (workdir / "run" / "behavior").exists()


def test_damaged_last_checkpoint_resumes_from_the_newest_intact_one(workdir, run_entry):
    """A truncated last.ckpt (a job killed while writing it) is passed over for the newest intact checkpoint,
    said in one line; the resumed run trains the remaining steps to the SAE of the uninterrupted run."""
    run_dir = workdir / "run"
    run = ["logger=csv", "experiment=tiny", "trainer.max_steps=12", "activations.loader.samples_per_epoch=1024",
           "checkpoint_every_n_steps=2", "ckpt_path=last", "~behavior", f"hydra.run.dir={run_dir}"]
    first = run_entry("train.py", *run, cwd=workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    sae = run_dir / "saes" / "blocks.1.hook_resid_post" / "sae_weights.safetensors"
    uninterrupted = sae.read_bytes()
    ckpts = run_dir / "checkpoints"
    others = [p.name for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(others) >= 1, list(ckpts.iterdir())  # last.ckpt and at least one step checkpoint
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated mid-write

    again = run_entry("train.py", *run, cwd=workdir)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    out = again.stdout + again.stderr
    (line,) = [ln for ln in out.splitlines() if "is damaged" in ln]
    resumed_from = line.split("resuming from ")[1].split(" ")[0]
    assert resumed_from in {str(ckpts / n) for n in others}, line
    assert 0 < int(line.split("(step ")[1].split(")")[0]) < 12, line  # steps were left to train
    assert sae.read_bytes() == uninterrupted  # the remaining steps trained to the same SAE
    assert all((ckpts / name).is_file() for name in others)  # nothing intact was lost


def test_damaged_checkpoint_path_is_a_one_line_error(workdir, run_entry):
    bad = workdir / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not a whole archive")
    res = run_entry("train.py", "logger=csv", *TINY, f"ckpt_path={bad}", cwd=workdir)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert f"ckpt_path='{bad}' is damaged" in line
