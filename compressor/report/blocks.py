"""The blocks a report is made of, as data; report.md and report.html render the same list.

A section is a run of blocks: a ``Heading``, ``Paragraph``s, ``Table``s (mcompress.core.sections,
the type tasks and targets contribute), a ``LongTable`` (a preview in Markdown, every row in HTML)
and charts, which only the HTML draws. Text may carry two inline marks both renderers know:
``**bold**`` and ```code```; a table cell ``verdict_cell(passed)`` is drawn as a coloured verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from mcompress.core.sections import Table

PASS_CELL, FAIL_CELL = "pass", "**FAIL**"


def verdict_cell(passed: bool) -> str:
    return PASS_CELL if passed else FAIL_CELL


@dataclass(frozen=True)
class VerdictHeading:
    """The report's first line: ``mcompress build: PASS``."""
    verdict: str


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str
    small: bool = False  # the footer: library versions and timings


@dataclass(frozen=True)
class LongTable:
    """A table too long for report.md: it shows ``preview_rows`` rows there, all of them in report.html."""
    table: Table
    preview_rows: int
    summary: str  # the label of the collapsed full table in report.html


@dataclass(frozen=True)
class BarChart:
    title: str
    labels: tuple[str, ...]
    values: tuple[float | None, ...]  # None: drawn as n/a
    unit: str


@dataclass(frozen=True)
class ChartRow:
    charts: tuple[BarChart, ...]


@dataclass(frozen=True)
class RankingChart:
    """Horizontal bars, one row per label (the sensitivity ranking)."""
    title: str
    labels: tuple[str, ...]
    values: tuple[float, ...]
    unit: str
    notes: tuple[str, ...]
    highlight: frozenset[int]
    caption: str


@dataclass(frozen=True)
class ScatterChart:
    """Points (x, y, label) per named series, a horizontal budget line and a ring on the kept point."""
    heading: str
    caption: str
    title: str
    series: tuple[tuple[str, tuple[tuple[float, float, str], ...]], ...]
    xlabel: str
    ylabel: str
    hline: tuple[float, str] | None = None
    chosen: tuple[float, float] | None = None


Block = Union[VerdictHeading, Heading, Paragraph, Table, LongTable, ChartRow, RankingChart, ScatterChart]
