"""The ``lm`` example: SmolLM2-135M-Instruct converted from its GGUF file into an ordinary Hugging
Face checkpoint, with a seeded article-level split of the Lee news corpus beside it.

Conversion: transformers reads the GGUF (``from_pretrained(dir, gguf_file=...)``, which needs the
``gguf`` package) and dequantizes its Q4_1 weights to FP32; ``save_pretrained`` writes
``model.safetensors`` (FP32, ~540 MB), config.json, generation_config.json and the tokenizer. The
dequantized model is the reference every build is gated against.

Fine-tuning: ``LMExampleSettings.steps`` full fine-tuning steps (AdamW, linear warm-up/decay) on
the train split, in chunks of ``train_length`` tokens; 0 (the default) ships the converted model
as it is (see docs/causal-lm.md for the step time measured here). The compression path never
depends on it. ``example.json`` records what was done and the test perplexity (before and after,
when trained), with the task's windowing (compressor/metrics/perplexity.py).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.examples import corpora
from mcompress.examples.finetune import StepCallback, is_built
from mcompress.pipeline.outputs import staged_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMExampleSettings:
    corpus: str = "lee_background"
    seed: int = 0
    steps: int = 0  # full fine-tuning steps on the train split; 0 = ship the converted model
    train_length: int = 128  # tokens per training sequence
    batch_size: int = 4
    learning_rate: float = 2e-5
    warmup_fraction: float = 0.1
    eval_length: int = 512  # the perplexity window of the test figure (as recipes/lm-fp32.yaml)
    eval_stride: int = 256


LM_EXAMPLE = LMExampleSettings()


def is_lm_built(out_dir: Path, settings: LMExampleSettings = LM_EXAMPLE) -> bool:
    return is_built(out_dir, settings)


def require_gguf_reader(gguf_file: Path) -> None:
    """transformers reads GGUF only with the gguf package: say so before anything is loaded."""
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"reading the GGUF file {gguf_file} needs the 'gguf' package, which is not installed.",
                         "pip install 'mcompress[lm]' (gguf and accelerate).")


def convert_gguf(gguf_file: Path):
    """(model, tokenizer) from a GGUF file: weights dequantized to FP32, offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf_reader(gguf_file)
    kwargs = {"gguf_file": gguf_file.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def split_perplexity(model, tokenizer, texts: list[str], settings: LMExampleSettings) -> dict:
    """The test split's perplexity with the causal-lm task's own metric and windowing."""
    from mcompress.calibration.documents import Documents
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks.causal_lm import CausalLM

    task = CausalLM(stride=settings.eval_stride)
    task.prepare_tokenizer(tokenizer, "the converted GGUF")
    result = task.evaluate(TorchRunner(model.eval()), tokenizer, Documents(texts, "test split"), settings.eval_length, 4)
    return {"perplexity": round(1 / result.score, 4), "next_token_accuracy": round(result.accuracy, 6),
            "scored_tokens": result.details["tokens"], "windowing": result.details["windowing"]}


def _train_chunks(tokenizer, texts: list[str], length: int):
    """The train articles as one token stream (EOS between articles) cut into ``length``-token rows."""
    import torch

    stream = []
    for ids in tokenizer(texts)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    rows = len(stream) // length
    return torch.tensor(stream[:rows * length], dtype=torch.long).view(rows, length)


def fine_tune(model, tokenizer, texts: list[str], settings: LMExampleSettings, on_step: StepCallback | None) -> dict:
    """``settings.steps`` AdamW steps of causal-LM loss on the train chunks (seeded order)."""
    import torch

    from mcompress.core.training import linear_warmup_decay

    chunks = _train_chunks(tokenizer, texts, settings.train_length)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    scheduler = linear_warmup_decay(optimizer, max(1, int(settings.steps * settings.warmup_fraction)), settings.steps)
    started, order, step = time.perf_counter(), torch.randperm(len(chunks), generator=generator), 0
    model.train()
    while step < settings.steps:
        rows = order[(step * settings.batch_size) % len(chunks):][:settings.batch_size]
        batch = chunks[rows]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if on_step:
            on_step(step, settings.steps, float(loss.detach()))
    model.eval()
    return {"steps": settings.steps, "lr": settings.learning_rate, "batch_size": settings.batch_size,
            "train_length": settings.train_length, "tokens": settings.steps * settings.batch_size * settings.train_length,
            "train_seconds": round(time.perf_counter() - started, 1)}


def build_lm_example(out_dir: Path, on_step: StepCallback | None = None,
                     settings: LMExampleSettings = LM_EXAMPLE) -> dict:
    """Convert SmolLM2 and write it with the news splits into ``out_dir`` (an identical build is reused)."""
    import torch

    out_dir = Path(out_dir)
    if is_lm_built(out_dir, settings):
        return json.loads((out_dir / "example.json").read_text())
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} exists and is not a finished 'lm' example.", "Remove it or choose another directory.")
    gguf_file = corpora.smollm2_gguf()
    corpus = corpora.lee_news(settings.seed)
    require_gguf_reader(gguf_file)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    model, tokenizer = convert_gguf(gguf_file)
    meta = {"example": "lm", "settings": asdict(settings),
            "base_model": f"SmolLM2-135M-Instruct, {gguf_file.name} ({corpora.SMOLLM2_PACKAGE}) dequantized to FP32",
            "data": corpus.provenance,
            "split_sizes": {"train": len(corpus.train), "validation": len(corpus.validation), "test": len(corpus.test)},
            "convert_seconds": round(time.perf_counter() - started, 1)}
    with torch.inference_mode():
        meta["test_before"] = split_perplexity(model, tokenizer, corpus.test, settings)
    if settings.steps:
        meta["fine_tune"] = fine_tune(model, tokenizer, corpus.train, settings, on_step)
        with torch.inference_mode():
            meta["test_after"] = split_perplexity(model, tokenizer, corpus.test, settings)
    else:
        meta["fine_tune"] = None  # shipped as converted (docs/causal-lm.md: why)
    meta["test_perplexity"] = (meta.get("test_after") or meta["test_before"])["perplexity"]
    with staged_dir(out_dir) as staging:  # out_dir appears only complete, also on Ctrl-C
        _write(staging, model, tokenizer, corpus, meta)
    return meta


def _write(staging: Path, model, tokenizer, corpus, meta: dict) -> None:
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    splits = staging / "splits"
    splits.mkdir()
    for name, texts in (("train", corpus.train), ("validation", corpus.validation), ("test", corpus.test)):
        with open(splits / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)
    (staging / "example.json").write_text(json.dumps(meta, indent=2) + "\n")
