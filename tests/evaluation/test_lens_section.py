"""The lens and probe report sections: missing / not-run results, and full results rendered to Markdown and HTML."""
from refusal.evaluation.lens_section import lens_section, probes_section
from refusal.evaluation.report import Image, Report, Table, render_html, render_markdown


def lens_result(tmp_path) -> dict:
    (tmp_path / "lens_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    curve = {"n": 3, "mean": [[0.0, 0.1]] * 3, "last": [0.1, 0.5, 2.0], "ci_low": [0.0, 0.4, 1.5],
             "ci_high": [0.2, 0.6, 2.5]}
    safe = {**curve, "last": [0.1, -0.5, -2.0]}
    curves = {"toxic": curve, "safe": safe, "toxic/cyber": curve}
    return {"split": "test", "layers": [0, 1, 2], "positions": [-2, -1], "n_prompts": 6, "lenses": ["logit", "tuned"],
            "tuned_training": {"reused": True, "n_tokens": 100, "n_prompts": 9, "steps": 5, "first_loss": 0.1,
                               "last_loss": 0.01},
            "curves": {"logit": curves, "tuned": curves}, "kl": {"logit": [0.3, 0.1, 0.0], "tuned": [0.1, 0.05, 0.0]},
            "emergence": {"logit": {"toxic": 1, "toxic/cyber": None}, "tuned": {"toxic": 1, "toxic/cyber": 1}},
            "settings": {"emergence_fraction": 0.5}, "plot": str(tmp_path / "lens_curves.png")}


def probes_result() -> dict:
    task = {"task": "toxic_vs_safe", "n_train": 10, "n_eval": 4, "majority": 0.5, "accuracy": [0.5, 1.0],
            "ci_low": [0.2, 0.6], "ci_high": [0.8, 1.0], "control": [0.5, 0.5], "selectivity": [0.0, 0.5],
            "best_layer": 4}
    return {"split": "test", "train_split": "train", "layers": [1, 4], "position": "last",
            "tasks": [task, {**task, "task": "category:cyber"}], "hard_predicted_toxic": [0.5, 0.25],
            "directions": "probes.safetensors", "plot": None}


def test_missing_and_not_run():
    for build in (lens_section, probes_section):
        assert build(None).missing and not build(None).not_run
        skipped = build({"status": "skipped", "reason": "not in evaluation.stages"})
        assert skipped.missing == "not in evaluation.stages" and skipped.not_run
        assert build({"status": "missing", "reason": "no prompts"}).missing == "no prompts"


def test_full_sections_render(tmp_path):
    lens, probes = lens_section(lens_result(tmp_path)), probes_section(probes_result())
    assert lens.missing is None and any(isinstance(b, Image) for b in lens.blocks)
    groups = next(b for b in lens.blocks if isinstance(b, Table))
    assert [r[0] for r in groups.rows] == ["toxic", "safe", "toxic/cyber"]
    assert groups.rows[0][2:4] == [1, 1] and groups.rows[2][2] is None  # emergence layers (logit, tuned)
    best = next(b for b in probes.blocks if isinstance(b, Table))
    assert best.rows[0][:4] == ["toxic_vs_safe", 10, 4, 4] and best.rows[0][6] == 0.5
    per_layer = [b for b in probes.blocks if isinstance(b, Table)][-1]
    assert [r[-1] for r in per_layer.rows] == [0.5, 0.25]
    report = Report("r", [lens, probes])
    md, page = render_markdown(report, tmp_path), render_html(report)
    assert "Logit and tuned lens" in md and "Linear probes" in page and "toxic/cyber" in md
