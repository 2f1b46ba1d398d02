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
from mcompress.core.errors import ExitCode, InputError  # noqa: E402
from mcompress.tasks import evaluate  # noqa: E402
from mcompress.core.pass_base import PassContext  # noqa: E402
from mcompress.passes.convert.openvino_ir import ConvertOpenVINO  # noqa: E402
from mcompress.passes.export.onnx_export import ExportOnnx  # noqa: E402
from mcompress.passes.quantize.nncf_ptq import QuantizeNNCF, quantized_operations  # noqa: E402
from mcompress.passes.quantize.ort_int8 import QuantizeInt8  # noqa: E402
from mcompress.core.state import ModelKind, ModelState  # noqa: E402
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


def test_pass_cache_round_trips_an_openvino_ir(setup, exported, converted, tmp_path):
    from mcompress.pipeline.cache import PassCache

    cache = PassCache.open(tmp_path / "cache")
    assert cache.store("k" * 64, "convert", converted)
    restored = cache.load("k" * 64, exported.state)
    assert restored.state.kind is ModelKind.OPENVINO and restored.metrics == json.loads(json.dumps(converted.metrics))
    for suffix in (".xml", ".bin"):  # the weights travel with the graph
        assert restored.state.ir_path.with_suffix(suffix).read_bytes() == converted.state.ir_path.with_suffix(suffix).read_bytes()
    assert restored.state.size_bytes() == converted.state.size_bytes()


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


@pytest.mark.slow
def test_accuracy_control_reverts_operations_when_budget_is_tight(setup, converted, tmp_path):
    """Calibrated on one two-token text, the activation ranges are far too narrow for real inputs
    and INT8 loses accuracy; with a zero budget, NNCF's accuracy control must revert operations to
    float until the selection accuracy is back at FP32's, and the pass must report which."""
    data = _both_splits(setup)
    one_text = LabelledTexts(["ok"], None, "one text")

    def context(work, **overrides):
        ctx = _context(setup, work, selection=data, **{"openvino.calibration_examples": 1, **overrides})
        ctx.calibration = one_text
        return ctx

    tok, runner = setup["tokenizer"], get_target("openvino-cpu").runner
    fp32 = evaluate(runner(converted.state.ir_path, 1), tok, data, 128).accuracy
    plain = QuantizeNNCF().call(converted.state, context(tmp_path / "plain", **{"openvino.accuracy_control": False}))
    # The premise: badly calibrated INT8 breaks a zero budget (if this fails, the test no longer
    # exercises the revert path and needs a harsher setup).
    assert evaluate(runner(plain.state.ir_path, 1), tok, data, 128).accuracy < fp32

    controlled = QuantizeNNCF().call(converted.state, context(tmp_path / "ac", **{"gates.max_drop": 0.0}))
    ac = controlled.metrics["accuracy_control"]
    assert ac["budget"] == 0.0 and ac["selection_examples"] == len(data)
    assert ac["reverted_operations"], "accuracy control reverted nothing"
    assert controlled.state.annotations["float_layers"] == ac["reverted_operations"]
    # Exactly the reverted operations lost their quantizers in the saved IR: counted the same way
    # on the fully quantized IR (same calibration, no accuracy control) and on the controlled one.
    # (NNCF's own count before reverting, quantized_operations_before, is taken on its graph before
    # the weights are compressed, and can include operations folded away afterwards.)
    import openvino as ov

    fully_int8 = set(quantized_operations(ov.Core().read_model(str(plain.state.ir_path))))
    still_int8 = set(quantized_operations(ov.Core().read_model(str(controlled.state.ir_path))))
    assert controlled.metrics["quantized_operations"] == len(still_int8)
    assert set(ac["reverted_operations"]) <= fully_int8
    assert still_int8 == fully_int8 - set(ac["reverted_operations"])
    assert evaluate(runner(controlled.state.ir_path, 1), tok, data, 128).accuracy >= fp32


# --- the CLI: build, report, bundle -------------------------------------------------------------

