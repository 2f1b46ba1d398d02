"""Runs a serialized TensorRT engine on an NVIDIA GPU, with torch CUDA tensors as the I/O buffers.

UNTESTED: written where no NVIDIA GPU (and no data-centre TensorRT) was available. The tests
that would exercise it are marked ``gpu`` and skip without CUDA. Without a GPU, or when the
engine does not load on this GPU, constructing the runner raises TargetUnavailable; the tensorrt
target then gates the Q/DQ ONNX the engine was built from on ONNX Runtime instead (target.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcompress.core.errors import TargetUnavailable
from mcompress.targets.tensorrt.builder import cuda_device, find_tensorrt


class TensorRTRunner:
    def __init__(self, engine_path: Path, name: str | None = None):
        trt = find_tensorrt()
        if trt is None:
            raise TargetUnavailable("running a TensorRT engine needs the tensorrt (or tensorrt_rtx) Python package.",
                                    "pip install 'mcompress[tensorrt]' (or '[tensorrt-rtx]') on a machine with an NVIDIA GPU.")
        device = cuda_device()
        if device is None:
            raise TargetUnavailable("running a TensorRT engine needs an NVIDIA GPU with CUDA, and torch sees none.",
                                    "Run on a machine with an NVIDIA GPU and a CUDA build of torch.")
        import torch

        self._torch = torch
        self._log = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise TargetUnavailable(f"{trt.__name__} {trt.__version__} could not load {Path(engine_path).name} on "
                                    f"{device['name']} (compute capability {device['compute_capability']}).",
                                    "Rebuild the engine on this machine; tensorrt_build.json says what it was built for.")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        dtypes = {trt.int64: torch.int64, trt.int32: torch.int32, trt.float32: torch.float32, trt.float16: torch.float16}
        self._dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        self.stream = torch.cuda.Stream()
        self.name = name or f"{trt.__name__} {trt.__version__} on {device['name']}"

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        keep = []  # buffers must outlive the asynchronous launch
        with torch.cuda.stream(self.stream):
            for n in self.input_names:
                t = torch.from_numpy(np.ascontiguousarray(inputs[n])).to("cuda", self._dtypes[n], non_blocking=True)
                self.context.set_input_shape(n, tuple(t.shape))
                self.context.set_tensor_address(n, t.data_ptr())
                keep.append(t)
            outputs = {}
            for n in self.output_names:
                out = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self._dtypes[n], device="cuda")
                self.context.set_tensor_address(n, out.data_ptr())
                outputs[n] = out
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return outputs["logits"].float().cpu().numpy()
