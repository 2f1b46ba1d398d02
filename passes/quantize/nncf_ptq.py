"""Quantize: INT8 post-training quantization of an OpenVINO IR with NNCF.

Scheme (NNCF's, for ``ModelType.TRANSFORMER`` on the CPU device): FakeQuantize operations with 256
levels on the inputs of MatMuls and other compute operations. Weights are symmetric INT8 per output
channel; activations are per tensor, asymmetric (``mixed`` preset, NNCF's default for transformers)
or symmetric (``performance``), with ranges from min/max statistics of the calibration text.
Before the ranges are taken, SmoothQuant moves activation outliers into the weights: for each
MatMul input channel j, ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (alpha 0.95 by default),
X is divided and W multiplied by s, so the product is unchanged but X quantizes with less error.
Bias correction then shifts float biases to cancel the mean output error quantization leaves.
The OpenVINO CPU plugin runs the FakeQuantize pairs as INT8 kernels (VNNI/AMX).

With ``openvino.accuracy_control`` (the default) the pass calls
``nncf.quantize_with_accuracy_control``: NNCF scores the FP32 IR and the INT8 IR on the selection
(validation) split with the task's gated metric (accuracy; entity F1 for a tagger) and, while the drop is over the recipe's
budget (``gates.max_drop`` in points, or percent with ``drop_type: relative``), ranks groups of
quantizers by how much they cost and reverts the worst to float, one group at a time. The
operations reverted are reported. Without it the pass calls ``nncf.quantize``.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np

from mcompress.calibration.datasets import length_batches, tokenize
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)


class _NNCFReportCapture(logging.Handler):
    """NNCF reports what accuracy control did only in its log ("N out of M were reverted back to
    the floating-point precision:" followed by one operation name per line)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def reverted(self) -> tuple[list[str], int | None]:
        for message in self.messages:
            found = re.match(r"(\d+) out of (\d+) were reverted back to the floating-point precision:", message)
            if found:
                names = [line.strip() for line in message.splitlines()[1:] if line.strip()]
                return names, int(found.group(2))
        return [], None

    def metric(self, prefix: str) -> float | None:
        """A metric NNCF logged, e.g. "Metric of initial model: 0.82" (its selection-split accuracy)."""
        found = next((m for m in self.messages if m.startswith(prefix)), None)
        return round(float(found.split(":", 1)[1]), 6) if found else None

    def completion(self) -> str | None:
        return next((m for m in self.messages if m.startswith(("Algorithm completed", "The algorithm could not"))), None)


# Operations that only move or retype a tensor: a FakeQuantize in front of one quantizes the compute
# operation behind it (NNCF puts the key's quantizer of attention before a Reshape, for example).
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert", "Concat", "Gather", "StridedSlice"})


def _fed_by_fake_quantize(value) -> bool:
    node = value.get_source_output().get_node()
    while node.get_type_name() in _LAYOUT_OPS:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


def quantized_operations(model) -> list[str]:
    """Names of the compute operations with a FakeQuantize on an input (directly or through
    layout-only operations): what the CPU plugin runs in INT8."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() not in _LAYOUT_OPS | {"FakeQuantize"}
            and any(_fed_by_fake_quantize(value) for value in op.inputs())]


class _CompiledRunner:
    """A compiled OpenVINO model as a Runner (metrics.evaluation), for NNCF's validation calls."""

    name = "openvino (NNCF accuracy control)"

    def __init__(self, compiled, input_names: list[str]):
        self.compiled = compiled
        self.input_names = input_names
        self._logits = compiled.output("logits")

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.compiled({k: inputs[k] for k in self.input_names})[self._logits], dtype=np.float32)


def _inputs(model) -> list[str]:
    return [i.get_any_name() for i in model.inputs]


def _decoder_pass() -> Pass:
    from mcompress.passes.quantize.nncf_weights import CompressDecoderNNCF

    return CompressDecoderNNCF()


