"""Per-layer INT8 sensitivity: how much of the quantization error each layer carries.

A *layer* is one node that quantization changed (``granularity: node``: a MatMul, Gemm, Gather,
or a fused Attention / EmbedLayerNormalization) or every such node of one transformer block
(``granularity: block``). For each layer in turn, the float graph is quantized again with the same
settings (and, for static mode, the same calibration ranges) with ONLY that layer left in float
(ONNX Runtime's ``nodes_to_exclude``), and its logits on the first ``sensitivity.examples``
examples of the selection split are compared with the FP32 ONNX graph's: mean KL(FP32 || candidate)
of the softmax outputs, max |logit difference|, accuracy and agreement of predictions. A layer's
sensitivity is how much leaving it in float lowers the mean KL against the fully quantized model
(``kl_reduction``); KL is continuous, so it ranks layers that a few hundred examples' accuracy
cannot tell apart. Ties break by accuracy gain, then graph order.

ONNX node names map back to PyTorch module names: the legacy exporter names a node by its module
scope, ``/model/bert/encoder/layer.0/attention/self/query/MatMul`` ->
``bert.encoder.layer.0.attention.self.query`` (``model`` is the export wrapper's attribute,
passes/export/onnx_export.py). Fused nodes have no scope (``Attention_0``): they map through the
dotted names of their initializers (EmbedLayerNormalization keeps ``model.bert.embeddings.*``), or
else through the nearest downstream node that has a scope (a fused Attention feeds
``.../layer.0/attention/output/dense/MatMul``, so it is ``bert.encoder.layer.0.attention.self``,
q/k/v together).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcompress.core.numerics import log_softmax


logger = logging.getLogger(__name__)

# What ORT's dynamic quantizer rewrites (onnxruntime.quantization.registry.IntegerOpsRegistry, less
# Transpose, which only passes an already quantized tensor on). Static mode: quantize.static.op_types.
DYNAMIC_OP_TYPES = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "LSTM")
# passes/export/onnx_export.py wraps the model as `LogitsOnly.model`, so every scope starts with it.
EXPORT_WRAPPER = "model"
_BLOCK = re.compile(r"^(.*?\blayers?\.\d+)(\.|$)")


@dataclass
class Layer:
    key: str  # the label the report and the ranking use
    module: str  # PyTorch module name
    op_types: list[str]
    nodes: list[str] = field(default_factory=list)  # float-graph node names (nodes_to_exclude)


def _scope(name: str) -> tuple[str, str] | None:
    """'/model/bert/encoder/layer.0/attention/self/query/MatMul' -> ('bert.encoder.layer.0.attention.self.query', 'MatMul')."""
    if not name.startswith("/"):
        return None
    *scope, last = name.strip("/").split("/")
    if scope and scope[0] == EXPORT_WRAPPER:
        scope = scope[1:]
    return (".".join(scope), last) if scope else None


def _strip_param(name: str) -> str:
    name = name[len(EXPORT_WRAPPER) + 1:] if name.startswith(EXPORT_WRAPPER + ".") else name
    return re.sub(r"\.(weight|bias)$", "", name)


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return ".".join(prefix)


def _consumers(graph) -> dict[str, list]:
    consumers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    return consumers


def module_name(node, initializers: set[str], consumers: dict[str, list]) -> tuple[str, str]:
    """(PyTorch module name, display label) of a float-graph node."""
    scoped = _scope(node.name)
    if scoped:
        module, last = scoped
        # a MatMul of two activations (attention scores) shares its scope with the projections
        weighted = any(i in initializers for i in node.input)
        return module, module if last == node.op_type and weighted else f"{module} ({last})"
    params = [_strip_param(i) for i in node.input if i in initializers and "." in i and "::" not in i]
    if params:
        module = _common_prefix(params) or params[0]
        return module, f"{module} (fused {node.op_type})"
    # Nearest downstream node with a module scope (breadth first, a few hops).
    frontier, seen = [node], {node.name}
    for _ in range(4):
        following = []
        for n in frontier:
            for out in n.output:
                for c in consumers.get(out, []):
                    if c.name in seen:
                        continue
                    seen.add(c.name)
                    scoped = _scope(c.name)
                    if scoped:
                        downstream = scoped[0]
                        m = re.match(r"^(.*?\.attention)(?:\.(\w+))?", downstream)
                        if m and node.op_type in ("Attention", "MultiHeadAttention", "QAttention"):
                            # BERT/RoBERTa keep q/k/v in attention.self and the projection in attention.output
                            module = m.group(1) + (".self" if m.group(2) == "output" else "")
                            return module, f"{module} (fused {node.op_type}: query, key, value)"
                        return downstream, f"{downstream} (fused {node.op_type} {node.name})"
                    following.append(c)
        frontier = following
    return node.name, node.name


def quantized_nodes(float_path: Path, quantized_path: Path, op_types) -> list:
    """Float-graph nodes of the quantizer's ``op_types`` that quantization changed: gone from the
    quantized graph (replaced, e.g. MatMul -> MatMulInteger), or present with different inputs
    (Q/DQ inserted before them). The op filter matters for Q/DQ graphs: every consumer of a
    quantized tensor (an Add after a MatMul) reads it through a DequantizeLinear too."""
    import onnx

    float_model = onnx.load(str(float_path), load_external_data=False)
    quantized = {n.name: n for n in onnx.load(str(quantized_path), load_external_data=False).graph.node if n.name}
    changed = []
    for node in float_model.graph.node:
        if not node.name or node.op_type not in op_types:
            continue  # a node without a name cannot be named in nodes_to_exclude
        q = quantized.get(node.name)
        if q is None or q.op_type != node.op_type or list(q.input) != list(node.input):
            changed.append(node)
    return changed


def find_layers(float_path: Path, quantized_path: Path, op_types, granularity: str = "node") -> list[Layer]:
    """The layers that can be left in float, in graph order."""
    import onnx

    graph = onnx.load(str(float_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    consumers = _consumers(graph)
    layers: dict[str, Layer] = {}
    for node in quantized_nodes(float_path, quantized_path, op_types):
        module, label = module_name(node, initializers, consumers)
        if granularity == "block":
            m = _BLOCK.match(module)
            key = m.group(1) if m else ".".join(module.split(".")[:2])
            layer = layers.setdefault(key, Layer(key, key, []))
        else:
            key = label if label not in layers else f"{label} [{node.name}]"
            layer = layers.setdefault(key, Layer(key, module, []))
        layer.nodes.append(node.name)
        if node.op_type not in layer.op_types:
            layer.op_types.append(node.op_type)
    return list(layers.values())


def divergence(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray) -> dict:
    """Candidate logits against the FP32 ONNX graph's on the same examples."""
    log_p, log_q = log_softmax(reference_logits), log_softmax(logits)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    predictions = logits.argmax(-1)
    return {"accuracy": round(float((predictions == labels).mean()), 6),
            "mean_kl": float(kl.mean()),
            "max_abs_logit_diff": round(float(np.abs(logits - reference_logits).max()), 6),
            "agreement": round(float((predictions == reference_logits.argmax(-1)).mean()), 6)}


