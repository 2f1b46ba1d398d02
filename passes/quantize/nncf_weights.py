"""Quantize a decoder on openvino-cpu: NNCF weight compression of the OpenVINO IR
(``nncf.compress_weights``), chosen by measurement like passes/quantize/decoder.py.

Schemes (``quantize.decoder.scheme`` / ``candidates``; the ones this target builds):

- ``int8``: ``CompressWeightsMode.INT8_ASYM``, every MatMul and embedding weight 8-bit asymmetric
  per output channel (one scale and zero point per row); activations stay float.
- ``int4-rtn``: ``INT4_ASYM`` with groups of ``block_size`` along the input axis, round to
  nearest, no data. NNCF keeps the embedding and the last MatMul at its backup precision (INT8_ASYM)
  unless ``embedding`` is ``int4`` or ``tied`` and ``lm_head: quantize`` (``all_layers=True``).
- ``int4-awq``: ``INT4_ASYM`` with AWQ (Lin et al. 2023: per input channel, scale the weight up
  and the activation down by ``s = mean|x|^alpha``, alpha searched on the calibration text, so the
  salient channels lose less to rounding) and scale estimation (each group's scale refined to
  minimise ``|X W - X Q(W)|`` on the calibration activations); needs the calibration text.

The OpenVINO CPU plugin runs compressed weights by decompressing them inside its MatMul kernels.
NNCF's data-aware steps need a graph pattern they recognise; where AWQ finds none it says so in its
log and the result equals int4-rtn plus scale estimation.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from mcompress.core.pass_base import PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState
from mcompress.passes.quantize.decoder import (QuantizeDecoder, calibration_token_ids, choose_built, schemes_to_build,
                                               score_candidates)

logger = logging.getLogger(__name__)
SCHEMES = ("int8", "int4-rtn", "int4-awq")


def _prompt_feeds(model, token_ids: list[np.ndarray]) -> list[dict]:
    """Inputs of a first call (empty past) per token sequence, for an ov.Model with the
    Optimum decoder inputs (passes/quantize/decoder_graph.py)."""
    feeds = []
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int64)[None, :]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None, :]}
        for port in model.inputs:
            name = port.get_any_name()
            if name.startswith("past_key_values."):
                shape = port.get_partial_shape()
                feed[name] = np.zeros((1, shape[1].get_length(), 0, shape[3].get_length()), dtype=np.float32)
        names = {p.get_any_name() for p in model.inputs}
        feeds.append({k: v for k, v in feed.items() if k in names})
    return feeds


def compress_decoder_weights(model, scheme: str, cfg, feeds: list[dict] | None):
    """``nncf.compress_weights`` of an ov.Model with ``scheme``; returns (model, facts)."""
    import nncf

    options: dict = {}
    if scheme == "int8":
        options["mode"] = nncf.CompressWeightsMode.INT8_ASYM
    else:
        options.update(mode=nncf.CompressWeightsMode.INT4_SYM if cfg.symmetric else nncf.CompressWeightsMode.INT4_ASYM,
                       group_size=cfg.block_size, ratio=1.0,
                       all_layers=cfg.embedding in ("int4", "tied") and cfg.lm_head == "quantize")
    if scheme == "int4-awq":
        options.update(dataset=nncf.Dataset(feeds), subset_size=len(feeds), awq=True, scale_estimation=True)
    compressed = nncf.compress_weights(model, **options)
    facts = {"scheme": scheme, "nncf_mode": str(options["mode"]), "nncf": nncf.__version__,
             **({k: options[k] for k in ("group_size", "all_layers") if k in options}),
             **({"awq": True, "scale_estimation": True, "calibration_sequences": len(feeds)} if scheme == "int4-awq" else {})}
    return compressed, facts


def weight_types(model) -> dict[str, int]:
    """Element types of the model's constant weights with their counts (e.g. {'u4': 210, 'u8': 2})."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_output_element_type(0).get_type_name()
            counts[kind] = counts.get(kind, 0) + 1
    return counts


