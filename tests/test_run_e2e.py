"""`mcompress run` end to end through the CLI: the build's layout and report, the gates, --force,
the artifact run by a fresh ONNX Runtime session and by Optimum, and the real MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import LABELS, ort_session, tree_digest
from mcompress.cli import app
from mcompress.core.errors import ExitCode

BUILD_FILES = {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt", "report.json", "report.md", "report.html"}


def _run_cli(model: Path, out: Path, recipe: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", str(model), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe), *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _ort_predictions(build: Path, texts: list[str], max_length: int = 128) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build)  # the build's own tokenizer files
    session = ort_session(build / "model.onnx")
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="np")
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    return session.run(["logits"], feed)[0].argmax(-1)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_build(tiny_checkpoint, fast_recipe, tmp_path_factory):
    """One successful run of the tiny checkpoint: (exit code, output, build dir, model dir, digest before)."""
    model = tmp_path_factory.mktemp("e2e") / "tiny"
    shutil.copytree(tiny_checkpoint, model)
    before = tree_digest(model)
    out = model.parent / "builds" / "build"  # "builds" does not exist: --out's parents are created
    code, output = _run_cli(model, out, fast_recipe)
    return code, output, out, model, before


def test_run_succeeds_and_writes_the_build(tiny_build):
    code, output, out, model, before = tiny_build
    assert code == ExitCode.OK, output
    assert "Traceback" not in output and "PASS onnx-cpu build" in output
    assert {p.name for p in out.iterdir()} == BUILD_FILES
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".build.")]  # no staging leftovers
    assert tree_digest(model) == before  # the input was only read
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        assert (out / name).read_bytes() == (model / name).read_bytes()


def test_report_contents(tiny_build):
    _, _, out, model, _ = tiny_build
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["target"] == "onnx-cpu"
    assert [p["name"] for p in report["passes"]] == ["export", "optimize", "quantize"]
    export, optimize, quantize = report["passes"]
    assert export["metrics"]["parity_max_abs_diff"] <= 1e-4
    assert optimize["metrics"]["fused_operators"]["Attention"] == 2
    assert quantize["metrics"]["chosen"] in quantize["metrics"]["candidates"]
    assert report["artifact"]["quantization"] == quantize["metrics"]["chosen"].split("/")[0]

    gates = {g["name"]: g for g in report["gates"]}
    assert set(gates) == {"accuracy_drop"}
    drop = gates["accuracy_drop"]
    assert drop["passed"] and drop["threshold"] == 1.0 and drop["ci95"][0] <= drop["value"] <= drop["ci95"][1]
    assert drop["value"] == pytest.approx((report["reference"]["accuracy"] - report["build"]["accuracy"]) * 100, abs=1e-3)
    # Gated as deployed: each text alone and in batches of eval.batch_size; the gate took the worst.
    deployed = report["as_deployed"]
    assert [m["batch_size"] for m in deployed["modes"]] == [1, 16]
    assert drop["value"] == pytest.approx(max(m["drop"] for m in deployed["modes"]), abs=1e-4)
    gated = next(m for m in deployed["modes"] if m["batch_size"] == deployed["gated_batch_size"])
    assert gated["score"] == pytest.approx(report["build"]["accuracy"], abs=1e-9)
    assert deployed["batch_dependent"] == (deployed["max_logit_difference"] > deployed["tolerance"])

    for side in ("reference", "build"):
        (entry,) = report["latency"][side]
        assert (entry["batch_size"], entry["sequence_length"], entry["iterations"]) == (1, 16, 3)
        assert 0 < entry["p50_ms"] <= entry["p95_ms"]

    assert report["data"]["eval"]["examples"] == 24
    assert report["data"]["selection"]["examples"] == 24 and report["data"]["calibration"]["examples"] == 40
    assert report["recipe"]["name"] == "fast-test"
    files = report["artifact"]["files"]
    assert set(files) == BUILD_FILES - {"report.json", "report.md", "report.html"}
    assert files["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size == report["artifact"]["model_bytes"]
    assert files["model.onnx"]["sha256"] == tree_digest(out / "model.onnx")["model.onnx"]
    # The 30522 x 32 word embedding is 97% of the tiny model's weights. Dynamic INT8 quantizes it
    # (measured: 0.257 of FP32). Static Q/DQ (chosen when it measures faster, e.g. on a busy
    # machine) quantizes MatMul/Gemm weights only (17,472 of 1.01M weights; on the fused graph
    # fewer still, q/k/v sit inside Attention), so it saves under 2% (measured: 0.9987 of FP32).
    low, high = (0.2, 0.3) if report["artifact"]["quantization"] == "dynamic" else (0.98, 1.0)
    assert low < report["artifact"]["size_ratio"] < high
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# mcompress build: PASS") and "accuracy_drop" in markdown
    assert "Accuracy as deployed" in markdown and "each text alone" in markdown
    limit = report["distance_to_limit"]
    assert set(limit["peaks_gmacs"]) == {"fp32", "int8"} and min(limit["peaks_gmacs"].values()) > 0
    assert limit["shapes"] == []  # timed at sequence 16 only; MACs are counted at 128
    assert limit["build_precision"] == ("fp32" if report["artifact"]["quantization"] == "fp32" else "int8")
    assert "segmentation" not in report["data"]["eval"]  # the source's tokenizer


def test_fresh_session_reproduces_build_accuracy(tiny_build):
    _, _, out, model, _ = tiny_build
    report = json.loads((out / "report.json").read_text())
    rows = _jsonl(model / "splits" / "test.jsonl")
    labels = np.array([LABELS.index(r["label"]) for r in rows])
    texts = [r["text"] for r in rows]
    modes = {m["batch_size"]: m["score"] for m in report["as_deployed"]["modes"]}
    # The batched mode is the gate's length buckets of eval.batch_size (16): the 24 test texts in
    # order of length, two batches each padded to its longest; the batch-1 mode is each text alone.
    from mcompress.calibration.datasets import length_batches

    together = np.empty(len(texts), dtype=np.int64)
    for idx in length_batches(texts, 16):
        together[idx] = _ort_predictions(out, [texts[i] for i in idx])
    alone = np.array([_ort_predictions(out, [t])[0] for t in texts])
    assert (together == labels).mean() == pytest.approx(modes[16], abs=1e-9)
    assert (alone == labels).mean() == pytest.approx(modes[1], abs=1e-9)
    assert report["build"]["accuracy"] == min(modes.values())
    assert report["build"]["accuracy"] >= 0.75  # the tiny model learnt its synthetic task


def test_optimum_loads_the_build(tiny_build):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    _, _, out, model, _ = tiny_build
    texts = [r["text"] for r in _jsonl(model / "splits" / "validation.jsonl")[:8]]
    ort_model = ORTModelForSequenceClassification.from_pretrained(out)
    assert ort_model.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(texts, truncation=True, max_length=128, padding="longest", return_tensors="pt")
    optimum_predictions = ort_model(**batch).logits.argmax(-1).numpy()
    np.testing.assert_array_equal(optimum_predictions, _ort_predictions(out, texts))


def test_gate_failure_keeps_the_build_and_exits_3(tiny_checkpoint, fast_recipe, tmp_path):
    out = tmp_path / "build"
    code, output = _run_cli(tiny_checkpoint, out, fast_recipe, "--max-latency-ms", "0.000001")
    assert code == ExitCode.GATE_FAILED, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: gate failed: latency_p50"), output
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["latency_p50"]["passed"] is False and gates["latency_p50"]["threshold"] == 0.000001
    assert gates["accuracy_drop"]["passed"] is True
    assert (out / "model.onnx").is_file() and (out / "report.md").read_text().startswith("# mcompress build: FAIL")


def test_force_replaces_an_existing_build(tiny_checkpoint, fast_recipe, tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    (out / "stale.txt").write_text("from an older build")
    (out / "report.json").write_text('{"passed": false}')
    (out / "old").mkdir()
    code, output = _run_cli(tiny_checkpoint, out, fast_recipe, "--force", "--quantize", "dynamic")
    assert code == ExitCode.OK, output
    assert {p.name for p in out.iterdir()} == BUILD_FILES  # old files gone, new build complete
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["artifact"]["quantization"] == "dynamic"
    assert [p.name for p in tmp_path.iterdir()] == ["build"]  # no .partial / .previous left beside it


@pytest.mark.slow
def test_latency_is_measured_in_separate_processes(tiny_checkpoint, fast_recipe, tmp_path, monkeypatch):
    """latency.isolation: process (the default recipe's): the original and the build are each timed in
    a spawned process, so the gate's figures come from there; nothing is left running afterwards."""
    import multiprocessing

    monkeypatch.setenv("MCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "isolated.yaml"
    recipe.write_text(fast_recipe.read_text().replace("isolation: shared", "isolation: process"))
    out = tmp_path / "build"
    code, output = _run_cli(tiny_checkpoint, out, recipe)
    assert code == ExitCode.OK, output
    report = json.loads((out / "report.json").read_text())
    assert report["latency"]["isolation"] == "process"
    for side in ("reference", "build"):
        (entry,) = report["latency"][side]
        assert entry["iterations"] == 3 and 0 < entry["p50_ms"] <= entry["p95_ms"]
    assert "each in its own process" in (out / "report.md").read_text()
    assert multiprocessing.active_children() == []


# --- the real MiniLM --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_minilm_end_to_end(minilm_classifier, fast_recipe, tmp_path):
    model_dir, eval_data = minilm_classifier
    out = tmp_path / "build"

    code, output = _run_cli(model_dir, out, fast_recipe, "--eval-data", str(eval_data), "--max-drop", "5")

    assert code == ExitCode.OK, output
    report = json.loads((out / "report.json").read_text())
    passes = {p["name"]: p for p in report["passes"]}
    assert passes["optimize"]["metrics"]["fused_operators"]["Attention"] == 6
    assert passes["export"]["metrics"]["parity_max_abs_diff"] <= 1e-4
    assert report["artifact"]["size_ratio"] < 0.3
    assert report["data"]["eval"]["examples"] == 48
    assert {g["name"]: g["passed"] for g in report["gates"]} == {"accuracy_drop": True}


def test_size_and_p95_gates_from_the_command_line(tiny_checkpoint, fast_recipe, tmp_path):
    out = tmp_path / "build"
    code, output = _run_cli(tiny_checkpoint, out, fast_recipe, "--quantize", "dynamic",
                            "--max-size-ratio", "0.01", "--max-latency-p95-ms", "10000")
    assert code == ExitCode.GATE_FAILED, output
    assert "size_ratio" in output
    gates = {g["name"]: g for g in json.loads((out / "report.json").read_text())["gates"]}
    assert gates["size_ratio"]["passed"] is False and gates["size_ratio"]["threshold"] == 0.01
    assert gates["latency_p95"]["passed"] is True

