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
# Not targets but choices between targets (compressor/pipeline/cpu_auto.py): build every CPU target at
# every precision this CPU offers, gate each, keep the fastest that passes. "cpu" (the CLI's default)
# races the CPU targets that are installed and accept the recipe; "cpu-auto" requires all of them.
CPU = "cpu"
CPU_AUTO = "cpu-auto"
CPU_CHOICES = (CPU, CPU_AUTO)
CPU_AUTO_TARGETS = ("onnx-cpu", "openvino-cpu")


def get_target(name: str):
    if name not in TARGETS:
        raise InputError(f"unknown target '{name}'.", f"Available targets: {', '.join([*TARGETS, *CPU_CHOICES])}.")
    module, _, cls = TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
