"""Fuzzing the recipe loader (core/recipe.py load_recipe): YAML of every shape and type, YAML
bombs (aliases of aliases), deep nesting, odd encodings. Each input is a Recipe or one line."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import example, given, strategies as st

from fuzz_support import budget
from fuzz_targets import check_recipe_file
from mcompress.core import recipe as recipe_module
from mcompress.core.errors import InputError
from mcompress.core.recipe import load_recipe

# Real keys (so documents get past the top level and into the sections) and junk.
_KEYS = st.sampled_from(["name", "seed", "max_length", "quantize", "mode", "static", "calibration_examples",
                         "gates", "max_drop", "metric", "after", "latency", "batch_sizes", "sequence_lengths",
                         "prune", "keep_ratio", "distill", "epochs", "tensorrt", "min_batch", "max_batch",
                         "openvino", "eval", "max_examples", "export", "opset", "<<"]) | st.text(max_size=6)
_SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() |
            st.sampled_from(["auto", "dynamic", "static", "data", "1e400", "nan", ".inf", "0x1F", "1_000", "2001-13-45",
                             "~", "yes", "no", "!!python/object:os.system", "*x", "&x"]) | st.text(max_size=8))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
                       max_leaves=20)
_DOCUMENTS = st.dictionaries(_KEYS, _VALUES, max_size=6) | _VALUES


@st.composite
def bombs(draw):
    """A billion-laughs document: each level is a list of `width` aliases of the level below."""
    depth, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth + 1)]
    lines.append(f"name: *a{depth}")
    return "\n".join(lines)


_YAML_TEXT = st.one_of(
    _DOCUMENTS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    _DOCUMENTS.map(lambda d: yaml.safe_dump(d, default_flow_style=True)),
    bombs(),
    st.integers(1, 200).map(lambda n: "gates: " + "[" * n + "]" * n),
    st.integers(1, 200).map(lambda n: "gates: " + "{a: " * n + "1" + "}" * n),
    st.text(max_size=200),
)


def _write(tmp_path_factory, data: bytes):
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_bytes(data)
    return path


@pytest.mark.slow
@budget(300)
@given(_YAML_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")) | st.binary(max_size=200))
@example(b"seed: " + b"9" * 5000)  # an int over Python's digit limit: ValueError, exit 1, before
@example(b"name: 2001-13-45")  # !!timestamp with month 13: ValueError from datetime
@example("\n".join(['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
                   + ["gates: {after: *a9}"]).encode())  # billion laughs: pydantic walked 9**9 items
@example(b"gates: " + b"[" * 5000 + b"]" * 5000)  # RecursionError in the composer
@example("name: caf\xe9".encode("latin-1"))  # not UTF-8: UnicodeDecodeError, exit 1, before
@example(b"\xef\xbb\xbfname: bom")
@example(b"seed: -1")  # torch.manual_seed refuses it mid-run
@example(b"name: [" + b"x, " * 20_000 + b"x]")  # a huge value echoed whole in the error line
def test_recipe_loader_accepts_or_refuses_in_one_line(tmp_path_factory, data):
    check_recipe_file(_write(tmp_path_factory, data))


@budget(100)
@given(st.fixed_dictionaries({}, optional={
    "seed": st.integers(0, 2 ** 32 - 1), "max_length": st.integers(8, 4096),
    "gates": st.fixed_dictionaries({}, optional={"max_drop": st.floats(0, 100), "drop_type": st.sampled_from(["absolute", "relative"])}),
    "quantize": st.fixed_dictionaries({}, optional={"mode": st.sampled_from(["auto", "dynamic", "static", "none"])}),
}), st.booleans())
def test_valid_recipes_load_with_their_values(tmp_path_factory, document, anchors):
    """Valid recipes (in block or flow style, with an anchor or not) load with
    exactly the values written: the limits must not refuse real recipes."""
    text = yaml.safe_dump(document, default_flow_style=anchors)
    if anchors and "gates" in document:  # the gates section under an anchor, used through an alias
        rest = {k: v for k, v in document.items() if k != "gates"}
        text = (f"gates: &g {yaml.safe_dump(document['gates'], default_flow_style=True).strip()}\n"
                f"{yaml.safe_dump(rest) if rest else ''}") + "sensitivity: {}\n"
    recipe = load_recipe(_write(tmp_path_factory, text.encode()))
    for key, value in document.items():
        got = getattr(recipe, key)
        if isinstance(value, dict):
            assert {k: getattr(got, k) for k in value} == value
        else:
            assert got == value


def test_anchors_and_aliases_within_the_limits_load(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("gates: &g {max_drop: 0.5}\nlatency: {batch_sizes: &b [1, 8]}\n"
                    "prune: {keep_ratio: 0.5}\ndistill: {epochs: 1}\n")
    assert load_recipe(path).gates.max_drop == 0.5


@pytest.mark.parametrize("name, value, text, expect", [
    ("MAX_RECIPE_BYTES", 10, "name: a-long-recipe-name", "over the limit of 10 bytes"),
    ("MAX_YAML_DEPTH", 3, "gates: {after: [[x]]}", "nested deeper than 3 levels"),
    ("MAX_YAML_ALIASES", 1, "name: &n x\nseed: 1\nx: [*n, *n]", "more than 1 aliases"),
    ("MAX_YAML_NODES", 10, "gates: {after: [a, b, c, d, e, f, g, h, i, j]}", "more than 10 values"),
])
def test_each_yaml_limit_refuses_with_its_name(tmp_path, monkeypatch, name, value, text, expect):
    monkeypatch.setattr(recipe_module, name, value)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=expect):
        load_recipe(path)
