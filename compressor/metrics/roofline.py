"""Distance to the limit: how many multiply-accumulates per second a build achieves, against what
this CPU's GEMM kernels reach.

Achieved: ``MACs(batch 1, sequence 128) × batch / p50 latency``, the MACs counted by
metrics/flops.py (every Linear and the two attention matmuls; embeddings, LayerNorm, softmax and
GELU are not counted, so time spent there lowers the achieved rate).

Peak: measured, not read off a data sheet. ONNX Runtime's own GEMM kernels (MLAS) time one large
product, ``PEAK_SHAPE`` (M × K × N), with a constant weight as in a model: ``MatMul`` for FP32 and
``MatMulInteger`` (uint8 activations × int8 weights, what dynamic INT8 and U8S8 Q/DQ graphs run)
for INT8, at the run's thread count. That is the rate the same kernels reach when nothing else
limits them; a build at a small share of it spends its time outside large GEMMs (small shapes,
non-GEMM operators, memory traffic), which is where the next optimisation should look.
"""

from __future__ import annotations

import functools
import time

import numpy as np

PEAK_SHAPE = (512, 1024, 1024)  # M x K x N: 0.54 GMAC per call
PEAK_SECONDS = 0.4  # timed per precision, after warm-up
PRECISIONS = ("fp32", "int8")


def _gemm_model(precision: str, k: int, n: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "W")
        node = helper.make_node("MatMulInteger", ["A", "W"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], f"gemm_{precision}", [helper.make_tensor_value_info("A", a_type, ["M", k])],
                              [helper.make_tensor_value_info("Y", y_type, ["M", n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def gemm_peak_gmacs(precision: str, threads: int | None, shape: tuple[int, int, int] = PEAK_SHAPE,
                    seconds: float = PEAK_SECONDS) -> float:
    """GMAC/s of ONNX Runtime's ``precision`` GEMM on this CPU (median call over ``seconds``)."""
    import onnxruntime as ort

    m, k, n = shape
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(_gemm_model(precision, k, n), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((m, k)).astype(np.float32) if precision == "fp32"
         else rng.integers(0, 256, (m, k), dtype=np.uint8))
    for _ in range(3):
        session.run(None, {"A": a})
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        session.run(None, {"A": a})
        times.append(time.perf_counter() - started)
    return m * k * n / float(np.median(times)) / 1e9


@functools.lru_cache(maxsize=8)
def gemm_peaks(threads: int | None) -> dict[str, float]:
    """{precision: GMAC/s} for FP32 and INT8; measured once per process and thread count (about
    1.5 s), so every build of a run (cpu-auto's targets) is compared with the same peaks."""
    return {p: round(gemm_peak_gmacs(p, threads), 2) for p in PRECISIONS}


def achieved_gmacs(macs_per_sequence: int, batch_size: int, p50_ms: float) -> float:
    return macs_per_sequence * batch_size / (p50_ms / 1000.0) / 1e9


def distance_to_limit(reference_macs: int, build_macs: int, latency_pairs, peaks: dict[str, float],
                      build_precision: str) -> list[dict]:
    """Per measured (batch, sequence 128) shape: the original's and the build's GMAC/s (each its
    own MACs at sequence 128: a pruned build does fewer) and their share of the peak of their GEMM
    precision (the original runs FP32). The build's share is None for a precision with no measured
    peak (int4 weights: MatMulNBits computes in int8 or fp32, so no int4 GEMM peak exists to compare)."""
    rows = []
    for reference, build in latency_pairs:
        if reference.sequence_length != 128:
            continue  # MACs are counted at sequence 128
        ref_rate = achieved_gmacs(reference_macs, reference.batch_size, reference.p50_ms)
        build_rate = achieved_gmacs(build_macs, build.batch_size, build.p50_ms)
        rows.append({"batch_size": build.batch_size, "sequence_length": 128,
                     "reference_gmacs": round(ref_rate, 2), "reference_share": round(ref_rate / peaks["fp32"], 4),
                     "build_gmacs": round(build_rate, 2),
                     "build_share": round(build_rate / peaks[build_precision], 4) if build_precision in peaks else None})
    return rows
