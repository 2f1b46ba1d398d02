"""A Triton Inference Server model repository from a bundle (or a build directory, packaged in
memory): ``OUT/NAME/config.pbtxt`` and ``OUT/NAME/1/model.onnx`` (the bundle's verified model
bytes), with the bundle's ``tokenizer.json``, ``labels.json`` and ``manifest.json`` beside the
config for the client that tokenizes.

The config declares the ONNX Runtime backend (``platform: "onnxruntime_onnx"``), the model's
inputs and its ``logits`` output from the manifest (batch axis dropped, dynamic axes as -1), and
dynamic batching (``preferred_batch_size`` up to max_batch_size, ``max_queue_delay_microseconds``).
Triton batches only requests whose tensors have the same shape, so clients pad token ids to a
fixed length (e.g. the bundle's max_sequence_length) or to a few bucket lengths; and Triton's
batches are not the gate's length buckets, so a dynamically quantized model's scores can differ in
the last digits from the gated ones. Written here and checked against the model's own ONNX
signature; Triton itself was not run here (no Triton server on this machine).
"""

from __future__ import annotations

from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.core.formats import ONNX

TRITON_TYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
SIDECARS = ("labels.json",)


def _tensor(spec: dict) -> str:
    if spec["dtype"] not in TRITON_TYPES:
        raise InputError(f"model tensor {spec['name']!r} has dtype {spec['dtype']}, which this config writer does not map.")
    dims = [-1 if isinstance(d, str) else int(d) for d in spec["shape"][1:]]
    return (f'  {{ name: "{spec["name"]}" data_type: {TRITON_TYPES[spec["dtype"]]} '
            f'dims: [ {", ".join(map(str, dims))} ] }}')


def config_pbtxt(manifest: dict, name: str, max_batch_size: int, max_queue_delay_us: int, instances: int = 1) -> str:
    """The config.pbtxt text of a bundle's model."""
    outputs = [o for o in manifest["outputs"] if o["name"] == "logits"]
    preferred = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= max_batch_size} | {max_batch_size})
    return "\n".join([
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [", ",\n".join(_tensor(i) for i in manifest["inputs"]), "]",
        "output [", ",\n".join(_tensor(o) for o in outputs), "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
        "",
    ])


def write_repository(manifest: dict, members: dict[str, bytes], source: Path, out: Path, name: str,
                     max_batch_size: int, max_queue_delay_us: int) -> Path:
    """Write the model repository entry ``out/name`` from a verified bundle's manifest and members
    (runtime.read_bundle); return its directory."""
    if manifest.get("model_format", ONNX.name) != ONNX.name:
        raise InputError(f"{source} holds a {manifest.get('model_format')} model; Triton's ONNX Runtime backend "
                         "needs an ONNX build.", "Build with --target onnx-cpu.")
    if max_batch_size < 1 or max_queue_delay_us < 0:
        raise InputError("--max-batch-size must be >= 1 and --max-queue-delay-us >= 0.")
    model_dir = out / name
    if model_dir.exists():
        raise InputError(f"{model_dir} already exists.", "Choose another output directory or --name.")
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(members[manifest["model_file"]])
    (model_dir / "config.pbtxt").write_text(config_pbtxt(manifest, name, max_batch_size, max_queue_delay_us))
    tokenizer = manifest["preprocessing"]["tokenizer_file"]
    for sidecar in (tokenizer, *SIDECARS):
        (model_dir / sidecar).write_bytes(members[sidecar])
    import json

    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return model_dir
