"""Facts about the machine and the software a measurement ran on: recorded with every figure,
because latency depends on the CPU's ISA and on what else is running."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

VERSIONED_PACKAGES = ("mcompress", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "optimum",
                     "openvino", "nncf")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_info() -> dict:
    import os

    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), None)
        flags = next((l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")), [])
        info["cpu"] = model
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        pass
    return info


def other_processes_cpu(seconds: float = 1.0) -> float:
    """CPU percent (100 = one core) used by processes other than this one, over ``seconds``: a
    busy core skews latency (PyTorch far more than ONNX Runtime), so timings record it."""
    import os
    import time

    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter() if p.pid != me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(seconds)
    total = 0.0
    for p in procs:
        try:
            total += p.cpu_percent(None)
        except psutil.Error:
            pass
    return round(total, 1)
