"""A small, real bundle built in memory: a 2-input ONNX graph with a logits output, a word-level
tokenizer, labels and a manifest of the shape `mcompress package` writes. The bundle fuzzers
(tests/fuzz/test_fuzz_bundle.py and fuzz/fuzz_bundle.py) mutate it."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile

LABELS = {"0": "neg", "1": "pos"}


def tiny_onnx() -> bytes:
    """logits[b, 2] = sum over the sequence of float(input_ids) * attention_mask, times [1, -1]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
             helper.make_node("Cast", ["masked"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["as_float", "axes"], ["summed"], keepdims=1),
             helper.make_node("MatMul", ["summed", "weights"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
         onnx.numpy_helper.from_array(np.array([[0.01, -0.01]], dtype=np.float32), "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def tiny_tokenizer() -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "a": 2, "film": 3}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str().encode()


def manifest_for(files: dict[str, bytes]) -> dict:
    return {
        "schema_version": 1, "task": "text-classification", "target": "onnx-cpu", "mcompress_version": "0.1.0",
        "model_file": "model.onnx", "model_format": "onnx", "labels_file": "labels.json", "num_labels": 2,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"], "dynamic_axes": {"0": "batch", "1": "sequence"}}
                   for n in ("input_ids", "attention_mask")],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2], "dynamic_axes": {"0": "batch"}}],
        "max_sequence_length": 16,
        "preprocessing": {"tokenizer_file": "tokenizer.json", "truncation": True, "padding": "longest", "max_length": 16,
                          "feeds": {"input_ids": "ids", "attention_mask": "attention_mask"}, "pad_id": 0,
                          "pad_token": "[PAD]", "pad_type_id": 0, "padding_side": "right", "truncation_side": "right"},
        "postprocessing": {"output": "logits", "activation": "softmax"},
        "runtime": {"onnxruntime": "1.32.0", "tokenizers": "0.22.2", "numpy": "2.4.6", "python": "3.11.7"},
        "recipe": {"max_length": 16}, "source": {"sha256": "0" * 64, "model_type": "bert"},
        "quantization": "dynamic", "passed": True,
        "gates": [{"name": "accuracy_drop", "value": 0.1, "unit": "points", "threshold": 1.0, "passed": True,
                   "ci95": [0.0, 0.2], "detail": "accuracy 0.8 -> 0.79"}],
        "metrics": {"eval_examples": 24, "reference_accuracy": 0.8, "build_accuracy": 0.79,
                    "latency": {"reference": [{"batch_size": 1, "sequence_length": 16, "p50_ms": 2.0, "p95_ms": 3.0, "iterations": 3}],
                                "build": [{"batch_size": 1, "sequence_length": 16, "p50_ms": 1.0, "p95_ms": 1.5, "iterations": 3}]}},
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in sorted(files.items())},
    }


_MEMBERS = None


def members() -> dict[str, bytes]:
    """model.onnx, tokenizer.json, labels.json (built once per process)."""
    global _MEMBERS
    if _MEMBERS is None:
        _MEMBERS = {"labels.json": json.dumps(LABELS).encode(), "model.onnx": tiny_onnx(), "tokenizer.json": tiny_tokenizer()}
    return dict(_MEMBERS)


def zip_bytes(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED, mode: int = 0o644) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr, info.compress_type = 3, mode << 16, compression
            zf.writestr(info, data)
    return buf.getvalue()


def bundle_bytes(manifest: dict | None = None, files: dict[str, bytes] | None = None,
                 manifest_bytes: bytes | None = None) -> bytes:
    """A bundle of ``files`` (default: the tiny ones) with ``manifest`` (default: the right one for them)."""
    files = members() if files is None else files
    manifest = manifest_for(files) if manifest is None else manifest
    raw = manifest_bytes if manifest_bytes is not None else json.dumps(manifest, sort_keys=True).encode()
    return zip_bytes(sorted([*files.items(), ("manifest.json", raw)]))


def valid_manifest() -> dict:
    return copy.deepcopy(manifest_for(members()))
