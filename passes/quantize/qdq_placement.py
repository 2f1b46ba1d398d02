"""Q/DQ placement for runtimes that fuse each QuantizeLinear -> DequantizeLinear pair into the one
node it feeds (TensorRT): after ONNX Runtime's QDQ quantizer, give every quantized consumer its
own pair and take non-quantized consumers off the pair.

ONNX Runtime's ``DedicatedQDQPair`` duplicates a pair only for tensors read by more than one
quantized node; a tensor read by one MatMul and by a residual Add still gets one shared pair whose
DequantizeLinear feeds both. TensorRT then cannot fuse the pair into the MatMul, and the residual
path is rounded to INT8 for nothing. Here the Add reads the float tensor again.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def dedicate_qdq_pairs(path: Path, op_types: list[str], excluded: set[str] = frozenset()) -> dict:
    """Rewrite ``path`` in place. ``op_types``: the op types that were quantized, less the node
    names in ``excluded`` (left in float); they keep Q/DQ inputs. Returns counts of what changed."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    duplicated = released = 0
    nodes = list(graph.node)
    extra_after: dict[int, list] = {}  # index of a DQ node -> cloned (q, dq) nodes to insert after it
    for index, dq in enumerate(nodes):
        if dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        users = consumers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear" or len(users) <= 1 or dq.output[0] in graph_outputs:
            continue  # a weight's DQ, or already one consumer
        float_input = q.input[0]
        is_quantized = lambda node: node.op_type in op_types and node.name not in excluded
        quantized = [u for u in users if is_quantized(u)]
        for user in users:
            if not is_quantized(user):  # read the float tensor again
                _replace_input(user, dq.output[0], float_input)
                released += 1
        for i, user in enumerate(quantized[1:], start=1):
            q2, dq2 = copy.deepcopy(q), copy.deepcopy(dq)
            q2.name, dq2.name = f"{q.name}_dedicated_{i}", f"{dq.name}_dedicated_{i}"
            q2.output[0] = dq2.input[0] = f"{q.output[0]}_dedicated_{i}"
            dq2.output[0] = f"{dq.output[0]}_dedicated_{i}"
            _replace_input(user, dq.output[0], dq2.output[0])
            extra_after.setdefault(index, []).extend([q2, dq2])
            duplicated += 1
        if not quantized:  # nothing reads the pair any more
            logger.debug("Q/DQ pair %s has no quantized consumer", dq.name)
    if duplicated or released:
        ordered = []  # each clone right after its original: still topologically sorted
        for index, node in enumerate(nodes):
            ordered.append(copy.deepcopy(node))
            ordered.extend(extra_after.get(index, []))
        del graph.node[:]
        graph.node.extend(ordered)
        _drop_unused_qdq(graph)
        onnx.save(model, str(path))
    logger.info("Q/DQ placement: %d pairs duplicated, %d float consumers given the float tensor back", duplicated, released)
    return {"qdq_pairs_duplicated": duplicated, "float_inputs_restored": released}


def _replace_input(node, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new


def _drop_unused_qdq(graph) -> None:
    """Remove Q/DQ nodes whose output nobody reads (after every consumer moved off them)."""
    while True:
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)
