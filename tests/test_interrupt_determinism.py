"""Interruptions and determinism through the real entry point (`python -m mcompress.cli run`).

- SIGTERM while the quantize pass runs: exit 130, no --out, no staging dir, no temp work dir, no
  half-written cache entry; a rerun reuses the cached export and optimize outputs and gives the
  same model bytes and accuracy as an uninterrupted run.
- SIGKILL at the same point (no cleanup at all): the cache holds only complete entries and the
  rerun is again identical.
- Two --no-cache runs with a pinned quantize mode and fusion give byte-identical model.onnx and
  identical report.json apart from timings; each pass alone is byte-deterministic.

The kill lands during quantization by polling the cache for the optimize entry (entries appear by
rename, so one that is visible is complete) and by giving static calibration 3,000 examples
(about a second of work here), not by a test hook in the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import synthetic_rows, write_jsonl
from mcompress.core.errors import ExitCode

RECIPE = """\
name: interrupt-test
optimize:
  fusion: fused
quantize:
  mode: static
  static:
    calibration_examples: 3000
latency:
  batch_sizes: [1]
  sequence_lengths: [16]
  warmup: 1
  iterations: 3
  threads: 1
"""
# Fields that hold measured time: they differ between any two runs.
TIMING_KEYS = {"wall_s", "latency", "p50_ms_b1_s128", "p50_ms_b8_s128", "latency_score_ms",
               "distance_to_limit"}  # GEMM peaks and achieved GMAC/s are measured rates
TIMING_GATES = {"latency_p50", "speedup"}


def strip_timings(report: dict, also: set[str] = frozenset()) -> dict:
    """report.json without timing fields (and the keys in ``also``), for equality across runs."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING_KEYS and k not in also}
        if isinstance(value, list):
            return [strip(v) for v in value if not (isinstance(v, dict) and v.get("name") in TIMING_GATES)]
        return value

    return strip(report)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("interrupt")
    (root / "recipe.yaml").write_text(RECIPE)
    write_jsonl(root / "calib.jsonl", synthetic_rows(3000, seed=7))
    return {"root": root, "model": tiny_checkpoint, "recipe": root / "recipe.yaml", "calib": root / "calib.jsonl"}


def _command(inputs: dict, out: Path, *cache: str) -> list[str]:
    return [sys.executable, "-m", "mcompress.cli", "run", str(inputs["model"]), "--target", "onnx-cpu", "--recipe", str(inputs["recipe"]),
            "--calib-data", str(inputs["calib"]), "--out", str(out), *cache]


def _run(command: list[str], tmpdir: Path) -> subprocess.CompletedProcess:
    tmpdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "200"})


def _build(out: Path) -> tuple[dict, str]:
    return json.loads((out / "report.json").read_text()), _sha256(out / "model.onnx")


@pytest.fixture(scope="module")
def reference(inputs) -> tuple[dict, str]:
    """An uninterrupted run without the cache, in this process (the runs compared with it are not)."""
    from typer.testing import CliRunner

    from mcompress.cli import app

    out = inputs["root"] / "reference"
    result = CliRunner().invoke(app, _command(inputs, out, "--no-cache")[3:])
    assert result.exit_code == ExitCode.OK, result.output
    return _build(out)


