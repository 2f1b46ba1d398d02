"""Weight quantization of a decoder's ONNX graph with ONNX Runtime (onnx-cpu).

Activation-quantized INT8 (ORT's dynamic quantization) measured +62% perplexity on SmolLM2
(docs/causal-lm-quantization.md), so the decoder schemes quantize weights only, except
``int8-dynamic``, which is kept as the measured reference point:

- ``int8-dynamic``: ``quantize_dynamic``, MatMul weights INT8 per output channel (symmetric),
  activations quantized per tensor at run time (MatMulInteger).
- ``int8``: ``MatMulNBits`` with 8-bit weights. Each column of a weight W (K x N) is cut into
  blocks of ``block_size`` consecutive input rows; a block b gets ``scale = (max - min) / 255`` and
  ``zero = round(-min / scale)`` (asymmetric; symmetric: ``scale = max|w| / 127``, zero 128), and
  ``q = clamp(round(w / scale) + zero, 0, 255)``. Activations stay float; the kernel dequantizes
  blocks on the fly (``accuracy_level`` 4 lets it quantize activations to int8 per block for
  its integer kernels, 0 leaves that to ORT's default for the type).
- ``int4-rtn``: the same with 4 bits (16 levels) — round-to-nearest, no data.
- ``int4-hqq``: Half-Quadratic Quantization (Badri & Shaji 2023): per block, the scale is fixed
  and the (float) zero point is optimised to minimise ``|W - dequant(quant(W))|_p`` (p < 1, a
  sparsity-promoting loss, by a few half-quadratic iterations); no data.
- ``int4-gptq``: GPTQ (Frantar et al. 2022): columns are quantized one at a time and the rounding
  error of each is spread onto the not-yet-quantized columns through the inverse Hessian
  ``H = 2 X^T X`` of the layer's inputs X, collected by running calibration text through the graph
  (``percdamp`` of mean(diag H) added to the diagonal). Needs the calibration text.

GPT-2's Conv1D layers export as Gemm; they are rewritten as MatMul + Add first (same result), so
every scheme sees them (decoder_graph.gemms_to_matmuls).

Embedding and lm_head (decoder_graph.find_decoder_weights). ``lm_head: quantize`` quantizes the
lm_head MatMul with the scheme's bits (with tied embeddings Optimum computes its weight as
``Transpose(embedding)``; the pass stores that transpose as the lm_head's own initializer first, so
embedding and lm_head are quantized each for its own use); ``float`` leaves it FP32. ``embedding: int4`` turns the
embedding Gather into ``GatherBlockQuantized`` (4-bit, blocks of ``block_size`` along the hidden
axis, the RTN rule above; ORT has no 8-bit Gather block quantizer); ``float`` leaves it FP32.
``embedding: tied`` keeps tied weights tied after quantization: the embedding lookup becomes a
``GatherBlockQuantized`` over the lm_head's own MatMulNBits blocks (row v of the lm_head weight,
N x K = vocabulary x hidden, is token v's embedding; MatMulNBits stores it as K/block_size blocks
of block_size values with one scale and one integer zero point each, which is GatherBlockQuantized's
layout with quantize_axis 1 once the block axis is folded by a Reshape), so the file holds one
quantized copy at the scheme's bits (tied_embedding). It applies when the checkpoint ties them, the
lm_head is quantized, K is a multiple of block_size (no padded block) and the zero points are
integers (not HQQ's floats); otherwise the embedding is quantized to int4 as above and the facts
say why. The int8-dynamic scheme quantizes the embedding to 8-bit per tensor when it is not ``float``.

The reference SmolLM2 weights came from a Q4_1 GGUF: asymmetric 4-bit with one scale and one minimum
per block of 32, so int4 with ``block_size: 32`` and asymmetric blocks reproduces them almost
exactly (Q4_1's minimum is a free float, MatMulNBits' zero point an integer, so not bit for bit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcompress.passes.quantize.decoder_graph import (cpu_session, find_decoder_weights, gemms_to_matmuls, prompt_feed,
                                                     untie_lm_head)

logger = logging.getLogger(__name__)

SCHEMES = ("int8-dynamic", "int8", "int4-rtn", "int4-hqq", "int4-gptq")


@dataclass(frozen=True)
class WeightQuantSettings:
    """What one quantized graph depends on besides its scheme (recipe quantize.decoder)."""

    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 0
    lm_head: str = "quantize"  # quantize | float
    embedding: str = "tied"  # tied | int4 | float (recipe quantize.decoder.embedding)
    gptq_percdamp: float = 0.01
    gptq_actorder: bool = False


class _FeedsReader:
    """An onnxruntime CalibrationDataReader over prepared feeds (GPTQ deep-copies and iterates it)."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self._next = 0

    def get_next(self):
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def calibration_feeds(path: Path, token_ids: list[np.ndarray]) -> list[dict]:
    """One prompt feed (batch 1, empty past) per calibration token sequence."""
    session = cpu_session(path)
    return [prompt_feed(session, np.asarray(ids, dtype=np.int64)[None, :]) for ids in token_ids if len(ids)]


