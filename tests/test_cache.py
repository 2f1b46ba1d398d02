"""The pass cache (compressor/pipeline/cache.py): keys that change exactly when a pass's inputs change,
entries that restore the same state (files, graph variants, metrics, torch models), crash safety
(atomic entries, corrupt entries rebuilt, dead processes' temp dirs swept) and LRU eviction."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mcompress.pipeline.cache import PassCache, source_key
from mcompress.calibration.datasets import LabelledTexts
from mcompress.core.checkpoint import inspect_checkpoint
from mcompress.cli import app
from mcompress.core.errors import ExitCode
from mcompress.core.manager import PassManager
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.passes.export.onnx_export import ExportOnnx
from mcompress.passes.optimize.transformer_fusion import FuseTransformer
from mcompress.passes.quantize.ort_int8 import QuantizeInt8
from mcompress.core.state import ModelKind, ModelState
from mcompress.targets import get_target


def _ctx(setup, work_dir: Path, calibration: LabelledTexts | None = None, selection: LabelledTexts | None = None,
         reference: float = 1.0, **overrides) -> PassContext:
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(setup["recipe"].with_overrides(**overrides), get_target("onnx-cpu"), work_dir,
                       calibration or setup["train"], selection or setup["validation"], reference)


def _torch_state(setup, model=None) -> ModelState:
    return ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=model or setup["model"])


class _Writer(Pass):
    """Writes a model file derived from its input, an external-data file, and a second graph variant."""

    accepts = (ModelKind.TORCH, ModelKind.ONNX)
    produces = ModelKind.ONNX

    def __init__(self, name: str, setting: str = "a", annotations: dict | None = None):
        self.name, self.setting, self.calls, self.extra = name, setting, 0, annotations or {}

    def cache_key_parts(self, ctx):
        return {"setting": self.setting, "max_length": ctx.recipe.max_length}

    def call(self, state, ctx):
        self.calls += 1
        before = state.onnx_path.read_bytes() if state.onnx_path else b"torch:"
        out = ctx.work_dir / self.name
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.onnx").write_bytes(before + self.name.encode() + self.setting.encode())
        (out / "model.onnx.data").write_bytes(b"external data of " + self.name.encode())
        (out / "alt.onnx").write_bytes(b"variant of " + self.name.encode())
        variants = {"main": out / "model.onnx", "alt": out / "alt.onnx"}
        return PassResult(state.as_onnx(out / "model.onnx", graph_variants=variants, note=["x", 1], **self.extra), True,
                          {"calls": self.calls, "score": np.float32(0.5)})


def _run(passes, setup, work: Path, cache: PassCache, **overrides):
    return PassManager(passes, cache=cache).run(_torch_state(setup), _ctx(setup, work, **overrides))


@pytest.mark.slow
def test_second_run_reuses_every_pass_and_restores_files_variants_and_metrics(setup, tmp_path):
    cache = PassCache.open(tmp_path / "cache")
    passes = [_Writer("one"), _Writer("two")]
    first_state, first = _run(passes, setup, tmp_path / "w1", cache)
    expected = {name: first_state.annotations["graph_variants"][name].read_bytes() for name in ("main", "alt")}
    model_bytes = first_state.onnx_path.read_bytes()

    state, records = _run(passes, setup, tmp_path / "w2", PassCache.open(tmp_path / "cache"))

    assert [p.calls for p in passes] == [1, 1]  # nothing ran twice
    assert [(r.name, r.cached) for r in records] == [("one", True), ("two", True)]
    assert [r.cache_key for r in records] == [r.cache_key for r in first] and not any(r.cached for r in first)
    assert records[1].metrics == {"calls": 1, "score": 0.5}  # numpy scalars stored as JSON numbers
    assert records[1].modified is True and records[1].size_bytes == first[1].size_bytes
    entries = (tmp_path / "cache" / "entries").resolve()
    assert entries in state.onnx_path.resolve().parents and state.onnx_path.read_bytes() == model_bytes
    assert state.onnx_path.with_name("model.onnx.data").read_bytes() == b"external data of two"
    variants = state.annotations["graph_variants"]
    assert all(entries in p.resolve().parents for p in variants.values())
    assert {name: p.read_bytes() for name, p in variants.items()} == expected
    assert state.annotations["note"] == ["x", 1]
    assert state.source is setup["ckpt"] and state.tokenizer is setup["tokenizer"]


def test_keys_follow_exactly_what_a_pass_reads(setup, tmp_path):
    cache = PassCache.open(tmp_path / "cache")
    _, base = _run([_Writer("one"), _Writer("two")], setup, tmp_path / "w1", cache)
    # The second pass's setting changed: the first is reused, the second runs again.
    changed = [_Writer("one"), _Writer("two", setting="b")]
    _, records = _run(changed, setup, tmp_path / "w2", cache)
    assert [r.cached for r in records] == [True, False] and [p.calls for p in changed] == [0, 1]
    # A setting neither pass reads (eval, latency) reuses both; one both read reruns both.
    _, records = _run([_Writer("one"), _Writer("two")], setup, tmp_path / "w3", cache,
                      **{"eval.batch_size": 3, "latency.iterations": 99})
    assert [r.cached for r in records] == [True, True]
    _, records = _run([_Writer("one"), _Writer("two")], setup, tmp_path / "w4", cache, max_length=64)
    assert [r.cached for r in records] == [False, False]
    # Other library versions: nothing is reused.
    other = PassCache(tmp_path / "cache", 10**9, versions={"onnxruntime": "0.0"})
    assert other.key(source_key(setup["ckpt"]), _Writer("one"), _ctx(setup, tmp_path / "w5")) != base[0].cache_key


def test_source_key_covers_weights_config_and_tokenizer(checkpoint_copy):
    first, second = checkpoint_copy(), checkpoint_copy()
    assert source_key(inspect_checkpoint(first)) == source_key(inspect_checkpoint(second))  # contents, not paths
    config = json.loads((second / "tokenizer_config.json").read_text())
    config["model_max_length"] = 7
    (second / "tokenizer_config.json").write_text(json.dumps(config))
    assert source_key(inspect_checkpoint(first)) != source_key(inspect_checkpoint(second))


def _key(p: Pass, setup, tmp_path, calibration=None, selection=None, reference=1.0, **overrides) -> str:
    cache = PassCache(tmp_path / "unused", 10**9, versions={})
    return cache.key("parent", p, _ctx(setup, tmp_path / "w", calibration, selection, reference, **overrides))


def test_real_pass_keys(setup, tmp_path):
    key = lambda p, **kw: _key(p, setup, tmp_path, **kw)
    export, optimize, quantize = ExportOnnx(), FuseTransformer(), QuantizeInt8()
    run_only = {"eval.batch_size": 7, "latency.warmup": 9, "gates.min_speedup": 2.0}
    for p in (export, optimize):
        assert key(p) == key(p, **run_only) == key(p, **{"quantize.mode": "static", "gates.max_drop": 5.0})
    assert key(export) != key(export, **{"export.opset": 18}) != key(export, max_length=64)
    assert key(export) != key(export, selection=setup["train"])  # the parity texts
    assert key(optimize) == key(optimize, max_length=64) != key(optimize, **{"optimize.fusion": "fused"})
    for change in ({"quantize.mode": "dynamic"}, {"gates.max_drop": 2.0}, {"max_length": 64}, {"seed": 1},
                   {"latency.threads": 2}, {"quantize.static.calibration_examples": 4}):
        assert key(quantize) != key(quantize, **change), change
    assert key(quantize) == key(quantize, **{"latency.warmup": 9, "export.opset": 18, "optimize.fusion": "fused"})
    assert key(quantize) != key(quantize, reference=0.5)
    # Calibration texts past quantize.static.calibration_examples (8 in the fast recipe) are never read.
    train = setup["train"]
    tail_changed = LabelledTexts(train.texts[:8] + ["other"] * (len(train) - 8), None, train.source)
    head_changed = LabelledTexts(["other"] + train.texts[1:], None, train.source)
    assert key(quantize, calibration=tail_changed) == key(quantize) != key(quantize, calibration=head_changed)


def test_default_key_is_the_recipe_without_run_settings_plus_data(setup, tmp_path):
    p = _Writer("default")
    default = Pass.cache_key_parts  # the base class's conservative default
    parts = lambda **kw: default(p, _ctx(setup, tmp_path / "w", **kw))
    assert parts() == parts(**{"eval.batch_size": 7, "latency.iterations": 9})
    assert parts() != parts(**{"quantize.mode": "static"}) and parts() != parts(calibration=setup["validation"])
    assert "name" not in parts()["recipe"] and {"eval", "latency"}.isdisjoint(parts()["recipe"])


@pytest.mark.parametrize("damage", ["truncated_file", "missing_file", "no_entry_json", "garbage_entry_json", "flipped_byte"])
def test_damaged_entry_is_ignored_and_rebuilt(setup, tmp_path, damage, caplog):
    cache = PassCache.open(tmp_path / "cache")
    _run([_Writer("one")], setup, tmp_path / "w1", cache)
    (entry,) = (tmp_path / "cache" / "entries").iterdir()
    model = next(entry.glob("files/*/model.onnx"))
    if damage == "truncated_file":
        model.write_bytes(model.read_bytes()[:3])
    elif damage == "missing_file":
        model.unlink()
    elif damage == "no_entry_json":
        (entry / "entry.json").unlink()
    elif damage == "garbage_entry_json":
        (entry / "entry.json").write_text('{"format": 1, "key"')
    else:
        data = bytearray(model.read_bytes())
        data[0] ^= 1
        model.write_bytes(bytes(data))

    again = _Writer("one")
    with caplog.at_level(logging.WARNING, logger="mcompress.pipeline.cache"):
        state, records = _run([again], setup, tmp_path / "w2", PassCache.open(tmp_path / "cache"))
    assert again.calls == 1 and records[0].cached is False
    assert "is unusable" in caplog.text
    assert state.onnx_path.read_bytes() == b"torch:onea"
    # rebuilt: a third run reuses it
    third = _Writer("one")
    _, records = _run([third], setup, tmp_path / "w3", PassCache.open(tmp_path / "cache"))
    assert third.calls == 0 and records[0].cached is True


def test_interrupted_store_leaves_no_entry_and_dead_processes_temp_dirs_are_swept(setup, tmp_path, monkeypatch):
    cache = PassCache.open(tmp_path / "cache")
    import mcompress.pipeline.cache as cache_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run([_Writer("one")], setup, tmp_path / "w1", cache)
    monkeypatch.undo()
    assert not list((tmp_path / "cache" / "entries").iterdir()) and not list((tmp_path / "cache" / "tmp").iterdir())

    # What a SIGKILL mid-write leaves: a temp dir named after a process that no longer exists.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / "tmp" / f"0123456789abcdef.{int(dead.stdout)}.deadbeef"
    live = tmp_path / "cache" / "tmp" / f"0123456789abcdef.{os.getpid()}.cafe0000"
    for path in (stale, live):
        (path / "files").mkdir(parents=True)
    PassCache.open(tmp_path / "cache")
    assert not stale.exists() and live.exists()


def test_lru_eviction_keeps_recently_used_entries(setup, tmp_path):
    cache = PassCache.open(tmp_path / "cache")
    _run([_Writer("one"), _Writer("two"), _Writer("three")], setup, tmp_path / "w1", cache)
    entries = {json.loads((e / "entry.json").read_text())["pass"]: e for e in (tmp_path / "cache" / "entries").iterdir()}
    sizes = {name: sum(p.stat().st_size for p in e.rglob("*") if p.is_file()) for name, e in entries.items()}
    for age, name in enumerate(["two", "one", "three"]):  # "two" used longest ago
        os.utime(entries[name], (1_000_000 + age, 1_000_000 + age))

    fresh = PassCache.open(tmp_path / "cache")
    fresh.max_bytes = sizes["one"] + sizes["three"]
    assert fresh.evict() == [entries["two"].name]
    fresh.max_bytes = 1  # entries this process used are never evicted under it
    fresh._used.add(entries["three"].name)
    assert fresh.evict() == [entries["one"].name] and entries["three"].is_dir()


def test_uncacheable_output_is_logged_and_the_run_goes_on(setup, tmp_path, caplog):
    cache = PassCache.open(tmp_path / "cache")
    odd = _Writer("odd", annotations={"per_layer": {0: [1]}})  # int keys do not survive JSON
    with caplog.at_level(logging.INFO, logger="mcompress.pipeline.cache"):
        state, records = _run([odd], setup, tmp_path / "w1", cache)
    assert "pass odd: output not cached" in caplog.text and records[0].cached is False
    assert not list((tmp_path / "cache" / "entries").iterdir()) and not list((tmp_path / "cache" / "tmp").iterdir())
    assert state.annotations["per_layer"] == {0: [1]}


class _PruneHeads(Pass):
    name = "prune"
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.TORCH

    def __init__(self):
        self.calls = 0

    def call(self, state, ctx):
        import copy

        self.calls += 1
        model = copy.deepcopy(state.torch_model)
        model.prune_heads({0: [1], 1: [0]})
        return PassResult(ModelState(ModelKind.TORCH, state.source, state.tokenizer, torch_model=model), True, {"heads": 2})


def test_torch_state_round_trip_with_pruned_heads(setup, tmp_path):
    import torch

    cache = PassCache.open(tmp_path / "cache")
    first = _PruneHeads()
    state, _ = PassManager([first], cache=cache).run(_torch_state(setup), _ctx(setup, tmp_path / "w1"))
    again = _PruneHeads()
    restored, records = PassManager([again], cache=PassCache.open(tmp_path / "cache")).run(_torch_state(setup), _ctx(setup, tmp_path / "w2"))
    assert again.calls == 0 and records[0].cached is True and records[0].metrics == {"heads": 2}
    ours, theirs = state.torch_model.state_dict(), restored.torch_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert restored.torch_model.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert not restored.torch_model.training


def test_cli_no_cache_and_cache_inside_out(tiny_checkpoint, fast_recipe, tmp_path):
    out = tmp_path / "build"
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--recipe", str(fast_recipe), "--out", str(out),
                                      "--cache-dir", str(out / "cache")])
    assert result.exit_code == ExitCode.BAD_INPUT and "lies inside --out" in result.output
    assert not out.exists()


def test_a_failing_cache_write_does_not_fail_the_run(setup, tmp_path, monkeypatch, caplog):
    cache = PassCache.open(tmp_path / "cache")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_write", disk_full)
    with caplog.at_level(logging.WARNING, logger="mcompress.pipeline.cache"):
        state, records = _run([_Writer("one")], setup, tmp_path / "w1", cache)
    assert "pass one: output not cached: OSError" in caplog.text
    assert state.onnx_path.read_bytes() == b"torch:onea" and records[0].cached is False
    assert not list((tmp_path / "cache" / "entries").iterdir()) and not list((tmp_path / "cache" / "tmp").iterdir())
