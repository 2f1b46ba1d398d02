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
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcompress.core.errors import InputError
from mcompress.core.limits import brief, json_loads_bounded, read_text_bounded

SPLIT_NAMES = ("train", "validation", "test")
# Limits of every data file (docs/limits.md); each is checked before the memory it bounds is used.
MAX_DATA_BYTES = 512 * 1024 ** 2  # file size, checked with stat before reading
MAX_ROWS = 1_000_000  # records (JSONL/CSV rows, CoNLL words-lines)
MAX_LINE_CHARS = 1024 ** 2  # one JSONL record or CoNLL line
MAX_COLUMNS = 1_000  # CSV/TSV header fields (a CSV field is at most csv.field_size_limit(), 131,072 characters)
_NEWLINE = re.compile(r"\r\n|\r|\n")
_LABEL_ID = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
TAB = "\t"


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


def read_data_text(path: Path, hint: str = "Give a file with at least one example.") -> str:
    """The UTF-8 text of a data file (BOM dropped), refused before reading when over MAX_DATA_BYTES."""
    raw = read_text_bounded(path, MAX_DATA_BYTES, "data file", "Split it, or sample the examples you need.")
    if not raw.strip():
        raise InputError(f"data file {path} is empty.", hint)
    return raw


def data_lines(path: Path, raw: str) -> list[str]:
    """The lines of a JSONL/CoNLL file, split on \\n, \\r\\n and lone \\r (none of which can occur raw inside
    a JSON string, unlike U+2028, which str.splitlines() would also split on); each line at most
    MAX_LINE_CHARS, at most MAX_ROWS non-blank lines."""
    lines = _NEWLINE.split(raw)
    long_line = next((i for i, line in enumerate(lines) if len(line) > MAX_LINE_CHARS), None)
    if long_line is not None:
        raise InputError(f"{path}:{long_line + 1} is {len(lines[long_line]):,} characters long, over the limit of "
                         f"{MAX_LINE_CHARS:,}.", "Is it one record per line? See docs/limits.md.")
    _check_row_count(path, sum(1 for line in lines if line.strip()))
    return lines


def _check_row_count(path: Path, rows: int) -> None:
    if rows > MAX_ROWS:
        raise InputError(f"data file {path} has {rows:,} records, over the limit of {MAX_ROWS:,}.",
                         "Sample the examples you need; see docs/limits.md.")


def _jsonl_rows(path: Path, raw: str) -> list[dict]:
    rows = []
    for line_no, line in enumerate(data_lines(path, raw), start=1):
        if not line.strip():
            continue
        try:
            row = json_loads_bounded(line)
        except ValueError as err:
            raise InputError(f"{path}:{line_no} is not valid JSON ({err}).",
                             "JSONL needs one JSON object per line.") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{line_no} is not a JSON object.", "JSONL needs one JSON object per line.")
        rows.append(row)
    return rows


def _header(path: Path, names: list[str]) -> list[str]:
    """Column names, stripped of surrounding whitespace; refused when empty, repeated or too many,
    since any of these makes 'the text column' ambiguous."""
    names = [name.strip() for name in names]
    if len(names) > MAX_COLUMNS:
        raise InputError(f"data file {path} has {len(names):,} columns, over the limit of {MAX_COLUMNS:,}.",
                         "Is the delimiter right (.csv: comma, .tsv: tab)?")
    for i, name in enumerate(names, start=1):
        if not name:
            raise InputError(f"data file {path}: column {i} of the header has no name.",
                             "Give every column a name in the first line.")
        if names.index(name) != i - 1:
            raise InputError(f"data file {path}: the header names column {brief(name)!r} twice "
                             f"(columns {names.index(name) + 1} and {i}).", "Give every column a distinct name.")
    return names


def _table_rows(path: Path, raw: str, delimiter: str) -> list[dict]:
    """Rows of a CSV/TSV with a header (strict quoting: an unclosed quote is an error, not a field
    that swallows the rest of the file); every row has exactly the header's number of fields."""
    reader = csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True)
    try:
        header = _header(path, next(reader, []))
        rows = []
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise InputError(f"{path}:{reader.line_num} has {len(fields)} fields, the header has {len(header)}.",
                                 "Quote fields that contain the delimiter.")
            rows.append(dict(zip(header, fields)))
            if len(rows) > MAX_ROWS:
                _check_row_count(path, len(rows))
    except csv.Error as err:
        raise InputError(f"{path}:{reader.line_num} is not valid {'TSV' if delimiter == TAB else 'CSV'} ({err}).",
                         f"Fields are at most {csv.field_size_limit():,} characters; quote fields with "
                         "delimiters, quotes or line breaks.") from None
    return rows


def read_rows(path: Path) -> list[dict]:
    """The records of a CSV/TSV (with a header) or JSONL file, within the limits above."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise InputError(f"data file {path} has an unsupported extension '{suffix}'.",
                         "Use .csv, .tsv, .jsonl or a split directory written by `mcompress example`.")
    raw = read_data_text(path)
    if suffix in (".jsonl", ".json"):
        return _jsonl_rows(path, raw)
    return _table_rows(path, raw, TAB if suffix == ".tsv" else ",")


def label_id_of(key: str, num_labels: int) -> int | None:
    """``key`` as a label id when it is a decimal integer in 0..num_labels-1, else None."""
    if _LABEL_ID.fullmatch(key) and len(key) <= 12 and 0 <= int(key) < num_labels:
        return int(key)
    return None


def _label_id(value, label2id: dict[str, int], where: str) -> int:
    key = None if isinstance(value, (dict, list)) else str(value).strip()
    if key in label2id:
        return label2id[key]
    label = None if key is None else label_id_of(key, len(label2id))
    if label is not None:
        return label
    known = brief(", ".join(sorted(label2id)), 200)
    raise InputError(f"{where}: label {brief(value)!r} is not in the checkpoint's label map ({known}).",
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
