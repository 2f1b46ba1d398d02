"""The tensorrt target on the tiny checkpoint: the Q/DQ rules TensorRT needs (symmetric INT8,
per-channel weights, float bias, one consumer per Q/DQ pair, standard ops only), the Q/DQ graph's
accuracy on ONNX Runtime against FP32, an ahead-of-time TensorRT-RTX engine build (no GPU
needed), and `mcompress run --target tensorrt` ending with exit code 4 where no GPU is visible.
Tests that run an engine need an NVIDIA GPU and are marked ``gpu``."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ort_logits, ort_session
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress.calibration.datasets import tokenize
from mcompress.cli import app
from mcompress.core.errors import ExitCode, InputError
from mcompress.core.pass_base import PassContext
from mcompress.passes.export.onnx_export import ExportOnnx
from mcompress.passes.optimize.transformer_fusion import FuseTransformer
from mcompress.passes.quantize.ort_int8 import QuantizeInt8
from mcompress.core.recipe import TensorRTConfig
from mcompress.core.state import ModelKind, ModelState
from mcompress.core.target_base import BuildInputs
from mcompress.targets import get_target
from mcompress.targets.tensorrt import builder as trt_builder

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
# Q/DQ INT8 vs FP32 on ONNX Runtime, tiny model: predictions agree on at least this fraction of
# the 48 validation + test examples, and logits differ by at most this much.
MIN_AGREEMENT = 0.9
QDQ_LOGIT_ATOL = 0.05  # measured 0.020 on logits of magnitude <= 0.9


def _cuda() -> bool:
    return trt_builder.cuda_device() is not None


def _context(setup, work_dir: Path, target: str = "tensorrt", **overrides) -> PassContext:
    recipe = setup["recipe"].with_overrides(**overrides)
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(recipe, get_target(target), work_dir, setup["train"], setup["validation"], 1.0)


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    state = ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"])
    return ExportOnnx().call(state, _context(setup, tmp_path_factory.mktemp("trt-export")))


@pytest.fixture(scope="module")
def qdq(setup, exported, tmp_path_factory):
    """The quantize pass as the tensorrt pipeline runs it (quantize.mode auto -> static only)."""
    return QuantizeInt8().call(exported.state, _context(setup, tmp_path_factory.mktemp("trt-qdq")))


# --- capabilities and pipeline ------------------------------------------------------------------

def test_capabilities_and_pipeline(setup):
    target = get_target("tensorrt")
    caps = target.capabilities
    assert caps.quantization_modes == ("static",)
    assert caps.activation_type == "QInt8" and caps.weight_type == "QInt8" and caps.int8_symmetric_only
    assert caps.quantize_bias is False and caps.dedicated_qdq_pair is True and caps.contrib_ops is False
    assert caps.quantize_outputs is False
    # No transformer fusion: its com.microsoft ops are unreadable to TensorRT's parser.
    assert [p.name for p in target.pipeline(setup["recipe"])] == ["export", "quantize"]
    with pytest.raises(InputError, match="cannot run quantize.mode 'dynamic'"):
        target.validate_recipe(setup["recipe"].with_overrides(**{"quantize.mode": "dynamic"}))
    with pytest.raises(InputError, match="unknown compute capability '9.0'"):
        target.validate_recipe(setup["recipe"].with_overrides(**{"tensorrt.compute_capabilities": ["9.0"]}))
    with pytest.raises(InputError, match="min_batch 64 > max_batch 16"):  # max defaults to eval.batch_size
        target.validate_recipe(setup["recipe"].with_overrides(**{"tensorrt.min_batch": 64}))
    with pytest.raises(InputError, match="min_sequence 200 > max_sequence 128"):
        target.validate_recipe(setup["recipe"].with_overrides(**{"tensorrt.min_sequence": 200}))


def test_recipe_tensorrt_section_is_strict(setup):
    with pytest.raises(InputError, match="unknown key 'tensorrt.max_batchsize'"):
        setup["recipe"].with_overrides(**{"tensorrt.max_batchsize": 4})
    with pytest.raises(InputError, match="min_batch <= opt_batch <= max_batch"):
        setup["recipe"].with_overrides(**{"tensorrt.min_batch": 8, "tensorrt.max_batch": 4})


def test_shape_profile_from_data_and_overrides():
    lengths = np.array([5, 9, 12, 12, 40, 300])
    profile = trt_builder.ShapeProfile.from_data(["input_ids", "attention_mask"], lengths, 128, 32)
    assert profile.batch == (1, 32, 32) and profile.sequence == (2, 12, 128)
    assert profile.data_lengths == {"examples": 6, "min": 5, "median": 12, "p95": 106, "max": 128}  # clipped at 128
    profile = trt_builder.ShapeProfile.from_data(["input_ids"], lengths, 128, 32,
                                                 TensorRTConfig(max_batch=8, opt_sequence=64, max_sequence=96))
    assert profile.batch == (1, 8, 8) and profile.sequence == (2, 64, 96)
    assert profile.shapes() == [("input_ids", (1, 2), (8, 64), (8, 96))]


# --- Q/DQ placement and symmetry ----------------------------------------------------------------

def test_qdq_graph_follows_tensorrt_rules(qdq):
    assert qdq.metrics["chosen"] == "static-minmax/input"
    model = onnx.load(str(qdq.state.onnx_path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: n for n in graph.node for out in n.output}

    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")], "no com.microsoft ops"
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert quantize and dequantize
    for q in quantize:  # activations: symmetric INT8, zero point 0, per tensor
        zp = inits[q.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), q.name
        assert inits[q.input[1]].size == 1
        users = consumers.get(q.output[0], [])
        assert len(users) == 1 and users[0].op_type == "DequantizeLinear", f"{q.name} has {len(users)} consumers"
    for dq in dequantize:
        users = consumers.get(dq.output[0], [])
        assert len(users) == 1, f"{dq.name} feeds {len(users)} nodes; TensorRT fuses a pair into one consumer"
        assert not inits[dq.input[2]].any()
        if dq.input[0] in inits:  # a weight: INT8 (never an INT32 bias), per output channel
            weight = inits[dq.input[0]]
            assert weight.dtype == np.int8, f"{dq.name}: {weight.dtype} (quantized bias?)"
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            assert inits[dq.input[1]].shape == (weight.shape[axis],) and weight.shape[axis] > 1
            user = users[0]
            out_axis = (0 if any(a.name == "transB" and a.i for a in user.attribute) else 1) if user.op_type == "Gemm" else 1
            assert user.op_type in ("MatMul", "Gemm") and axis == out_axis, f"{dq.name}: axis {axis}"
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmuls
    assert not [n for n in matmuls if consumers.get(n.output[0], [None])[0] is not None
                and consumers[n.output[0]][0].op_type == "QuantizeLinear"], "no Q/DQ on MatMul/Gemm outputs"
    assert {o.name for o in graph.output} == {"logits"} and producer["logits"].op_type == "Gemm"  # float logits
    for node in matmuls:  # both operands quantized (activation x weight and activation x activation)
        assert all(producer[i].op_type == "DequantizeLinear" for i in node.input[:2]), node.name
        if node.op_type == "Gemm" and len(node.input) > 2:  # float bias
            assert inits[node.input[2]].dtype == np.float32


def test_qdq_placement_gives_each_quantized_consumer_its_own_pair(tmp_path):
    """x -> Q -> DQ -> {MatMul a, MatMul b, Add}: the Add reads x again, each MatMul gets a pair."""
    from mcompress.passes.quantize.qdq_placement import dedicate_qdq_pairs

    f = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 2])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="q"),
             helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="dq"),
             helper.make_node("MatMul", ["x_dq", "w"], ["a"], name="a"),
             helper.make_node("MatMul", ["x_dq", "w"], ["b"], name="b"),
             helper.make_node("Add", ["x_dq", "a"], ["c"], name="add"),
             helper.make_node("Add", ["b", "c"], ["y"], name="out")]
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [f("x")], [f("y")], inits),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.array([[0.3, -0.7], [1.1, 0.05]], np.float32)
    before = ort_session(path).run(None, {"x": x})[0]
    assert dedicate_qdq_pairs(path, ["MatMul"]) == {"qdq_pairs_duplicated": 1, "float_inputs_restored": 1}
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    by_name = {n.name: n for n in graph.node}
    assert by_name["add"].input[0] == "x"
    assert by_name["a"].input[0] == "x_dq" and by_name["b"].input[0] == "x_dq_dedicated_1"
    reads = [i for n in graph.node for i in n.input]
    assert all(reads.count(n.output[0]) == 1 for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    # Only the Add changed: it now adds the float x instead of its INT8 rounding.
    after = ort_session(path).run(None, {"x": x})[0]
    xq = np.clip(np.round(x / 0.1), -128, 127) * 0.1
    np.testing.assert_allclose(after - before, x - xq, atol=1e-6)


def test_qdq_accuracy_against_fp32_on_onnxruntime(setup, exported, qdq):
    texts = setup["validation"].texts + setup["test"].texts
    labels = np.concatenate([setup["validation"].labels, setup["test"].labels])
    batch = tokenize(setup["tokenizer"], texts, 128)
    fp32 = ort_logits(exported.state.onnx_path, batch)
    int8 = ort_logits(qdq.state.onnx_path, batch)
    assert (fp32.argmax(-1) == int8.argmax(-1)).mean() >= MIN_AGREEMENT
    assert np.abs(fp32 - int8).max() <= QDQ_LOGIT_ATOL
    assert (int8.argmax(-1) == labels).mean() >= (fp32.argmax(-1) == labels).mean() - 0.05


def test_fused_graph_is_rejected_before_the_builder(setup, exported, tmp_path):
    fused = FuseTransformer().call(exported.state, _context(setup, tmp_path / "fuse", "onnx-cpu",
                                                            **{"optimize.fusion": "fused"}))
    with pytest.raises(trt_builder.EngineBuildError, match="com.microsoft.Attention"):
        get_target("tensorrt").build(fused.state, tmp_path / "build", BuildInputs(setup["recipe"]))


# --- engine build (TensorRT-RTX compiles ahead of time, without a GPU) ---------------------------

@pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
def test_ahead_of_time_engine_build(setup, qdq, tmp_path):
    lengths = np.array([len(t.split()) + 2 for t in setup["test"].texts])
    out = tmp_path / "build"
    cache_dir = tmp_path / "cache"
    build = get_target("tensorrt").build(qdq.state, out, BuildInputs(setup["recipe"], lengths, cache_dir))
    model_file = build.model_file
    meta = json.loads((out / "tensorrt_build.json").read_text())
    assert build.summary == meta and build.artifact_measured is meta["engine_measured"]
    engine = out / "model.engine"
    assert engine.is_file() and engine.stat().st_size > 10_000
    assert meta["engine_file"] == "model.engine" and meta["onnx_file"] == "model.onnx"
    assert meta["package"]["module"] == "tensorrt_rtx" and meta["package"]["distribution"].startswith("tensorrt-rtx")
    assert meta["build"]["strongly_typed"] is True
    profile = meta["profile"]
    assert profile["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert profile["sequence"] == {"min": 2, "opt": int(np.median(lengths)), "max": 128}
    assert profile["batch"] == {"min": 1, "opt": 16, "max": 16}  # eval.batch_size
    command = (out / "trtexec_command.txt").read_text()
    assert command.startswith("tensorrt_rtx --onnx=model.onnx --saveEngine=model.engine")
    assert "--maxShapes=input_ids:16x128,attention_mask:16x128,token_type_ids:16x128" in command
    # TensorRT-RTX >= 1.2 made timing-cache calls no-ops (it tunes on the user's GPU): none is kept.
    assert meta["build"]["timing_cache_used"] is False and not (cache_dir / "tensorrt").exists()
    if not _cuda():
        assert meta["gpu"] is None and meta["build_mode"] == "ahead-of-time (no GPU)"
        assert meta["engine_measured"] is False and "NVIDIA GPU" in meta["reason"]
        assert model_file == out / "model.onnx"  # the stand-in that the run gates on ONNX Runtime
        assert "stand-in" in get_target("tensorrt").runner(model_file, 1).name


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
def test_parser_errors_name_the_node(tmp_path):
    import tensorrt_rtx

    x = helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["batch", "sequence"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence"])
    node = helper.make_node("NoSuchOp", ["input_ids"], ["logits"], name="the_bad_node")
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]), path)
    profile = trt_builder.ShapeProfile(("input_ids",), (1, 1, 1), (2, 2, 2))
    with pytest.raises(trt_builder.EngineBuildError, match=r"node 0 'the_bad_node' \(NoSuchOp\)"):
        trt_builder.build_engine(tensorrt_rtx, path, tmp_path / "x.engine", profile, trt_builder.BuildOptions())


def test_without_any_tensorrt_the_build_has_the_onnx_and_the_command(setup, qdq, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_builder, "find_tensorrt", lambda *a: None)
    out = tmp_path / "build"
    build = get_target("tensorrt").build(qdq.state, out, BuildInputs(setup["recipe"], np.array([7, 9, 30])))
    assert build.model_file == out / "model.onnx" and not (out / "model.engine").exists()
    meta = json.loads((out / "tensorrt_build.json").read_text())
    assert meta["engine_file"] is None and meta["package"] is None and meta["engine_measured"] is False
    assert meta["reason"].startswith("neither tensorrt nor tensorrt_rtx is installed")
    # The run learns the same from the BuildResult, without reading the file back.
    assert build.summary == meta and build.artifact_measured is False and build.unmeasured_reason == meta["reason"]
    assert build.stand_in == meta["gated_artifact"] and "stand-in" in build.runner(1).name
    assert {p.name for p in build.files} == {p.name for p in out.iterdir()}
    assert build.table.notes and dict(build.table.rows)["engine"] == "not built"
    assert (out / "trtexec_command.txt").read_text().startswith("trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped")


def test_trtexec_command_for_data_centre_tensorrt():
    profile = trt_builder.ShapeProfile(("input_ids", "attention_mask"), (1, 8, 16), (2, 40, 128))
    options = trt_builder.BuildOptions(optimization_level=5, sparse_weights=True, workspace_mb=2048,
                                       timing_cache=Path("/cache/tensorrt/timing.cache"))
    assert trt_builder.command_line("tensorrt", "model.onnx", "model.engine", profile, options) == (
        "trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped "
        "--minShapes=input_ids:1x2,attention_mask:1x2 --optShapes=input_ids:8x40,attention_mask:8x40 "
        "--maxShapes=input_ids:16x128,attention_mask:16x128 --builderOptimizationLevel=5 "
        "--timingCacheFile=timing.cache --sparsity=enable --memPoolSize=workspace:2048M --skipInference\n")


# --- the run, end to end -----------------------------------------------------------------------

@pytest.mark.skipif(_cuda(), reason="with a GPU the engine is run and measured instead")
def test_run_without_gpu_gates_the_qdq_onnx_and_exits_4(tiny_checkpoint, fast_recipe, tmp_path):
    model = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, model)
    out = tmp_path / "build"
    result = CliRunner().invoke(app, ["run", str(model), "--target", "tensorrt", "--out", str(out),
                                      "--recipe", str(fast_recipe), "--min-speedup", "100"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == ExitCode.TARGET_UNAVAILABLE, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: tensorrt: "), result.output
    assert "need an NVIDIA GPU" in lines[0] and str(out) in lines[0]
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "report.json", "report.md", "tensorrt_build.json", "trtexec_command.txt",
            "config.json", "tokenizer.json"} <= names
    assert ("model.engine" in names) == HAS_RTX
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "tensorrt" and report["target_build"]["engine_measured"] is False
    assert "stand-in" in report["build"]["runtime"]
    # The stand-in's CPU latency is not the engine's: the speedup gate (x100) was not applied.
    assert [g["name"] for g in report["gates"]] == ["accuracy_drop"] and report["passed"] is True
    assert report["artifact"]["quantization"] == "static-minmax"
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# mcompress build: UNVERIFIED") and "Not measured on the target" in markdown
    assert "mcompress build: <span class=\"fail\">UNVERIFIED</span>" in (out / "report.html").read_text()
    # CI's check refuses a build gated on a stand-in unless told to accept it.
    refused = CliRunner().invoke(app, ["check", str(out / "report.json")])
    assert refused.exit_code == ExitCode.GATE_FAILED and "deployed artifact measured | **FAIL**" in refused.output
    accepted = CliRunner().invoke(app, ["check", str(out / "report.json"), "--allow-unmeasured"])
    assert accepted.exit_code == 0, accepted.output


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(_cuda(), reason="with a GPU the engine is run and measured instead")
def test_real_minilm_qdq_gated_and_compiled_ahead_of_time(minilm_classifier, fast_recipe, tmp_path):
    """The real MiniLM through --target tensorrt: TensorRT's own parser and builder accept the
    Q/DQ graph (ahead of time, when tensorrt_rtx is installed), and the graph is gated on ORT."""
    model_dir, eval_data = minilm_classifier
    out = tmp_path / "build"
    result = CliRunner().invoke(app, ["run", str(model_dir), "--target", "tensorrt", "--out", str(out),
                                      "--recipe", str(fast_recipe), "--eval-data", str(eval_data), "--max-drop", "5"])
    assert result.exit_code == ExitCode.TARGET_UNAVAILABLE, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["artifact"]["quantization"].startswith("static")
    model = onnx.load(str(out / "model.onnx"))
    assert not [n for n in model.graph.node if n.domain == "com.microsoft"]
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 40
    if HAS_RTX:
        assert (out / "model.engine").stat().st_size > 1_000_000
        assert report["target_build"]["engine_measured"] is False


# --- on an NVIDIA GPU ----------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs an NVIDIA GPU with CUDA")
def test_engine_matches_onnxruntime_on_gpu(setup, qdq, tmp_path):
    target = get_target("tensorrt")
    model_file = target.build(qdq.state, tmp_path / "build", BuildInputs(setup["recipe"])).model_file
    if model_file.suffix != ".engine":
        pytest.skip(json.loads((tmp_path / "build" / "tensorrt_build.json").read_text()).get("reason"))
    batch = tokenize(setup["tokenizer"], setup["test"].texts, 128)
    got = target.runner(model_file).logits(batch)
    expected = ort_logits(qdq.state.onnx_path, batch)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= MIN_AGREEMENT
    np.testing.assert_allclose(got, expected, rtol=0, atol=QDQ_LOGIT_ATOL)
