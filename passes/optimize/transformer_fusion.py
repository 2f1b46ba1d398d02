"""Optimize: ONNX Runtime's transformer fusions (Attention, EmbedLayerNormalization,
SkipLayerNormalization, Gelu/BiasGelu) on the exported graph.

Fusions are done by ONNX Runtime's offline optimizer at ``opt_level=0`` (pattern fusions only),
so the saved graph holds no hardware-specific rewrites and stays portable across CPUs.
The fused ops are ONNX Runtime contrib ops: only targets that run ONNX Runtime include this pass.
"""

from __future__ import annotations

import logging

from mcompress.pass_base import Pass, PassContext, PassResult
from mcompress.state import ModelKind, ModelState

logger = logging.getLogger(__name__)

# ONNX Runtime's optimizer handles these encoder families with its BERT fusion rules.
ORT_OPTIMIZER_MODEL_TYPE = {"bert": "bert", "roberta": "bert", "distilbert": "bert"}


class FuseTransformer(Pass):
    name = "optimize"
    accepts = (ModelKind.ONNX,)
    produces = ModelKind.ONNX

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        cfg = ctx.recipe.optimize
        if not cfg.enabled:
            return PassResult(state, False, {"skipped": "optimize.enabled is false"})
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        model_type = ORT_OPTIMIZER_MODEL_TYPE[state.source.model_type]
        options = FusionOptions(model_type)
        options.enable_attention = cfg.fuse_attention
        optimized = optimize_model(
            str(state.onnx_path), model_type=model_type, num_heads=state.source.num_attention_heads,
            hidden_size=state.source.hidden_size, optimization_options=options, opt_level=0, use_gpu=False)
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        path = ctx.work_dir / "optimize" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        optimized.save_model_to_file(str(path))
        logger.info("fused operators: %s", fused)
        return PassResult(state.as_onnx(path, fused_operators=fused), True, {"fused_operators": fused})
