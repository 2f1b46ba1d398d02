"""The openvino-cpu target on the tiny checkpoint: ONNX -> OpenVINO IR with parity, NNCF INT8
(FakeQuantize on the MatMuls) whose accuracy stays within tolerance of the onnx-cpu INT8 build,
NNCF accuracy control reverting operations to float when the budget is tight, the CLI build and
its bundle, cpu-auto, and the clear failure without openvino installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from typer.testing import CliRunner  # noqa: E402

from mcompress.calibration.datasets import LabelledTexts, tokenize  # noqa: E402
from mcompress.cli import app  # noqa: E402
from mcompress.errors import ExitCode, InputError  # noqa: E402
from mcompress.evaluation import evaluate  # noqa: E402
from mcompress.pass_base import PassContext  # noqa: E402
from mcompress.passes.convert.openvino_ir import ConvertOpenVINO  # noqa: E402
from mcompress.passes.export.onnx_export import ExportOnnx  # noqa: E402
from mcompress.passes.quantize.nncf_ptq import QuantizeNNCF, quantized_operations  # noqa: E402
from mcompress.passes.quantize.ort_int8 import QuantizeInt8  # noqa: E402
from mcompress.state import ModelKind, ModelState  # noqa: E402
from mcompress.targets import get_target  # noqa: E402

from conftest import ort_logits  # noqa: E402

# NNCF INT8 on OpenVINO vs ONNX Runtime INT8 (onnx-cpu), tiny model, 48 validation + test examples:
# accuracies within this many points, and INT8 vs FP32 predictions agree on at least this fraction.
MAX_ACCURACY_GAP_POINTS = 100 * 3 / 48  # three examples
MIN_AGREEMENT = 0.9
IR_PARITY_ATOL = 1e-4  # FP32 IR on the CPU plugin (f32) vs the ONNX graph on ONNX Runtime


def _context(setup, work_dir, target="openvino-cpu", selection=None, **overrides) -> PassContext:
    recipe = setup["recipe"].with_overrides(**{"openvino.calibration_examples": 40, **overrides})
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(recipe, get_target(target), work_dir, setup["train"], selection or setup["validation"], 1.0)


def _both_splits(setup) -> LabelledTexts:
    val, test = setup["validation"], setup["test"]
    return LabelledTexts(val.texts + test.texts, list(val.labels) + list(test.labels), "validation+test")


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    state = ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"])
    return ExportOnnx().call(state, _context(setup, tmp_path_factory.mktemp("ov-export")))


@pytest.fixture(scope="module")
def converted(setup, exported, tmp_path_factory):
    return ConvertOpenVINO().call(exported.state, _context(setup, tmp_path_factory.mktemp("ov-convert")))


def test_pipeline_and_recipe_rules(setup):
    target = get_target("openvino-cpu")
    assert [p.name for p in target.pipeline(setup["recipe"])] == ["export", "convert", "quantize"]
    assert target.capabilities.quantization_modes == ("static",)
    with pytest.raises(InputError, match="cannot run quantize.mode 'dynamic'"):
        target.validate_recipe(setup["recipe"].with_overrides(**{"quantize.mode": "dynamic"}))
    with pytest.raises(InputError, match="unknown key 'openvino.presett'"):
        setup["recipe"].with_overrides(**{"openvino.presett": "mixed"})


def test_convert_writes_ir_matching_onnx(setup, exported, converted):
    xml = converted.state.ir_path
    assert converted.state.kind is ModelKind.OPENVINO and xml.suffix == ".xml"
    assert xml.with_suffix(".bin").stat().st_size > 0
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    assert {i.get_any_name() for i in model.inputs} == set(exported.metrics["inputs"])
    assert not quantized_operations(model)  # FP32: nothing quantized yet
    batch = tokenize(setup["tokenizer"], setup["test"].texts[:8], 128)
    expected = ort_logits(exported.state.onnx_path, batch)
    got = get_target("openvino-cpu").runner(xml, 1).logits(batch)
    assert np.abs(expected - got).max() <= IR_PARITY_ATOL
    assert converted.metrics["parity_max_abs_diff"] <= IR_PARITY_ATOL


def test_nncf_int8_accuracy_within_tolerance_of_onnx_build(setup, exported, converted, tmp_path):
    ov_int8 = QuantizeNNCF().call(converted.state, _context(setup, tmp_path / "ov", **{"openvino.accuracy_control": False}))
    import openvino as ov

    ops = quantized_operations(ov.Core().read_model(str(ov_int8.state.ir_path)))
    assert ov_int8.metrics["quantized_operations"] == len(ops) >= 8  # q/k/v/out/ffn MatMuls in 2 layers, at least
    assert ov_int8.state.annotations["quantization"] == "nncf-int8"
    ort_int8 = QuantizeInt8().call(exported.state, _context(setup, tmp_path / "ort", target="onnx-cpu",
                                                            **{"quantize.mode": "dynamic"}))
    data = _both_splits(setup)
    tok = setup["tokenizer"]
    fp32 = evaluate(get_target("openvino-cpu").runner(converted.state.ir_path, 1), tok, data, 128)
    ov_eval = evaluate(get_target("openvino-cpu").runner(ov_int8.state.ir_path, 1), tok, data, 128)
    ort_eval = evaluate(get_target("onnx-cpu").runner(ort_int8.state.onnx_path, 1), tok, data, 128)
    assert abs(ov_eval.accuracy - ort_eval.accuracy) * 100 <= MAX_ACCURACY_GAP_POINTS
    assert (ov_eval.predictions == fp32.predictions).mean() >= MIN_AGREEMENT
    # INT8 changed the numbers (the quantizers are real), but not by much.
    assert 0 < np.abs(ov_eval.logits - fp32.logits).max() < 0.5
