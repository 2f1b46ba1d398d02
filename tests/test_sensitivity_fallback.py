"""Per-layer INT8 sensitivity, the float fallback, gates after passes, macro-F1 / relative drop,
and report.html — on the tiny checkpoint."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mcompress.calibration.datasets import LabelledTexts
from mcompress.cli import app
from mcompress.core.errors import ExitCode, GateFailure
from mcompress.core.task import get_task
from mcompress.metrics.evaluation import EvalResult, macro_f1
from mcompress.tasks import evaluate
from mcompress.metrics.gates import accuracy_drop_gate, metric_drop
from mcompress.core.manager import PassManager
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.pipeline.pass_gates import PassGate
from mcompress.passes.export.onnx_export import ExportOnnx
from mcompress.passes.optimize.transformer_fusion import FuseTransformer
from mcompress.passes.quantize.fallback import QuantizeFallback
from mcompress.passes.quantize.ort_int8 import QuantizeInt8
from mcompress.passes.quantize.sensitivity import DYNAMIC_OP_TYPES, find_layers
from mcompress.report.html import render_html
from mcompress.core.state import ModelKind, ModelState
from mcompress.targets import get_target

# A static Q/DQ build clipped at the 90.01th percentile of |activation|: damaged enough that INT8
# changes predictions of the tiny model, so the fallback has something to repair.
DAMAGING = {"quantize.mode": "static", "quantize.static.calibration_method": "percentile",
            "quantize.static.percentile": 90.01}


def _context(setup, work_dir: Path, selection: LabelledTexts | None = None, reference_accuracy: float = 1.0,
             **overrides) -> PassContext:
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(setup["recipe"].with_overrides(**overrides), get_target("onnx-cpu"), work_dir, setup["train"],
                       selection or setup["validation"], reference_accuracy)


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    state = ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"])
    return ExportOnnx().call(state, _context(setup, tmp_path_factory.mktemp("export"))).state


def _runner(path):
    return get_target("onnx-cpu").runner(path, 1)


def _eval(setup, path, data: LabelledTexts) -> EvalResult:
    return evaluate(_runner(path), setup["tokenizer"], data, 128)


# --- module names --------------------------------------------------------------------------------

def test_unfused_layers_map_to_pytorch_module_names(setup, exported, tmp_path):
    quantized = QuantizeInt8().call(exported, _context(setup, tmp_path, **{"quantize.mode": "dynamic"})).state
    layers = find_layers(exported.onnx_path, quantized.onnx_path, DYNAMIC_OP_TYPES)
    modules = {layer.module for layer in layers}
    names = dict(setup["model"].named_modules())
    for i in range(2):
        for sub in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense", "output.dense"):
            assert f"bert.encoder.layer.{i}.{sub}" in modules
    assert "bert.embeddings.word_embeddings" in modules  # dynamic mode quantizes the embedding Gather
    assert "classifier" not in modules  # and leaves Gemm in float
    assert all(m in names for m in modules), modules - set(names)  # every name is a real module
    query = next(l for l in layers if l.module == "bert.encoder.layer.0.attention.self.query")
    assert query.nodes == ["/model/bert/encoder/layer.0/attention/self/query/MatMul"] and query.op_types == ["MatMul"]
    blocks = {l.key: l for l in find_layers(exported.onnx_path, quantized.onnx_path, DYNAMIC_OP_TYPES, "block")}
    assert len(blocks["bert.encoder.layer.0"].nodes) == 6 and "bert.encoder.layer.1" in blocks


def test_fused_attention_maps_through_its_consumer(setup, exported, tmp_path):
    fused = FuseTransformer().call(exported, _context(setup, tmp_path / "fuse", **{"optimize.fusion": "fused"})).state
    quantized = QuantizeInt8().call(fused, _context(setup, tmp_path / "q", **{"quantize.mode": "dynamic"})).state
    layers = {l.nodes[0]: l for l in find_layers(fused.onnx_path, quantized.onnx_path, DYNAMIC_OP_TYPES)}
    assert layers["Attention_0"].module == "bert.encoder.layer.0.attention.self"
    assert layers["Attention_1"].module == "bert.encoder.layer.1.attention.self"
    assert layers["EmbedLayerNormalization_0"].module == "bert.embeddings"


# --- sensitivity and fallback --------------------------------------------------------------------

@pytest.fixture(scope="module")
def breaking(setup, exported, tmp_path_factory):
    """A selection set on which the FP32 ONNX model is 100% right and the damaged INT8 model is not:
    with max_drop 0 the INT8 build breaks the budget by construction."""
    work = tmp_path_factory.mktemp("breaking")
    everything = LabelledTexts(setup["train"].texts + setup["validation"].texts + setup["test"].texts,
                               setup["train"].labels + setup["validation"].labels + setup["test"].labels, "all splits")
    fp32 = _eval(setup, exported.onnx_path, everything)
    keep = [i for i in range(len(everything)) if fp32.predictions[i] == fp32.labels[i]]
    selection = LabelledTexts([everything.texts[i] for i in keep], [everything.labels[i] for i in keep], "fp32-correct")
    overrides = {**DAMAGING, "gates.max_drop": 0.0, "fallback.enabled": True, "fallback.max_layers": 18,
                 "sensitivity.examples": 32}
    ctx = _context(setup, work, selection, 1.0, **overrides)
    quantized = QuantizeInt8().call(exported, ctx).state
    return ctx, quantized, selection


@pytest.mark.slow
def test_fallback_repairs_a_build_that_breaks_the_budget(setup, breaking):
    ctx, quantized, selection = breaking
    int8 = _eval(setup, quantized.onnx_path, selection)
    assert int8.accuracy < 1.0, "the damaged INT8 model must flip a prediction, or this test proves nothing"

    result = QuantizeFallback().call(quantized, ctx)
    m = result.metrics
    initial = m["candidates"][0]
    assert initial["step"] == 0 and initial["within_budget"] is False and initial["score"] == pytest.approx(int8.accuracy)

    sens = m["sensitivity"]
    assert len(sens["layers"]) == 18 and not sens["unmeasured"]  # 16 MatMul + 2 Gemm in the unfused graph
    assert "bert.encoder.layer.0.attention.self.query" in {r["module"] for r in sens["layers"]}
    assert [r["rank"] for r in sens["layers"]] == list(range(1, 19))
    reductions = [r["kl_reduction"] for r in sens["layers"]]
    assert reductions == sorted(reductions, reverse=True)

    # Greedy in ranking order, one more layer each step, every candidate recorded.
    ranked = [r["layer"] for r in sens["layers"]]
    for c in m["candidates"][1:]:
        assert c["float_layers"] == ranked[:c["step"]] and c["p50_ms_b1_s128"] > 0
    assert m["passed"] is True and m["stopped"] == "passed"
    assert 1 <= len(m["float_layers"]) < 18 and m["float_layers"] == ranked[:m["chosen_step"]]
    assert all(not c["within_budget"] for c in m["candidates"][:-1])  # the fewest layers that pass

    # The kept model is what it claims: a fresh session reproduces its accuracy, within budget.
    assert result.modified and result.state.onnx_path != quantized.onnx_path
    kept = _eval(setup, result.state.onnx_path, selection)
    assert kept.accuracy == pytest.approx(m["candidates"][-1]["score"]) and kept.accuracy == 1.0
    assert result.state.annotations["float_layers"] == m["float_layers"]


@pytest.mark.slow
def test_fallback_step_limit_keeps_the_best_candidate(setup, breaking, tmp_path):
    ctx, quantized, selection = breaking
    ctx = dataclasses.replace(ctx, recipe=ctx.recipe.with_overrides(**{"fallback.max_layers": 1}), work_dir=tmp_path)
    result = QuantizeFallback().call(quantized, ctx)
    m = result.metrics
    assert len(m["candidates"]) <= 2 and m["candidates"][0]["within_budget"] is False
    best = max(m["candidates"], key=lambda c: (c["score"], -c["step"]))
    assert m["chosen_step"] == best["step"]
    if not m["passed"]:
        assert m["reason"].startswith("no candidate within budget")
    assert Path(result.state.onnx_path).is_file()  # always ends with a model


def test_within_budget_changes_nothing(setup, exported, tmp_path):
    ctx = _context(setup, tmp_path, reference_accuracy=0.0, **{"quantize.mode": "dynamic", "fallback.enabled": True})
    quantized = QuantizeInt8().call(exported, ctx).state
    result = QuantizeFallback().call(quantized, ctx)
    assert result.modified is False and result.state == quantized
    assert result.metrics["initial"]["within_budget"] is True and "sensitivity" not in result.metrics


# --- gates after passes --------------------------------------------------------------------------

class _ZeroClassifier(Pass):
    """Breaks the model: the classifier's weights become zero, so every logit is its bias."""

    name = "sabotage"
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.TORCH

    def call(self, state, ctx):
        import copy

        import torch

        model = copy.deepcopy(state.torch_model)
        with torch.no_grad():
            model.classifier.weight.zero_()
        return PassResult(dataclasses.replace(state, torch_model=model), True)