def _matmul_config(scheme: str, settings: WeightQuantSettings, feeds: list[dict] | None):
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 GPTQWeightOnlyQuantConfig, HQQWeightOnlyQuantConfig)

    if scheme == "int4-hqq":
        return HQQWeightOnlyQuantConfig(block_size=settings.block_size, bits=4, op_types_to_quantize=("MatMul",))
    if scheme == "int4-gptq":
        if not feeds:
            raise ValueError("int4-gptq needs calibration feeds")
        return GPTQWeightOnlyQuantConfig(calibration_data_reader=_FeedsReader(feeds), percdamp=settings.gptq_percdamp,
                                         actorder=settings.gptq_actorder, op_types_to_quantize=("MatMul",))
    return DefaultWeightOnlyQuantConfig(block_size=settings.block_size, is_symmetric=settings.symmetric,
                                        accuracy_level=settings.accuracy_level or None, bits=8 if scheme == "int8" else 4,
                                        op_types_to_quantize=("MatMul",))


def _group_grid(block: np.ndarray, maxq: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per output column of ``block`` (rows x N): the RTN (scale, zero) of its min/max range (0 included)."""
    low, high = np.minimum(block.min(axis=0), 0.0), np.maximum(block.max(axis=0), 0.0)
    if symmetric:
        high = np.maximum(-low, high)
        low = -high
    flat = (low == 0) & (high == 0)
    low, high = np.where(flat, -1.0, low), np.where(flat, 1.0, high)
    scale = (high - low) / maxq
    zero = np.full_like(scale, (maxq + 1) / 2) if symmetric else np.round(-low / scale)
    return scale, zero


def gptq_weight(weight: np.ndarray, hessian: np.ndarray, num_bits: int = 4, group_size: int = 32, scheme: str = "asym",
                blocksize: int = 128, percdamp: float = 0.01, actorder: bool = False, **_) -> np.ndarray:
    """GPTQ of one weight in ONNX layout (K inputs x N outputs) with H = 2 X^T X (K x K); returns the
    fake-quantized weight on each group's grid (fixed when the group's first row is reached, from the
    rows as updated so far). With U upper-triangular, H^-1 = U^T U: quantizing row i leaves the error
    e = (w_i - q_i) / U_ii, and rows j > i absorb U_ij * e — within a block at once, across blocks as
    one matrix product (Frantar et al. 2022, Algorithm 1, transposed)."""
    maxq = 2 ** num_bits - 1
    W, H = weight.astype(np.float64).copy(), hessian.astype(np.float64).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[dead, :] = 0.0
    perm = np.argsort(-np.diag(H)) if actorder else np.arange(len(H))
    W, H = W[perm], H[perm][:, perm]
    H[np.diag_indices_from(H)] += percdamp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    scale = zero = None
    for i1 in range(0, len(W), blocksize):
        i2 = min(i1 + blocksize, len(W))
        errors = np.zeros((i2 - i1, W.shape[1]))
        for i in range(i1, i2):
            if scale is None or (i % group_size == 0):
                scale, zero = _group_grid(W[i:i + group_size], maxq, scheme == "sym")
            Q[i] = scale * (np.clip(np.round(W[i] / scale) + zero, 0, maxq) - zero)
            errors[i - i1] = (W[i] - Q[i]) / U[i, i]
            W[i + 1:i2] -= np.outer(U[i, i + 1:i2], errors[i - i1])
        W[i2:] -= U[i1:i2, i2:].T @ errors
    return Q[np.argsort(perm)].astype(weight.dtype)


def _quantize_nbits(model, config, settings: WeightQuantSettings, exclude: list[str]):
    """One MatMulNBitsQuantizer run over an onnx ModelProto; the quantized ModelProto.

    GPTQ runs ONNX Runtime's pipeline (Hessians from the calibration feeds, MatMulNBits packing)
    with gptq_weight in place of its per-weight ``gptq``: ORT 1.32's indexes the upper-triangular
    inverse Hessian factor by column (``Hinv[i:, i]``, ``Hinv[i2:, i1:i2]``, both zero below the
    diagonal), so it propagates no error and returns RTN's weights bit for bit (measured here)."""
    from unittest import mock

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.neural_compressor import weight_only as inc_weight_only

    quantizer = MatMulNBitsQuantizer(model, bits=getattr(config, "bits", 4), block_size=settings.block_size,
                                     is_symmetric=settings.symmetric, accuracy_level=settings.accuracy_level or None,
                                     nodes_to_exclude=exclude, algo_config=config)
    # ORT logs every node at INFO and GPTQ prints a progress bar to stdout: shown only with -v.
    verbose = logger.isEnabledFor(logging.INFO)
    ort_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    previous = ort_logger.level
    ort_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with mock.patch.object(inc_weight_only, "gptq", gptq_weight), \
                contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            quantizer.process()
    finally:
        ort_logger.setLevel(previous)
    return quantizer.model.model


