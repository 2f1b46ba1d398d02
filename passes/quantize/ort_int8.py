"""Quantize: INT8 post-training quantization with ONNX Runtime, in both of its modes.

- dynamic: weights INT8 (per output channel), activations quantized at run time per tensor with
  a scale computed from each call's own min/max. No calibration data.
- static: Q/DQ graph; activation ranges fixed ahead of time from calibration text with
  MinMax (observed range), Percentile (clip at the p-th percentile of |x|), or Entropy (the range
  that minimises KL divergence between the FP32 histogram and its 128-level quantization;
  2,048 histogram bins, as ORT's 128-bin default makes it identical to MinMax).

Quantization maps x to q = clamp(round(x / s) + z) with scale s and zero point z; the target's
capabilities decide the integer types and whether z must be 0 (symmetric).

Candidates are (mode x graph variant): every mode the recipe asks for (``auto``: every mode the
target runs), on every graph variant an earlier pass recorded (fused and unfused). With more than
one candidate, the pass keeps the fastest (latency score: geometric mean of batch-1 and per-example
batch-8 p50 at sequence 128) whose accuracy drop on the selection split stays within the recipe's
budget, and reports the table it chose from. Candidates within ``latency_tie_tolerance`` of the
fastest are tied and the first in candidate order wins, so the choice is stable across runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from mcompress.calibration.datasets import tokenize
from mcompress.core.errors import NumericalFault
from mcompress.metrics.evaluation import b1_b8_shapes, latency_race
from mcompress.metrics.selection import fastest_within_budget
from mcompress.metrics.gates import metric_drop
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)


class _TextCalibrationReader:
    """Feeds calibration examples one at a time. MinMax gets them unpadded (padding would enter
    the ranges); the histogram calibrators (percentile, entropy) stack every call's outputs into
    one array, so they get every example padded to ``pad_to`` tokens."""

    def __init__(self, tokenizer, texts: list[str], max_length: int, input_names: list[str], pad_to: int | None = None):
        self._batches = iter([tokenize(tokenizer, [t], max_length, pad_to=pad_to) for t in texts])
        self.input_names = input_names

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {n: batch[n] for n in self.input_names}


def _input_names(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [i.name for i in model.graph.input]


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool, capabilities,
                          nodes_to_exclude: list[str] | None = None, op_types: list[str] | None = None) -> Path:
    """``nodes_to_exclude``: float-graph node names left in float (passes/quantize/fallback.py);
    ``op_types``: the operator types quantized (None: every type ORT's dynamic mode supports)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=per_channel, reduce_range=capabilities.reduce_range,
        weight_type=QuantType[capabilities.weight_type], nodes_to_exclude=list(nodes_to_exclude or []),
        op_types_to_quantize=op_types,
        # Fused graphs lose value_info for some weights; ORT then needs a default type (and it
        # mutates this dict, so it is built fresh each call).
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return dst


def quantize_static_qdq(src: Path, dst: Path, state: ModelState, ctx: PassContext) -> Path:
    inferred, cache = calibrate_static(src, dst.parent, state, ctx)
    return quantize_static_calibrated(inferred, cache, dst, ctx)


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def calibrate_static(src: Path, work: Path, state: ModelState, ctx: PassContext) -> tuple[Path, Path]:
    """Activation ranges from the calibration text: returns (shape-inferred graph, calibration
    cache). Quantizing again from the cache (e.g. with some nodes left in float) skips calibration."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cfg = ctx.recipe.quantize
    caps = ctx.target.capabilities
    method = _calibration_method(cfg.static.calibration_method)
    calib_options = {"symmetric": caps.int8_symmetric_only}
    if method is not CalibrationMethod.MinMax:
        calib_options.update(num_bins=2048, num_quantized_bins=128, percentile=cfg.static.percentile)
    work.mkdir(parents=True, exist_ok=True)
    # The fused graph's contrib ops (Attention, SkipLayerNormalization, BiasGelu) are unknown to
    # ONNX shape inference, so no tensor after them has a type, and the QDQ quantizer skips every
    # such activation ("failed to infer the type of tensor"): a weight-only graph. ORT's symbolic
    # shape inference knows the contrib ops.
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = work / "shape_inferred.onnx"
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True), str(inferred))
    src = inferred
    calibrator = create_calibrator(src, cfg.static.op_types, augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=method, extra_options=calib_options)
    texts = ctx.calibration.texts[: cfg.static.calibration_examples]
    pad_to = None if method is CalibrationMethod.MinMax else ctx.recipe.max_length
    calibrator.collect_data(_TextCalibrationReader(state.tokenizer, texts, ctx.recipe.max_length, _input_names(src), pad_to))
    ranges = calibrator.compute_data()
    for name, tensor_range in ranges.data.items():
        values = np.concatenate([np.ravel(v) for v in tensor_range.range_value]).astype(np.float64)
        if not np.isfinite(values).all():
            raise NumericalFault(f"calibration range of tensor '{name}' is not finite ({values.min()}, {values.max()}).",
                                 "Check the model's weights and the calibration text for NaN/Inf.")
    cache = work / "calibration.json"
    save_tensors_data(ranges, cache)
    return src, cache


def quantize_static_calibrated(src: Path, calibration_cache: Path, dst: Path, ctx: PassContext,
                               nodes_to_exclude: list[str] | None = None) -> Path:
    """Q/DQ quantization of ``src`` (the shape-inferred graph) from a calibration cache."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    cfg = ctx.recipe.quantize
    caps = ctx.target.capabilities
    method = _calibration_method(cfg.static.calibration_method)
    quantize_static(
        str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=cfg.static.op_types,
        per_channel=cfg.per_channel, reduce_range=caps.reduce_range, nodes_to_exclude=list(nodes_to_exclude or []),
        activation_type=QuantType[caps.activation_type], weight_type=QuantType[caps.weight_type],
        calibrate_method=method, calibration_cache_path=str(calibration_cache),
        extra_options={"ActivationSymmetric": caps.int8_symmetric_only, "WeightSymmetric": True,
                       "QuantizeBias": caps.quantize_bias, "DefaultTensorType": onnx.TensorProto.FLOAT,
                       "DedicatedQDQPair": caps.dedicated_qdq_pair,
                       "OpTypesToExcludeOutputQuantization": [] if caps.quantize_outputs else list(cfg.static.op_types)},
    )
    if caps.dedicated_qdq_pair:  # ORT still shares a pair between one MatMul and float consumers
        from mcompress.passes.quantize.qdq_placement import dedicate_qdq_pairs

        dedicate_qdq_pairs(dst, cfg.static.op_types, set(nodes_to_exclude or ()))
    return dst


def _decoder_pass() -> Pass:
    from mcompress.passes.quantize.decoder import QuantizeDecoder

    return QuantizeDecoder()


class QuantizeInt8(Pass):
    name = "quantize"
    accepts = (ModelKind.ONNX,)
    produces = ModelKind.ONNX

    def cache_key_parts(self, ctx: PassContext) -> dict:
        if ctx.task.weight_only_quantization:
            return _decoder_pass().cache_key_parts(ctx)
        recipe, cfg = ctx.recipe, ctx.recipe.quantize
        return {"quantize": cfg.model_dump(mode="json", exclude={"decoder"}), "max_drop": recipe.gates.max_drop, "drop_type": recipe.gates.drop_type,
                "max_length": recipe.max_length, "seed": recipe.seed,
                # calibration reads the texts only (labels, when the split has them, are not used)
                "calibration": dataclasses.replace(ctx.calibration.head(cfg.static.calibration_examples), labels=None).content_hash(),
                "selection": ctx.selection.head(cfg.selection_examples).content_hash(),
                "reference_selection_score": ctx.reference_selection_score,
                "capabilities": dataclasses.asdict(ctx.target.capabilities),
                # what scores the candidates (_score): it can change the choice
                "scoring": {"threads": recipe.latency.threads, "iterations": recipe.latency.iterations,
                            "eval_batch_size": recipe.eval.batch_size}}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        if ctx.task.weight_only_quantization:  # a decoder: weight-only schemes (passes/quantize/decoder.py)
            return _decoder_pass().call(state, ctx)
        cfg = ctx.recipe.quantize
        supported = ctx.target.capabilities.quantization_modes
        if cfg.mode == "none":
            modes = ["fp32"]
        elif cfg.mode == "auto":
            modes = [m for m in ("dynamic", "static") if m in supported]
        else:
            modes = [cfg.mode]
        # Graph variants recorded by earlier passes (e.g. fused and unfused), else the input graph.
        variants: dict[str, Path] = state.annotations.get("graph_variants") or {"input": state.onnx_path}
        candidates: dict[str, Path] = {}
        for variant, src in variants.items():
            for mode in modes:
                label = mode if mode != "static" else f"static-{cfg.static.calibration_method}"
                name = f"{label}/{variant}"
                if mode == "fp32":
                    candidates[name] = Path(src)
                    continue
                dst = ctx.work_dir / "quantize" / name.replace("/", "-") / "model.onnx"
                dst.parent.mkdir(parents=True, exist_ok=True)
                candidates[name] = (quantize_dynamic_int8(Path(src), dst, cfg.per_channel, ctx.target.capabilities)
                                    if mode == "dynamic" else quantize_static_qdq(Path(src), dst, state, ctx))
        metrics: dict = {"mode": cfg.mode}
        if len(candidates) == 1:
            chosen = next(iter(candidates))
        else:
            scores = self._score_all(candidates, state, ctx)
            choice = fastest_within_budget(list(scores), lambda n: scores[n]["within_budget"],
                                           lambda n: scores[n]["latency_score_ms"], lambda n: scores[n]["score"],
                                           cfg.latency_tie_tolerance)
            chosen = choice.chosen
            metrics["candidates"] = scores
            metrics["choice_reason"] = ("fastest candidate within the accuracy budget" if choice.within_budget
                                        else "no candidate within budget; kept the most accurate")
        metrics["chosen"] = chosen
        logger.info("quantize: chose %s", chosen)
        mode, _, variant = chosen.partition("/")
        # The variants are resolved here; later passes see one graph.
        annotations = {k: v for k, v in state.annotations.items() if k != "graph_variants"}
        chosen_state = dataclasses.replace(state, model_file=candidates[chosen],
                                           annotations={**annotations, "quantization": mode, "graph": variant,
                                                        # what its GEMMs run at (metrics/roofline.py)
                                                        "precision": "fp32" if mode == "fp32" else "int8",
                                                        # the float graph it was quantized from (passes/quantize/fallback.py)
                                                        "float_graph": Path(variants[variant])})
        return PassResult(chosen_state, candidates[chosen] != state.onnx_path, metrics)

    @staticmethod
    def _score_all(candidates: dict[str, Path], state: ModelState, ctx: PassContext) -> dict[str, dict]:
        """Accuracy on the selection split; p50 at batch 1 and 8, sequence 128, measured in
        interleaved rounds across candidates. The latency score is the geometric mean of batch-1
        latency and batch-8 latency per example."""
        recipe = ctx.recipe
        runners = {name: ctx.target.runner(path, recipe.latency.threads) for name, path in candidates.items()}
        selection = ctx.selection.head(recipe.quantize.selection_examples)
        raced = latency_race(runners, state.tokenizer, selection.texts, b1_b8_shapes(128, recipe.latency.iterations),
                             settle_s=recipe.latency.settle_s)
        b1, b8 = raced[(1, 128)], raced[(8, 128)]
        scores = {}
        for name, runner in runners.items():
            # the task's gated metric: accuracy, or entity F1 for a tagger
            score = ctx.task.evaluate(runner, state.tokenizer, selection, recipe.max_length, recipe.eval.batch_size,
                                      what=f"quantize candidate {name}").score
            drop = metric_drop(ctx.reference_selection_score, score, recipe.gates.drop_type)
            scores[name] = {"score": round(score, 4), "drop_points": round(drop, 3),
                            "within_budget": round(drop, 9) <= recipe.gates.max_drop,
                            "p50_ms_b1_s128": round(b1[name].p50_ms, 3), "p50_ms_b8_s128": round(b8[name].p50_ms, 3),
                            "latency_score_ms": round(math.sqrt(b1[name].p50_ms * b8[name].p50_ms / 8), 3),
                            "examples": len(selection)}
        return scores