class CompressDecoderNNCF(QuantizeDecoder):
    name = "quantize"
    accepts = (ModelKind.OPENVINO,)
    produces = ModelKind.OPENVINO
    supported = SCHEMES

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        import openvino as ov

        cfg = ctx.recipe.quantize.decoder
        if ctx.recipe.quantize.mode == "none":
            return PassResult(dataclasses.replace(state, annotations={**state.annotations, "quantization": "none"}),
                              False, {"skipped": "quantize.mode none: the FP32 IR ships"})
        schemes = schemes_to_build(cfg, self.supported, ctx.target.name)
        core = ov.Core()
        feeds = None
        if "int4-awq" in schemes:
            texts = ctx.calibration.texts[: cfg.calibration_examples]
            feeds = _prompt_feeds(core.read_model(str(state.ir_path)),
                                  calibration_token_ids(state.tokenizer, texts, cfg.calibration_tokens))
        built: dict[str, Path] = {}
        facts: dict[str, dict] = {}
        for scheme in schemes:
            compressed, facts[scheme] = compress_decoder_weights(core.read_model(str(state.ir_path)), scheme, cfg, feeds)
            facts[scheme]["weight_types"] = weight_types(compressed)
            xml = ctx.work_dir / "quantize" / scheme / "model.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(compressed, str(xml), compress_to_fp16=False)
            built[scheme] = xml
        metrics: dict = {"scheme": cfg.scheme, "built": facts}
        chosen = choose_built(built, lambda: self._score_openvino(built, state, ctx), ctx, metrics)
        out = dataclasses.replace(state, model_file=built[chosen], annotations={
            **state.annotations, "quantization": f"nncf-{chosen}", "precision": "int8" if chosen == "int8" else "int4",
            "graph": "openvino-ir", "weight_quantization": facts[chosen]})
        return PassResult(out, True, metrics)

    @staticmethod
    def _score_openvino(built: dict[str, Path], state: ModelState, ctx: PassContext) -> dict[str, dict]:
        """Perplexity against the FP32 IR on the selection documents, and decode tokens/s through
        an ONNX-free greedy loop on the compiled IR."""
        cfg, threads = ctx.recipe.quantize.decoder, ctx.recipe.latency.threads
        return score_candidates(built, (state.ir_path, "the FP32 IR (quantize reference)"), state, ctx,
                                lambda path, prompt: openvino_decode_tokens_per_second(path, prompt, cfg.decode_tokens,
                                                                                       threads),
                                ctx.target.settings(ctx.recipe))


def openvino_decode_tokens_per_second(xml: Path, prompt: np.ndarray, new_tokens: int, threads: int | None) -> float:
    """Greedy decode rate of the IR at batch 1 with its (explicit) KV cache inputs, best of two runs."""
    import time

    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = ov.Core().compile_model(str(xml), "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"})
    first = _prompt_feeds(compiled, [prompt[0]])[0]

    def step(request, feed) -> dict:
        out = request.infer(feed)
        return {o.get_any_name(): out[o] for o in compiled.outputs}

    def run() -> float:
        request = compiled.create_infer_request()
        named, length = step(request, first), prompt.shape[1]
        started = time.perf_counter()
        for _ in range(new_tokens - 1):
            feed = {"input_ids": np.array([[int(named["logits"][0, -1].argmax())]]),
                    "attention_mask": np.ones((1, length + 1), dtype=np.int64), "position_ids": np.array([[length]])}
            feed.update({n: named[n.replace("past_key_values.", "present.")] for n in first if n.startswith("past_key_values.")})
            named, length = step(request, {k: v for k, v in feed.items() if k in first}), length + 1
        return time.perf_counter() - started

    run()
    best = min(run() for _ in range(2))
    return (new_tokens - 1) / best if best > 0 else float("inf")
