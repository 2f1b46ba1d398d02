"""Target registry. Targets are imported only when asked for, so the CLI starts fast."""

from __future__ import annotations

import importlib

from mcompress.core.errors import InputError

# name -> "module:Class"; a target registers itself by adding a line here.
TARGETS = {
    "onnx-cpu": "mcompress.targets.onnx_cpu.target:OnnxCpuTarget",
    "tensorrt": "mcompress.targets.tensorrt.target:TensorRTTarget",
    "openvino-cpu": "mcompress.targets.openvino_cpu.target:OpenVINOCpuTarget",
}
# Not a target but a choice between targets (compressor/pipeline/cpu_auto.py): build every CPU target,
# gate each, keep the fastest that passes.
CPU_AUTO = "cpu-auto"
CPU_AUTO_TARGETS = ("onnx-cpu", "openvino-cpu")


def get_target(name: str):
    if name not in TARGETS:
        raise InputError(f"unknown target '{name}'.", f"Available targets: {', '.join([*TARGETS, CPU_AUTO])}.")
    module, _, cls = TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
