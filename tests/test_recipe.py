"""Recipes: the default loads, every misspelling or bad value is an InputError that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcompress.core.errors import ExitCode, InputError
from mcompress.core.recipe import Recipe, load_recipe, recipes_dir


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_default_recipe_loads_and_matches_the_model_defaults():
    recipe = load_recipe(None)
    assert recipe == load_recipe(recipes_dir() / "ptq.yaml")
    # ptq.yaml spells out the defaults: it must not drift from the pydantic model's.
    assert recipe == Recipe()
    assert recipe.quantize.mode == "auto"
    assert recipe.gates.max_drop == 1.0
    assert recipe.latency.sequence_lengths == [128, "data"]


def test_fast_recipe_fixture_is_valid(fast_recipe):
    recipe = load_recipe(fast_recipe)
    assert recipe.latency.iterations == 3 and recipe.latency.warmup == 1
    assert recipe.latency.batch_sizes == [1] and recipe.latency.sequence_lengths == [16]
    assert recipe.quantize.static.calibration_examples == 8


@pytest.mark.parametrize("text, key", [
    ("nmae: ptq\n", "nmae"),
    ("quantize:\n  mdoe: auto\n", "quantize.mdoe"),
    ("quantize:\n  static:\n    calibraton_method: minmax\n", "quantize.static.calibraton_method"),
    ("latency:\n  iteratons: 5\n", "latency.iteratons"),
])
def test_unknown_key_is_named(tmp_path, text, key):
    with pytest.raises(InputError) as info:
        load_recipe(_write(tmp_path, text))
    assert f"unknown key '{key}'" in str(info.value)
    assert info.value.exit_code == ExitCode.BAD_INPUT


@pytest.mark.parametrize("text, key", [
    ("max_length: many\n", "max_length"),
    ("max_length: 2\n", "max_length"),
    ("max_length: 100000\n", "max_length"),
    ("gates:\n  max_drop: -1\n", "gates.max_drop"),
    ("quantize:\n  mode: fp4\n", "quantize.mode"),
    ("export:\n  opset: 9\n", "export.opset"),
    ("latency:\n  iterations: 1\n", "latency.iterations"),
    ("latency:\n  batch_sizes: [0]\n", "latency"),
    ("latency:\n  sequence_lengths: [1]\n", "latency"),
    ("eval:\n  batch_size: [32]\n", "eval.batch_size"),
])
def test_wrong_type_or_range_is_named(tmp_path, text, key):
    with pytest.raises(InputError) as info:
        load_recipe(_write(tmp_path, text))
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize("text", ["max_length: [128\n", "- a\n- b\n", "just a string\n"])
def test_not_a_yaml_mapping(tmp_path, text):
    with pytest.raises(InputError, match="YAML"):
        load_recipe(_write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_empty_recipe_is_the_default(tmp_path):
    assert load_recipe(_write(tmp_path, "")) == Recipe()


def test_with_overrides_applies_dotted_keys_and_skips_none():
    base = Recipe()
    recipe = base.with_overrides(**{"gates.max_drop": 0.5, "quantize.mode": "static", "max_length": 64,
                                    "quantize.static.calibration_examples": 3, "gates.min_speedup": None})
    assert recipe.gates.max_drop == 0.5
    assert recipe.quantize.mode == "static"
    assert recipe.max_length == 64
    assert recipe.quantize.static.calibration_examples == 3
    assert recipe.gates.min_speedup is None
    assert base.gates.max_drop == 1.0 and base.quantize.mode == "auto"  # the original is untouched


def test_with_overrides_validates():
    with pytest.raises(InputError, match="quantize.mode"):
        Recipe().with_overrides(**{"quantize.mode": "int4"})
    with pytest.raises(InputError, match="gates.max_drop"):
        Recipe().with_overrides(**{"gates.max_drop": -0.1})
