"""Export of a decoder with its KV cache through Optimum's exporter, and its parity check.

The task names Optimum's exporter task (``Task.optimum_export_task``, ``text-generation-with-past``
for a causal LM); ``optimum.exporters.onnx.onnx_export_from_model`` writes one ``model.onnx`` with
inputs ``input_ids``, ``attention_mask``, ``position_ids`` (where the architecture takes them) and
``past_key_values.{i}.key/value``, outputs ``logits`` and ``present.{i}.key/value`` — the layout
``optimum.onnxruntime.ORTModelForCausalLM`` loads. Tied embedding/LM-head weights are stored once
(Optimum deduplicates them with ``accelerate``).

Parity, PyTorch FP32 against ONNX Runtime (all graph optimizations off), on real text:
1. prefill: the first ``PARITY_PROMPT`` tokens of up to ``export.parity_examples`` selection texts,
   right-padded as one batch, with an empty cache: logits and every present key/value;
2. one decode step: the next token of each text fed with PyTorch's cache from step 1 as
   ``past_key_values``: logits and the presents, now one position longer.
The check is max |difference| over the valid (unpadded) positions of all of them, which must be
<= ``export.parity_atol``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from mcompress.core.errors import InputError, PassFailure

logger = logging.getLogger(__name__)

PARITY_PROMPT = 32  # tokens of each parity text fed as the prefill


def export_with_past(model, optimum_task: str, out_dir: Path, opset: int) -> Path:
    """``model`` exported by Optimum for ``optimum_task`` into ``out_dir``; the model.onnx path."""
    try:
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError:
        raise InputError("exporting a decoder with its KV cache needs Optimum's exporter, which is not installed.",
                         "pip install 'mcompress[lm]' (optimum-onnx and accelerate).") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(model, str(out_dir), task=optimum_task, opset=opset, do_validation=False,
                               no_post_process=False, device="cpu")
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise PassFailure("export", f"Optimum's exporter wrote no model.onnx into {out_dir}")
    return path


def _parity_inputs(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids, prompt mask, next token) of each text: the first PARITY_PROMPT + 1 tokens,
    right-padded; the next token is the one after each prompt's last real token."""
    encoded = [ids[:PARITY_PROMPT + 1] for ids in tokenizer(texts)["input_ids"] if len(ids) >= 3]
    if not encoded:
        raise PassFailure("export", "no parity text holds 3 tokens or more")
    lengths = [len(ids) - 1 for ids in encoded]
    ids = np.full((len(encoded), max(lengths)), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, (tokens, length) in enumerate(zip(encoded, lengths)):
        ids[row, :length], mask[row, :length] = tokens[:length], 1
    return ids, mask, np.asarray([[tokens[-1]] for tokens in encoded], dtype=np.int64)


def _positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def _layer_caches(past) -> list[tuple[np.ndarray, np.ndarray]]:
    """(key, value) per layer of a transformers cache, as numpy copies."""
    if hasattr(past, "layers"):  # transformers >= 4.56 Cache
        return [(layer.keys.numpy().copy(), layer.values.numpy().copy()) for layer in past.layers]
    return [(k.numpy().copy(), v.numpy().copy()) for k, v in past]


def _max_difference(expected_logits, expected_cache, got: dict, logits_valid: np.ndarray,
                    cache_valid: np.ndarray) -> float:
    """Max |difference| of logits and presents over their valid positions (batch x sequence masks)."""
    diff = float(np.abs(expected_logits - got["logits"])[logits_valid.astype(bool)].max())
    for i, (key, value) in enumerate(expected_cache):
        for name, expected in ((f"present.{i}.key", key), (f"present.{i}.value", value)):
            diff = max(diff, float(np.abs(expected - got[name]).transpose(0, 2, 1, 3)[cache_valid.astype(bool)].max()))
    return diff


def decoder_parity(model, tokenizer, onnx_path: Path, texts: list[str]) -> dict:
    """Max |difference| PyTorch vs ONNX Runtime at the prefill and at one decode step (module docstring)."""
    import onnxruntime as ort
    import torch

    from mcompress.engines.onnxruntime_cpu import PAST_PREFIX, empty_cache

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    graph_inputs = {i.name: i for i in session.get_inputs()}
    past_inputs = {n: (i.shape, np.float32) for n, i in graph_inputs.items() if n.startswith(PAST_PREFIX)}
    outputs = [o.name for o in session.get_outputs()]
    ids, mask, next_token = _parity_inputs(tokenizer, texts)
    with torch.inference_mode():
        prefill = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=True)
        cache = _layer_caches(prefill.past_key_values)
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask),
                **empty_cache(past_inputs, len(ids))}
        got = dict(zip(outputs, session.run(outputs, {k: v for k, v in feed.items() if k in graph_inputs})))
        prefill_diff = _max_difference(prefill.logits.numpy(), cache, got, mask, mask)
        # decode: the next token after the padded prompt; padding stays masked in the cache
        step_mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
        step = model(input_ids=torch.from_numpy(next_token), attention_mask=torch.from_numpy(step_mask),
                     position_ids=torch.from_numpy(mask.sum(axis=1, keepdims=True)),
                     past_key_values=prefill.past_key_values, use_cache=True)
        feed = {"input_ids": next_token, "attention_mask": step_mask, "position_ids": mask.sum(axis=1, keepdims=True),
                **{f"{PAST_PREFIX}{i}.{part}": tensor for i, kv in enumerate(cache)
                   for part, tensor in zip(("key", "value"), kv)}}
        got = dict(zip(outputs, session.run(outputs, {k: v for k, v in feed.items() if k in graph_inputs})))
        decode_diff = _max_difference(step.logits.numpy(), _layer_caches(step.past_key_values), got,
                                      np.ones((len(ids), 1)), step_mask)
    return {"prefill_max_abs_diff": prefill_diff, "decode_max_abs_diff": decode_diff, "texts": len(ids),
            "prompt_tokens": int(ids.shape[1]), "compared": "logits and present.*.key/value at valid positions"}
