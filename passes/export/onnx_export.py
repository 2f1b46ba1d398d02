"""Export: PyTorch -> ONNX with dynamic batch and sequence axes, then a parity check.

The legacy TorchScript exporter (``dynamo=False``) is used on purpose: with the dynamo exporter of
torch 2.13, ONNX Runtime's BERT optimizer does not fuse Attention or EmbedLayerNormalization.
Parity: max |logit difference| between PyTorch and ONNX Runtime (FP32, all graph optimizations
off) on real examples, at two batch shapes so the dynamic axes are exercised, must be <= atol.
The logits output's dynamic axes come from the task (``Task.logits_axes``, compressor/tasks/): (batch) for a
classifier, (batch, sequence) for a tagger, whose logits are per sub-token.
A task that names an Optimum exporter task (``Task.optimum_export_task``: a causal LM with its KV
cache) is exported through Optimum instead, with the parity of passes/export/decoder_export.py.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from mcompress.calibration.datasets import tokenize
from mcompress.core.errors import PassFailure
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
# Config fields that describe tensor shapes and that pruning may change.
SHAPE_CONFIG_KEYS = ("pruned_heads", "intermediate_size", "hidden_dim", "num_hidden_layers", "n_layers", "vocab_size")


def _logits_module(model, input_names: list[str]):
    import torch

    class LogitsOnly(torch.nn.Module):
        """Positional inputs in a fixed order, one output named logits."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(input_names, args))).logits

    return LogitsOnly().eval()


def _config_updates(state: ModelState, model) -> dict:
    """Shape fields that an earlier pass (pruning) changed: they travel with the graph into the build."""
    exported = model.config.to_dict()
    return {k: exported[k] for k in SHAPE_CONFIG_KEYS
            if k in exported and exported[k] != state.source.config.get(k, exported[k] if k != "pruned_heads" else {})}


class ExportOnnx(Pass):
    name = "export"
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.ONNX

    def cache_key_parts(self, ctx: PassContext) -> dict:
        # The seed: weights a checkpoint lacks are initialised from it when the model is loaded.
        texts = ctx.selection.head(max(2, ctx.recipe.export.parity_examples))  # the trace sample and parity texts
        return {"export": ctx.recipe.export.model_dump(mode="json"), "max_length": ctx.recipe.max_length,
                "seed": ctx.recipe.seed, "parity_texts": texts.content_hash(), "exporter": ctx.task.optimum_export_task}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        if ctx.task.optimum_export_task:
            return self._export_with_optimum(state, ctx)
        import torch

        cfg = ctx.recipe.export
        model = state.torch_model
        input_names = [n for n in INPUT_ORDER if n in state.tokenizer.model_input_names]
        sample = tokenize(state.tokenizer, ctx.selection.texts[:2], ctx.recipe.max_length)
        args = tuple(torch.from_numpy(sample[n]) for n in input_names)
        path = ctx.work_dir / "export" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter warns that it is deprecated
            torch.onnx.export(
                _logits_module(model, input_names), args, str(path),
                input_names=input_names, output_names=["logits"],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in input_names},
                              "logits": dict(enumerate(ctx.task.logits_axes))},
                opset_version=cfg.opset, do_constant_folding=True, dynamo=False,
            )
        max_diff = self._parity(state, ctx, path, input_names)
        if not max_diff <= cfg.parity_atol:
            raise PassFailure(self.name, f"ONNX logits differ from PyTorch by {max_diff:.2e} > parity_atol {cfg.parity_atol:.0e}")
        return PassResult(state.as_onnx(path, config_updates=_config_updates(state, model)), True,
                          {"opset": cfg.opset, "parity_max_abs_diff": max_diff, "parity_atol": cfg.parity_atol,
                           "inputs": input_names})

    def _export_with_optimum(self, state: ModelState, ctx: PassContext) -> PassResult:
        """A decoder with its KV cache (passes/export/decoder_export.py), parity on logits and presents."""
        from mcompress.passes.export.decoder_export import decoder_parity, export_with_past

        cfg = ctx.recipe.export
        path = export_with_past(state.torch_model, ctx.task.optimum_export_task, ctx.work_dir / "export", cfg.opset)
        parity = decoder_parity(state.torch_model, state.tokenizer, path, ctx.selection.texts[:cfg.parity_examples])
        max_diff = max(parity["prefill_max_abs_diff"], parity["decode_max_abs_diff"])
        if not max_diff <= cfg.parity_atol:
            raise PassFailure(self.name, f"ONNX logits or present key/values differ from PyTorch by {max_diff:.2e} > "
                                         f"parity_atol {cfg.parity_atol:.0e} ({parity})")
        import onnx

        inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
        return PassResult(state.as_onnx(path, config_updates=_config_updates(state, state.torch_model)), True,
                          {"opset": cfg.opset, "exporter": f"optimum ({ctx.task.optimum_export_task})",
                           "parity_max_abs_diff": max_diff, "parity_atol": cfg.parity_atol, "parity": parity,
                           "inputs": inputs})

    @staticmethod
    def _parity(state: ModelState, ctx: PassContext, path, input_names: list[str]) -> float:
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        texts = ctx.selection.texts[: ctx.recipe.export.parity_examples]
        max_diff = 0.0
        for chunk in (texts[:1], texts):  # batch 1 and batch N: different shapes through dynamic axes
            batch = tokenize(state.tokenizer, chunk, ctx.recipe.max_length)
            feed = {n: batch[n] for n in input_names}
            with torch.inference_mode():
                expected = state.torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
            got = session.run(["logits"], feed)[0]
            max_diff = max(max_diff, float(np.abs(expected - got).max()))
        return max_diff
