"""One decode step's weight MatMuls on ONNX Runtime's CPU provider: FP32 MatMul against MatMulNBits
(8 and 4 bits, blocks of 32, asymmetric) at accuracy_level 0 (ORT's default) and 4 (int8 compute),
quantized by the decoder quantize pass's own MatMulNBits run.

The graph is SmolLM2-135M's MLP shape repeated: 30 layers of (576 x 1536) then (1536 x 576), as a
chain of 60 MatMuls, weights random (the kernels' speed does not depend on the values). M = 1 is
one decode step of one sequence; M = 128 is a 128-token prefill. Each variant is its own session
with 2 intra-op threads; 20 warm-up calls, then the median of 200 calls (20 at M = 128).

    python benchmarks/bench_matmul_nbits.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mcompress.passes.quantize.weight_only import WeightQuantSettings, _matmul_config, _quantize_nbits

HIDDEN, FFN, LAYERS, BLOCK = 576, 1536, 30, 32


def chain_of_matmuls(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for layer in range(LAYERS):
        for j, (k, n) in enumerate(((HIDDEN, FFN), (FFN, HIDDEN))):
            w, y = f"w{layer}_{j}", f"y{layer}_{j}"
            weights.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), w))
            nodes.append(helper.make_node("MatMul", [x, w], [y]))
            x = y
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", HIDDEN])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["m", HIDDEN])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        chain_of_matmuls(fp32)
        variants = {"FP32 MatMul": fp32}
        for bits in (8, 4):
            for level in (0, 4):
                # the decoder quantize pass's own MatMulNBits run (passes/quantize/weight_only.py), RTN at 4 bits
                settings = WeightQuantSettings(block_size=BLOCK, symmetric=False, accuracy_level=level)
                scheme = "int8" if bits == 8 else "int4-rtn"
                path = Path(tmp) / f"nbits{bits}_level{level}.onnx"
                onnx.save(_quantize_nbits(onnx.load(fp32), _matmul_config(scheme, settings, None), settings, []), path)
                variants[f"MatMulNBits {bits}-bit, accuracy_level {level}"] = path
        rng = np.random.default_rng(1)
        print(f"| variant | M=1 ms | M=128 ms |  (onnxruntime {ort.__version__}, 2 threads)\n|---|---|---|")
        for name, path in variants.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            cells = []
            for m, calls in ((1, 200), (128, 20)):
                x = rng.standard_normal((m, HIDDEN)).astype(np.float32)
                for _ in range(20):
                    session.run(None, {"x": x})
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    session.run(None, {"x": x})
                    times.append(time.perf_counter() - started)
                cells.append(f"{np.median(times) * 1e3:.3f}")
            print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
