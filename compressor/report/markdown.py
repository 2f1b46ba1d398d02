"""report.md: the summary a person reads first, rendered from the report's blocks (report/sections.py).

Charts are drawn only in report.html; a long table shows its first rows here.
"""

from __future__ import annotations

from functools import singledispatch

from mcompress.core.sections import Table
from mcompress.report.blocks import (ChartRow, Heading, LongTable, Paragraph, RankingChart, ScatterChart, VerdictHeading)
from mcompress.report.schema import Report
from mcompress.report.sections import build_sections


def render_markdown(report: Report | dict) -> str:
    lines: list[str] = []
    for block in build_sections(Report.parse(report)):
        lines += markdown_lines(block)
    return "\n".join(lines)


@singledispatch
def markdown_lines(block) -> list[str]:
    raise TypeError(f"no Markdown for a {type(block).__name__}")


@markdown_lines.register
def _(block: VerdictHeading) -> list[str]:
    return [f"# mcompress build: {block.verdict}", ""]


@markdown_lines.register
def _(block: Heading) -> list[str]:
    return [f"## {block.text}", ""]


@markdown_lines.register
def _(block: Paragraph) -> list[str]:
    return [block.text, ""]


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


@markdown_lines.register
def _(block: Table, more: str | None = None) -> list[str]:
    lines = [f"## {block.title}", ""] if block.title else []
    lines += [_row(block.columns), "|" + "---|" * len(block.columns)] + [_row(r) for r in block.rows]
    if more:
        lines.append(_row([more] + [""] * (len(block.columns) - 1)))
    lines.append("")
    for note in block.notes:
        lines += [note, ""]
    return lines


@markdown_lines.register
def _(block: LongTable) -> list[str]:
    table, shown = block.table, block.preview_rows
    hidden = len(table.rows) - shown
    preview = Table(table.title, table.columns, table.rows[:shown], table.notes)
    return markdown_lines.dispatch(Table)(preview, f"… {hidden} more in report.json" if hidden > 0 else None)


@markdown_lines.register(ChartRow)
@markdown_lines.register(RankingChart)
@markdown_lines.register(ScatterChart)
def _(block) -> list[str]:
    return []
