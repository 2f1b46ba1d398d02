"""The baseline of bench_serve.py: the FastAPI + ONNX Runtime server a user writes by hand around a
build directory — one model call per request, no batching across requests, no limits, no metrics.

    python benchmarks/naive_server.py BUILD_DIR --port 8001

A plain ``def`` route (FastAPI runs it in its thread pool, so concurrent requests call the one
shared ONNX Runtime session from several threads at once), transformers' AutoTokenizer with
padding and truncation at the recipe's max_length, softmax, the label names from config.json.
Same model bytes and the same session options as the bundle runtime: for an onnx-cpu build, ONNX
Runtime with all optimizations and default intra-op threads; for an openvino-cpu build (model.xml),
the OpenVINO CPU plugin with the LATENCY hint and the build's inference precision, a fresh infer
request per call (a compiled model is shared; an infer request is not thread-safe).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoTokenizer


class PredictRequest(BaseModel):
    texts: list[str]


def onnxruntime_logits(model: Path, threads: int | None, report: dict):
    """feed -> logits on one shared ONNX Runtime session (its run is thread-safe)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(["logits"], feed)[0], [i.name for i in session.get_inputs()]


def openvino_logits(model: Path, threads: int | None, report: dict):
    """feed -> logits on one compiled OpenVINO model, a new infer request per call."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    precision = (report["recipe"].get("openvino") or {}).get("inference_precision", "f32")
    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, hints.inference_precision: getattr(ov.Type, precision)}
    if threads:
        config[props.inference_num_threads] = threads
    compiled = ov.Core().compile_model(str(model), "CPU", config)

    def logits(feed):
        request = compiled.create_infer_request()
        request.infer(feed)
        return np.array(request.get_tensor("logits").data, copy=True)

    return logits, [i.get_any_name() for i in compiled.inputs]


RUNTIMES = {".onnx": onnxruntime_logits, ".xml": openvino_logits}  # by the build's model file


def create_app(build_dir: Path, threads: int | None) -> FastAPI:
    report = json.loads((build_dir / "report.json").read_text())
    model = build_dir / report["artifact"]["model_file"]
    run_logits, input_names = RUNTIMES[model.suffix](model, threads, report)
    tokenizer = AutoTokenizer.from_pretrained(build_dir)
    max_length = report["recipe"]["max_length"]
    id2label = json.loads((build_dir / "config.json").read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(request: PredictRequest):
        batch = tokenizer(request.texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        logits = run_logits({name: batch[name].astype(np.int64) for name in input_names})
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = e / e.sum(-1, keepdims=True)
        return {"predictions": [{"label": labels[int(p.argmax())], "score": float(p.max()),
                                 "scores": dict(zip(labels, map(float, p)))} for p in probabilities]}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    uvicorn.run(create_app(args.build_dir, args.threads), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
