"""Fuzzing the data readers (calibration/datasets.py, calibration/tagged.py): CSV/TSV/JSONL for
classifiers, CoNLL/JSONL for taggers, with odd encodings, BOMs, NUL bytes, mixed newlines, huge
lines, ragged rows and ambiguous headers. Each input is accepted or refused with one line."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import example, given, strategies as st

from fuzz_support import budget
from fuzz_targets import LABELS, check_data_file
from mcompress.calibration import datasets
from mcompress.calibration.datasets import load_labelled_texts
from mcompress.core.errors import InputError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
TAGGED_SUFFIXES = (".conll", ".txt", ".jsonl")

# Characters that break naive readers: delimiters, quotes, every newline, NUL, BOM, separators.
_NASTY = st.sampled_from([",", "\t", '"', "'", "\n", "\r", "\r\n", "\0", "\ufeff", "\u2028", "\x85", " ", "²", "٣",
                          "-", "--1", "0", "1", "2", "neg", "pos", "text", "label", "tokens", "tags", "{", "}",
                          "[", "]", ":", "\\", "O", "B-PER", "I-PER", "-DOCSTART-", "\udcff"[:0] + "\x1c"])
_TEXTISH = st.lists(st.one_of(_NASTY, st.text(max_size=8)), max_size=40).map("".join)
_ENCODINGS = st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "cp1252"])


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace") if encoding != "utf-16" else text.encode("utf-16", "surrogatepass")


@st.composite
def table_files(draw):
    """A CSV/TSV whose header and rows are drawn from the nasty alphabet, written raw (no quoting)
    or through csv.writer, in a drawn encoding."""
    delimiter = draw(st.sampled_from([",", "\t"]))
    header = draw(st.sampled_from([["text", "label"], ["label", "text"], ["text"], ["text", "label", "extra"]]) |
                  st.lists(st.sampled_from(["text", "label", "", " text", "text ", "extra", "Text"]) | _TEXTISH,
                           min_size=0, max_size=5))
    field = _TEXTISH | st.sampled_from(["neg", "pos", "0", "1", " pos ", "a film"])
    rows = draw(st.lists(st.lists(field, min_size=len(header), max_size=len(header)) | st.lists(field, max_size=6),
                         max_size=8))
    buf = io.StringIO(newline="")
    if draw(st.booleans()):
        writer = csv.writer(buf, delimiter=delimiter, lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
        writer.writerow(header)
        writer.writerows(rows)
    else:
        buf.write("\n".join(delimiter.join(r) for r in [header, *rows]))
    return draw(st.sampled_from([".csv", ".tsv"])), _encode(buf.getvalue(), draw(_ENCODINGS))


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _TEXTISH,
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXTISH, inner, max_size=4),
                            max_leaves=12)


@st.composite
def jsonl_files(draw):
    """JSONL: objects with text/label (or tokens/tags) of drawn types, joined by drawn newlines,
    some lines replaced by raw nasty text."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        row = draw(st.fixed_dictionaries({"text": st.sampled_from(["a film", " ", "x\u2028y"]) | _TEXTISH,
                                          "label": st.sampled_from(["neg", "pos", 0, 1, "1", 2, None, "²"])}) |
                   st.fixed_dictionaries({"tokens": st.lists(st.sampled_from(["EU", "Peter", "", " "]) | _TEXTISH, max_size=4),
                                          "tags": st.lists(st.sampled_from(["O", "B-PER", "I-PER", "1", "x", 2]), max_size=4)}) |
                   st.dictionaries(st.sampled_from(["text", "label", "tokens", "tags", ""]) | _TEXTISH,
                                   _JSON_VALUES | st.sampled_from(["neg", "pos", 0, 1, 7, "²"]) |
                                   st.lists(st.sampled_from(["O", "B-PER", "I-PER", "x", "1", "9"]), max_size=4),
                                   max_size=4))
        line = json.dumps(row, ensure_ascii=draw(st.booleans()))
        lines.append(draw(st.sampled_from([line] * 5 + [line[: len(line) // 2]])))
        if draw(st.integers(0, 19)) == 0:
            lines.append(draw(_TEXTISH))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028"]))
    return draw(st.sampled_from([".jsonl", ".json"])), _encode(newline.join(lines), draw(_ENCODINGS))


@st.composite
def conll_files(draw):
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        fields = draw(st.lists(st.sampled_from(["EU", "Peter", "O", "B-PER", "I-PER", "B-ORG", "0", "1", "2", "²",
                                                "-DOCSTART-", "\t", ""]) | _TEXTISH, max_size=4))
        lines.append(draw(st.sampled_from([" ", "\t"])).join(fields))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return draw(st.sampled_from([".conll", ".txt"])), _encode(newline.join(lines), draw(_ENCODINGS))


RAW_BYTES = st.tuples(st.sampled_from(SUFFIXES + TAGGED_SUFFIXES), st.binary(max_size=300))


def _write(tmp_path_factory, suffix: str, data: bytes):
    path = tmp_path_factory.mktemp("data") / f"input{suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.slow
@budget(300)
@given(st.one_of(table_files(), jsonl_files(), conll_files(), RAW_BYTES))
@example((".csv", "\ufefftext,label\nfine,pos\n".encode()))  # a BOM used to hide the text column
@example((".csv", b"text,label\n" + b"x" * 200_000 + b",pos\n"))  # over csv's field limit: exit 1 before
@example((".jsonl", b'{"text": "a", "label": "\xc2\xb2"}\n'))  # '2'.isdigit() but int('2') fails
@example((".jsonl", b'{"text": "a", "label": "--1"}\n'))
@example((".jsonl", b'{"text": "a", "label": ' + b"1" * 5000 + b"}\n"))  # over int's digit limit
@example((".jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"))  # RecursionError before
@example((".csv", b"text,text\nfine,pos\n"))  # duplicate column: the second silently won
@example((".csv", b"text,label\nfine, really,pos\n"))  # an unquoted comma silently shifted the label
@example((".conll", b"EU B-PER\rPeter \xc2\xb2\r"))
def test_data_readers_accept_or_refuse_in_one_line(tmp_path_factory, case):
    suffix, data = case
    check_data_file(_write(tmp_path_factory, suffix, data))


@budget(150)
@given(st.lists(st.tuples(_TEXTISH.filter(lambda t: t.strip()), st.sampled_from(["neg", "pos", "0", "1"])),
                min_size=1, max_size=8),
       st.sampled_from([",", "\t"]), st.sampled_from(["\n", "\r\n", "\r"]), st.booleans())
@example([("0\r", "neg")], ",", "\n", False)  # read_text's newline translation turned the quoted \r into \n
@example([(",", "neg")], ",", "\n", True)  # the BOM stuck to the first column's name: "no text column"
def test_well_formed_tables_round_trip(tmp_path_factory, rows, delimiter, newline, bom):
    """A CSV/TSV written by csv.writer (any text, any newline, with or without a BOM) reads back
    exactly: the properties above could pass by refusing everything; this one cannot."""
    buf = io.StringIO(newline="")
    # QUOTE_ALL: with QUOTE_MINIMAL, csv.writer leaves a "\n" unquoted when the line terminator is
    # "\r", which no reader can tell from a row break (the reader refuses that row: ragged).
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_ALL)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path = _write(tmp_path_factory, ".csv" if delimiter == "," else ".tsv",
                  ("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8", "surrogatepass"))
    try:
        data = load_labelled_texts(path, LABELS)
    except InputError as err:  # only texts the tokenizer never sees differently may be refused
        pytest.fail(f"a well-formed table was refused: {err.one_line()}")
    assert data.texts == [t for t, _ in rows]
    assert data.labels == [LABELS.get(label, int(label) if label.isdigit() else None) for _, label in rows]


def test_limits_are_enforced_before_reading(tmp_path, monkeypatch):
    """Over MAX_DATA_BYTES, MAX_LINE_CHARS or MAX_ROWS: one line naming the limit."""
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n' * 50)
    for name, value, expect in (("MAX_DATA_BYTES", 100, "over the limit of 100 bytes"),
                                ("MAX_LINE_CHARS", 10, "over the limit of 10"),
                                ("MAX_ROWS", 49, "50 records, over the limit of 49")):
        with monkeypatch.context() as patch:
            patch.setattr(datasets, name, value)
            with pytest.raises(InputError, match=expect):
                load_labelled_texts(path, LABELS)
    assert len(load_labelled_texts(path, LABELS)) == 50