class QuantizeNNCF(Pass):
    name = "quantize"
    accepts = (ModelKind.OPENVINO,)
    produces = ModelKind.OPENVINO

    def cache_key_parts(self, ctx: PassContext) -> dict:
        if ctx.task.weight_only_quantization:
            return _decoder_pass().cache_key_parts(ctx)
        recipe, cfg = ctx.recipe, ctx.recipe.openvino
        parts = {"mode": recipe.quantize.mode, "openvino": cfg.model_dump(mode="json"), "max_length": recipe.max_length,
                 "seed": recipe.seed, "capabilities": dataclasses.asdict(ctx.target.capabilities),
                 # calibration reads the texts only (labels, when the split has them, are not used)
                 "calibration": dataclasses.replace(ctx.calibration.head(cfg.calibration_examples), labels=None).content_hash()}
        if cfg.accuracy_control:
            parts.update(max_drop=recipe.gates.max_drop, drop_type=recipe.gates.drop_type,
                         selection=ctx.selection.head(recipe.quantize.selection_examples).content_hash())
        return parts

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        if ctx.task.weight_only_quantization:  # a decoder: NNCF weight compression (passes/quantize/nncf_weights.py)
            return _decoder_pass().call(state, ctx)
        if ctx.recipe.quantize.mode == "none":
            return PassResult(dataclasses.replace(state, annotations={**state.annotations, "quantization": "none"}),
                              False, {"skipped": "quantize.mode none: the FP32 IR ships"})
        import nncf
        import openvino as ov

        cfg = ctx.recipe.openvino
        model = ov.Core().read_model(str(state.ir_path))
        input_names = _inputs(model)
        texts = ctx.calibration.texts[: cfg.calibration_examples]
        # One unpadded example per item: padding would enter the activation statistics.
        calibration = nncf.Dataset([{k: v for k, v in tokenize(state.tokenizer, [t], ctx.recipe.max_length).items()
                                     if k in input_names} for t in texts])
        options = {"model_type": nncf.ModelType.TRANSFORMER, "target_device": nncf.TargetDevice.CPU,
                   "subset_size": len(texts), "fast_bias_correction": cfg.fast_bias_correction}
        if cfg.preset is not None:
            options["preset"] = nncf.QuantizationPreset(cfg.preset)
        if cfg.smooth_quant_alpha is not None:
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

            options["advanced_parameters"] = AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant_alpha))
        metrics: dict = {"scheme": f"NNCF PTQ, ModelType.TRANSFORMER, preset {cfg.preset or 'mixed (NNCF default)'}, "
                                   f"SmoothQuant alpha {cfg.smooth_quant_alpha if cfg.smooth_quant_alpha is not None else 0.95}",
                         "calibration_examples": len(texts), "nncf": nncf.__version__}
        capture = _NNCFReportCapture()
        nncf_log = logging.getLogger("nncf")
        nncf_log.addHandler(capture)
        # NNCF prints INFO to stdout through its own handler; mcompress shows it only with -v.
        quiet = {h: h.level for h in nncf_log.handlers if h is not capture}
        for handler in quiet:
            handler.setLevel(max(handler.level, logging.WARNING) if not logger.isEnabledFor(logging.INFO) else handler.level)
        try:
            if cfg.accuracy_control:
                quantized = self._with_accuracy_control(model, calibration, options, state, ctx, metrics)
            else:
                quantized = nncf.quantize(model, calibration, **options)
        finally:
            nncf_log.removeHandler(capture)
            for handler, level in quiet.items():
                handler.setLevel(level)
        xml = ctx.work_dir / "quantize" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        int8_ops = quantized_operations(quantized)
        metrics["quantized_operations"] = len(int8_ops)
        if cfg.accuracy_control:
            reverted, total = capture.reverted()
            metrics["accuracy_control"].update(
                fp32_selection_accuracy=capture.metric("Metric of initial model:"),
                int8_selection_accuracy=capture.metric("Metric of quantized model:"),
                reverted_operations=reverted, quantized_operations_before=total if total is not None else len(int8_ops),
                nncf_verdict=capture.completion() or "the fully quantized model was within budget")
        float_layers = metrics.get("accuracy_control", {}).get("reverted_operations", [])
        out = dataclasses.replace(state, model_file=xml, annotations={**state.annotations, "quantization": "nncf-int8",
                                                                    "precision": "int8", "graph": "openvino-ir", "float_layers": float_layers})
        return PassResult(out, True, metrics)

    @staticmethod
    def _with_accuracy_control(model, calibration, options: dict, state: ModelState, ctx: PassContext, metrics: dict):
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        recipe, cfg = ctx.recipe, ctx.recipe.openvino
        selection = ctx.selection.head(recipe.quantize.selection_examples)
        input_names = _inputs(model)
        # One item per length bucket; each is scored by the task's own metric (accuracy, entity F1)
        # on its examples, as the gate scores the build.
        items = []
        for idx in length_batches(selection.texts, cfg.validation_batch_size):
            batch = tokenize(state.tokenizer, [selection.texts[i] for i in idx], recipe.max_length)
            items.append({"inputs": {k: v for k, v in batch.items() if k in input_names}, "examples": list(idx)})
        validation = nncf.Dataset(items, lambda item: item["inputs"])

        def metric(compiled, data) -> tuple[float, list[float]]:
            """The gated metric over the items, and each item's own (NNCF ranks layers with these)."""
            runner = _CompiledRunner(compiled, input_names)
            results = [ctx.task.evaluate(runner, state.tokenizer, selection.select(item["examples"]), recipe.max_length,
                                         len(item["examples"]), what="NNCF accuracy control") for item in data]
            total = ctx.task.metric_of_counts(np.concatenate([r.stats for r in results]).sum(axis=0))
            return float(total), [r.score for r in results]

        # NNCF's budget is in the metric's own units: accuracy in [0, 1], so points / 100; its
        # relative drop is a fraction of the original metric, so percent / 100.
        drop_type = nncf.DropType.RELATIVE if recipe.gates.drop_type == "relative" else nncf.DropType.ABSOLUTE
        restorer = {}
        if cfg.max_reverted_layers is not None:
            restorer["max_num_iterations"] = cfg.max_reverted_layers
        if cfg.ranking_examples is not None:
            restorer["ranking_subset_size"] = max(1, cfg.ranking_examples // cfg.validation_batch_size)
        metrics["accuracy_control"] = {"budget": recipe.gates.max_drop, "drop_type": recipe.gates.drop_type,
                                       "selection_examples": len(selection), "validation_items": len(items)}
        options = dict(options)
        if "advanced_parameters" in options:  # the same object under another keyword here
            options["advanced_quantization_parameters"] = options.pop("advanced_parameters")
        return nncf.quantize_with_accuracy_control(
            model, calibration, validation, metric, max_drop=recipe.gates.max_drop / 100.0, drop_type=drop_type,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(**restorer), **options)