class Requantizer:
    """Quantizes the float graph again, as the quantize pass did, with some nodes left in float.
    Static mode calibrates once and reuses the ranges for every candidate."""

    def __init__(self, mode: str, float_graph: Path, state, ctx, work: Path):
        from mcompress.passes.quantize.ort_int8 import calibrate_static

        self.mode, self.float_graph, self.ctx, self.work = mode, Path(float_graph), ctx, Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self._static = None
        if mode.startswith("static"):
            self._static = calibrate_static(self.float_graph, self.work / "calibration", state, ctx)
            self.op_types = tuple(ctx.recipe.quantize.static.op_types)
        elif mode == "dynamic":
            self.op_types = DYNAMIC_OP_TYPES
        else:
            raise ValueError(f"cannot re-quantize mode {mode!r}")

    def build(self, exclude: list[str], name: str) -> Path:
        from mcompress.passes.quantize.ort_int8 import quantize_dynamic_int8, quantize_static_calibrated

        dst = self.work / name / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if self._static:
            inferred, cache = self._static
            return quantize_static_calibrated(inferred, cache, dst, self.ctx, nodes_to_exclude=exclude)
        return quantize_dynamic_int8(self.float_graph, dst, self.ctx.recipe.quantize.per_channel,
                                     self.ctx.target.capabilities, nodes_to_exclude=exclude)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path.parent, ignore_errors=True)


