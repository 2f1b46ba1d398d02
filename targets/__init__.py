"""Target registry. Targets are imported only when asked for, so the CLI starts fast."""

from __future__ import annotations

import importlib

from mcompress.errors import InputError

# name -> "module:Class"; a target registers itself by adding a line here.
TARGETS = {
    "onnx-cpu": "mcompress.targets.onnx_cpu.target:OnnxCpuTarget",
    "tensorrt": "mcompress.targets.tensorrt.target:TensorRTTarget",
}


def get_target(name: str):
    if name not in TARGETS:
        raise InputError(f"unknown target '{name}'.", f"Available targets: {', '.join(TARGETS)}.")
    module, _, cls = TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
