"""Torch-free generation (compressor/engines/generation.py) and causal-LM bundles: greedy decoding
on the KV cache equals Optimum's ORTModelForCausalLM.generate token for token on a tiny LLaMA and
GPT-2, seeded sampling repeats, stop tokens stop, a prompt over the context is one line, exit 2;
`mcompress package / inspect / predict` on a causal-LM build."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lm_models import CONTEXT, build_report, exported as exported_model
from mcompress.core.errors import InputError
from mcompress.engines.generation import Sampling, choose, generate, graph_problem, kv_shape_of, sampling_probabilities

PROMPTS = ["The council met on Tuesday", "Rain is expected", "Shares in the mining company rose sharply after it"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def exported(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(kind, checkpoint, Optimum export with the KV cache)."""
    return (request.param, *exported_model(request.param, tmp_path_factory))


def _decoder(build: Path):
    import onnxruntime as ort

    from mcompress.engines.generation import OnnxDecoder

    return OnnxDecoder(ort.InferenceSession(str(build / "model.onnx"), providers=["CPUExecutionProvider"]))


def _eos(build: Path) -> frozenset[int]:
    return frozenset([json.loads((build / "config.json").read_text())["eos_token_id"]])


@pytest.mark.slow  # the first test of each model pays its Optimum export
def test_greedy_equals_optimum_generate_token_for_token(exported):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    kind, _, build = exported
    tokenizer = AutoTokenizer.from_pretrained(build)
    reference = ORTModelForCausalLM.from_pretrained(build, use_cache=True)
    decoder = _decoder(build)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        expected = reference.generate(**ids, do_sample=False, max_new_tokens=24, pad_token_id=tokenizer.eos_token_id)
        expected_new = expected[0, ids["input_ids"].shape[1]:].tolist()
        ours = generate(decoder, ids["input_ids"][0].tolist(), Sampling(max_new_tokens=24), _eos(build), CONTEXT)
        assert ours.new_ids == expected_new, (kind, prompt)
        assert len(ours.step_s) == len(ours.new_ids) - 1


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(exported):
    _, _, build = exported
    decoder, prompt = _decoder(build), [5, 17, 42, 7]
    sampled = Sampling(max_new_tokens=16, temperature=1.5, top_p=0.95, seed=3)
    first = generate(decoder, prompt, sampled, frozenset(), CONTEXT).new_ids
    assert generate(decoder, prompt, sampled, frozenset(), CONTEXT).new_ids == first
    others = {tuple(generate(decoder, prompt, Sampling(16, 1.5, None, 0.95, seed), frozenset(), CONTEXT).new_ids)
              for seed in range(4, 8)}
    assert others - {tuple(first)}, "different seeds gave the same continuation every time"
    greedy = generate(decoder, prompt, Sampling(max_new_tokens=16), frozenset(), CONTEXT).new_ids
    assert generate(decoder, prompt, Sampling(16, 2.0, 1, None, 9), frozenset(), CONTEXT).new_ids == greedy


def test_stop_tokens_stop_and_the_context_ends_generation(exported):
    _, _, build = exported
    decoder, prompt = _decoder(build), [5, 17, 42, 7]
    free = generate(decoder, prompt, Sampling(max_new_tokens=12), frozenset(), CONTEXT)
    assert free.stopped == "max new tokens" and len(free.new_ids) == 12
    stop = free.new_ids[4]
    first_stop = free.new_ids.index(stop)
    stopped = generate(decoder, prompt, Sampling(max_new_tokens=12), frozenset([stop]), CONTEXT)
    assert stopped.stopped == "stop token" and stopped.new_ids == free.new_ids[:first_stop + 1]
    full = generate(decoder, prompt, Sampling(max_new_tokens=100), frozenset(), 10)
    assert full.stopped == "context" and len(prompt) + len(full.new_ids) == 10
    with pytest.raises(InputError, match="prompt is 10 tokens, longer than this model's context allows"):
        generate(decoder, list(range(10)), Sampling(), frozenset(), 10)


