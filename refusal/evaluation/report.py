"""A run report as a small document model rendered to Markdown (``report.md``, images linked) and to one
self-contained HTML file (``report.html``, images embedded as base64 PNG), and logged to W&B.

A :class:`Report` is a list of :class:`Section` s; a section either holds blocks (:class:`Text`, :class:`Table`,
:class:`Image`, :class:`Html`) or is marked missing with the reason (a stage that did not run, an input that is
absent): it is rendered as such, never skipped and never a crash. Table cells may hold any value: numbers are shown
with 3 significant digits (a value with its interval: :func:`fmt_ci`), None/NaN as "–", and text is escaped for the
target format (``|`` and line breaks in Markdown, ``<``/``&`` in HTML), so a cell can never break its table.
"""
from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from refusal.utils.io import atomic_path

MISSING = "–"
SIG = 3  # significant digits of a number shown without an interval


@dataclass
class Text:
    text: str
    strong: bool = False


@dataclass
class Table:
    columns: list[str]
    rows: list[list]
    caption: str = ""

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.caption!r}: row {i} has {len(row)} cells for {len(self.columns)} columns")


@dataclass
class Image:
    path: Path
    caption: str = ""


@dataclass
class Html:
    """A fragment of HTML (e.g. an interactive graph) embedded as is in report.html; ``markdown`` stands for it in
    report.md (a link or a note). The fragment must be self-contained: no network, scripts inline."""
    html: str
    markdown: str = ""


@dataclass
class Section:
    key: str  # HTML anchor id
    title: str
    blocks: list = field(default_factory=list)
    missing: str | None = None  # reason the section has no content
    not_run: bool = False  # the section is empty because its stage was not asked for (not because an input is absent)

    @property
    def status_label(self) -> str:
        return "Not run" if self.not_run else "Missing"


@dataclass
class Report:
    title: str
    sections: list[Section]
    meta: dict[str, str] = field(default_factory=dict)
    lead: bool = False  # the first section (the answer) comes before the contents, on the first screen


def fmt(value) -> str:
    """One table cell or value as text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        return f"{value:.{SIG}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def finite(x) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fixed(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def fmt_ci(value, low, high) -> str:
    """``value [low, high]`` rounded to what the interval supports: the half-width's first significant digit (its
    first two when they start with 1 or 2) sets the decimals of all three: 0.1004 [-0.0072, 0.2024] -> "0.10 [-0.01,
    0.20]", 0.904 [0.826, 1.008] -> "0.90 [0.83, 1.01]". Without a finite interval: fmt."""
    if not finite(value):
        return fmt(value)
    if not (finite(low) and finite(high)):
        return fmt(value)
    half = (high - low) / 2
    if half <= 0:
        return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"
    exponent = math.floor(math.log10(half))
    decimals = min(12, max(0, -exponent + (half / 10 ** exponent < 3)))
    return f"{_fixed(value, decimals)} [{_fixed(low, decimals)}, {_fixed(high, decimals)}]"


def fmt_p(p, n_permutations=None) -> str:
    """A p-value to two significant digits; a permutation p at its floor 1/(n+1) as "≤ floor"."""
    if not finite(p):
        return MISSING
    if finite(n_permutations) and n_permutations > 0 and p <= 1 / (n_permutations + 1) + 1e-15:
        return f"≤ {1 / (n_permutations + 1):.2g}"
    return f"{p:.2g}"


# ------------------------------------------------------------------------------------------------ Markdown
def _md_cell(value) -> str:
    text = fmt(value).replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(line.strip() for line in text.splitlines()) or " "


