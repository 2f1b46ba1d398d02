"""Runs an ONNX model with ONNX Runtime on the CPU: the artifact that is deployed is what is gated.

A decoder exported with its KV cache (Optimum's ``text-generation-with-past`` layout: inputs
``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/value``) is run as a
prefill: the caller feeds ``input_ids`` and ``attention_mask``, the runner adds an empty cache
(past length 0) and ``position_ids = cumsum(attention_mask) - 1`` (0 at padding), as Optimum's
ORTModelForCausalLM does for a first call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OrtRunner:
    def __init__(self, model_path: Path, threads: int | None = None, name: str = "onnxruntime-cpu"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        graph_inputs = self.session.get_inputs()
        self.past_inputs = {i.name: (i.shape, _NUMPY_TYPES.get(i.type, np.float32)) for i in graph_inputs
                            if i.name.startswith(PAST_PREFIX)}
        names = [i.name for i in graph_inputs]
        self.derives_positions = bool(self.past_inputs) and "position_ids" in names
        derived = set(self.past_inputs) | ({"position_ids"} if self.derives_positions else set())
        self.input_names = [n for n in names if n not in derived]  # what callers feed
        self.name = name

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: inputs[k] for k in self.input_names}
        if self.past_inputs:
            feed.update(empty_cache(self.past_inputs, feed["input_ids"].shape[0]))
        if self.derives_positions:
            feed["position_ids"] = np.maximum(np.cumsum(feed["attention_mask"], axis=1) - 1, 0).astype(np.int64)
        return self.session.run(["logits"], feed)[0]


PAST_PREFIX = "past_key_values."
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def empty_cache(past_inputs: dict[str, tuple[list, type]], batch: int) -> dict[str, np.ndarray]:
    """Zero-length past key/values (batch, kv heads, 0, head size) for each cache input, from the
    graph's declared shapes (symbolic dims: the batch, then the past length)."""
    out = {}
    for name, (shape, dtype) in past_inputs.items():
        dims = [d if isinstance(d, int) else None for d in shape]
        dims[0], dims[2] = batch, 0
        out[name] = np.zeros([d if d is not None else 0 for d in dims], dtype=dtype)
    return out
