"""Generic code never branches on a target's name or a model file's suffix: targets answer for
themselves (Target.build, Target.settings, Target.runner) and model formats know their files
(compressor/core/formats.py). This test reads the source of everything outside those two places."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("compressor", "passes")
# Where target names and model-file suffixes belong.
EXEMPT = ("compressor/core/formats.py", "compressor/engines/")
TARGET_NAMES = {"onnx-cpu", "openvino-cpu", "tensorrt"}
FORMAT_NAMES = {"onnx", "openvino-ir", "tensorrt-engine"}  # core.formats names, as a manifest records them
MODEL_SUFFIXES = (".onnx", ".xml", ".bin", ".engine", ".plan", ".trt", ".data")
IN_MEMORY_KINDS = {"TORCH"}  # a ModelKind that is not a file format may be tested


def _strings(node: ast.AST) -> list[str]:
    """String constants in ``node``, also inside tuple/list/set literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def _is_model_suffix(text: str) -> bool:
    return text.lower().endswith(MODEL_SUFFIXES)


def _file_kind(node: ast.AST) -> str | None:
    """``X`` for ``ModelKind.X`` where X is a file format's kind."""
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ModelKind"
            and node.attr not in IN_MEMORY_KINDS):
        return node.attr
    return None


def _problems(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        found = [f"compares with target name {s!r}" for o in operands for s in _strings(o) if s in TARGET_NAMES]
        found += [f"compares with format name {s!r}" for o in operands for s in _strings(o) if s in FORMAT_NAMES]
        found += [f"compares with model file name {s!r}" for o in operands for s in _strings(o) if _is_model_suffix(s)]
        found += [f"branches on ModelKind.{k}" for o in operands if (k := _file_kind(o))]
        return found
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "endswith", "with_suffix", "with_name"):
        return [f"{node.func.attr}({s!r})" for a in node.args for s in _strings(a) if _is_model_suffix(s)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [f"appends {s!r} to a name" for s in _strings(node.right) if _is_model_suffix(s)]
    return []


def find_branches(source: str, name: str = "<source>") -> list[str]:
    """``name:line: what`` for every target-name or model-suffix test in ``source``."""
    return [f"{name}:{node.lineno}: {problem}" for node in ast.walk(ast.parse(source)) for problem in _problems(node)]


def scanned_files(root: Path) -> list[Path]:
    files = [p for top in SCANNED for p in sorted((root / top).rglob("*.py"))]
    return [p for p in files if not p.relative_to(root).as_posix().startswith(EXEMPT)]


def test_generic_code_has_no_target_or_suffix_branches():
    files = scanned_files(REPO)
    assert len(files) > 30  # the scan reads the package, not an empty folder
    found = [hit for p in files for hit in find_branches(p.read_text(encoding="utf-8"), p.relative_to(REPO).as_posix())]
    assert found == [], "branches on a target or a file suffix outside targets/ and core/formats.py:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    'if target.name == "openvino-cpu": pass',
    'if name in ("onnx-cpu", "tensorrt"): pass',
    'if model_file.suffix == ".xml": pass',
    'ok = path.name.endswith(".onnx")',
    'weights = xml.with_suffix(".bin")',
    'extra = path.with_name(path.name + ".data")',
    'if report["artifact"]["model_file"] == "model.xml": pass',
    'if state.kind is ModelKind.OPENVINO: pass',
    'if manifest.get("model_format", "onnx") == "openvino-ir": pass',
])
def test_the_scan_finds_each_kind_of_branch(snippet):
    assert find_branches(snippet)


@pytest.mark.parametrize("snippet", [
    'if state.kind is ModelKind.TORCH: pass',  # in memory, not a file format
    'if ckpt.weights_file.suffix == ".safetensors": pass',  # a checkpoint's weights, not a model format
    'if out_file.suffix != ".mcpkg": pass',  # a bundle's name
    'accepts = (ModelKind.ONNX,)',  # a pass declaring what it reads is data, not a branch
])
def test_the_scan_lets_other_tests_be(snippet):
    assert find_branches(snippet) == []
