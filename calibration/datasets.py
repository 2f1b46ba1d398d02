"""Labelled text for evaluation, calibration and selection.

Accepted inputs: a CSV/TSV file with a header, a JSONL file (one object per line), or a split
directory written by `mcompress example` (``train.jsonl``, ``validation.jsonl``, ``test.jsonl``).
Labels are given by name (mapped through the checkpoint's ``label2id``) or by integer id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcompress.core.errors import InputError

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int] | None  # None for unlabelled text (calibration only)
    source: str

    task = "text-classification"

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "LabelledTexts":
        if n is None or n >= len(self.texts):
            return self
        return LabelledTexts(self.texts[:n], None if self.labels is None else self.labels[:n], self.source)

    def select(self, indices) -> "LabelledTexts":
        """The examples at ``indices``, in that order."""
        return LabelledTexts([self.texts[i] for i in indices],
                             None if self.labels is None else [self.labels[i] for i in indices], self.source)

    def without_labels(self) -> "LabelledTexts":
        return LabelledTexts(self.texts, None, self.source)

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for i, text in enumerate(self.texts):
            label = "" if self.labels is None else str(self.labels[i])
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()


def split_file(split_dir: Path, split: str) -> Path | None:
    path = Path(split_dir) / f"{split}.jsonl"
    return path if path.is_file() else None


def is_split_dir(path: Path) -> bool:
    return path.is_dir() and any(split_file(path, s) for s in SPLIT_NAMES)


def read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"data file {path} is not UTF-8 text (byte {err.start}).",
                         "Re-encode it as UTF-8.") from None
    except OSError as err:
        raise InputError(f"cannot read data file {path}: {err.strerror}.") from None
    if not raw.strip():
        raise InputError(f"data file {path} is empty.", "Give a file with at least one example.")
    if suffix in (".jsonl", ".json"):
        rows = []
        # split on \n only: str.splitlines() also splits on U+2028 etc. inside JSON strings
        for line_no, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{line_no} is not valid JSON ({err.msg}).",
                                 "JSONL needs one JSON object per line.") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{line_no} is not a JSON object.",
                                 "JSONL needs one JSON object per line.")
            rows.append(row)
        return rows
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        return list(csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter))
    raise InputError(f"data file {path} has an unsupported extension '{suffix}'.",
                     "Use .csv, .tsv, .jsonl or a split directory written by `mcompress example`.")


def _label_id(value, label2id: dict[str, int], where: str) -> int:
    key = str(value).strip()
    if key in label2id:
        return label2id[key]
    num_labels = len(label2id)
    if key.lstrip("-").isdigit() and 0 <= int(key) < num_labels:
        return int(key)
    known = ", ".join(sorted(label2id))
    raise InputError(f"{where}: label '{key}' is not in the checkpoint's label map ({known}).",
                     "Fix the label or the checkpoint's config.json label2id.")


def resolve_data_file(path: str | Path, split: str, hint: str) -> Path:
    """The file to read: ``path`` itself, or its ``<split>.jsonl`` when it is a split dir."""
    path = Path(path)
    if path.is_dir():
        chosen = split_file(path, split)
        if chosen is None:
            raise InputError(f"{path} is a directory without {split}.jsonl.", hint)
        return chosen
    if not path.exists():
        raise InputError(f"data file {path} does not exist.")
    return path


def load_labelled_texts(
    path: str | Path,
    label2id: dict[str, int],
    text_column: str = "text",
    label_column: str = "label",
    split: str = "test",
    require_labels: bool = True,
) -> LabelledTexts:
    """Load a data file (or one split of a split dir) and map its labels to ids."""
    path = resolve_data_file(path, split, "Pass a CSV/JSONL file or a split dir written by `mcompress example`.")
    rows = read_rows(path)
    if not rows:
        raise InputError(f"data file {path} has a header but no examples.")
    columns = set(rows[0])
    if text_column not in columns:
        raise InputError(f"data file {path} has no text column '{text_column}' (columns: {', '.join(sorted(columns))}).",
                         "Name it with --text-column.")
    has_labels = label_column in columns
    if require_labels and not has_labels:
        raise InputError(f"data file {path} has no label column '{label_column}' (columns: {', '.join(sorted(columns))}).",
                         "Name it with --label-column.")
    texts, labels = [], []
    for i, row in enumerate(rows, start=1):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}: example {i} has an empty or non-text '{text_column}'.")
        texts.append(text)
        if has_labels:
            labels.append(_label_id(row.get(label_column), label2id, f"{path}: example {i}"))
    return LabelledTexts(texts, labels if has_labels else None, str(path))


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """The ``text_column`` of every row of a CSV/TSV/JSONL file, for prediction (no labels)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist.")
    texts = []
    for i, row in enumerate(read_rows(path), start=1):
        text = row.get(text_column)
        if not isinstance(text, str):
            raise InputError(f"{path}: row {i} has no text column '{text_column}'.", "Name it with --text-column.")
        texts.append(text)
    return texts


def write_jsonl(path: Path, texts: list[str], labels: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text, label in zip(texts, labels):
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def length_batches(texts: list[str], batch_size: int):
    """Index arrays of batches in order of character length (stable), so padding stays small.
    Evaluation and the bundle runtime both batch this way: dynamically quantized models scale
    activations per padded batch, so the same batches give the same predictions."""
    order = np.argsort(np.array([len(t) for t in texts], dtype=np.int64), kind="stable")
    for start in range(0, len(texts), batch_size):
        yield order[start:start + batch_size]


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize to int64 numpy arrays; pad to the longest text, or to exactly ``pad_to``."""
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=pad_to or max_length,
        padding="max_length" if pad_to else "longest",
        return_tensors="np",
    )
    return {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}


def token_lengths(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in encoded["input_ids"]])
