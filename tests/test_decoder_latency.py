"""Decoder latency (compressor/metrics/decoder_latency.py): PyTorch's KV-cache stepper decodes
what the ONNX graph decodes, each model is timed in its own process (its own peak RSS), and the
gates read the figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lm_models import exported
from mcompress.engines.generation import Sampling, generate
from mcompress.metrics.decoder_latency import (DecoderLatency, decoder_gates, decoder_runners, latency_table,
                                               measure_task_latency, onnx_decoder, prompt_ids, race_decoders,
                                               torch_decoder)

@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, Path]:
    return exported("llama", tmp_path_factory)


@pytest.mark.slow  # the tiny model's Optimum export; processes that import torch
def test_pytorch_kv_cache_stepper_decodes_what_the_onnx_graph_decodes(llama):
    checkpoint, build = llama
    prompt = [1, 17, 42, 99, 7, 60]
    ours = generate(torch_decoder(checkpoint, 1).stepper, prompt, Sampling(max_new_tokens=20), frozenset(), 64)
    onnx = generate(onnx_decoder(build / "model.onnx", 1).stepper, prompt, Sampling(max_new_tokens=20), frozenset(), 64)
    assert ours.new_ids == onnx.new_ids


@pytest.mark.slow  # the tiny model's Optimum export; processes that import torch
def test_each_decoder_is_timed_in_its_own_process(llama):
    from transformers import AutoTokenizer

    checkpoint, build = llama
    prompt = prompt_ids(AutoTokenizer.from_pretrained(checkpoint), ["The council met on Tuesday."], 24)
    assert len(prompt) == 24
    factories = {"reference": (torch_decoder, checkpoint, 1), "build": (onnx_decoder, build / "model.onnx", 1)}
    with decoder_runners(factories, "process") as runners:
        raced = race_decoders(runners, prompt, new_tokens=8, rounds=2)
    reference, built = raced["reference"], raced["build"]
    for result in (reference, built):
        assert result.prefill_ms > 0 and result.decode_tokens_per_s > 0 and result.rounds == 2
        assert len(result.raw_prefill_ms) == 2 and result.new_tokens == 8 and result.prompt_tokens == 24
    # separate processes: the ONNX Runtime one never imported torch, so its peak RSS is far below
    assert built.peak_rss_bytes < reference.peak_rss_bytes - 100 * 2 ** 20, (built.peak_rss_bytes, reference.peak_rss_bytes)
    table = latency_table({side: r.as_dict() for side, r in raced.items()})
    assert [row[0] for row in table.rows] == ["prefill ms", "decode tokens/s", "peak RSS MB"]


@dataclass(frozen=True)
class _Checkpoint:
    path: Path


@dataclass(frozen=True)
class _Gates:
    min_decode_speedup: float | None
    max_prefill_ms: float | None


@pytest.mark.slow  # the tiny model's Optimum export; processes that import torch
def test_task_latency_measures_both_models_and_gates_them(llama):
    from transformers import AutoTokenizer

    from mcompress.core.task import TaskLatencyRequest

    checkpoint, build = llama
    request = TaskLatencyRequest(_Checkpoint(checkpoint), build / "model.onnx", AutoTokenizer.from_pretrained(checkpoint),
                                 ["Rain is expected across the north of the country later this week."], 1,
                                 _Gates(1e-6, 1e6), "shared")
    measured = measure_task_latency(request)
    assert [g.name for g in measured.gates] == ["decode_speedup", "prefill_ms"] and all(g.passed for g in measured.gates)
    figures = measured.figures["decoder"]
    assert figures["reference"]["runtime"] == "pytorch-fp32" and figures["build"]["runtime"] == "onnxruntime-cpu"
    assert figures["build"]["prompt_tokens"] == 128 and figures["build"]["new_tokens"] == 64
    assert measured.tables[0].title == "Decoder latency"


@pytest.mark.parametrize("speedup, prefill, passed", [(2.0, None, [True]), (2.1, None, [False]),
                                                      (None, 30.0, [True]), (None, 29.9, [False])])
def test_decoder_gates(speedup, prefill, passed):
    reference = DecoderLatency("pytorch-fp32", 60.0, 20.0, 1, 128, 64, 5)
    build = DecoderLatency("onnxruntime-cpu", 30.0, 40.0, 1, 128, 64, 5)
    gates = decoder_gates(reference, build, speedup, prefill)
    assert [g.passed for g in gates] == passed
    assert gates[0].value == pytest.approx(2.0 if speedup else 30.0)
