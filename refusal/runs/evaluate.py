"""An evaluate.py run dir: one ``<stage>.json`` per evaluation stage, ``verdict.json``, and the report as
``report.md`` (images linked) and ``report.html`` (self-contained)."""
from __future__ import annotations

from pathlib import Path

from refusal.runs.layout import RunDir, entry
from refusal.utils.io import write_json


class EvaluateRun(RunDir):
    """The files of one evaluate run dir."""

    verdict = entry("verdict.json")
    report_md = entry("report.md")
    report_html = entry("report.html")

    def stage(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def write_results(self, results: dict[str, dict | None], verdict: dict) -> None:
        for name, result in results.items():
            write_json(self.stage(name), result)
        write_json(self.verdict, verdict)
