"""The `make demo` pipeline on the real embedded model: train -> discover -> evaluate on the refusal organism
(slow: minutes on 2 cores). The commands are read from the Makefile, so this runs what `make demo` runs."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from refusal.logger.offline import artifacts

REPO = Path(__file__).resolve().parents[2]
VERDICTS = ("modular", "monolithic", "mixed", "inconclusive")


def demo_commands(out: Path) -> list[list[str]]:
    """The python commands of the Makefile's demo target, with the demo dir moved to ``out``."""
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    lines = [ln.strip().replace("$(DEMO)", str(out)) for ln in recipe.splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("$(PY)")]


def report_problems(page: str, verdict: str | None) -> list[str]:
    """What is wrong with an evaluation report page: any section marked missing, and a verdict section whose
    verdict line is absent or differs from the run's ``verdict`` (one of VERDICTS)."""
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, re.S))
    problems = [f"section {key!r} is marked missing" for key, body in sections.items() if "Missing:" in body]
    if verdict not in VERDICTS:
        problems.append(f"the run's verdict {verdict!r} is not one of {VERDICTS}")
    if f"<b>Verdict: {verdict}</b>" not in sections.get("verdict", ""):
        problems.append(f"the verdict section does not say 'Verdict: {verdict}'")
    return problems


PAGE = """<h1>refusal-circuits evaluation report</h1>
<section id="data"><h2>1. Data summary</h2>
<p>42 prompts</p>
</section>
<section id="transfer"><h2>2. Transfer matrix</h2>
<p class="missing"><b>Missing:</b> no circuits to ablate</p>
</section>
<section id="verdict"><h2>3. Verdict</h2>
<p><b>Verdict: modular</b></p>
<p>Basis: discovery and transfer agree</p>
</section>
"""


def test_report_problems_names_every_missing_section_and_the_verdict():
    assert report_problems(PAGE, "modular") == ["section 'transfer' is marked missing"]
    complete = PAGE.replace('<p class="missing"><b>Missing:</b> no circuits to ablate</p>', "<table></table>")
    assert report_problems(complete, "modular") == []
    assert report_problems(complete, "monolithic") == ["the verdict section does not say 'Verdict: monolithic'"]
    assert report_problems(complete, None) == ["the run's verdict None is not one of " + str(VERDICTS),
                                               "the verdict section does not say 'Verdict: None'"]
    no_verdict = complete.replace("<p><b>Verdict: modular</b></p>", "")
    assert report_problems(no_verdict, "modular") == ["the verdict section does not say 'Verdict: modular'"]


def test_demo_commands_are_train_discover_evaluate(tmp_path):
    scripts = [cmd[0] for cmd in demo_commands(tmp_path)]
    assert scripts == ["train.py", "discover.py", "evaluate.py"]


@pytest.mark.slow
def test_demo_runs_the_pipeline_on_the_organism(tmp_path, real_model_cache):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "REFUSAL_CACHE": str(real_model_cache)}
    outs = []
    for cmd in demo_commands(tmp_path / "demo"):
        try:
            res = subprocess.run([sys.executable, str(REPO / cmd[0]), *cmd[1:]], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=3600)
        except subprocess.TimeoutExpired as e:  # say how far it got: the output's tail, not only "timed out"
            out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
            pytest.fail(f"{cmd[0]} ran past {e.timeout} s; stdout tail:\n{out[-3000:]}\nstderr tail:\n{err[-3000:]}")
        assert res.returncode == 0, res.stderr[-4000:]
        outs.append(res.stdout)
    train, discover, evaluate = outs
    assert train.startswith("NOTE: refusal model organism") and "NOT a production chat model" in train
    run = tmp_path / "demo"
    manifest = json.loads((run / "train" / "train_manifest.json").read_text())
    (hook,) = manifest["hooks"]
    metrics = manifest["metrics"]
    assert metrics["val/explained_variance"] >= 0.8, metrics
    assert metrics[f"val/{hook}/l0"] <= 64, metrics
    assert list((run / "train" / "wandb").glob("offline-run-*"))
    summary = json.loads((run / "discover" / "discovery_summary.json").read_text())
    assert f"recognition: {summary['recognition']}" in discover
    assert f"report: {run / 'evaluate' / 'report.html'}" in evaluate
    verdict = json.loads((run / "evaluate" / "verdict.json").read_text())["verdict"]
    assert f"verdict: {verdict} (" in evaluate
    assert report_problems((run / "evaluate" / "report.html").read_text(), verdict) == []
    assert lineage_problems(run) == []


def lineage_problems(run: Path) -> list[str]:
    """What breaks the W&B lineage train -> discover -> evaluate in the demo's offline runs: each later run must
    record the use of the artifacts the earlier ones logged (same name, type and digest)."""
    logged, used = {}, {}
    for stage in ("train", "discover", "evaluate"):
        (wandb_dir,) = (run / stage / "wandb").glob("offline-run-*")
        for a in artifacts(wandb_dir):
            key = (a["type"], a["name"], a["digest"])
            (used if a["used"] else logged).setdefault(stage, set()).add(key)
    sae = {k for k in logged.get("train", set()) if k[0] == "sae"}
    circuits = {k for k in logged.get("discover", set()) if k[0] == "circuits"}
    problems = [] if len(sae) == 1 and len(circuits) == 1 else [f"logged: {logged}"]
    for stage, wanted in (("discover", sae), ("evaluate", sae | circuits)):
        if not wanted <= used.get(stage, set()):
            problems.append(f"{stage} used {used.get(stage)}, not all of {wanted}")
    return problems
