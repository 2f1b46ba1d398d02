"""report.html: the report's blocks (report/sections.py) as one self-contained page, with plots.

The page holds no script and no URL: styles are inline, charts are inline SVG (report/svg.py), so it
opens offline, in a CI artifact viewer or a browser, and the same report always gives the same bytes.
Charts: accuracy, batch-1 latency and size per pass; the layer sensitivity ranking; accuracy
against latency for every candidate the quantize and fallback passes tried.
"""

from __future__ import annotations

import re
from functools import singledispatch

from mcompress.core.sections import Table
from mcompress.report.blocks import (FAIL_CELL, PASS_CELL, ChartRow, Heading, LongTable, Paragraph, RankingChart,
                                     ScatterChart, VerdictHeading)
from mcompress.report.schema import Report
from mcompress.report.sections import build_sections
from mcompress.report.svg import bar_chart, escape, hbar_chart, scatter_chart

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1 .pass,h1 .fail{font-size:0.9em} .pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:700}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px} th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa} .charts{display:flex;flex-wrap:wrap;gap:8px} svg.chart{background:#fff;border:1px solid #eee;margin:4px}
svg .ct{font-size:13px;font-weight:600} svg .tick{font-size:10px;fill:#444} svg .val{font-size:9px;fill:#222}
svg .grid{stroke:#eee} svg .axis{stroke:#888} svg .budget{stroke:#cf222e;stroke-dasharray:5,4}
code{background:#f6f8fa;padding:1px 4px}
"""


def render_html(report: Report | dict) -> str:
    body = "".join(html_of(block) for block in build_sections(Report.parse(report)))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mcompress report</title>"
            f"<style>{CSS}</style></head><body>" + body + "</body></html>\n")


def inline(text: str) -> str:
    """Escape, then the two inline marks report text may carry: **bold** and `code`."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _cell(text: str) -> str:
    if text == PASS_CELL:
        return '<span class="pass">pass</span>'
    if text == FAIL_CELL:
        return '<span class="fail">FAIL</span>'
    return inline(text)


@singledispatch
def html_of(block) -> str:
    raise TypeError(f"no HTML for a {type(block).__name__}")


@html_of.register
def _(block: VerdictHeading) -> str:
    return f'<h1>mcompress build: <span class="{"pass" if block.verdict == "PASS" else "fail"}">{escape(block.verdict)}</span></h1>'


@html_of.register
def _(block: Heading) -> str:
    return f"<h2>{inline(block.text)}</h2>"


@html_of.register
def _(block: Paragraph) -> str:
    return f"<p><small>{inline(block.text)}</small></p>" if block.small else f"<p>{inline(block.text)}</p>"


@html_of.register
def _(block: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in block.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows)
    return ((f"<h2>{inline(block.title)}</h2>" if block.title else "")
            + f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + "".join(f"<p>{inline(note)}</p>" for note in block.notes))


@html_of.register
def _(block: LongTable) -> str:
    return f"<details><summary>{escape(block.summary)}</summary>{html_of(block.table)}</details>"


@html_of.register
def _(block: ChartRow) -> str:
    charts = "".join(bar_chart(c.title, list(c.labels), list(c.values), c.unit) for c in block.charts)
    return f'<div class="charts">{charts}</div>'


@html_of.register
def _(block: RankingChart) -> str:
    return (hbar_chart(block.title, list(block.labels), list(block.values), block.unit, notes=list(block.notes),
                       highlight=set(block.highlight)) + f"<p>{inline(block.caption)}</p>")


@html_of.register
def _(block: ScatterChart) -> str:
    series = [(name, list(points)) for name, points in block.series]
    return (f"<h2>{inline(block.heading)}</h2><p>{inline(block.caption)}</p>"
            + scatter_chart(block.title, series, block.xlabel, block.ylabel, block.hline, block.chosen))