def _cached_passes(cache: Path) -> set[str]:
    passes = set()
    for entry in (cache / "entries").glob("*/entry.json"):
        passes.add(json.loads(entry.read_text())["pass"])
    return passes


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_kill_during_quantize_then_resume(inputs, reference, tmp_path, sig):
    out, cache, tmpdir = tmp_path / "build", tmp_path / "cache", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen(_command(inputs, out, "--cache-dir", str(cache)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        deadline = time.monotonic() + 240
        while not {"export", "optimize"} <= (_cached_passes(cache) if cache.is_dir() else set()):
            assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
            assert time.monotonic() < deadline, "no export/optimize cache entries after 240 s"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert "quantize" not in _cached_passes(cache), "the signal arrived after quantization had finished"
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == ExitCode.INTERRUPTED, stderr
        assert "interrupted:" in stderr and "Traceback" not in stderr
        # (onnxruntime keeps a small .ses file in TMPDIR: not a directory, not ours)
        assert not [p.name for p in tmpdir.iterdir() if p.is_dir()], "the temp work dir was left behind"
        assert not list((cache / "tmp").iterdir()), "a half-written cache entry was left behind"
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert all((e / "entry.json").is_file() for e in (cache / "entries").iterdir())  # only complete entries

    rerun = _run(_command(inputs, out, "--cache-dir", str(cache)), tmp_path / "tmp-rerun")
    assert rerun.returncode == ExitCode.OK, rerun.stderr
    assert "reused cached export, optimize " in rerun.stderr
    report, model_sha = _build(out)
    assert [(p["name"], p["cached"]) for p in report["passes"]] == [("export", True), ("optimize", True), ("quantize", False)]
    ref_report, ref_sha = reference
    assert model_sha == ref_sha
    assert report["build"]["accuracy"] == ref_report["build"]["accuracy"]
    assert strip_timings(report, {"cached", "cache_key"}) == strip_timings(ref_report, {"cached", "cache_key"})
    assert not list((cache / "tmp").iterdir())  # a killed run's temp dirs are swept by the next one


@pytest.mark.slow
def test_two_uncached_runs_are_identical(inputs, reference, tmp_path):
    out = tmp_path / "again"
    proc = _run(_command(inputs, out, "--no-cache"), tmp_path / "tmp")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "reused cached" not in proc.stderr
    report, model_sha = _build(out)
    ref_report, ref_sha = reference
    assert model_sha == ref_sha
    assert strip_timings(report) == strip_timings(ref_report)
    assert all(p["cached"] is False and p["cache_key"] is None for p in report["passes"])
    # The strip removes timings only.
    assert set(report) - set(strip_timings(report)) == {"wall_s", "latency", "distance_to_limit"}


def test_each_pass_is_byte_deterministic(tiny_checkpoint, fast_recipe, tmp_path):
    from mcompress.calibration.datasets import load_labelled_texts
    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
    from mcompress.core.pass_base import PassContext
    from mcompress.passes.export.onnx_export import ExportOnnx
    from mcompress.passes.optimize.transformer_fusion import FuseTransformer
    from mcompress.passes.quantize.ort_int8 import QuantizeInt8
    from mcompress.core.recipe import load_recipe
    from mcompress.core.state import ModelKind, ModelState
    from mcompress.targets import get_target

    ckpt = inspect_checkpoint(tiny_checkpoint)
    splits = tiny_checkpoint / "splits"
    train = load_labelled_texts(splits, ckpt.label2id, split="train")
    validation = load_labelled_texts(splits, ckpt.label2id, split="validation")

    def chain(work: Path) -> dict[str, str]:
        model, tokenizer = load_model_and_tokenizer(ckpt)  # a fresh load each time
        state = ModelState(ModelKind.TORCH, ckpt, tokenizer, torch_model=model)
        ctx = lambda sub, **kw: PassContext(load_recipe(fast_recipe).with_overrides(**kw), get_target("onnx-cpu"),
                                            work / sub, train, validation, 1.0)
        digests = {}
        state = ExportOnnx().call(state, ctx("export")).state
        digests["export"] = _sha256(state.onnx_path)
        state = FuseTransformer().call(state, ctx("optimize")).state
        digests["optimize"] = _sha256(state.onnx_path)
        for mode in ("dynamic", "static"):
            for fusion, src in state.annotations["graph_variants"].items():
                single = ModelState(ModelKind.ONNX, ckpt, tokenizer, model_file=src)
                quantized = QuantizeInt8().call(single, ctx(f"{mode}-{fusion}", **{"quantize.mode": mode})).state
                digests[f"{mode}/{fusion}"] = _sha256(quantized.onnx_path)
        return digests

    first, second = chain(tmp_path / "a"), chain(tmp_path / "b")
    assert set(first) == {"export", "optimize", "dynamic/fused", "dynamic/unfused", "static/fused", "static/unfused"}
    assert first == second


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_a_signal_during_the_final_rename_waits_for_it(tmp_path, monkeypatch):
    from mcompress.pipeline.outputs import on_interrupt_signal, staged_dir

    out = tmp_path / "build"
    out.mkdir()
    (out / "old.txt").write_text("previous build")
    real_rename = Path.rename
    renames = []

    def rename(self, target):
        if not renames:  # SIGTERM arrives just as the old build is moved aside
            on_interrupt_signal(signal.SIGTERM, None)
        renames.append(self.name)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as staging:
            (staging / "model.onnx").write_text("new build")
    assert len(renames) == 2  # both renames ran before the interrupt was raised
    assert [p.name for p in out.iterdir()] == ["model.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["build"]


def test_leftovers_of_killed_runs_are_swept(tmp_path):
    from mcompress.pipeline.outputs import staged_dir

    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "build"
    for name in (f".build.partial-{dead}", f".build.partial-{alive}", f".build.previous-{dead}"):
        (tmp_path / name).mkdir()
    with staged_dir(out):  # no out yet: a dead run's .previous is the only copy of the old build
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".build.partial-{alive}", f".build.previous-{dead}", "build"]
    with staged_dir(out):  # now out exists: the stale .previous goes
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".build.partial-{alive}", "build"]


def test_an_interrupt_while_staging_leaves_the_previous_build(tmp_path):
    from mcompress.pipeline.outputs import staged_dir

    out = tmp_path / "build"
    out.mkdir()
    (out / "model.onnx").write_text("previous build")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as staging:
            (staging / "model.onnx").write_text("half a new build")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["build"] and (out / "model.onnx").read_text() == "previous build"
