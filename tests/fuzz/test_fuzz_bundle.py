"""Fuzzing the bundle reader (bundle/runtime.py read_bundle and load, and `mcompress inspect`):
zip structure (member names, modes, flags, compression, sizes), manifest JSON (types, nesting,
huge numbers) and raw byte damage. Each input loads (and then predicts), or is refused with one
line, and nothing is written beside the bundle."""

from __future__ import annotations

import json
import zipfile

import pytest
from hypothesis import example, given, strategies as st

from bundle_maker import bundle_bytes, members, valid_manifest, zip_bytes
from fuzz_support import budget, check_one_line
from fuzz_targets import check_bundle_file
from mcompress.bundle.runtime import Bundle, BundleError, read_bundle

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)
_SPECIAL = st.sampled_from([None, 0, -1, 1, 2 ** 40, True, "", "left", "x", [], {}, [None], ["a", "b"], 1.5, float("nan"),
                            float("inf"), "openvino-ir", "token-classification", "../x", "model.onnx", "labels.json"])
_PATHS = st.sampled_from([
    ("task",), ("target",), ("model_file",), ("model_format",), ("weights_file",), ("labels_file",), ("num_labels",),
    ("max_sequence_length",), ("inputs",), ("inputs", 0), ("inputs", 0, "name"), ("inputs", 0, "dtype"),
    ("inputs", 0, "shape"), ("outputs",), ("preprocessing",), ("preprocessing", "tokenizer_file"),
    ("preprocessing", "truncation"), ("preprocessing", "padding"), ("preprocessing", "feeds"),
    ("preprocessing", "feeds", "input_ids"), ("preprocessing", "pad_id"), ("preprocessing", "pad_token"),
    ("preprocessing", "pad_type_id"), ("preprocessing", "padding_side"), ("preprocessing", "truncation_side"),
    ("runtime",), ("source",), ("quantization",), ("passed",), ("gates",), ("gates", 0), ("gates", 0, "value"),
    ("gates", 0, "ci95"), ("gates", 0, "threshold"), ("metrics",), ("metrics", "latency"),
    ("metrics", "latency", "build", 0, "p50_ms"), ("metrics", "reference_accuracy"), ("schema_version",),
    ("files",), ("files", "labels.json", "bytes"), ("files", "labels.json", "sha256"), ("files", "labels.json"),
])


def _set(document, path, value):
    node = document
    for key in path[:-1]:
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    if isinstance(node, dict):
        node[str(path[-1])] = value  # JSON object keys are strings
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value


# Values of the right type for some field, so that mutated manifests also get past the type
# checks and into load()'s tokenizer, label and session set-up.
_PLAUSIBLE = st.sampled_from(["left", "right", "ids", "type_ids", "attention_mask", "int32", "int64", "float32", "[PAD]",
                              "[UNK]", "a", 0, 1, 2, 3, 16, 100_000, True, False, "onnx", "text-classification",
                              "tokenizer.json", "labels.json", "model.onnx", "longest", "max_length", "logits",
                              ["batch", "sequence"], {"input_ids": "ids"}, {"input_ids": "ids", "attention_mask": "ids"}])


@st.composite
def manifests(draw):
    manifest = valid_manifest()
    for _ in range(draw(st.integers(1, 3))):
        _set(manifest, draw(_PATHS), draw(_PLAUSIBLE | _SPECIAL | _JSON))
    return bundle_bytes(manifest, members())


_NAMES = st.sampled_from(["model.onnx", "manifest.json", "labels.json", "tokenizer.json", "../evil", "/abs", "a\\b",
                          "C:x", "dir/", "a//b", "./a", "a\nb", "a\0b", "x" * 300, "é", "MODEL.ONNX", ""]) | st.text(max_size=8)


@st.composite
def zip_structures(draw):
    """Zips of drawn members (names, modes, compression), with or without a right manifest."""
    files = dict(members())
    for _ in range(draw(st.integers(0, 3))):
        files[draw(_NAMES)] = draw(st.binary(max_size=32))
    entries = list(files.items())
    if draw(st.booleans()):
        entries.append(("manifest.json", json.dumps(valid_manifest()).encode()))
    if draw(st.booleans()):
        entries.append(draw(st.sampled_from(entries)))  # a duplicate
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    mode = draw(st.sampled_from([0o644, 0o100644, 0o120777, 0o040755, 0o010644, 0]))
    try:
        return zip_bytes(entries, compression, mode)
    except (ValueError, UnicodeError):  # names zipfile itself cannot write
        return zip_bytes(list(files.items())[:3])


