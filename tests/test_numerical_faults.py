"""NaN/Inf where finite numbers are needed: in a checkpoint's weights (exit 2, the tensor named),
in logits during evaluation (exit 1, the runner and the first offending example named), and in
static quantization's calibration ranges (the tensor named)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mcompress.calibration.datasets import LabelledTexts, load_labelled_texts
from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
from mcompress.cli import app
from mcompress.core.errors import ExitCode, NumericalFault
from mcompress.tasks import evaluate
from mcompress.core.pass_base import PassContext
from mcompress.passes.export.onnx_export import ExportOnnx
from mcompress.passes.quantize.ort_int8 import quantize_static_qdq
from mcompress.core.recipe import load_recipe
from mcompress.core.state import ModelKind, ModelState
from mcompress.targets import get_target

QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def _edit_weights(model: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    change(tensors)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})


def _run(model: Path, out: Path, recipe: Path, *extra: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["run", str(model), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe), "--no-cache", *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("value, word", [(math.nan, "NaN"), (math.inf, "Inf"), (-math.inf, "Inf")])
def test_non_finite_weight_is_bad_input_naming_the_tensor(checkpoint_copy, fast_recipe, tmp_path, value, word):
    model = checkpoint_copy()
    _edit_weights(model, lambda t: t[QUERY].__setitem__((3, 5), value))
    code, lines = _run(model, tmp_path / "build", fast_recipe)
    assert code == ExitCode.BAD_INPUT, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: weights of '{QUERY}' contain {word} (1 of 1024 values)"), lines
    assert not (tmp_path / "build").exists()


def test_non_finite_weight_in_pickle_weights(checkpoint_copy, fast_recipe, tmp_path):
    import torch
    from safetensors.torch import load_file

    model = checkpoint_copy()
    tensors = load_file(model / "model.safetensors")
    tensors["classifier.bias"][1] = math.nan
    torch.save(tensors, model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    code, lines = _run(model, tmp_path / "build", fast_recipe, "--allow-pickle")
    assert code == ExitCode.BAD_INPUT and len(lines) == 1, lines
    assert "weights of 'classifier.bias' contain NaN" in lines[0] and "pytorch_model.bin" in lines[0]


def test_logits_that_overflow_stop_the_run_naming_the_runner(checkpoint_copy, fast_recipe, tmp_path):
    # Finite weights whose logits overflow float32: the pooler saturates tanh at 1 and the
    # classifier sums 32 weights of 3e38.
    def overflow(t):
        t["bert.pooler.dense.weight"].zero_()
        t["bert.pooler.dense.bias"].fill_(100.0)
        t["classifier.weight"].fill_(3e38)

    model = checkpoint_copy()
    _edit_weights(model, overflow)
    code, lines = _run(model, tmp_path / "build", fast_recipe)
    assert code == ExitCode.INTERNAL and len(lines) == 1, lines
    assert lines[0].startswith("error: pytorch-fp32 (PyTorch FP32) produced non-finite logits (Inf) for example 0 of "), lines
    assert "(24 of 24 examples affected)" in lines[0]
    assert not (tmp_path / "build").exists()


class _PoisonRunner:
    """Logits 0 everywhere, NaN for texts holding the token of `poison`."""

    name = "fake-runner"
    input_names = ["input_ids", "attention_mask"]

    def __init__(self, poison_id: int):
        self.poison_id = poison_id

    def logits(self, inputs):
        ids = inputs["input_ids"]
        out = np.zeros((len(ids), 2), dtype=np.float32)
        out[(ids == self.poison_id).any(axis=1)] = np.nan
        return out


def test_first_offending_example_is_named_in_data_order(tiny_checkpoint):
    _, tokenizer = load_model_and_tokenizer(inspect_checkpoint(tiny_checkpoint))
    poison = tokenizer.convert_tokens_to_ids("banana")
    # Batches run shortest first; the index reported is the position in the data.
    texts = ["a rather long first sentence that is fine", "ok", "the banana one, longer than the next", "banana"]
    data = LabelledTexts(texts, [0, 1, 0, 1], "inline.jsonl")
    with pytest.raises(NumericalFault) as info:
        evaluate(_PoisonRunner(poison), tokenizer, data, 32, batch_size=2, what="after quantize")
    assert info.value.one_line().startswith(
        "fake-runner (after quantize) produced non-finite logits (NaN) for example 2 of inline.jsonl (2 of 4 examples affected).")
    assert evaluate(_PoisonRunner(-1), tokenizer, data, 32).accuracy == 0.5  # finite logits pass


@pytest.mark.filterwarnings("ignore:All-NaN")  # onnxruntime's calibrator takes nanmin/nanmax of all-NaN outputs
def test_non_finite_calibration_range_names_the_tensor(tiny_checkpoint, fast_recipe, tmp_path):
    import onnx
    from onnx import numpy_helper

    ckpt = inspect_checkpoint(tiny_checkpoint)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    splits = tiny_checkpoint / "splits"
    train = load_labelled_texts(splits, ckpt.label2id, split="train")
    ctx = PassContext(load_recipe(fast_recipe), get_target("onnx-cpu"), tmp_path, train,
                      load_labelled_texts(splits, ckpt.label2id, split="validation"), 1.0)
    exported = ExportOnnx().call(ModelState(ModelKind.TORCH, ckpt, tokenizer, torch_model=model), ctx).state
    # NaN planted after export, past the checkpoint's check: only calibration can see it.
    graph = onnx.load(str(exported.onnx_path))
    matmul_weights = {n.input[1] for n in graph.graph.node if n.op_type == "MatMul"}
    init = next(i for i in graph.graph.initializer if i.name in matmul_weights)
    values = numpy_helper.to_array(init).copy()
    values[:] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    poisoned = tmp_path / "poisoned.onnx"
    onnx.save(graph, str(poisoned))
    (tmp_path / "q").mkdir()
    with pytest.raises(NumericalFault, match=r"calibration range of tensor '.+' is not finite"):
        quantize_static_qdq(poisoned, tmp_path / "q" / "model.onnx", exported, ctx)
