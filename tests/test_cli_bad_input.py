"""A corpus of bad inputs through the real CLI. Each must end with exit code 2 (BAD_INPUT), one
line that starts with "error:" and names the problem, no traceback, no --out directory, no
staging directory left beside it, and the input model directory byte-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from conftest import tree_digest
from mcompress.cli import app
from mcompress.core.errors import ExitCode


@dataclass
class Case:
    model: Path  # the model dir (or path) given; hashed before and after
    expect: str  # a fragment the error line must contain
    extra: list[str] = field(default_factory=list)  # more CLI arguments
    out: Path | None = None  # default: <tmp>/outs/build, which must not be created
    out_preexists: bool = False


class Env:
    def __init__(self, tmp_path: Path, make_checkpoint: Callable[..., Path], fast_recipe: Path):
        self.tmp = tmp_path
        self.ckpt = make_checkpoint
        self.fast_recipe = fast_recipe

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def edit_config(self, model: Path, change: Callable[[dict], None]) -> Path:
        config = json.loads((model / "config.json").read_text())
        change(config)
        (model / "config.json").write_text(json.dumps(config))
        return model


def _missing_model_dir(e: Env):
    return Case(e.tmp / "no-such-model", "does not exist")


def _model_is_a_file(e: Env):
    return Case(e.file("model.safetensors", b"\0" * 64), "is not a directory")


def _bracketed_missing_model_dir(e: Env):
    # Rich markup in a path: printed literally, neither swallowed as a style nor a crash.
    return Case(e.tmp / "x[/]y[bold]z", "model directory " + str(e.tmp / "x[/]y[bold]z") + " does not exist")


def _config_missing(e: Env):
    model = e.ckpt()
    (model / "config.json").unlink()
    return Case(model, "has no config.json")


def _config_invalid_json(e: Env):
    model = e.ckpt()
    (model / "config.json").write_text('{"model_type": "bert",')
    return Case(model, "is not valid JSON")


def _config_not_an_object(e: Env):
    model = e.ckpt()
    (model / "config.json").write_text('["bert"]')
    return Case(model, "must hold a JSON object")


def _unsupported_model_type(e: Env):
    return Case(e.edit_config(e.ckpt(), lambda c: c.update(model_type="gpt2")), "model type 'gpt2' is not supported")


def _no_classification_head(e: Env):
    return Case(e.edit_config(e.ckpt(), lambda c: c.update(architectures=["BertModel"])),
                "architecture ['BertModel'] is not supported")


def _remote_code(e: Env):
    return Case(e.edit_config(e.ckpt(), lambda c: c.update(auto_map={"AutoModel": "modeling.MyBert"})),
                "needs trust_remote_code")


def _missing_id2label(e: Env):
    return Case(e.edit_config(e.ckpt(), lambda c: (c.pop("id2label"), c.pop("label2id"))), "id2label must map 0..N-1")


def _id2label_bad_keys(e: Env):
    return Case(e.edit_config(e.ckpt(), lambda c: c.update(id2label={"a": "neg", "b": "pos"})),
                "id2label keys must be integers")


def _weights_missing(e: Env):
    model = e.ckpt()
    (model / "model.safetensors").unlink()
    return Case(model, "has no model.safetensors")


def _pickle_only(e: Env):
    import torch
    from safetensors.torch import load_file

    model = e.ckpt()
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return Case(model, "has only pickle weights (pytorch_model.bin)")


def _truncated_safetensors(e: Env):
    model = e.ckpt()
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return Case(model, "is corrupt or truncated")


def _garbage_safetensors_header(e: Env):
    model = e.ckpt()
    data = bytearray((model / "model.safetensors").read_bytes())
    data[:64] = b"\xff" * 64
    (model / "model.safetensors").write_bytes(bytes(data))
    return Case(model, "is corrupt or truncated")


def _safetensors_without_tensors(e: Env):
    from safetensors.torch import save_file

    model = e.ckpt()
    save_file({}, str(model / "model.safetensors"))
    return Case(model, "holds no tensors")


def _tokenizer_missing(e: Env):
    model = e.ckpt()
    for name in ("tokenizer.json", "vocab.txt"):
        (model / name).unlink()
    return Case(model, "has no tokenizer files")


def _eval_empty(e: Env):
    return Case(e.ckpt(), "is empty", ["--eval-data", str(e.file("eval.csv", ""))])


def _eval_not_utf8(e: Env):
    return Case(e.ckpt(), "is not UTF-8 text", ["--eval-data", str(e.file("eval.csv", b"text,label\nna\xefve,pos\n"))])


def _eval_missing_text_column(e: Env):
    return Case(e.ckpt(), "has no text column 'text'",
                ["--eval-data", str(e.file("eval.jsonl", '{"sentence": "fine", "label": "pos"}\n'))])


def _eval_unknown_label(e: Env):
    return Case(e.ckpt(), "label 'positive' is not in the checkpoint's label map",
                ["--eval-data", str(e.file("eval.csv", "text,label\ngood,pos\nbad,positive\n"))])


def _eval_unsupported_extension(e: Env):
    return Case(e.ckpt(), "unsupported extension '.xlsx'", ["--eval-data", str(e.file("eval.xlsx", "text,label\na,pos\n"))])


def _eval_missing(e: Env):
    return Case(e.ckpt(), "does not exist", ["--eval-data", str(e.tmp / "missing.csv")])


def _eval_dir_without_test_split(e: Env):
    split_dir = e.tmp / "data"
    split_dir.mkdir()
    (split_dir / "train.jsonl").write_text('{"text": "a", "label": "pos"}\n')
    return Case(e.ckpt(), "without test.jsonl", ["--eval-data", str(split_dir)])


def _no_eval_data_no_splits(e: Env):
    import shutil

    model = e.ckpt()
    shutil.rmtree(model / "splits")
    return Case(model, "no evaluation data")


def _calib_not_utf8(e: Env):
    return Case(e.ckpt(), "is not UTF-8 text", ["--calib-data", str(e.file("calib.csv", b"text\n\xff\xfe\n"))])


def _recipe_unknown_key(e: Env):
    return Case(e.ckpt(), "unknown key 'quantize.mdoe'", ["--recipe", str(e.file("r.yaml", "quantize:\n  mdoe: auto\n"))])


def _recipe_wrong_type(e: Env):
    return Case(e.ckpt(), "'max_length'", ["--recipe", str(e.file("r.yaml", "max_length: long\n"))])


def _recipe_invalid_yaml(e: Env):
    return Case(e.ckpt(), "is not valid YAML", ["--recipe", str(e.file("r.yaml", "gates: {max_drop: [1\n"))])


def _recipe_missing(e: Env):
    return Case(e.ckpt(), "recipe file", ["--recipe", str(e.tmp / "missing.yaml")])


def _bad_quantize_override(e: Env):
    return Case(e.ckpt(), "'quantize.mode'", ["--quantize", "int4"])


def _bad_eval_examples_override(e: Env):
    return Case(e.ckpt(), "'eval.max_examples'", ["--eval-examples", "0"])


def _unknown_target(e: Env):
    return Case(e.ckpt(), "unknown target 'tpu'", ["--target", "tpu"])


def _max_length_above_positions(e: Env):
    return Case(e.ckpt(), "exceeds the model's max_position_embeddings 512",
                ["--recipe", str(e.file("r.yaml", "max_length: 1024\n"))])


def _out_exists(e: Env):
    out = e.tmp / "outs" / "build"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("previous build")
    (out / "sub").mkdir()
    (out / "sub" / "model.onnx").write_bytes(b"old")
    return Case(e.ckpt(), "already exists", out=out, out_preexists=True)


def _out_is_model_dir(e: Env):
    model = e.ckpt()
    return Case(model, "would overwrite the input", out=model, out_preexists=True)


def _out_inside_model_dir(e: Env):
    model = e.ckpt()
    return Case(model, "would overwrite the input", out=model / "build")


def _out_is_default_splits_with_force(e: Env):
    # The default eval data is MODEL_DIR/splits: --force must not replace it with the build.
    model = e.ckpt()
    return Case(model, "would overwrite the input", ["--force"], out=model / "splits", out_preexists=True)


def _out_is_eval_data(e: Env):
    data = e.file("eval.jsonl", '{"text": "a", "label": "pos"}\n')
    return Case(e.ckpt(), "would overwrite the input", ["--eval-data", str(data), "--force"], out=data, out_preexists=True)


def _out_under_a_file(e: Env):
    # Missing parents of --out are created, but not through a file.
    return Case(e.ckpt(), "which is not a directory", out=e.file("not-a-dir", "x") / "sub" / "build")


CASES = {f.__name__.lstrip("_"): f for f in [
    _missing_model_dir, _model_is_a_file, _bracketed_missing_model_dir, _config_missing, _config_invalid_json,
    _config_not_an_object, _unsupported_model_type, _no_classification_head, _remote_code, _missing_id2label,
    _id2label_bad_keys, _weights_missing, _pickle_only, _truncated_safetensors, _garbage_safetensors_header,
    _safetensors_without_tensors, _tokenizer_missing, _eval_empty, _eval_not_utf8, _eval_missing_text_column,
    _eval_unknown_label, _eval_unsupported_extension, _eval_missing, _eval_dir_without_test_split,
    _no_eval_data_no_splits, _calib_not_utf8, _recipe_unknown_key, _recipe_wrong_type, _recipe_invalid_yaml,
    _recipe_missing, _bad_quantize_override, _bad_eval_examples_override, _unknown_target,
    _max_length_above_positions, _out_exists, _out_is_model_dir, _out_inside_model_dir, _out_is_default_splits_with_force,
    _out_is_eval_data,
    _out_under_a_file,
]}


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _check_one_error_line(output: str, expect: str) -> None:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert expect in lines[0], output


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, checkpoint_copy, fast_recipe):
    case = CASES[name](Env(tmp_path, checkpoint_copy, fast_recipe))
    out = case.out
    if out is None:
        out = tmp_path / "outs" / "build"
        out.parent.mkdir(exist_ok=True)
    args = ["run", str(case.model), "--out", str(out)] + case.extra
    if "--recipe" not in case.extra:
        args += ["--recipe", str(fast_recipe)]
    model_before, out_before = tree_digest(case.model), tree_digest(out)

    code, output = _invoke(args)

    assert code == ExitCode.BAD_INPUT, output
    _check_one_error_line(output, case.expect)
    assert tree_digest(case.model) == model_before
    if case.out_preexists:
        assert out_before and tree_digest(out) == out_before  # untouched
    else:
        assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_bad_input_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", ["unsupported_model_type", "bracketed_missing_model_dir"])
def test_bad_input_in_a_real_process(name, tmp_path, checkpoint_copy, fast_recipe):
    """The installed entry point, not the test runner: exit status and stderr of a real process."""
    case = CASES[name](Env(tmp_path, checkpoint_copy, fast_recipe))
    out = tmp_path / "build"
    proc = subprocess.run([sys.executable, "-m", "mcompress.cli", "run", str(case.model), "--out", str(out),
                           "--recipe", str(fast_recipe)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "60"})  # narrower than the message
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    _check_one_error_line(proc.stderr, case.expect)
    assert not proc.stdout.strip()
    assert not out.exists()