def _md_table(t: Table) -> str:
    lines = []
    if t.caption:
        lines += [f"*{t.caption}*", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---" for _ in t.columns) + "|")
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _md_section(i: int, s: Section, base_dir) -> list[str]:
    out = ["", f"## {i}. {s.title}", ""]
    if s.missing:
        return out + [f"> **{s.status_label}:** {s.missing}"]
    for b in s.blocks:
        if isinstance(b, Text):
            out.append(f"**{b.text}**" if b.strong else b.text)
        elif isinstance(b, Table):
            out.append(_md_table(b))
        elif isinstance(b, Html):
            if b.markdown:
                out.append(b.markdown)
        elif isinstance(b, Image):
            rel = os.path.relpath(Path(b.path), Path(base_dir))
            out.append(f"![{b.caption}]({Path(rel).as_posix()})")
            if b.caption:
                out += ["", f"*{b.caption}*"]
        out.append("")
    return out


def render_markdown(report: Report, base_dir: str | os.PathLike) -> str:
    """Markdown; images are linked relative to ``base_dir`` (the directory report.md is written to)."""
    out = [f"# {report.title}", ""]
    out += [f"- **{k}**: {fmt(v)}" for k, v in report.meta.items()]
    sections = [_md_section(i, s, base_dir) for i, s in enumerate(report.sections, 1)]
    contents = ["", "## Contents", ""] + [f"{i}. {s.title}" + (f" ({s.status_label.lower()})" if s.missing else "")
                                          for i, s in enumerate(report.sections, 1)]
    n_lead = 1 if report.lead and sections else 0
    for part in sections[:n_lead] + [contents] + sections[n_lead:]:
        out += part
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#eee}td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:3px}
.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:0.5em 1em}
.not-run{background:#f2f2f2;border-left:4px solid #999;padding:0.5em 1em}
figure{margin:1em 0}figcaption{font-style:italic;font-size:0.9em}img{max-width:100%}
.meta{font-size:0.8em;color:#555}
.toc{font-size:0.9em;line-height:1.6;margin:1.5em 0;padding:0.5em 0;border-top:1px solid #ccc;border-bottom:1px solid #ccc}
.lead figure{float:left;width:54%;margin:0 1.5em 0.5em 0}.lead::after{content:"";display:block;clear:both}
.lead h2{margin-top:0.8em}.lead td{text-align:left}.lead td:nth-child(2){white-space:nowrap}.caveats{font-size:0.9em;clear:both;padding-top:0.3em}.caveats li{margin-bottom:0.3em}
""".strip()


def _esc(value) -> str:
    return html.escape(fmt(value)).replace("\n", "<br>")


def _html_table(t: Table) -> str:
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(img: Image) -> str:
    path = Path(img.path)
    if not path.is_file():
        return f'<p class="missing"><b>Missing:</b> image {html.escape(str(path))} was not found</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{html.escape(img.caption)}</figcaption>" if img.caption else ""
    return f'<figure><img alt="{html.escape(img.caption or path.name)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _html_section(i: int, s: Section, lead: bool = False) -> str:
    parts = [f'<section id="{html.escape(s.key)}">' + ('<div class="lead">' if lead else "")
             + f"<h2>{i}. {html.escape(s.title)}</h2>"]
    if s.missing:
        css = s.status_label.lower().replace(" ", "-")  # missing | not-run
        parts.append(f'<p class="{css}"><b>{s.status_label}:</b> {_esc(s.missing)}</p>')
    for b in [] if s.missing else s.blocks:
        if isinstance(b, Text):
            parts.append(f"<p><b>{_esc(b.text)}</b></p>" if b.strong else f"<p>{_esc(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Image):
            parts.append(_html_image(b))
        elif isinstance(b, Html):
            parts.append(b.html)
    parts.append(("</div>" if lead else "") + "</section>")
    return "\n".join(parts)


def render_html(report: Report) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>"]
    if report.meta:
        parts.append('<p class="meta">' + " · ".join(f"<b>{_esc(k)}</b>: {_esc(v)}" for k, v in report.meta.items())
                     + "</p>")
    sections = [_html_section(i, s, report.lead and i == 1) for i, s in enumerate(report.sections, 1)]
    contents = '<nav class="toc"><b>Contents:</b> ' + " · ".join(
        f'<a href="#{html.escape(s.key)}">{i}. {html.escape(s.title)}</a>'
        + (f" ({s.status_label.lower()})" if s.missing else "") for i, s in enumerate(report.sections, 1)) + "</nav>"
    n_lead = 1 if report.lead and sections else 0
    parts += sections[:n_lead] + [contents] + sections[n_lead:]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ files, W&B
def write_report(report: Report, md: str | os.PathLike, page: str | os.PathLike) -> tuple[Path, Path]:
    """Write the Markdown to ``md`` (images linked relative to its dir) and the HTML to ``page``, atomically;
    returns both paths."""
    md, page = Path(md), Path(page)
    with atomic_path(md) as tmp:
        tmp.write_text(render_markdown(report, md.parent), encoding="utf-8")
    with atomic_path(page) as tmp:
        tmp.write_text(render_html(report), encoding="utf-8")
    return md, page


def log_report(run, report: Report, html_path: str | os.PathLike, prefix: str = "report") -> None:
    """Log the HTML page, every table and every image of ``report`` to the W&B ``run`` (no-op when None)."""
    if run is None:
        return
    import wandb

    payload = {f"{prefix}/html": wandb.Html(Path(html_path).read_text(encoding="utf-8"), inject=False)}
    for s in report.sections:
        for j, b in enumerate(s.blocks if not s.missing else []):
            key = f"{prefix}/{s.key}/{j}"
            if isinstance(b, Table):
                payload[key] = wandb.Table(columns=[str(c) for c in b.columns], data=[[fmt(v) for v in r] for r in b.rows])
            elif isinstance(b, Image) and Path(b.path).is_file():
                payload[key] = wandb.Image(str(b.path), caption=b.caption)
    run.log(payload)
