"""Tiny causal LMs for the runtime tests: a LLaMA and a GPT-2 built from configs with a byte-level
BPE tokenizer trained on a few sentences, exported by Optimum with the KV cache into the
Optimum-layout folder a causal-lm onnx-cpu build has (model.onnx, config.json,
generation_config.json, tokenizer files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TEXT = [
    "The council met on Tuesday to discuss the new budget for the city's schools and parks.",
    "Rain is expected across the north of the country later this week, forecasters said.",
    "Shares in the mining company rose sharply after it reported a record profit for the year.",
    "The team won its third match in a row, with two goals in the final ten minutes.",
    "Scientists say the new telescope will let them see galaxies formed soon after the big bang.",
    "A spokesman for the hospital said the patient was in a stable condition on Wednesday night.",
] * 3
CONTEXT = 64  # max_position_embeddings / n_positions of the tiny models


def train_tokenizer(bos: str | None, eos: str, vocab_size: int = 300):
    """A byte-level BPE PreTrainedTokenizerFast; with ``bos``, it adds BOS as LLaMA's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (bos, eos) if t]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos,
                                   model_input_names=["input_ids", "attention_mask"])


def tiny_checkpoint(kind: str, out: Path) -> Path:
    """A freshly initialised (seeded) tiny ``llama`` or ``gpt2`` checkpoint with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        tokenizer = train_tokenizer("<s>", "</s>")
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(config)
    else:
        tokenizer = train_tokenizer(None, "<|endoftext|>")
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    with torch.no_grad():  # larger logits than the init's, so greedy choices are not near-ties
        model.get_output_embeddings().weight.mul_(8.0)
    model.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def export_with_cache(checkpoint: Path, out: Path) -> Path:
    """Optimum's text-generation-with-past export of ``checkpoint`` into ``out``, tokenizer beside it."""
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(checkpoint, export=True, use_cache=True)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
    return out


def build_report(build: Path, checkpoint: Path, model_type: str) -> dict:
    """The fields of report.json that `mcompress package` reads, for an exported folder that did not
    come from `mcompress run` (until the causal-lm pipeline writes real ones)."""
    from mcompress.core.hashing import file_digest

    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(build.iterdir()) if p.is_file()}
    report = {"target": "onnx-cpu", "recipe": {"max_length": CONTEXT}, "passed": True,
              "versions": {}, "source": {"task": "causal-lm", "model_type": model_type, "sha256": "0" * 64,
                                         "architecture": json.loads((checkpoint / "config.json").read_text())["architectures"][0]},
              "artifact": {"model_file": "model.onnx", "quantization": "none", "files": files}, "gates": []}
    (build / "report.json").write_text(json.dumps(report))
    return report


_EXPORTED: dict[str, tuple[Path, Path]] = {}


def exported(kind: str, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, export) of the tiny ``kind`` model, made once per test session (read-only:
    tests that write into a build copy it first)."""
    if kind not in _EXPORTED:
        root = tmp_path_factory.mktemp(f"{kind}-lm")
        checkpoint = tiny_checkpoint(kind, root / "checkpoint")
        _EXPORTED[kind] = checkpoint, export_with_cache(checkpoint, root / "build")
    return _EXPORTED[kind]
