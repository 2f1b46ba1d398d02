"""A report section as data: a titled table of already-formatted cells, with an optional note.

Every layer that contributes to a build report (a task's own figures, a target's build facts, the
pipeline's gates) returns Tables; report/ renders each one to Markdown and HTML, so a section is
built once and the two renderings cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)  # sentences shown under the table
