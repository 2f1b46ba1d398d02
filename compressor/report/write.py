"""The three files of a build's report: report.json (for machines and CI), report.md (the summary
a person reads first) and report.html (the same with plots, self-contained)."""

from __future__ import annotations

from pathlib import Path

from mcompress.report.html import render_html
from mcompress.report.markdown import render_markdown
from mcompress.report.schema import Report


def write_report(report: Report, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(report.to_json(), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
