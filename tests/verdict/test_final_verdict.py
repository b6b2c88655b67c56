"""The run's verdict: the bottleneck stage's model verdict, never a fallback to recognition or transfer."""
from refusal.verdict.final import final_verdict


def _stage(verdict: str, hooks=("blocks.1.hook_resid_post",)) -> dict:
    return {"status": "done", "layers": [{"hook": h} for h in hooks],
            "model": {"verdict": verdict, "summary": f"{verdict} summary", "reason": f"{verdict} reason",
                      "convergence_layer": 1 if verdict == "monolithic" else None}}


def test_the_bottleneck_stage_decides_whatever_recognition_and_transfer_say():
    for verdict in ("monolithic", "modular", "mixed", "inconclusive"):
        out = final_verdict(_stage(verdict, ("a", "b")), "modular", "monolithic")
        assert out["verdict"] == verdict and out["summary"] == f"{verdict} summary"
        assert out["recognition"] == "modular" and out["transfer"] == "monolithic" and out["layers"] == ["a", "b"]
        assert "a, b" in out["basis"]


def test_without_the_bottleneck_stage_the_verdict_is_inconclusive_not_a_weaker_test():
    for stage in (None, {"status": "skipped", "reason": "not in evaluation.stages (add bottleneck to run it)"}):
        out = final_verdict(stage, "modular", "modular")
        assert out["verdict"] == "inconclusive" and out["recognition"] == "modular"
        assert "no layer-resolved evidence" in out["basis"] and "descriptive" in out["basis"]
    skipped = final_verdict({"status": "skipped", "reason": "not in evaluation.stages (add bottleneck to run it)"},
                            None, "mixed")
    assert "add bottleneck to run it" in skipped["basis"]
    empty = {"status": "done", "layers": [], "model": {"verdict": "inconclusive", "reason": "no combined circuit"}}
    assert "no combined circuit" in final_verdict(empty, "mixed", None)["basis"]


def test_no_evidence_at_all_is_no_verdict():
    assert final_verdict(None, None, None)["verdict"] is None
    assert final_verdict({"status": "missing", "reason": "no discover run"}, None, None)["verdict"] is None


def test_the_agreement_of_a_sweeps_runs(tmp_path, capsys):
    import json

    from refusal.verdict.__main__ import main

    for job, verdict in (("0", "modular"), ("1", "modular"), ("2/nested", "modular")):
        (tmp_path / "sweep" / job).mkdir(parents=True)
        (tmp_path / "sweep" / job / "verdict.json").write_text(json.dumps({"verdict": verdict}))
    out = tmp_path / "stability.json"
    assert main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    assert "All 3 runs say modular. verdict: modular (agreement 1.00)" in capsys.readouterr().out
    assert json.loads(out.read_text())["verdict"] == "modular"
    (tmp_path / "sweep" / "3").mkdir()
    (tmp_path / "sweep" / "3" / "verdict.json").write_text(json.dumps({"verdict": "monolithic"}))
    assert main([str(tmp_path / "sweep")]) == 0
    assert "verdict: inconclusive (agreement 0.75)" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'" + str(tmp_path / "nowhere") + "' is not a directory" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2 and "no verdict.json under" in capsys.readouterr().err