def test_gate_after_a_pass_stops_the_run_naming_it(setup, tmp_path):
    from mcompress.metrics.evaluation import TorchRunner

    recipe = setup["recipe"].with_overrides(**{"gates.after": ["sabotage"], "gates.max_drop": 0.0})
    data = setup["test"]
    evaluate_torch = lambda state: evaluate(TorchRunner(state.torch_model, 1), setup["tokenizer"], data, 128)
    reference = evaluate_torch(ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"]))
    assert reference.accuracy > 0.5
    gate = PassGate(recipe, reference, lambda p, state: evaluate_torch(state))
    ran = []

    class _After(Pass):
        name = "export"
        accepts = (ModelKind.TORCH,)
        produces = ModelKind.TORCH

        def call(self, state, ctx):
            ran.append(self.name)
            return PassResult(state, False)

    ctx = _context(setup, tmp_path)
    manager = PassManager([_ZeroClassifier(), _After()], instruments=[gate])
    with pytest.raises(GateFailure, match=r"gate failed after pass 'sabotage'") as err:
        manager.run(ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"]), ctx)
    assert err.value.exit_code == ExitCode.GATE_FAILED
    assert ran == []  # later passes did not run
    assert gate.results[0].name == "accuracy_drop_after_sabotage" and not gate.results[0].passed


def _write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


_BASE = """\
name: {name}
latency:
  batch_sizes: [1]
  sequence_lengths: [16]
  warmup: 1
  iterations: 3
  threads: 1
optimize:
  fusion: unfused
quantize:
  mode: dynamic
  static:
    calibration_examples: 8
"""


def test_unknown_pass_in_gates_after_is_bad_input(tiny_checkpoint, tmp_path):
    recipe = _write_recipe(tmp_path / "r.yaml", _BASE.format(name="bad") + "gates:\n  after: [prnue]\n")
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", "onnx-cpu", "--out", str(tmp_path / "b"), "--recipe", str(recipe)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "prnue" in result.output and not (tmp_path / "b").exists()


def test_gate_after_prune_fails_the_cli_run(tiny_checkpoint, tmp_path, monkeypatch):
    # The tiny synthetic task survives any pruning (accuracy stays 1.0), so the real prune pass is
    # followed by zeroing the classifier: a prune that broke the model. --no-cache keeps the
    # sabotaged output out of the shared pass cache.
    from mcompress.passes.export.onnx_export import ExportOnnx as Export
    from mcompress.passes.prune.structured import PruneStructured

    real_prune = PruneStructured.call
    monkeypatch.setattr(PruneStructured, "call", lambda self, state, ctx: _ZeroClassifier().call(
        real_prune(self, state, ctx).state, ctx))
    exported = []
    monkeypatch.setattr(Export, "call", lambda self, state, ctx: exported.append(1))
    text = _BASE.format(name="prune-gate") + ("prune:\n  heads_per_layer: 1\n"
                                              "gates:\n  max_drop: 0\n  after: [prune]\n")
    recipe = _write_recipe(tmp_path / "r.yaml", text)
    out = tmp_path / "build"
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe), "--no-cache"])
    assert result.exit_code == ExitCode.GATE_FAILED, result.output
    assert "gate failed after pass 'prune'" in " ".join(result.output.split())
    assert exported == [] and not out.exists()  # stopped before export; no build


