"""Plain documents for a causal language model: no labels, one document per line or record.

Accepted inputs: a ``.txt`` file (one document a line; blank lines are skipped), a JSONL file with
a text column (``text`` by default), or a split directory (``train.jsonl``, ``validation.jsonl``,
``test.jsonl``, as every task's), such as the one ``mcompress example lm`` writes. The documents are the
bootstrap units of the perplexity gate (compressor/metrics/perplexity.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mcompress.calibration.datasets import data_lines, read_data_text, read_rows, resolve_data_file
from mcompress.core.errors import InputError


@dataclass(frozen=True)
class Documents:
    texts: list[str]
    source: str

    task = "causal-lm"
    labels = None  # the text is its own target

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "Documents":
        return self if n is None or n >= len(self.texts) else Documents(self.texts[:n], self.source)

    def select(self, indices) -> "Documents":
        return Documents([self.texts[i] for i in indices], self.source)

    def without_labels(self) -> "Documents":
        return self

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(f"{text}\n".encode())
        return digest.hexdigest()


def load_documents(path: str | Path, text_column: str = "text", split: str = "test") -> Documents:
    """The documents of a .txt/.jsonl file, or of one split of a split dir."""
    path = resolve_data_file(path, split, "Pass a .txt file (one document a line), a JSONL file, or a split dir.")
    if path.suffix.lower() == ".txt":
        texts = [line.strip() for line in data_lines(path, read_data_text(path)) if line.strip()]
    else:
        rows = read_rows(path)
        bad = next((i for i, row in enumerate(rows, start=1)
                    if not isinstance(row.get(text_column), str) or not row[text_column].strip()), None)
        if bad is not None:
            raise InputError(f"{path}: record {bad} has no text in column '{text_column}'.", "Name it with --text-column.")
        texts = [row[text_column] for row in rows]
    if not texts:
        raise InputError(f"data file {path} holds no documents.", "Give one document a line.")
    return Documents(texts, str(path))
