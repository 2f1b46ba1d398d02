"""Lower ONNX to OpenVINO IR: ``ov.convert_model`` on the exported graph, saved as model.xml
(topology) + model.bin (weights), then a parity check.

The IR keeps FP32 weights (``compress_to_fp16=False``; OpenVINO's default would store them as
FP16). Dynamic batch and sequence axes carry over from the ONNX graph. Parity: max |logit
difference| between ONNX Runtime on the FP32 ONNX graph (graph optimizations off) and the FP32 IR
on the OpenVINO CPU plugin at f32 inference precision, on real examples at batch 1 and batch N,
must be <= ``openvino.parity_atol``.
"""

from __future__ import annotations

import logging

import numpy as np

from mcompress.calibration.datasets import tokenize
from mcompress.core.errors import PassFailure
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)


class ConvertOpenVINO(Pass):
    name = "convert"
    accepts = (ModelKind.ONNX,)
    produces = ModelKind.OPENVINO

    def cache_key_parts(self, ctx: PassContext) -> dict:
        return {"parity_atol": ctx.recipe.openvino.parity_atol, "max_length": ctx.recipe.max_length,
                "parity_texts": ctx.selection.head(ctx.recipe.export.parity_examples).content_hash()}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        import openvino as ov

        xml = ctx.work_dir / "convert" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        model = ov.convert_model(str(state.onnx_path))
        ov.save_model(model, str(xml), compress_to_fp16=False)
        max_diff = self._parity(state, ctx, xml)
        atol = ctx.recipe.openvino.parity_atol
        if not max_diff <= atol:
            raise PassFailure(self.name, f"OpenVINO IR logits differ from ONNX Runtime by {max_diff:.2e} > "
                                         f"openvino.parity_atol {atol:.0e}")
        # The ONNX graph stays annotated: the report and the race can point at what the IR came from.
        out = state.as_openvino(xml, float_onnx=state.onnx_path)
        return PassResult(out, True, {"parity_max_abs_diff": max_diff, "parity_atol": atol,
                                      "openvino": ov.__version__.split("-")[0]})

    @staticmethod
    def _parity(state: ModelState, ctx: PassContext, xml) -> float:
        import onnxruntime as ort

        from mcompress.engines.openvino_cpu import OpenVINORunner

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(state.onnx_path), options, providers=["CPUExecutionProvider"])
        runner = OpenVINORunner(xml, ctx.recipe.latency.threads, "f32")
        texts = ctx.selection.texts[: ctx.recipe.export.parity_examples]
        max_diff = 0.0
        for chunk in (texts[:1], texts):  # batch 1 and batch N: different shapes through dynamic axes
            batch = tokenize(state.tokenizer, chunk, ctx.recipe.max_length)
            names = [i.name for i in session.get_inputs()]
            expected = session.run(["logits"], {n: batch[n] for n in names})[0]
            got = runner.logits(batch)
            max_diff = max(max_diff, float(np.abs(expected - got).max()))
        return max_diff
