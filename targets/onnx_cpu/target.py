"""ONNX Runtime on x86/ARM CPUs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcompress.core.formats import CONFIG_SIDE_FILES, ONNX, TOKENIZER_FILES
from mcompress.core.target_base import BuildResult, PrecisionVariant, Target, TargetCapabilities, TargetSettings, recipe_precision
from mcompress.targets.front import torch_front_passes


class OnnxCpuTarget(Target):
    name = "onnx-cpu"
    description = "ONNX Runtime, CPU execution provider"
    capabilities = TargetCapabilities(
        quantization_modes=("dynamic", "static"),
        # U8S8: ORT's x86 kernels (VNNI/AMX) run uint8 activations x int8 weights; static S8S8
        # leaves activation x activation MatMuls in FP32 and measured slower than FP32 here.
        activation_type="QUInt8",
        weight_type="QInt8",
        # Float bias: ORT's static quantizer cannot derive an int32 bias scale for Gemm inputs
        # whose type the fused graph no longer records (the BERT pooler), and float bias costs
        # nothing measurable on CPU.
        quantize_bias=False,
        kv_cache_decoders=True,  # Optimum's with-past export, weight-only quantization, the runtime's generation loop
    )

    def pipeline(self, recipe):
        from mcompress.passes.export.onnx_export import ExportOnnx
        from mcompress.passes.optimize.transformer_fusion import FuseTransformer
        from mcompress.passes.quantize.ort_int8 import QuantizeInt8

        passes = [*torch_front_passes(recipe), ExportOnnx(), FuseTransformer(), QuantizeInt8()]
        if recipe.fallback.enabled or recipe.sensitivity.run == "always":
            from mcompress.passes.quantize.fallback import QuantizeFallback

            passes.append(QuantizeFallback())
        return passes

    def precision_variants(self, recipe):
        """The recipe as given, and FP32 (the fused float graph, no quantization) as the floor that
        always fits an accuracy budget. ONNX Runtime's CPU provider has no BF16 kernels for x86."""
        variants = [PrecisionVariant("", recipe_precision(recipe))]
        if recipe.quantize.mode != "none":
            variants.append(PrecisionVariant("+fp32", "fp32", {"quantize.mode": "none", "fallback.enabled": False,
                                                              "sensitivity.run": "on_failure"}))
        return variants, {"bf16": "ONNX Runtime's x86 CPU provider has no BF16 GEMM kernels"}

    def runner(self, model_path: Path, threads: int | None = None, settings: TargetSettings | None = None):
        from mcompress.engines.onnxruntime_cpu import OrtRunner

        return OrtRunner(model_path, threads)

    def build(self, state, out_dir: Path, inputs=None) -> BuildResult:
        """Layout that ONNX Runtime users and Optimum's ORTModel.from_pretrained both read:
        model.onnx, config.json (with id2label/label2id) and the tokenizer files."""
        return self._result(out_dir, write_onnx_build(state, out_dir), self.settings(None))


def write_onnx_build(state, out_dir: Path) -> Path:
    """model.onnx (with its external data, if any), config.json and the tokenizer files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ONNX.copy(state.model_file, out_dir, ONNX.model_file)
    write_config_and_tokenizer(state, out_dir)
    return model


def write_config_and_tokenizer(state, out_dir: Path) -> None:
    """config.json (the label map, and the shapes pruning changed) and the tokenizer files."""
    updates = state.annotations.get("config_updates")
    if updates:  # the source config with the shapes pruning changed; label map untouched
        config = {**state.source.config, **updates}
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    else:
        shutil.copyfile(state.source.path / "config.json", out_dir / "config.json")
    for name in CONFIG_SIDE_FILES:
        if (state.source.path / name).is_file():
            shutil.copyfile(state.source.path / name, out_dir / name)
    tokenizer_dir = state.tokenizer_files_dir  # the source's, or a pass's (vocabulary pruning)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)