def _quantize_embedding(model, settings: WeightQuantSettings, embedding: str):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    config = DefaultWeightOnlyQuantConfig(block_size=settings.block_size, is_symmetric=settings.symmetric, bits=4,
                                          op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    others = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name != embedding]
    return _quantize_nbits(model, config, settings, others)


def tied_embedding(model, embedding: str, embedding_weight: str) -> str | None:
    """Make the embedding Gather (node ``embedding``, table ``embedding_weight``) read the lm_head's
    MatMulNBits blocks: a GatherBlockQuantized of the lm_head's B (reshaped from N x blocks x
    block bytes to N x K bytes), scales and zero points, at its bits and block size, and drop the
    float table. None when done, else why it cannot be (the graph is then unchanged)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    heads = [n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith(f"{embedding_weight}.lm_head")]
    if not heads:
        return "the lm_head is not a MatMulNBits over the embedding's (tied) weights"
    head = heads[0]
    attributes = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    bits, block, hidden, vocabulary = attributes["bits"], attributes["block_size"], attributes["K"], attributes["N"]
    if hidden % block or (bits == 4 and (hidden // block) % 2):
        return f"hidden size {hidden} does not split into whole blocks of {block} (packed by {8 // bits})"
    if len(head.input) < 4 or not head.input[3]:
        return "symmetric blocks have no zero points to share (MatMulNBits and GatherBlockQuantized default them differently)"
    if initializers[head.input[3]].data_type != initializers[head.input[1]].data_type:
        return "the lm_head's zero points are not integers like its weights (HQQ keeps float zero points)"
    gather = next(n for n in graph.node if n.name == embedding)
    shape = numpy_helper.from_array(np.array([vocabulary, hidden * bits // 8], dtype=np.int64), f"{head.input[1]}.table_shape")
    table = f"{head.input[1]}.table"
    graph.initializer.append(shape)
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    graph.node.insert(index, helper.make_node("GatherBlockQuantized", [table, gather.input[1], head.input[2], head.input[3]],
                                              list(gather.output), name=f"{embedding}_tied", domain="com.microsoft",
                                              gather_axis=0, quantize_axis=1, block_size=block, bits=bits))
    graph.node.insert(index, helper.make_node("Reshape", [head.input[1], shape.name], [table], name=f"{embedding}_tied_table"))
    if not any(embedding_weight in n.input for n in graph.node):
        graph.initializer.remove(initializers[embedding_weight])
    return None


def quantize_decoder_weights(src: Path, dst: Path, scheme: str, settings: WeightQuantSettings, capabilities,
                             feeds: list[dict] | None = None) -> dict:
    """Quantize the decoder graph ``src`` into ``dst`` with ``scheme``; returns the facts of what
    was quantized (node counts, the embedding/lm_head treatment)."""
    import onnx

    if scheme not in SCHEMES:
        raise ValueError(f"unknown decoder quantization scheme {scheme!r}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src), load_external_data=True)
    gemms = gemms_to_matmuls(model)
    untied = settings.lm_head != "float" and untie_lm_head(model)
    weights = find_decoder_weights(model)
    exclude = [weights.lm_head] if settings.lm_head == "float" and weights.lm_head else []
    embedding_quantized = settings.embedding != "float" and weights.embedding is not None
    if scheme == "int8-dynamic":
        from mcompress.passes.quantize.ort_int8 import quantize_dynamic_int8

        untied_src = dst.with_name(f"untied-{dst.name}")
        onnx.save_model(model, str(untied_src))
        quantize_dynamic_int8(untied_src, dst, True, capabilities, nodes_to_exclude=exclude,
                              op_types=["MatMul", *(["Gather"] if embedding_quantized else [])])
        untied_src.unlink()
    else:
        table = next((n.input[0] for n in model.graph.node if n.name == weights.embedding), None)
        model = _quantize_nbits(model, _matmul_config(scheme, settings, feeds), settings, exclude)
        not_tied = None
        if settings.embedding == "tied" and embedding_quantized:
            not_tied = (tied_embedding(model, weights.embedding, table) if untied
                        else "the lm_head is float (lm_head: float)" if settings.lm_head == "float"
                        else "the checkpoint does not tie them")
        if embedding_quantized and (settings.embedding != "tied" or not_tied):
            model = _quantize_embedding(model, settings, weights.embedding)
        onnx.save_model(model, str(dst))
    facts = _facts(dst, scheme, settings, weights, exclude, embedding_quantized)
    if settings.embedding == "tied" and scheme != "int8-dynamic":
        facts["embedding_not_tied"] = not_tied
    return {**facts, "lm_head_untied": untied, "gemms_rewritten": gemms}


def _facts(dst: Path, scheme: str, settings: WeightQuantSettings, weights, exclude, embedding_quantized) -> dict:
    import onnx

    nodes = onnx.load(str(dst), load_external_data=False).graph.node
    ops = [n.op_type for n in nodes]
    lm_head_float = any(n.name == weights.lm_head and n.op_type == "MatMul" for n in nodes)
    facts = {"scheme": scheme, "weight_matmuls": len(weights.matmuls),
             "matmul_nbits": ops.count("MatMulNBits"), "matmul_integer": ops.count("MatMulInteger"),
             "lm_head": "float" if lm_head_float else "quantized",
             "embedding": (_embedding_fact(nodes) if "GatherBlockQuantized" in ops
                           else "int8 per tensor" if embedding_quantized and scheme == "int8-dynamic" else "float")}
    if scheme != "int8-dynamic":
        facts.update(block_size=settings.block_size, symmetric=settings.symmetric and scheme != "int4-hqq")
    return facts


def _embedding_fact(nodes) -> str:
    """How the GatherBlockQuantized embedding is stored: "int4 GatherBlockQuantized", or tied to
    the lm_head ("int8 tied to the lm_head's blocks")."""
    from onnx import helper

    gather = next(n for n in nodes if n.op_type == "GatherBlockQuantized")
    bits = next((helper.get_attribute_value(a) for a in gather.attribute if a.name == "bits"), 4)
    tied = any(n.op_type == "Reshape" and n.output[0] == gather.input[0] for n in nodes)
    return f"int{bits} tied to the lm_head's blocks" if tied else f"int{bits} GatherBlockQuantized"