@pytest.fixture(scope="module")
def ov_build(tiny_checkpoint, fast_recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov-cli") / "build"
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", "openvino-cpu", "--recipe", str(fast_recipe),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_cli_build_holds_ir_tokenizer_labels_and_report(ov_build, tiny_checkpoint):
    for name in ("model.xml", "model.bin", "config.json", "tokenizer.json", "report.json", "report.md", "openvino_build.json"):
        assert (ov_build / name).is_file(), name
    assert not (ov_build / "model.onnx").exists()
    report = json.loads((ov_build / "report.json").read_text())
    assert report["target"] == "openvino-cpu" and report["passed"]
    assert [p["name"] for p in report["passes"]] == ["export", "convert", "quantize"]
    assert report["artifact"]["model_file"] == "model.xml" and report["artifact"]["quantization"] == "nncf-int8"
    assert report["artifact"]["model_bytes"] == sum((ov_build / n).stat().st_size for n in ("model.xml", "model.bin"))
    tb = report["target_build"]
    # The gated runtime and how it compiled: precision and threads as the CPU plugin reports them.
    assert tb["compiled"]["inference_precision"] == "f32" and tb["compiled"]["inference_num_threads"] == "1"
    assert report["build"]["runtime"].startswith("openvino") and "f32, 1 threads" in report["build"]["runtime"]
    assert "accuracy_control" in report["passes"][-1]["metrics"]
    assert json.loads((ov_build / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert "Target build (OpenVINO)" in (ov_build / "report.md").read_text()
    assert "<h2>Target build (OpenVINO)</h2>" in (ov_build / "report.html").read_text()
    assert {(r["batch_size"], r["sequence_length"]) for r in report["latency"]["build"]} == {(1, 16)}


def test_bundle_of_openvino_build_reproduces_its_predictions(ov_build, tmp_path, tiny_checkpoint, setup):
    from mcompress.runtime import load

    bundle = tmp_path / "tiny.mcpkg"
    result = CliRunner().invoke(app, ["package", str(ov_build), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    loaded = load(bundle, threads=1)
    assert loaded.manifest["model_format"] == "openvino-ir" and loaded.manifest["runtime"]["openvino"]
    assert {"model.xml", "model.bin"} <= set(loaded.manifest["files"])
    texts = setup["test"].texts
    expected = evaluate(get_target("openvino-cpu").runner(ov_build / "model.xml", 1), setup["tokenizer"], setup["test"], 128)
    assert np.allclose(loaded.logits(texts), expected.logits, atol=1e-5)
    assert [p["label"] for p in loaded.predict(texts[:3])] == [("neg", "pos")[i] for i in expected.predictions[:3]]


def test_a_servers_openvino_session_pads_lengths_to_a_few_shapes_and_answers_the_same(ov_build, tmp_path, setup):
    from mcompress.bundle.runtime import SERVER_LENGTH_MULTIPLE
    from mcompress.runtime import load

    bundle = tmp_path / "tiny.mcpkg"
    assert CliRunner().invoke(app, ["package", str(ov_build), "-o", str(bundle)]).exit_code == 0
    direct, served = load(bundle, threads=1), load(bundle, threads=1, server=True)
    texts = setup["test"].texts
    assert np.allclose(served.logits(texts), direct.logits(texts), atol=1e-3)
    shapes, request = [], served.session.request

    class Recording:  # the infer request, recording the shape of each call's inputs
        def infer(self, feed):
            shapes.append(next(iter(feed.values())).shape)
            return request.infer(feed)

        def get_tensor(self, port):
            return request.get_tensor(port)

    served.session.request = Recording()
    for n in range(1, 21):
        served.logits([" ".join(["word"] * n)] * n, batch_size=32)
    assert len(shapes) == 20 and {length % SERVER_LENGTH_MULTIPLE for _, length in shapes} == {0}
    assert {rows for rows, _ in shapes} == {1, 2, 4, 8, 16, 24}  # powers of two up to 8, then steps of 8
    assert len(served.logits(texts[:3])) == 3


def test_bundle_runtime_needs_only_openvino_tokenizers_numpy(ov_build, tmp_path):
    from conftest import predict_with_imports_blocked

    bundle = tmp_path / "tiny.mcpkg"
    assert CliRunner().invoke(app, ["package", str(ov_build), "-o", str(bundle)]).exit_code == 0
    blocked = {"torch", "transformers", "pydantic", "typer", "rich", "onnxruntime", "onnx", "nncf", "optimum"}
    out = predict_with_imports_blocked(bundle, blocked, ["a wonderful, moving film", "dull and tedious"], threads=1)
    assert out["loaded"] == [] and [r["label"] for r in out["results"]] and len(out["results"]) == 2


def test_missing_openvino_fails_up_front(tiny_checkpoint, fast_recipe, tmp_path, monkeypatch):
    import mcompress.targets.openvino_cpu.target as ov_target

    monkeypatch.setattr(ov_target, "missing_packages", lambda: ["openvino", "nncf"])
    for target in ("openvino-cpu", "cpu-auto"):
        out = tmp_path / target
        result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", target, "--recipe", str(fast_recipe),
                                          "--out", str(out)])
        assert result.exit_code == ExitCode.TARGET_UNAVAILABLE, result.output
        lines = [l for l in result.output.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "mcompress[openvino]" in lines[0], result.output
        assert not out.exists() and not list(tmp_path.glob(f".{target}*"))


@pytest.mark.slow
def test_cpu_auto_keeps_the_faster_passing_build_and_says_why(tiny_checkpoint, fast_recipe, tmp_path):
    out = tmp_path / "auto"
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", "cpu-auto", "--recipe", str(fast_recipe),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    choice = report["cpu_auto"]
    # Every CPU target at every precision this CPU offers: onnx-cpu's FP32 floor always, openvino's
    # BF16 float ops only where the CPU plugin lists BF16. "bf16: not offered: ..." names each target
    # that does not offer it: onnx-cpu always (no x86 BF16 kernels), openvino-cpu on a CPU without BF16.
    names = set(choice["candidates"])
    assert {"onnx-cpu", "onnx-cpu+fp32", "openvino-cpu"} <= names <= {"onnx-cpu", "onnx-cpu+fp32", "openvino-cpu",
                                                                       "openvino-cpu+bf16"}
    not_offered = choice["offered"].get("bf16", "")
    assert not_offered.startswith("not offered: ") and "onnx-cpu: " in not_offered
    assert ("openvino-cpu+bf16" in names) != ("openvino-cpu: " in not_offered)
    assert choice["candidates"]["onnx-cpu+fp32"]["precision"] == "fp32"
    fp32_report = (out / "report.json") if choice["chosen"] == "onnx-cpu+fp32" else out / "candidates" / "onnx-cpu+fp32.report.json"
    fp32_report = json.loads(fp32_report.read_text())
    assert fp32_report["artifact"]["quantization"] == "fp32" and fp32_report["recipe"]["quantize"]["mode"] == "none"
    chosen = choice["candidates"][choice["chosen"]]
    assert report["target"] == chosen["target"] and "sequence 128: " in choice["reason"]
    b1 = {n: c["race"]["b1"]["p50_ms"] for n, c in choice["candidates"].items()}
    assert all(c["passed"] for c in choice["candidates"].values())
    # The kept build is the fastest at batch 1, or within the tie tolerance of it.
    assert b1[choice["chosen"]] <= min(b1.values()) * 1.05 + 1e-9
    assert all(c["race"]["b1"]["sequence_length"] == 128 for c in choice["candidates"].values())  # recipe max_length
    model_file = report["artifact"]["model_file"]
    assert (out / model_file).is_file() and (out / "report.md").is_file()
    for other in (n for n in choice["candidates"] if n != choice["chosen"]):
        other_report = json.loads((out / "candidates" / f"{other}.report.json").read_text())
        assert other_report["target"] == choice["candidates"][other]["target"]
    assert not [p for p in (out / "candidates").iterdir() if p.is_dir()]  # the other build's model is not kept
    assert "CPU target choice (cpu-auto)" in (out / "report.md").read_text()
    assert "<h2>CPU target choice (cpu-auto)</h2>" in (out / "report.html").read_text()
    assert f"CPU choice kept {choice['chosen']}" in result.output


@pytest.mark.slow
def test_default_cpu_target_races_what_is_installed(tiny_checkpoint, fast_recipe, tmp_path, monkeypatch):
    """No --target: the CPU choice. Without openvino it races onnx-cpu's precisions and says why
    openvino-cpu was not built, instead of failing."""
    import mcompress.targets.openvino_cpu.target as ov_target

    monkeypatch.setattr(ov_target, "missing_packages", lambda: ["openvino", "nncf"])
    out = tmp_path / "cpu"
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--recipe", str(fast_recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    choice = json.loads((out / "report.json").read_text())["cpu_auto"]
    assert set(choice["candidates"]) == {"onnx-cpu", "onnx-cpu+fp32"}
    assert {c["precision"] for c in choice["candidates"].values()} == {"int8", "fp32"}
    assert "mcompress[openvino]" in choice["unavailable"]["openvino-cpu"]
    assert "openvino-cpu not built" in (out / "report.md").read_text()


def test_default_cpu_target_leaves_out_a_target_that_refuses_the_recipe(tiny_checkpoint, fast_recipe):
    from mcompress.pipeline.cpu_auto import _cpu_targets
    from mcompress.pipeline.prepare import RunRequest

    pytest.importorskip("openvino")
    names, left_out = _cpu_targets(RunRequest(tiny_checkpoint, "cpu", recipe_path=fast_recipe,
                                              overrides={"quantize.mode": "dynamic"}))
    assert names == ("onnx-cpu",) and "cannot run quantize.mode 'dynamic'" in left_out["openvino-cpu"]
    assert _cpu_targets(RunRequest(tiny_checkpoint, "cpu", recipe_path=fast_recipe)) == (("onnx-cpu", "openvino-cpu"), {})


def test_bad_recipe_for_openvino_is_one_line_exit_2_before_any_work(tiny_checkpoint, fast_recipe, tmp_path):
    for target in ("openvino-cpu", "cpu-auto"):
        out = tmp_path / target
        result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--target", target, "--recipe", str(fast_recipe),
                                          "--quantize", "dynamic", "--out", str(out)])
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        lines = [l for l in result.output.splitlines() if l.strip()]
        assert len(lines) == 1 and "cannot run quantize.mode 'dynamic'" in lines[0], result.output
        assert not out.exists()