@st.composite
def damaged(draw):
    """The valid bundle with bytes overwritten, cut or appended."""
    raw = bytearray(bundle_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        raw[at:at + len(chunk)] = chunk
    how = draw(st.sampled_from(["as is", "truncate", "append", "from end"]))
    if how == "truncate":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif how == "append":
        raw += draw(st.binary(max_size=64))
    elif how == "from end":  # the central directory and end record live in the last bytes
        at = len(raw) - draw(st.integers(1, 120))
        raw[at] = draw(st.integers(0, 255))
    return bytes(raw)


def _with_name_length(raw: bytes, name: str, length: int) -> bytes:
    """``raw`` with the name-length field of ``name``'s local header set to ``length``."""
    at = raw.index(name.encode()) - 30  # the first occurrence is the local header's name, at byte 30 of it
    assert raw[at:at + 4] == b"PK\x03\x04"
    return raw[:at + 26] + length.to_bytes(2, "little") + raw[at + 28:]


def _check_bundle(tmp_path_factory, raw: bytes):
    path = tmp_path_factory.mktemp("bundle") / "x.mcpkg"
    path.write_bytes(raw)
    return check_bundle_file(path)


@pytest.mark.slow
@budget(250)
@given(manifests())
@example(bundle_bytes(manifest_bytes=b'{"schema_version": 1, "files": {"a": {"bytes": ' + b"1" * 5000 + b"}}}"))  # digit limit
@example(bundle_bytes(manifest_bytes=b"[" * 50_000))  # RecursionError, exit 1 before
@example(bundle_bytes({**valid_manifest(), "preprocessing": "x"}))  # inspect: AttributeError before
@example(bundle_bytes({**valid_manifest(), "gates": [{"name": "g", "value": None}]}))  # inspect: format of None
@example(bundle_bytes({**valid_manifest(), "max_sequence_length": -1}))  # tokenizers: OverflowError
@example(bundle_bytes({**valid_manifest(), "preprocessing": {**valid_manifest()["preprocessing"], "pad_type_id": 2 ** 40}}))
@example(bundle_bytes({**valid_manifest(), "preprocessing": {**valid_manifest()["preprocessing"], "pad_id": 10 ** 6}}))
@example(bundle_bytes({**valid_manifest(), "inputs": [{**valid_manifest()["inputs"][0], "dtype": "int32"},
                                                       valid_manifest()["inputs"][1]]}))  # loaded, then ORT failed at predict
def test_manifest_fields(tmp_path_factory, raw):
    _check_bundle(tmp_path_factory, raw)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns when the test writes a duplicate
@budget(200)
@given(zip_structures())
def test_zip_structure(tmp_path_factory, raw):
    _check_bundle(tmp_path_factory, raw)


@pytest.mark.slow
@budget(200)
@given(damaged() | st.binary(max_size=200))
@example(_with_name_length(bundle_bytes(), "manifest.json", 4000))  # zipfile's message quoted 4,000 header bytes
def test_damaged_bytes(tmp_path_factory, raw):
    _check_bundle(tmp_path_factory, raw)


def test_the_tiny_bundle_loads_and_predicts(tmp_path_factory):
    bundle = _check_bundle(tmp_path_factory, bundle_bytes())
    assert isinstance(bundle, Bundle) and bundle.labels == ["neg", "pos"]
    assert bundle.predict(["a film"])[0]["label"] in ("neg", "pos")


@pytest.mark.parametrize("entries, compression, expect", [
    # a deflated member whose declared size is 1000x its compressed size
    ([("manifest.json", b"{}"), ("zeros.bin", b"\0" * (4 << 20))], zipfile.ZIP_DEFLATED, "refusing a possible zip bomb"),
    ([("manifest.json", b"{}"), ("a\nb", b"x")], zipfile.ZIP_STORED, "is not a plain file name"),
])
def test_bombs_and_names_are_refused_before_reading(tmp_path, entries, compression, expect):
    path = tmp_path / "b.mcpkg"
    path.write_bytes(zip_bytes(entries, compression))
    with pytest.raises(BundleError) as err:
        read_bundle(path)
    assert expect in check_one_line(err.value)


def _end_record_at(raw: bytes) -> int:
    return raw.rindex(b"PK\x05\x06")


def test_a_directory_over_the_limits_is_refused_before_zipfile_parses_it(tmp_path):
    raw = bytearray(bundle_bytes())
    end = _end_record_at(raw)
    raw[end + 12:end + 16] = (20 * 1024 ** 2).to_bytes(4, "little")  # the directory's declared size
    path = tmp_path / "b.mcpkg"
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError) as err:
        read_bundle(path)
    assert "-byte directory, over the limits" in check_one_line(err.value)


def test_overlapping_members_are_refused(tmp_path):
    """Two directory entries for the same stored bytes (the overlap zip bomb): together they claim
    more stored bytes than the file holds."""
    raw = bytearray(zip_bytes([("a", b"\0" * 100_000)]))
    end = _end_record_at(raw)
    directory_start = int.from_bytes(raw[end + 16:end + 20], "little")
    entry = bytes(raw[directory_start:end])
    twin = entry[:46] + b"b" + entry[47:]  # same entry, the name "a" -> "b" (name starts at byte 46)
    record = bytearray(raw[end:])
    record[8:10] = record[10:12] = (2).to_bytes(2, "little")
    record[12:16] = (2 * len(entry)).to_bytes(4, "little")
    path = tmp_path / "b.mcpkg"
    path.write_bytes(bytes(raw[:end]) + twin + bytes(record))
    with pytest.raises(BundleError) as err:
        read_bundle(path)
    assert "overlapping members" in check_one_line(err.value)
