"""The onnx-cpu passes one by one on the tiny checkpoint, with a PassContext built by hand:
structure of each produced graph, and its outputs against the model it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ort_logits
from onnx import numpy_helper

from mcompress.calibration.datasets import tokenize
from mcompress.core.errors import PassFailure
from mcompress.core.manager import PassManager
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.passes.export.onnx_export import ExportOnnx
from mcompress.passes.optimize.transformer_fusion import FuseTransformer
from mcompress.passes.quantize.ort_int8 import QuantizeInt8
from mcompress.core.state import ModelKind, ModelState
from mcompress.targets import get_target

NUM_LAYERS = 2
EXPORT_ATOL = 1e-4  # |logit| difference, ONNX Runtime FP32 vs PyTorch FP32
FUSION_ATOL = 1e-4  # |logit| difference, fused vs unfused graph


def _context(setup, work_dir: Path, reference_accuracy: float = 1.0, **overrides) -> PassContext:
    recipe = setup["recipe"].with_overrides(**overrides)
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(recipe, get_target("onnx-cpu"), work_dir, setup["train"], setup["validation"], reference_accuracy)


def _torch_state(setup) -> ModelState:
    return ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"])


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    return ExportOnnx().call(_torch_state(setup), _context(setup, tmp_path_factory.mktemp("export")))


@pytest.fixture(scope="module")
def fused(setup, exported, tmp_path_factory):
    """The fused graph alone (optimize.fusion: fused), so quantization has one graph variant."""
    return FuseTransformer().call(exported.state, _context(setup, tmp_path_factory.mktemp("fuse"),
                                                           **{"optimize.fusion": "fused"}))


def _eval_batch(setup, n: int = 7, max_length: int = 24) -> dict[str, np.ndarray]:
    # 7 texts truncated to 24 tokens: a shape the export sample (2 texts, their own length) did not have.
    return tokenize(setup["tokenizer"], setup["test"].texts[:n], max_length)


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _predictions(path: Path, setup) -> np.ndarray:
    texts = setup["validation"].texts + setup["test"].texts
    return ort_logits(path, tokenize(setup["tokenizer"], texts, 128)).argmax(-1)


# --- export -----------------------------------------------------------------------------------

def test_export_has_dynamic_batch_and_sequence_axes(exported):
    assert exported.modified and exported.state.kind is ModelKind.ONNX
    graph = onnx.load(str(exported.state.onnx_path)).graph
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                      "token_type_ids": ["batch", "sequence"]}
    (logits,) = graph.output
    dims = logits.type.tensor_type.shape.dim
    assert logits.name == "logits" and dims[0].dim_param == "batch" and dims[1].dim_value == 2


def test_export_parity_at_a_new_shape(setup, exported):
    import torch

    assert exported.metrics["parity_max_abs_diff"] <= exported.metrics["parity_atol"] == 1e-4
    batch = _eval_batch(setup)
    assert batch["input_ids"].shape == (7, 24)
    with torch.inference_mode():
        expected = setup["model"](**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    got = ort_logits(exported.state.onnx_path, batch)
    assert got.shape == (7, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=EXPORT_ATOL)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_export_parity_failure_is_a_pass_failure(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(ExportOnnx, "_parity", staticmethod(lambda *args: 0.5))
    with pytest.raises(PassFailure, match=r"pass 'export' failed: ONNX logits differ from PyTorch by 5.00e-01"):
        ExportOnnx().call(_torch_state(setup), _context(setup, tmp_path))


# --- fusion -----------------------------------------------------------------------------------

def test_fusion_structure(fused):
    ops = _ops(fused.state.onnx_path)
    assert ops.count("Attention") == NUM_LAYERS
    assert "SkipLayerNormalization" in ops
    assert "EmbedLayerNormalization" in ops
    assert "Softmax" not in ops  # every attention block was fused
    assert fused.metrics["fused_operators"]["Attention"] == NUM_LAYERS
    assert fused.state.annotations["fused_operators"] == fused.metrics["fused_operators"]
    assert fused.state.annotations["graph_variants"] == {"fused": fused.state.onnx_path}


def test_fusion_keeps_outputs(setup, exported, fused):
    batch = _eval_batch(setup)
    np.testing.assert_allclose(ort_logits(fused.state.onnx_path, batch), ort_logits(exported.state.onnx_path, batch),
                               rtol=0, atol=FUSION_ATOL)


def test_fusion_unfused_is_a_no_op(setup, exported, tmp_path):
    result = FuseTransformer().call(exported.state, _context(setup, tmp_path, **{"optimize.fusion": "unfused"}))
    assert result.modified is False and result.state is exported.state
    assert "skipped" in result.metrics


def test_fusion_auto_keeps_both_graphs(fused_auto, exported):
    assert fused_auto.metrics["graph_variants"] == ["fused", "unfused"]
    variants = fused_auto.state.annotations["graph_variants"]
    assert variants == {"fused": fused_auto.state.onnx_path, "unfused": exported.state.onnx_path}
    assert _ops(variants["fused"]).count("Attention") == NUM_LAYERS


@pytest.fixture(scope="module")
def fused_auto(setup, exported, tmp_path_factory):
    return FuseTransformer().call(exported.state, _context(setup, tmp_path_factory.mktemp("fuse-auto"),
                                                           **{"optimize.fusion": "auto"}))


# --- quantization -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dynamic(setup, fused, tmp_path_factory):
    ctx = _context(setup, tmp_path_factory.mktemp("dynamic"), **{"quantize.mode": "dynamic"})
    return QuantizeInt8().call(fused.state, ctx)


@pytest.fixture(scope="module")
def static(setup, fused, tmp_path_factory):
    ctx = _context(setup, tmp_path_factory.mktemp("static"), **{"quantize.mode": "static"})
    return QuantizeInt8().call(fused.state, ctx)


def test_dynamic_quantization(setup, fused, dynamic):
    assert dynamic.metrics == {"mode": "dynamic", "chosen": "dynamic/fused"}
    assert dynamic.state.annotations["quantization"] == "dynamic"
    assert dynamic.state.annotations["graph"] == "fused"
    assert "graph_variants" not in dynamic.state.annotations
    ops = set(_ops(dynamic.state.onnx_path))
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}
    # The 30522 x 32 word embedding is most of this model; INT8 weights make it under half the size.
    assert dynamic.state.size_bytes() < 0.5 * fused.state.size_bytes()
    agree = (_predictions(dynamic.state.onnx_path, setup) == _predictions(fused.state.onnx_path, setup)).mean()
    assert agree >= 0.9


def test_static_quantization_is_qdq_per_channel_uint8_activations(setup, fused, static):
    assert static.metrics == {"mode": "static", "chosen": "static-minmax/fused"}
    assert static.state.annotations["quantization"] == "static-minmax"
    model = onnx.load(str(static.state.onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quantize and dequantize
    # Every MatMul/Gemm runs on a quantized activation (Q -> DQ -> MatMul), including those after
    # the fused contrib ops (Attention, SkipLayerNormalization, BiasGelu), not on weights alone.
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(matmuls) == 3 * NUM_LAYERS + 2  # attention output + 2 FFN per layer; pooler, classifier
    for node in matmuls:
        activation, weight = (producer.get(name) for name in node.input[:2])
        assert activation is not None and activation.op_type == "DequantizeLinear", node.name
        assert producer[activation.input[0]].op_type == "QuantizeLinear", node.name
        assert weight is not None and weight.op_type == "DequantizeLinear" and weight.input[0] in inits, node.name
    # Activations: uint8 zero points (U8S8 on x86).
    for node in quantize:
        assert inits[node.input[2]].data_type == onnx.TensorProto.UINT8, node.name
    # Weights: int8 with one scale per output channel.
    per_channel = [n for n in dequantize
                   if n.input[1] in inits and numpy_helper.to_array(inits[n.input[1]]).ndim == 1
                   and numpy_helper.to_array(inits[n.input[1]]).size > 1]
    assert per_channel
    for node in per_channel:
        assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
        assert numpy_helper.to_array(inits[node.input[2]]).dtype == np.int8
    agree = (_predictions(static.state.onnx_path, setup) == _predictions(fused.state.onnx_path, setup)).mean()
    assert agree >= 0.9


@pytest.mark.parametrize("reference_accuracy, max_drop, any_within", [
    (1.0, 100.0, True),  # every candidate is within a 100-point budget: the fastest wins
    (2.0, 1.0, False),  # a reference no candidate can come within 1 point of: the most accurate wins
])
def test_auto_records_candidates_and_choice(setup, fused_auto, tmp_path, reference_accuracy, max_drop, any_within):
    ctx = _context(setup, tmp_path, reference_accuracy, **{"quantize.mode": "auto", "gates.max_drop": max_drop})
    result = QuantizeInt8().call(fused_auto.state, ctx)
    metrics = result.metrics
    scores = metrics["candidates"]
    assert metrics["mode"] == "auto"
    assert set(scores) == {f"{mode}/{graph}" for mode in ("dynamic", "static-minmax") for graph in ("fused", "unfused")}
    for score in scores.values():
        assert {"score", "drop_points", "p50_ms_b1_s128", "latency_score_ms", "within_budget", "examples"} <= set(score)
        assert score["examples"] == len(setup["validation"])
        assert 0 <= score["score"] <= 1 and score["p50_ms_b1_s128"] > 0
        # the score is rounded to 4 decimals in the table
        assert score["drop_points"] == pytest.approx((reference_accuracy - score["score"]) * 100, abs=0.006)
        assert score["within_budget"] is any_within
    chosen = metrics["chosen"]
    assert chosen in scores
    mode, graph = chosen.split("/")
    assert (result.state.annotations["quantization"], result.state.annotations["graph"]) == (mode, graph)
    assert result.state.onnx_path.is_file() and result.modified
    if any_within:
        assert metrics["choice_reason"] == "fastest candidate within the accuracy budget"
        best = min(s["latency_score_ms"] for s in scores.values())
        assert scores[chosen]["latency_score_ms"] <= best * (1 + ctx.recipe.quantize.latency_tie_tolerance)
    else:
        assert metrics["choice_reason"] == "no candidate within budget; kept the most accurate"
        assert scores[chosen]["score"] == max(s["score"] for s in scores.values())


def test_quantize_none_is_a_no_op(setup, fused, tmp_path):
    result = QuantizeInt8().call(fused.state, _context(setup, tmp_path, **{"quantize.mode": "none"}))
    assert result.modified is False and result.state.onnx_path == fused.state.onnx_path
    assert result.metrics["chosen"] == "fp32/fused"


# --- the pass manager -------------------------------------------------------------------------

class _Fake(Pass):
    def __init__(self, name, accepts, produces, state=None, error=None):
        self.name, self.accepts, self.produces = name, accepts, produces
        self._state, self._error = state, error

    def call(self, state, ctx):
        if self._error:
            raise self._error
        return PassResult(self._state or state, True, {"ran": self.name})


def test_manager_rejects_a_wrong_model_kind_naming_the_passes_before(setup, exported, tmp_path):
    onnx_state = exported.state
    passes = [_Fake("to-onnx", (ModelKind.TORCH,), ModelKind.ONNX, onnx_state),
              _Fake("noop", (ModelKind.ONNX,), ModelKind.ONNX), ExportOnnx()]
    with pytest.raises(PassFailure) as info:
        PassManager(passes).run(_torch_state(setup), _context(setup, tmp_path))
    message = str(info.value)
    assert info.value.pass_name == "export"
    assert "pass 'export' failed: accepts ['torch'] but got a onnx model" in message
    assert "(passes that ran before it: to-onnx, noop)" in message


def test_manager_first_pass_wrong_kind(setup, tmp_path):
    with pytest.raises(PassFailure, match=r"pass 'optimize' failed: .*\(passes that ran before it: none\)"):
        PassManager([FuseTransformer()]).run(_torch_state(setup), _context(setup, tmp_path))


def test_manager_wraps_pass_exceptions_and_checks_declared_output(setup, tmp_path):
    broken = [_Fake("ok", (ModelKind.TORCH,), ModelKind.TORCH), _Fake("boom", (ModelKind.TORCH,), ModelKind.TORCH,
                                                                      error=RuntimeError("kaput"))]
    with pytest.raises(PassFailure, match=r"pass 'boom' failed: RuntimeError: kaput \(passes that ran before it: ok\)"):
        PassManager(broken).run(_torch_state(setup), _context(setup, tmp_path))
    liar = [_Fake("liar", (ModelKind.TORCH,), ModelKind.ONNX)]  # says ONNX, returns the torch state
    with pytest.raises(PassFailure, match="pass 'liar' failed: declared onnx output but produced torch"):
        PassManager(liar).run(_torch_state(setup), _context(setup, tmp_path))


def test_manager_runs_instruments_and_records(setup, exported, tmp_path):
    seen = []
    passes = [_Fake("a", (ModelKind.TORCH,), ModelKind.ONNX, exported.state), _Fake("b", (ModelKind.ONNX,), ModelKind.ONNX)]

    def instrument(p, result, record):
        seen.append(p.name)
        record.evaluation["note"] = p.name

    state, records = PassManager(passes, [instrument]).run(_torch_state(setup), _context(setup, tmp_path))
    assert state is exported.state
    assert seen == ["a", "b"]
    assert [(r.name, r.modified, r.metrics, r.evaluation) for r in records] == [
        ("a", True, {"ran": "a"}, {"note": "a"}), ("b", True, {"ran": "b"}, {"note": "b"})]
    assert records[0].size_bytes == exported.state.size_bytes()


@pytest.mark.parametrize("method", ["percentile", pytest.param("entropy", marks=pytest.mark.slow)])
def test_histogram_calibration_methods(setup, fused, tmp_path_factory, method):
    # Histogram calibrators stack every example's activations: texts of different lengths must
    # still calibrate (they are padded to max_length for these methods).
    ctx = _context(setup, tmp_path_factory.mktemp(method),
                   **{"quantize.mode": "static", "quantize.static.calibration_method": method})
    result = QuantizeInt8().call(fused.state, ctx)
    assert result.metrics["chosen"] == f"static-{method}/fused"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(result.state.onnx_path)).graph.node)
    agree = (_predictions(result.state.onnx_path, setup) == _predictions(fused.state.onnx_path, setup)).mean()
    assert agree >= 0.9
