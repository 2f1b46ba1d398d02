"""The model-format registry (compressor/core/formats.py): each format's files, size, copy and
digest; the ModelState and BuildResult that size models through it; target settings as values."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress.core import formats
from mcompress.core.formats import ONNX, OPENVINO_IR, TENSORRT_ENGINE, ModelKind, format_for_kind, format_named, format_of
from mcompress.core.state import ModelState
from mcompress.core.target_base import BuildResult


def _onnx_model(path, external: bool):
    """A one-MatMul graph whose 64x64 weight lives inside the file or in ``<name>.data``."""
    weight = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _ir(dir_, name="graph"):
    xml, weights = dir_ / f"{name}.xml", dir_ / f"{name}.bin"
    xml.write_text("<net name='g'/>\n")
    weights.write_bytes(b"\x01" * 300)
    return xml


def _run(path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": np.ones((1, 64), np.float32)})[0]


def test_formats_are_recognised_by_kind_file_and_name(tmp_path):
    assert format_for_kind(ModelKind.ONNX) is ONNX and format_for_kind(ModelKind.OPENVINO) is OPENVINO_IR
    assert format_for_kind(ModelKind.ENGINE) is TENSORRT_ENGINE and format_for_kind(ModelKind.TORCH) is None
    assert format_of(tmp_path / "a.int8.onnx") is ONNX and format_of(tmp_path / "model.XML") is OPENVINO_IR
    assert all(format_of(tmp_path / f"m{s}") is TENSORRT_ENGINE for s in (".engine", ".plan", ".trt"))
    assert format_of(tmp_path / "config.json") is None and format_of(tmp_path / "model.onnx.data") is None
    assert [format_named(f.name) for f in formats.FORMATS] == list(formats.FORMATS)
    assert [f.model_file for f in formats.FORMATS] == ["model.onnx", "model.xml", "model.engine"]


def test_onnx_without_external_data_is_one_file(tmp_path):
    src = _onnx_model(tmp_path / "fused.onnx", external=False)
    assert ONNX.files(src) == [src] and ONNX.size(src) == src.stat().st_size
    copied = ONNX.copy(src, tmp_path / "out", "model.onnx")
    assert copied == tmp_path / "out" / "model.onnx" and sorted(p.name for p in copied.parent.iterdir()) == ["model.onnx"]
    assert copied.read_bytes() == src.read_bytes() and ONNX.digest(copied) == ONNX.digest(src)


def test_onnx_external_data_travels_with_the_graph(tmp_path):
    src = _onnx_model(tmp_path / "fused.onnx", external=True)
    data = tmp_path / "fused.onnx.data"
    assert data.stat().st_size >= 64 * 64 * 4
    assert ONNX.files(src) == [src, data] and ONNX.size(src) == src.stat().st_size + data.stat().st_size
    expected = _run(src)

    same_name = ONNX.copy(src, tmp_path / "same")  # names kept: a plain copy of both files
    assert sorted(p.name for p in same_name.parent.iterdir()) == ["fused.onnx", "fused.onnx.data"]
    assert ONNX.digest(same_name) == ONNX.digest(src)
    np.testing.assert_array_equal(_run(same_name), expected)

    renamed = ONNX.copy(src, tmp_path / "build", "model.onnx")  # the graph now names model.onnx.data
    assert sorted(p.name for p in renamed.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert ONNX.files(renamed)[1].stat().st_size == data.stat().st_size
    np.testing.assert_array_equal(_run(renamed), expected)
    data.unlink()  # the copy does not read the source's data file
    np.testing.assert_array_equal(_run(renamed), expected)


def test_openvino_ir_is_graph_and_weights(tmp_path):
    xml = _ir(tmp_path)
    weights = tmp_path / "graph.bin"
    assert OPENVINO_IR.files(xml) == [xml, weights]
    assert OPENVINO_IR.size(xml) == xml.stat().st_size + 300
    copied = OPENVINO_IR.copy(xml, tmp_path / "build", "model.xml")
    assert sorted(p.name for p in copied.parent.iterdir()) == ["model.bin", "model.xml"]
    assert (copied.parent / "model.bin").read_bytes() == weights.read_bytes()
    assert OPENVINO_IR.digest(copied) == OPENVINO_IR.digest(xml)  # contents, not names
    weights.write_bytes(b"\x02" * 300)
    assert OPENVINO_IR.digest(copied) != OPENVINO_IR.digest(xml)
    weights.unlink()
    with pytest.raises(FileNotFoundError):  # an IR without its weights is not a model
        OPENVINO_IR.size(xml)


def test_tensorrt_engine_is_one_file(tmp_path):
    engine = tmp_path / "x.plan"
    engine.write_bytes(b"engine" * 10)
    (tmp_path / "x.plan.data").write_bytes(b"not part of an engine")
    assert TENSORRT_ENGINE.files(engine) == [engine] and TENSORRT_ENGINE.size(engine) == 60
    copied = TENSORRT_ENGINE.copy(engine, tmp_path / "build", TENSORRT_ENGINE.model_file)
    assert [p.name for p in copied.parent.iterdir()] == ["model.engine"]
    assert TENSORRT_ENGINE.digest(copied) == TENSORRT_ENGINE.digest(engine) != ONNX.digest(engine)


def test_model_state_sizes_and_names_its_file_through_the_format(tmp_path):
    src = _onnx_model(tmp_path / "fused.onnx", external=True)
    state = ModelState(ModelKind.ONNX, source=None, tokenizer=None, model_file=src)
    assert state.format is ONNX and state.size_bytes() == ONNX.size(src) > src.stat().st_size
    assert state.onnx_path == src and state.ir_path is None
    ir = state.as_openvino(_ir(tmp_path), float_onnx=src)
    assert ir.format is OPENVINO_IR and ir.ir_path == ir.model_file and ir.onnx_path is None
    assert ir.size_bytes() == OPENVINO_IR.size(ir.model_file) and ir.annotations == {"float_onnx": src}
    moved = dataclasses.replace(ir, model_file=tmp_path / "other.xml")  # how a pass swaps the file
    assert moved.ir_path == tmp_path / "other.xml"
    with pytest.raises(AttributeError):  # one path: the per-format names are read-only views
        state.onnx_path = src


def test_build_result_sizes_the_gated_model_by_its_format(tmp_path):
    xml = _ir(tmp_path, "model")
    result = BuildResult(files=(xml, tmp_path / "model.bin"), model_file=xml, runner=lambda threads: None)
    assert result.model_bytes == OPENVINO_IR.size(xml) and result.artifact_measured and result.table is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.artifact_measured = False


def test_one_tokenizer_file_list():
    from mcompress.bundle import package
    from mcompress.pipeline import cache
    from mcompress.targets.onnx_cpu import target

    assert package.TOKENIZER_FILES is cache.TOKENIZER_FILES is target.TOKENIZER_FILES is formats.TOKENIZER_FILES
    assert set(formats.VOCABULARY_FILES) < set(formats.TOKENIZER_FILES)


def test_target_settings_are_values_derived_from_the_recipe():
    from mcompress.core.recipe import Recipe
    from mcompress.targets import get_target

    recipe = Recipe().with_overrides(**{"openvino.inference_precision": "bf16"})
    target = get_target("openvino-cpu")
    before = dict(vars(target))
    target.validate_recipe(Recipe())
    assert vars(target) == before  # validating sets nothing
    settings = target.settings(recipe)
    assert settings.inference_precision == "bf16" and target.settings(Recipe()).inference_precision == "f32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.inference_precision = "f32"
    trt = get_target("tensorrt").settings(recipe.with_overrides(**{"max_length": 64}))
    assert (trt.max_length, trt.eval_batch_size, trt.config.builder_optimization_level) == (64, 16, 3)
    json.dumps(dataclasses.asdict(get_target("onnx-cpu").settings(recipe)))  # plain values
