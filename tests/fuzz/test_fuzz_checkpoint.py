"""Fuzzing the checkpoint inspector (core/checkpoint.py inspect_checkpoint): config.json fields of
the wrong type, label maps whose id2label and label2id disagree or whose ids are not 0..N-1,
safetensors headers that lie about dtypes, shapes, sizes or offsets. Each input is a Checkpoint
whose label map is consistent and whose weights safetensors can read, or one line."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import example, given, strategies as st

from fuzz_support import budget
from fuzz_targets import CONFIG, TENSORS, check_checkpoint_dir, safetensors_bytes, valid_weights, write_checkpoint
from mcompress.core.checkpoint import inspect_checkpoint
from mcompress.core.errors import InputError

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)
_IDS = st.one_of(st.integers(-2, 4).map(str), st.sampled_from(["00", "1.0", " 1", "²", "٣", "x", ""]))
_NAMES = st.sampled_from(["neg", "pos", "O", "B-PER", "I-PER", "", " ", "neg "]) | _JSON
_LABEL_MAPS = st.tuples(
    st.dictionaries(_IDS, _NAMES, max_size=4) | _JSON,
    st.none() | st.dictionaries(st.sampled_from(["neg", "pos", "O", "B-PER", "x"]) | st.text(max_size=3),
                                st.integers(-1, 4) | _IDS | _JSON, max_size=4) | _JSON)


@st.composite
def configs(draw):
    config = dict(CONFIG)
    for key in draw(st.lists(st.sampled_from(sorted(CONFIG) + ["pruned_heads", "auto_map", "dim", "n_heads"]), max_size=3)):
        config[key] = draw(_JSON | st.sampled_from([0, -1, 4, 2, 10 ** 12, True, "4", 4.0, ["BertForTokenClassification"],
                                                    "distilbert", {"0": [0]}]))
    if draw(st.booleans()):
        config["id2label"], config["label2id"] = draw(_LABEL_MAPS)
        if config["label2id"] is None:
            del config["label2id"]
        if config.get("id2label") and isinstance(config["id2label"], dict) and draw(st.booleans()):
            config["architectures"] = ["BertForTokenClassification"]
    return config


@st.composite
def lying_headers(draw):
    """A safetensors file whose header entries (dtype, shape, offsets) and data length are drawn,
    starting from a valid file and changing a few things."""
    header, data = valid_weights()
    names = list(TENSORS)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names + ["__metadata__", "extra"]))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
        value = draw(st.sampled_from([["F16"], "F64", "BOOL", "F4", "Q8", [10 ** 15, 4], [0, 4], [-1, 4], [2, 2, 2, 2, 2, 2, 2, 2, 2],
                                      [0, 10 ** 12], [0, 0], [4, 2], [0, 160], [160, 0], [0, 32], 7, None]) | _JSON)
        if field == "entry" or name not in header:
            header[name] = value
        elif isinstance(header[name], dict):
            header[name][field] = value
    data = draw(st.sampled_from([data, data[:-4], data + b"\0" * 4, b""]))
    raw = safetensors_bytes(header, data)
    if draw(st.integers(0, 4)) == 0:  # a length prefix that lies
        raw = struct.pack("<Q", draw(st.sampled_from([0, 1, len(raw), 2 ** 63, 100_000_001]))) + raw[8:]
    return raw


def _check(tmp_path_factory, config, weights: bytes):
    return check_checkpoint_dir(write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", config, weights))


@pytest.mark.slow
@budget(300)
@given(configs())
@example({**CONFIG, "hidden_size": "4"})  # int("4x") / int(None): exit 1 before
@example({**CONFIG, "architectures": 5})  # iterating an int: TypeError, exit 1 before
@example({**CONFIG, "id2label": ["neg", "pos"]})  # a list: AttributeError, exit 1 before
@example({**CONFIG, "label2id": {"neg": 1, "pos": 0}})  # disagrees with id2label: accepted silently before
@example({**CONFIG, "id2label": {"0": "neg", "1": "neg"}})  # two ids, one name: label2id lost one silently
@example({**CONFIG, "id2label": {"0": "neg", "1": {"x": 1}}})  # a dict as a label name: str() of it before
@example({**CONFIG, "id2label": {"0": "neg", "1": "pos", "2": "mid"}, "label2id": {"neg": 0, "pos": 1, "mid": 2}})
def test_configs_are_accepted_consistent_or_refused(tmp_path_factory, config):
    _check(tmp_path_factory, config, safetensors_bytes(*valid_weights()))


@pytest.mark.slow
@budget(300)
@given(lying_headers() | st.binary(max_size=64))
@example(safetensors_bytes({"classifier.weight": {"dtype": "F32", "shape": [10 ** 9, 10 ** 9], "data_offsets": [0, 16]}}, b"\0" * 16))
@example(b"\xff" * 8 + b"{}")
def test_safetensors_headers_that_lie_are_refused(tmp_path_factory, weights):
    _check(tmp_path_factory, CONFIG, weights)


@budget(100)
@given(st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()))
@example(b'{"model_type": "bert", "hidden_size": ' + b"1" * 5000 + b"}")  # over int's digit limit: exit 1 before
@example(b"[" * 100_000)  # RecursionError before
@example(b"\xef\xbb\xbf" + json.dumps(CONFIG).encode())  # a BOM
def test_config_bytes(tmp_path_factory, raw):
    _check(tmp_path_factory, raw, safetensors_bytes(*valid_weights()))


def test_a_valid_tiny_checkpoint_is_accepted(tmp_path):
    ckpt = inspect_checkpoint(write_checkpoint(tmp_path / "m", CONFIG, safetensors_bytes(*valid_weights())))
    assert ckpt.id2label == {0: "neg", 1: "pos"} and ckpt.hidden_size == 4


@pytest.mark.parametrize("change, expect", [
    ({"label2id": {"neg": 1, "pos": 0}}, "label2id disagrees with id2label (label2id['neg'] is 1, id2label says 0)"),
    ({"id2label": {"0": "neg", "1": "neg"}}, "gives the label 'neg' to more than one id"),
    ({"id2label": {"0": "neg", "2": "pos"}}, "id2label must map 0..N-1"),
    ({"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}, "the classifier has 2 outputs"),
    ({"vocab_size": 11}, "embeddings.word_embeddings.weight has shape [10, 4]"),
    ({"hidden_size": "4"}, "hidden_size is '4'; it must be a whole number"),
])
def test_label_map_and_shape_lies_are_named(tmp_path, change, expect):
    root = write_checkpoint(tmp_path / "m", {**CONFIG, **change}, safetensors_bytes(*valid_weights()))
    with pytest.raises(InputError) as err:
        inspect_checkpoint(root)
    assert expect in err.value.one_line()