def measure_sensitivity(layers: list[Layer], requantizer: Requantizer, quantized_path: Path, state, ctx,
                        max_seconds: float, examples: int) -> dict:
    """Scores every layer (until ``max_seconds``) and ranks them; returns a JSON-able dict."""
    recipe = ctx.recipe
    data = ctx.selection.head(examples)
    threads = recipe.latency.threads
    # rows: one per text, or one per word for a tagger (KL, accuracy and agreement over words)
    labels = None

    def logits_of(path: Path, what: str) -> np.ndarray:
        nonlocal labels
        runner = ctx.target.runner(path, threads)
        logits, labels = ctx.task.scored_logits(runner, state.tokenizer, data, recipe.max_length, recipe.eval.batch_size, what)
        return logits

    started = time.perf_counter()
    float_logits = logits_of(requantizer.float_graph, "sensitivity: FP32 ONNX")
    full = divergence(logits_of(quantized_path, "sensitivity: INT8"), float_logits, labels)
    fp32 = divergence(float_logits, float_logits, labels)
    advance = ctx.progress("layer sensitivity", len(layers)) if ctx.progress else (lambda n: None)
    rows, unmeasured = [], []
    for i, layer in enumerate(layers):
        if time.perf_counter() - started > max_seconds:
            unmeasured = layers[i:]
            logger.warning("sensitivity: time budget of %.0f s spent; %d of %d layers not measured",
                           max_seconds, len(unmeasured), len(layers))
            break
        path = requantizer.build(layer.nodes, f"sensitivity-{i}")
        d = divergence(logits_of(path, f"sensitivity: {layer.key} in float"), float_logits, labels)
        _remove(path)
        rows.append({"layer": layer.key, "module": layer.module, "op_types": layer.op_types, "nodes": layer.nodes,
                     "accuracy": d["accuracy"],
                     "accuracy_change_points": round((d["accuracy"] - full["accuracy"]) * 100, 4),
                     "mean_kl": d["mean_kl"], "kl_reduction": full["mean_kl"] - d["mean_kl"],
                     "max_abs_logit_diff": d["max_abs_logit_diff"], "agreement": d["agreement"], "order": i})
        advance(1)
    rows.sort(key=lambda r: (-r["kl_reduction"], -r["accuracy_change_points"], r["order"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    for row in rows:
        row["mean_kl"] = float(f"{row['mean_kl']:.6g}")
        row["kl_reduction"] = float(f"{row['kl_reduction']:.6g}")
    full["mean_kl"] = float(f"{full['mean_kl']:.6g}")
    return {"examples": len(data), "granularity": recipe.sensitivity.granularity,
            "ranked_by": "kl_reduction (mean KL to FP32 ONNX, fully INT8 minus this layer in float), then accuracy",
            "fp32_onnx_accuracy": fp32["accuracy"], "int8": full, "layers": rows,
            "unmeasured": [{"layer": l.key, "module": l.module, "nodes": l.nodes} for l in unmeasured],
            "seconds": round(time.perf_counter() - started, 2)}


def ranking(sensitivity: dict) -> list[dict]:
    """Layers most sensitive first; unmeasured layers last, in graph order."""
    return list(sensitivity["layers"]) + list(sensitivity["unmeasured"])
