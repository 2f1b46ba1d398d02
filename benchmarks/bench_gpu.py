"""GPU benchmark: PyTorch FP32 / FP16 eager on an NVIDIA GPU, and which TensorRT this machine has.

For one example checkpoint, on its full test split: accuracy of FP32 and FP16 eager, and latency at
sequence 128 measured with CUDA events (p50/p95 of single calls at batch 1; throughput in
sequences/s at batch 64, from the median call). It also records what a TensorRT engine would need
here: the GPU's name and compute capability, and whether ``tensorrt`` or ``tensorrt_rtx`` imports
(targets/tensorrt/builder.py's ``find_tensorrt``). When one does, run
``mcompress run MODEL --target tensorrt`` on this machine for the engine's own figures; this
script does not fake them.

    python benchmarks/bench_gpu.py examples/sentiment --out benchmarks/results/gpu-pytorch.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEQUENCE = 128


def cuda_event_times(fn, iterations: int, warmup: int) -> list[float]:
    """Milliseconds of each call, from CUDA events around it (the GPU's own clock)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def tensorrt_status() -> dict:
    from mcompress.targets.tensorrt.builder import MODULES, find_tensorrt, package_info

    trt = find_tensorrt()
    if trt is None:
        return {"importable": False, "tried": list(MODULES)}
    return {"importable": True, **package_info(trt)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()

    import torch

    from mcompress.calibration.datasets import load_labelled_texts, tokenize
    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks import evaluate

    if not torch.cuda.is_available():
        raise SystemExit("error: torch sees no CUDA GPU; this benchmark needs one.")
    ckpt = inspect_checkpoint(args.model_dir)
    test = load_labelled_texts(args.model_dir / "splits", ckpt.label2id, "text", "label", "test", True)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    props = torch.cuda.get_device_properties(0)
    results = {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
               "torch": torch.__version__, "cuda": torch.version.cuda, "sequence_length": SEQUENCE,
               "test_examples": len(test), "tensorrt": tensorrt_status(), "models": {}}
    import onnxruntime as ort

    results["onnxruntime_providers"] = ort.get_available_providers()
    texts = (test.texts * (64 // len(test.texts) + 1))[:64]
    for name, dtype in (("pytorch-fp32-eager", torch.float32), ("pytorch-fp16-eager", torch.float16)):
        m = model.to("cuda", dtype=dtype).eval()
        runner = TorchRunner(m)
        accuracy = evaluate(runner, tokenizer, test, 128, 64).accuracy
        row = {"accuracy": round(accuracy, 4)}
        for batch in (1, 64):
            feed = {k: torch.from_numpy(v).cuda() for k, v in tokenize(tokenizer, texts[:batch], SEQUENCE, pad_to=SEQUENCE).items()
                    if k in runner.input_names}
            with torch.inference_mode():
                times = cuda_event_times(lambda: m(**feed), args.iterations, 20)
            p50 = float(np.percentile(times, 50))
            row[f"b{batch}"] = {"p50_ms": round(p50, 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
                                "sequences_per_s": round(batch * 1000 / p50, 1)}
        results["models"][name] = row
        print(name, json.dumps(row), flush=True)
    print(json.dumps({k: v for k, v in results.items() if k != "models"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
