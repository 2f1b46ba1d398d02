"""What the decoder quantization passes need to know about an exported causal LM with its KV cache.

The graph is Optimum's ``text-generation-with-past`` export: inputs ``input_ids``,
``attention_mask``, ``position_ids`` (when the architecture has them) and
``past_key_values.{i}.key`` / ``.value`` of shape (batch, kv_heads, past, head_dim); outputs
``logits`` and ``present.{i}.key`` / ``.value``. A first call (the prompt) gives the past a length
of 0; every later call feeds one token and the previous call's presents.

Two weights are singled out, because the quantization schemes treat them apart:

- the **embedding**: the ``Gather`` of a 2-D initializer with the most rows (vocabulary x hidden;
  GPT-2's position table is the smaller one);
- the **lm_head**: the ``MatMul`` with an initializer weight whose output is the ``logits`` graph
  output (through at most layout-only or Cast nodes). Optimum writes it as its own (transposed)
  initializer even when the checkpoint ties it to the embedding.

Only onnx (and numpy, onnxruntime inside functions) is imported here; no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAST_PREFIX = "past_key_values."
_PASS_THROUGH = frozenset({"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose"})


@dataclass(frozen=True)
class DecoderWeights:
    embedding: str | None  # node name of the embedding Gather
    lm_head: str | None  # node name of the lm_head MatMul
    matmuls: tuple[str, ...]  # every MatMul whose weight (input 1) is an initializer


def find_decoder_weights(model) -> DecoderWeights:
    """The embedding Gather, the lm_head MatMul and the weight MatMuls of an onnx ModelProto."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    matmuls = tuple(n.name for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in initializers)
    rows = {i.name: i.dims[0] for i in graph.initializer if len(i.dims) == 2}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in rows]
    # the token table has the most rows (the vocabulary); GPT-2's position table has fewer
    embedding = max(gathers, key=lambda n: rows[n.input[0]]).name if gathers else None
    lm_head = _lm_head_node(graph, producer)
    return DecoderWeights(embedding, lm_head.name if lm_head is not None else None, matmuls)


def _lm_head_node(graph, producer: dict):
    """The MatMul that makes the logits (through pass-through nodes), or None."""
    node = producer.get("logits")
    while node is not None and node.op_type != "MatMul":
        node = producer.get(node.input[0]) if node.op_type in _PASS_THROUGH else None
    return node


def gemms_to_matmuls(model) -> int:
    """GPT-2's Conv1D layers export as ``Gemm(x, W, b)`` (x already 2-D); the weight quantizers
    handle MatMul only. Rewrite each plain Gemm with a constant weight (alpha = beta = 1, transA 0) as
    ``MatMul(x, W)`` followed by ``Add(b)`` (W transposed into place when transB is 1), which computes
    the same; returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    rewritten, nodes = 0, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(initializers[weight]).T.copy()
            weight = f"{weight}.transposed"
            graph.initializer.append(numpy_helper.from_array(array, weight))
        product = node.output[0] if len(node.input) < 3 or not node.input[2] else f"{node.output[0]}.matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}.MatMul"))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}.Add"))
        rewritten += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    return rewritten


def untie_lm_head(model) -> bool:
    """With tied embeddings Optimum's graph computes the lm_head weight as ``Transpose(embedding)``,
    which a weight quantizer cannot see as a constant. Store the transposed copy as the lm_head's own
    initializer (the graph's result is unchanged); True when the graph was changed."""
    from onnx import numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}
    head = _lm_head_node(graph, producer)
    transpose = producer.get(head.input[1]) if head is not None else None
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
        return False
    weight = numpy_helper.to_array(initializers[transpose.input[0]]).T.copy()
    name = f"{transpose.input[0]}.lm_head"
    graph.initializer.append(numpy_helper.from_array(weight, name))
    head.input[1] = name
    if not any(transpose.output[0] in n.input for n in graph.node if n is not head):
        graph.node.remove(transpose)
    return True


@dataclass(frozen=True)
class PastSpec:
    names: tuple[str, ...]  # past_key_values.{i}.key/value, in graph order
    kv_heads: int
    head_dim: int
    dtype: type


def past_spec(session) -> PastSpec:
    """The past key/value inputs of an onnxruntime InferenceSession (fixed heads and head size)."""
    past = [i for i in session.get_inputs() if i.name.startswith(PAST_PREFIX)]
    if not past:
        return PastSpec((), 0, 0, np.float32)
    shape = past[0].shape
    dtype = np.float16 if "float16" in past[0].type else np.float32
    return PastSpec(tuple(i.name for i in past), int(shape[1]), int(shape[3]), dtype)


def prompt_feed(session, input_ids: np.ndarray, spec: PastSpec | None = None) -> dict[str, np.ndarray]:
    """The inputs of a first call on ``input_ids`` (batch, length), no padding: an empty past."""
    spec = spec or past_spec(session)
    input_ids = np.asarray(input_ids, dtype=np.int64)
    batch, length = input_ids.shape
    names = {i.name for i in session.get_inputs()}
    feed = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
    if "position_ids" in names:
        feed["position_ids"] = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
    for name in spec.names:
        feed[name] = np.zeros((batch, spec.kv_heads, 0, spec.head_dim), dtype=spec.dtype)
    return {k: v for k, v in feed.items() if k in names}


def greedy_decode(session, prompt_ids: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float, float]:
    """Greedy continuation of one prompt (1, length) with the KV cache: (tokens, prefill seconds,
    decode seconds for the ``new_tokens - 1`` one-token calls after the first)."""
    spec = past_spec(session)
    outputs = [o.name for o in session.get_outputs()]
    feed = prompt_feed(session, prompt_ids, spec)
    names = set(feed)
    started = time.perf_counter()
    result = dict(zip(outputs, session.run(outputs, feed)))
    prefill = time.perf_counter() - started
    tokens = [int(result["logits"][0, -1].argmax())]
    length = prompt_ids.shape[1]
    started = time.perf_counter()
    for _ in range(new_tokens - 1):
        step = {"input_ids": np.array([[tokens[-1]]], dtype=np.int64),
                "attention_mask": np.ones((1, length + 1), dtype=np.int64),
                "position_ids": np.array([[length]], dtype=np.int64)}
        step.update({name: result[name.replace(PAST_PREFIX, "present.")] for name in spec.names})
        result = dict(zip(outputs, session.run(outputs, {k: v for k, v in step.items() if k in names})))
        tokens.append(int(result["logits"][0, -1].argmax()))
        length += 1
    return np.array(tokens), prefill, time.perf_counter() - started


def cpu_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def decode_tokens_per_second(path: Path, prompt_ids: np.ndarray, new_tokens: int, threads: int | None = None,
                             repeats: int = 1) -> float:
    """Decode rate (one-token calls per second, batch 1, KV cache) of the model at ``path``; the
    best of ``repeats`` runs after one warm-up run."""
    session = cpu_session(path, threads)
    greedy_decode(session, prompt_ids, min(new_tokens, 4))
    best = min(greedy_decode(session, prompt_ids, new_tokens)[2] for _ in range(repeats))
    return (new_tokens - 1) / best if best > 0 else float("inf")