# --- e2e: report.html ----------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_run_writes_a_self_contained_html_report(tiny_checkpoint, tmp_path):
    # A loose budget: this test is about the report, not the tiny model's INT8 accuracy.
    text = _BASE.format(name="html") + ("sensitivity:\n  run: always\n  examples: 8\n"
                                        "gates:\n  max_drop: 50\n  after: [export]\n")
    recipe = _write_recipe(tmp_path / "r.yaml", text)
    out = tmp_path / "build"
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe)])
    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["export", "optimize", "quantize", "fallback"]
    fallback = report["passes"][-1]["metrics"]
    assert fallback["initial"]["within_budget"] and fallback["sensitivity"]["layers"]
    assert "bert.encoder.layer.0.attention.self.query" in {r["module"] for r in fallback["sensitivity"]["layers"]}
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["accuracy_drop_after_export"]["passed"] and report["passes"][0]["gate"]["passed"]
    assert 0 <= report["build"]["macro_f1"] <= 1 and report["reference"]["macro_f1"] > 0
    assert report["passes"][0]["latency"]["p50_ms"] > 0 and report["passes"][0]["latency"]["batch_size"] == 1

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 5
    assert not re.search(r"https?://", page), "report.html must not reference the network"
    assert "Layer sensitivity" in page and "bert.encoder.layer.0.attention.self.query" in page