def test_sampling_filters():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    np.testing.assert_allclose(sampling_probabilities(logits, Sampling(temperature=1.0)), [0.5, 0.2, 0.15, 0.1, 0.05])
    np.testing.assert_allclose(sampling_probabilities(logits, Sampling(temperature=1.0, top_k=2)), [5 / 7, 2 / 7, 0, 0, 0])
    # top-p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the token that crosses it (0.15) is kept
    np.testing.assert_allclose(sampling_probabilities(logits, Sampling(temperature=1.0, top_p=0.8)),
                               np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    hot = sampling_probabilities(logits, Sampling(temperature=2.0))
    np.testing.assert_allclose(hot, np.sqrt([0.5, 0.2, 0.15, 0.1, 0.05]) / np.sqrt([0.5, 0.2, 0.15, 0.1, 0.05]).sum())
    assert choose(logits, Sampling(), None) == 0
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(temperature=1.0, top_p=0.0),
                dict(temperature=1.0, top_k=0), dict(top_k=5)):
        with pytest.raises(InputError):
            Sampling(**bad)


@pytest.mark.parametrize("config, shape", [
    ({"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}, (3, 64)),  # LLaMA, grouped KV
    ({"num_attention_heads": 8, "hidden_size": 512, "head_dim": 128}, (8, 128)),  # head_dim set apart
    ({"n_head": 12, "n_embd": 768}, (12, 64)),  # GPT-2
    ({"n_head": 12}, None),  # no hidden size: the cache's shape is unknown
])
def test_the_kv_cache_shape_is_read_from_each_familys_config(config, shape):
    assert kv_shape_of(config) == shape


def test_graph_problems_are_named():
    assert graph_problem(["input_ids", "attention_mask", "past_key_values.0.key"], ["logits", "present.0.key"]) is None
    assert "lacks attention_mask" in graph_problem(["input_ids"], ["logits"])
    assert "no past_key_values" in graph_problem(["input_ids", "attention_mask"], ["logits"])
    assert "token_type_ids" in graph_problem(["input_ids", "attention_mask", "token_type_ids", "past_key_values.0.key"],
                                             ["logits", "present.0.key"])
    assert "no present output" in graph_problem(["input_ids", "attention_mask", "past_key_values.0.key"], ["logits"])


# -- bundles ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(exported, tmp_path_factory) -> tuple[str, Path, Path]:
    from mcompress.bundle.package import package_build

    import shutil

    kind, checkpoint, export = exported
    root = tmp_path_factory.mktemp(f"{kind}-bundle")
    build = Path(shutil.copytree(export, root / "build"))
    build_report(build, checkpoint, kind)
    out = root / "lm.mcpkg"
    package_build(build, out)
    return kind, build, out


def test_package_records_how_to_generate(bundle):
    kind, build, path = bundle
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        names = set(zf.namelist())
    config = json.loads((build / "config.json").read_text())
    assert manifest["task"] == "causal-lm" and "labels.json" not in names and "labels_file" not in manifest
    generation = manifest["generation"]
    assert generation["context_length"] == CONTEXT == manifest["max_sequence_length"]
    assert generation["stop_token_ids"] == [config["eos_token_id"]]
    assert (generation["kv_heads"], generation["head_dim"]) == ((2, 8) if kind == "llama" else (4, 8))
    assert manifest["preprocessing"]["truncation"] is False and manifest["preprocessing"]["padding"] == "none"
    assert "unavailable" in manifest["monitoring"]


def test_bundle_generates_what_optimum_generates(bundle):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from mcompress.runtime import load

    _, build, path = bundle
    loaded = load(path)
    tokenizer = AutoTokenizer.from_pretrained(build)
    reference = ORTModelForCausalLM.from_pretrained(build, use_cache=True)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        expected = reference.generate(**ids, do_sample=False, max_new_tokens=10, pad_token_id=tokenizer.eos_token_id)
        result = loaded.generate(prompt, Sampling(max_new_tokens=10))
        assert result["prompt_tokens"] == ids["input_ids"].shape[1]
        assert result["tokens"] == expected[0, ids["input_ids"].shape[1]:].tolist()
        assert result["text"] == tokenizer.decode(result["tokens"], skip_special_tokens=True)
    assert [r["tokens"] for r in loaded.predict(PROMPTS[:1])] == [loaded.generate(PROMPTS[0])["tokens"]]


def _invoke(args: list[str]):
    from mcompress.cli.main import app

    return CliRunner().invoke(app, args)


def test_cli_inspect_and_predict(bundle):
    from mcompress.runtime import load

    _, _, path = bundle
    shown = _invoke(["inspect", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "task     causal-lm" in shown.output and "generate context 64 tokens" in shown.output
    assert "past_key_values.* x4" in shown.output and "labels" not in shown.output
    greedy = _invoke(["predict", str(path), PROMPTS[0], "--max-new-tokens", "8"])
    assert greedy.exit_code == 0, greedy.output
    expected = load(path).generate(PROMPTS[0], Sampling(max_new_tokens=8))
    assert greedy.stdout.splitlines()[0] == expected["text"]
    args = ["predict", str(path), PROMPTS[1], "--max-new-tokens", "8", "--temperature", "0.9", "--top-k", "20", "--seed", "4"]
    assert _invoke(args).stdout == _invoke(args).stdout


def test_cli_prompt_longer_than_the_context_is_one_line_exit_2(bundle):
    _, _, path = bundle
    result = _invoke(["predict", str(path), " ".join(["the council met on Tuesday"] * 40)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "longer than this model's context allows (64 tokens" in lines[0], result.output
    bad = _invoke(["predict", str(path), "x", "--top-p", "0.5"])
    assert bad.exit_code == 2 and "temperature 0 is greedy" in bad.output


# -- a causal-lm build from `mcompress run`, packaged and run -------------------------------------


@pytest.mark.slow  # a whole `mcompress run` of a tiny LLaMA (export with the cache, gates, decoder latency)
def test_run_package_predict_a_causal_lm_build(tmp_path_factory):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from mcompress.runtime import load
    from test_causal_lm import write_decoder

    root = tmp_path_factory.mktemp("lm-run")
    model = write_decoder(root / "llama", "llama")
    recipe = root / "lm.yaml"
    recipe.write_text("max_length: 32\nexport: {parity_atol: 1.0e-4, parity_examples: 2}\noptimize: {fusion: unfused}\n"
                      "quantize: {mode: none}\nperplexity: {stride: 16}\n"
                      "gates: {max_ppl_increase: 1.0, min_decode_speedup: 0.001, max_prefill_ms: 100000}\n"
                      "latency: {batch_sizes: [1], sequence_lengths: [16], iterations: 3, warmup: 1, isolation: shared, settle_s: 0}\n"
                      "eval: {batch_size: 4, batching: [4], evaluate_each_pass: false}\n")
    out = root / "build"
    ran = _invoke(["run", str(model), "--target", "onnx-cpu", "--recipe", str(recipe), "--out", str(out), "--no-cache"])
    assert ran.exit_code == 0, ran.output
    report = json.loads((out / "report.json").read_text())
    decoder = report["task_latency"]["decoder"]
    assert decoder["reference"]["runtime"] == "pytorch-fp32" and decoder["build"]["decode_tokens_per_s"] > 0
    assert {"decode_speedup", "prefill_ms"} <= {g["name"] for g in report["gates"] if g["passed"]}
    assert "Decoder latency" in (out / "report.md").read_text()

    bundle = root / "lm.mcpkg"
    packaged = _invoke(["package", str(out), "-o", str(bundle)])
    assert packaged.exit_code == 0, packaged.output
    shown = _invoke(["inspect", str(bundle)])
    assert "task     causal-lm" in shown.output and "decode_speedup" in shown.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = ORTModelForCausalLM.from_pretrained(out, use_cache=True)
    prompt = "the market rose as traders bought shares"
    ids = tokenizer(prompt, return_tensors="pt")
    expected = reference.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.eos_token_id)
    result = load(bundle).generate(prompt, Sampling(max_new_tokens=12))
    assert result["tokens"] == expected[0, ids["input_ids"].shape[1]:].tolist()
    printed = _invoke(["predict", str(bundle), prompt, "--max-new-tokens", "12"])
    assert printed.exit_code == 0 and printed.stdout.splitlines()[0] == result["text"]
