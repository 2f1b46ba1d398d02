"""Runs an ONNX model with ONNX Runtime on the CPU: the artifact that is deployed is what is gated."""

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
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.name = name

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], {k: inputs[k] for k in self.input_names})[0]