# --- metrics -------------------------------------------------------------------------------------

def test_macro_f1_and_relative_drop():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 1])
    # F1: class 0 = 2*2/(2+3) = 0.8, class 1 = 2*2/(4+2) = 0.667, class 2 = 0
    assert macro_f1(predictions, labels) == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert metric_drop(0.80, 0.76, "absolute") == pytest.approx(4.0)
    assert metric_drop(0.80, 0.76, "relative") == pytest.approx(5.0)

    ref_pred = labels.copy()
    ref_pred[0] = 1  # reference 5/6 right
    ref = EvalResult(5 / 6, ref_pred, labels, np.zeros((6, 3)), get_task("text-classification"))
    cand_pred = ref_pred.copy()
    cand_pred[5] = 1  # candidate 4/6 right
    cand = EvalResult(4 / 6, cand_pred, labels, np.zeros((6, 3)), get_task("text-classification"))
    absolute = accuracy_drop_gate(ref, cand, 20.0)
    relative = accuracy_drop_gate(ref, cand, 20.0, drop_type="relative")
    assert absolute.value == pytest.approx(100 / 6) and absolute.passed
    assert relative.value == pytest.approx(20.0) and relative.passed and relative.unit == "% of reference"
    assert accuracy_drop_gate(ref, cand, 19.9, drop_type="relative").passed is False
    assert relative.ci95[0] <= relative.value <= relative.ci95[1]


def test_html_report_renders_without_optional_sections():
    report = {
        "passed": False, "target": "onnx-cpu", "recipe": {"name": "r", "gates": {"max_drop": 1.0}},
        "source": {"path": "/m", "sha256": "0" * 64}, "data": {"eval": {"source": "<t>", "examples": 3}},
        "reference": {"accuracy": 0.9, "size_bytes": 10_000_000},
        "passes": [{"name": "export", "wall_s": 1.0, "size_bytes": 9_000_000, "metrics": {}}],
        "build": {"accuracy": 0.8}, "latency": {"reference": [], "build": []},
        "gates": [{"name": "accuracy_drop", "value": 10.0, "threshold": 1.0, "unit": "points", "passed": False,
                   "detail": "a <b> c"}],
        "artifact": {"model_bytes": 5_000_000, "size_ratio": 0.5},
    }
    page = render_html(report)
    assert "FAIL" in page and "&lt;t&gt;" in page and "a &lt;b&gt; c" in page and "<svg" in page
    assert not re.search(r"https?://", page)


@pytest.mark.slow
def test_interrupted_search_resumes_from_the_last_finished_candidate(setup, breaking, tmp_path, monkeypatch):
    from mcompress.passes.quantize import sensitivity
    from mcompress.passes.quantize.sensitivity import Requantizer

    ctx, quantized, selection = breaking
    uninterrupted = QuantizeFallback().call(quantized, dataclasses.replace(ctx, work_dir=tmp_path / "w0")).metrics
    stop_at = max(1, uninterrupted["chosen_step"])  # interrupt while building the candidate that passed
    resume = tmp_path / "resume"
    ctx = dataclasses.replace(ctx, resume_dir=resume)

    real_build = Requantizer.build

    def interrupted(self, nodes, name):
        if name == f"candidate-{stop_at}":
            raise KeyboardInterrupt
        return real_build(self, nodes, name)

    monkeypatch.setattr(Requantizer, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        QuantizeFallback().call(quantized, dataclasses.replace(ctx, work_dir=tmp_path / "w1"))
    assert len(list(resume.glob("fallback-*.json"))) == 1  # the ranking and finished candidates survive

    monkeypatch.setattr(Requantizer, "build", real_build)
    monkeypatch.setattr(sensitivity, "measure_sensitivity",
                        lambda *a, **k: pytest.fail("the ranking was measured again instead of resumed"))
    result = QuantizeFallback().call(quantized, dataclasses.replace(ctx, work_dir=tmp_path / "w2"))
    m = result.metrics
    assert m["resumed"] == {"candidates": stop_at - 1}
    assert [(c["float_layers"], c["score"]) for c in m["candidates"]] == \
        [(c["float_layers"], c["score"]) for c in uninterrupted["candidates"]]
    assert m["chosen_step"] == uninterrupted["chosen_step"] and m["passed"] == uninterrupted["passed"]
    assert _eval(setup, result.state.onnx_path, selection).accuracy == pytest.approx(m["candidates"][m["chosen_step"]]["score"])
    assert not list(resume.glob("fallback-*.json"))  # removed once the search ended
