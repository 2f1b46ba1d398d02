"""Labelled text loading: CSV, TSV, JSONL and split dirs; labels by name or id; every bad file is
an InputError that says what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcompress.calibration.datasets import is_split_dir, load_labelled_texts, split_file
from mcompress.core.errors import InputError

LABEL2ID = {"neg": 0, "pos": 1}


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def test_csv_with_quoted_commas_and_newlines(tmp_path):
    path = _write(tmp_path, "d.csv", 'text,label\n"good, really good",pos\n"bad\nacross two lines",neg\nfine,1\n')
    data = load_labelled_texts(path, LABEL2ID)
    assert data.texts == ["good, really good", "bad\nacross two lines", "fine"]
    assert data.labels == [1, 0, 1]
    assert data.source == str(path)


def test_tsv(tmp_path):
    path = _write(tmp_path, "d.tsv", "label\ttext\npos\ta, b, c\nneg\tplain\n")
    data = load_labelled_texts(path, LABEL2ID)
    assert data.texts == ["a, b, c", "plain"]
    assert data.labels == [1, 0]


def test_jsonl_labels_by_name_and_by_id(tmp_path):
    rows = [{"text": "one", "label": "pos"}, {"text": "two", "label": 0}, {"text": "three", "label": "1"},
            {"text": "four", "label": " neg "}]
    path = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = load_labelled_texts(path, LABEL2ID)
    assert data.texts == ["one", "two", "three", "four"]
    assert data.labels == [1, 0, 1, 0]


def test_custom_column_names(tmp_path):
    path = _write(tmp_path, "d.csv", "sentence,y\nhello,pos\n")
    data = load_labelled_texts(path, LABEL2ID, text_column="sentence", label_column="y")
    assert data.texts == ["hello"] and data.labels == [1]


def test_unlabelled_calibration_text(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"text": "a"}\n{"text": "b"}\n')
    data = load_labelled_texts(path, LABEL2ID, require_labels=False)
    assert data.texts == ["a", "b"] and data.labels is None
    with pytest.raises(InputError, match="no label column 'label'"):
        load_labelled_texts(path, LABEL2ID)


def test_split_dir(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for split, label in (("train", "neg"), ("validation", "pos"), ("test", "neg")):
        _write(splits, f"{split}.jsonl", json.dumps({"text": f"{split} text", "label": label}) + "\n")
    assert is_split_dir(splits) and split_file(splits, "validation") == splits / "validation.jsonl"
    assert not is_split_dir(tmp_path)
    test = load_labelled_texts(splits, LABEL2ID)  # default split: test
    assert test.texts == ["test text"] and test.labels == [0]
    assert load_labelled_texts(splits, LABEL2ID, split="validation").labels == [1]
    assert load_labelled_texts(splits, LABEL2ID, split="train").texts == ["train text"]


def test_split_dir_without_the_split(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    _write(splits, "train.jsonl", '{"text": "x", "label": "pos"}\n')
    with pytest.raises(InputError, match="without test.jsonl"):
        load_labelled_texts(splits, LABEL2ID)


def test_tiny_checkpoint_splits(tiny_checkpoint):
    sizes = {s: len(load_labelled_texts(tiny_checkpoint / "splits", LABEL2ID, split=s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 40, "validation": 24, "test": 24}


@pytest.mark.parametrize("label", ["positive", "2", "-1", ""])
def test_unknown_label_is_named(tmp_path, label):
    path = _write(tmp_path, "d.jsonl", json.dumps({"text": "ok", "label": "pos"}) + "\n"
                  + json.dumps({"text": "x", "label": label}) + "\n")
    with pytest.raises(InputError) as info:
        load_labelled_texts(path, LABEL2ID)
    message = str(info.value)
    assert f"label '{label}'" in message and "example 2" in message
    assert "neg, pos" in message  # the known labels are listed


def test_missing_text_column(tmp_path):
    path = _write(tmp_path, "d.csv", "sentence,label\nhi,pos\n")
    with pytest.raises(InputError, match=r"no text column 'text' \(columns: label, sentence\)"):
        load_labelled_texts(path, LABEL2ID)


def test_missing_label_column(tmp_path):
    path = _write(tmp_path, "d.csv", "text,target\nhi,pos\n")
    with pytest.raises(InputError, match="no label column 'label'"):
        load_labelled_texts(path, LABEL2ID)


@pytest.mark.parametrize("name, content", [("e.csv", ""), ("e.jsonl", "\n\n  \n"), ("e.tsv", "   ")])
def test_empty_file(tmp_path, name, content):
    with pytest.raises(InputError, match="is empty"):
        load_labelled_texts(_write(tmp_path, name, content), LABEL2ID)


def test_header_only_csv(tmp_path):
    with pytest.raises(InputError, match="no examples"):
        load_labelled_texts(_write(tmp_path, "h.csv", "text,label\n"), LABEL2ID)


def test_empty_text_value(tmp_path):
    with pytest.raises(InputError, match="example 2 has an empty"):
        load_labelled_texts(_write(tmp_path, "d.csv", "text,label\nok,pos\n  ,neg\n"), LABEL2ID)


def test_non_utf8_bytes(tmp_path):
    path = _write(tmp_path, "d.csv", "text,label\ncaf".encode() + b"\xe9,pos\n")  # latin-1 é
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 14\)"):
        load_labelled_texts(path, LABEL2ID)


def test_invalid_jsonl_line_is_located(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", \n')
    with pytest.raises(InputError, match=r"d.jsonl:2 is not valid JSON"):
        load_labelled_texts(path, LABEL2ID)
    path = _write(tmp_path, "l.jsonl", '["text", "pos"]\n')
    with pytest.raises(InputError, match=r"l.jsonl:1 is not a JSON object"):
        load_labelled_texts(path, LABEL2ID)


def test_jsonl_text_with_line_separators(tmp_path):
    # ensure_ascii=False writes U+2028/U+2029/U+0085 raw; str.splitlines() would split there.
    texts = ["before\u2028after", "para\u2029graph", "next\x85line"]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": "pos"}, ensure_ascii=False) + "\n" for t in texts),
                    encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    data = load_labelled_texts(path, LABEL2ID)
    assert data.texts == texts and data.labels == [1, 1, 1]


def test_jsonl_with_crlf_line_endings(tmp_path):
    path = _write(tmp_path, "w.jsonl", '{"text": "a", "label": "pos"}\r\n{"text": "b", "label": "neg"}\r\n')
    data = load_labelled_texts(path, LABEL2ID)
    assert data.texts == ["a", "b"] and data.labels == [1, 0]


def test_unsupported_extension(tmp_path):
    with pytest.raises(InputError, match="unsupported extension '.parquet'"):
        load_labelled_texts(_write(tmp_path, "d.parquet", "text,label\na,pos\n"), LABEL2ID)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_labelled_texts(tmp_path / "missing.csv", LABEL2ID)


def test_head_and_content_hash(tmp_path):
    path = _write(tmp_path, "d.csv", "text,label\na,pos\nb,neg\nc,pos\n")
    data = load_labelled_texts(path, LABEL2ID)
    head = data.head(2)
    assert head.texts == ["a", "b"] and head.labels == [1, 0]
    assert data.head(None) is data and data.head(10) is data
    assert head.content_hash() != data.content_hash()
    assert data.content_hash() == load_labelled_texts(path, LABEL2ID).content_hash()
