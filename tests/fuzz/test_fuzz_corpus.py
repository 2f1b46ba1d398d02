"""Replays every input kept in tests/fuzz/corpus/<target>/ (inputs that found a bug, from the
hypothesis campaigns and the atheris harnesses in fuzz/) through its target's check. A file's
name says how it is used:

- data/NAME.SUFFIX: a data file (the suffix picks the reader);
- recipe/NAME.yaml: a recipe file;
- checkpoint/NAME.config.json or NAME.safetensors: that file in an otherwise valid tiny checkpoint;
- bundle/NAME.mcpkg: a bundle file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz_targets import (CONFIG, check_bundle_file, check_checkpoint_dir, check_data_file, check_recipe_file,
                          safetensors_bytes, valid_weights, write_checkpoint)

CORPUS = Path(__file__).parent / "corpus"


def replay(target: str, name: str, data: bytes, folder: Path):
    """Run one corpus input through its target's check, in ``folder`` (empty)."""
    if target == "checkpoint":
        config = data if name.endswith(".config.json") else json.dumps(CONFIG).encode()
        weights = data if name.endswith(".safetensors") else safetensors_bytes(*valid_weights())
        return check_checkpoint_dir(write_checkpoint(folder / "model", config, weights))
    path = folder / (name if target != "data" else "input" + Path(name).suffix)
    path.write_bytes(data)
    check = {"data": check_data_file, "recipe": check_recipe_file, "bundle": check_bundle_file}[target]
    return check(path)


CASES = sorted((p.parent.name, p.name) for p in CORPUS.glob("*/*") if p.is_file() and p.name != "README.md")


@pytest.mark.parametrize("target, name", CASES, ids=[f"{t}/{n}" for t, n in CASES])
def test_corpus_input_is_accepted_or_refused_in_one_line(tmp_path, target, name):
    replay(target, name, (CORPUS / target / name).read_bytes(), tmp_path)


def test_every_target_has_a_corpus():
    assert {t for t, _ in CASES} >= {"data", "recipe", "checkpoint", "bundle"}
