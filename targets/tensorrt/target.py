"""NVIDIA TensorRT: a symmetric INT8 Q/DQ ONNX graph compiled into a serialized engine.

Pipeline: [prune] -> [distill] -> export -> static Q/DQ quantization (MatMul/Gemm, per-channel
weights). No ONNX Runtime transformer fusion: its com.microsoft ops are unreadable to TensorRT's
ONNX parser. ``build`` writes the ONNX, then the engine when a TensorRT builder is present.

Where no NVIDIA GPU is visible (or the engine does not load on it), the run gates the engine's
own input, the Q/DQ ONNX, on ONNX Runtime CPU as a stand-in, writes the build, and ends with
TargetUnavailable (exit code 4): the engine's accuracy and latency were not measured.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mcompress.core.errors import InputError, TargetUnavailable
from mcompress.core.target_base import BuildInputs, Target, TargetCapabilities
from mcompress.targets.front import torch_front_passes

logger = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
METADATA_FILE = "tensorrt_build.json"
COMMAND_FILE = "trtexec_command.txt"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# TensorRT-RTX's ComputeCapability enum (1.7): what tensorrt.compute_capabilities may name.
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


class TensorRTTarget(Target):
    name = "tensorrt"
    description = "NVIDIA TensorRT engine (tensorrt or tensorrt_rtx), INT8 Q/DQ"
    capabilities = TargetCapabilities(
        # TensorRT takes INT8 as explicit Q/DQ pairs with ranges fixed at build time; ORT's
        # dynamic quantization (DynamicQuantizeLinear, MatMulInteger) has no TensorRT equivalent.
        quantization_modes=("static",),
        activation_type="QInt8",  # TensorRT only supports symmetric INT8
        weight_type="QInt8",
        int8_symmetric_only=True,  # TensorRT only supports symmetric INT8: zero points must be 0
        # TensorRT adds bias in float; its parser rejects ORT's INT32 bias DequantizeLinear.
        quantize_bias=False,
        dedicated_qdq_pair=True,  # TensorRT fuses Q/DQ only when each pair has one consumer
        quantize_outputs=False,  # INT8 comes from the pairs on a layer's inputs; an output pair only re-rounds
        contrib_ops=False,  # the ONNX parser reads only standard ai.onnx ops
    )

    def validate_recipe(self, recipe) -> None:
        mode = recipe.quantize.mode
        if mode not in ("auto", "static", "none"):
            raise InputError(f"target tensorrt cannot run quantize.mode '{mode}': TensorRT runs INT8 only as static "
                             "Q/DQ graphs.", "Use --quantize static (or auto), or none for an FP32 engine.")
        cfg = recipe.tensorrt
        if cfg is None:
            return
        for cc in cfg.compute_capabilities:
            if cc not in RTX_COMPUTE_CAPABILITIES:
                raise InputError(f"recipe tensorrt.compute_capabilities: unknown compute capability '{cc}'.",
                                 f"Use some of {', '.join(RTX_COMPUTE_CAPABILITIES)} (TensorRT-RTX).")
        # The bounds the build will use where the recipe leaves them unset (builder.ShapeProfile).
        for what, low, high in (("batch", cfg.min_batch or 1, cfg.max_batch or recipe.eval.batch_size),
                                ("sequence", cfg.min_sequence or 2, cfg.max_sequence or recipe.max_length)):
            if low > high:
                raise InputError(f"recipe tensorrt: min_{what} {low} > max_{what} {high} (unset bounds default to "
                                 f"eval.batch_size and max_length).", f"Set tensorrt.max_{what} >= {low}.")

    def pipeline(self, recipe):
        from mcompress.passes.export.onnx_export import ExportOnnx
        from mcompress.passes.quantize.ort_int8 import QuantizeInt8

        return [*torch_front_passes(recipe), ExportOnnx(), QuantizeInt8()]

    def runner(self, model_path: Path, threads: int | None = None):
        """An engine file runs on the GPU; an ONNX file (the engine's input: intermediate graphs
        and the no-GPU stand-in) runs on ONNX Runtime CPU, and says so in its name."""
        if Path(model_path).suffix in ENGINE_SUFFIXES:
            from mcompress.targets.tensorrt.runner import TensorRTRunner

            return TensorRTRunner(model_path)
        from mcompress.engines.onnxruntime_cpu import OrtRunner

        return OrtRunner(model_path, threads, name="onnxruntime-cpu (TensorRT-ready Q/DQ ONNX, stand-in for the engine)")

    def build(self, state, out_dir: Path, inputs: BuildInputs | None = None) -> Path:
        from mcompress.core.recipe import Recipe, TensorRTConfig
        from mcompress.targets.onnx_cpu.target import OnnxCpuTarget
        from mcompress.targets.tensorrt import builder as b

        inputs = inputs or BuildInputs()
        recipe = inputs.recipe or Recipe()
        cfg = recipe.tensorrt or TensorRTConfig()
        # model.onnx + config.json + tokenizer files: the engine's source, runnable on its own.
        onnx_file = OnnxCpuTarget().build(state, out_dir)
        bad = b.nonstandard_ops(onnx_file)
        if bad:
            raise b.EngineBuildError(f"the graph holds operators TensorRT's ONNX parser cannot read: {', '.join(bad)}.",
                                     "The tensorrt pipeline must not run ONNX Runtime's transformer fusion.")
        import onnx

        graph_inputs = [i.name for i in onnx.load(str(onnx_file), load_external_data=False).graph.input]
        profile = b.ShapeProfile.from_data([n for n in b.TOKEN_INPUTS if n in graph_inputs], inputs.token_lengths,
                                           recipe.max_length, recipe.eval.batch_size, cfg)
        trt = b.find_tensorrt()
        device = b.cuda_device()
        package = b.package_info(trt) if trt else None
        timing_cache = None
        if cfg.timing_cache:
            timing_cache = Path(cfg.timing_cache).expanduser()
        elif inputs.cache_dir is not None and package and not b.is_rtx(trt):
            timing_cache = Path(inputs.cache_dir) / "tensorrt" / f"timing-{package['module']}-{package['version']}.cache"
        options = b.BuildOptions(cfg.builder_optimization_level, state.annotations.get("sparsity") == "2:4",
                                 tuple(cfg.compute_capabilities), cfg.workspace_mb, timing_cache)
        module = package["module"] if package else "tensorrt"
        (out_dir / COMMAND_FILE).write_text(b.command_line(module, onnx_file.name, ENGINE_FILE, profile, options))

        meta = {"schema": 1, "onnx_file": onnx_file.name, "engine_file": None, "package": package,
                "gpu": device, "cuda": (device or {}).get("cuda"), "profile": profile.as_dict(),
                "builder_optimization_level": cfg.builder_optimization_level,
                "sparsity": state.annotations.get("sparsity"), "quantization": state.annotations.get("quantization")}
        engine_file = out_dir / ENGINE_FILE
        if trt is None:
            meta["reason"] = ("neither tensorrt nor tensorrt_rtx is installed, so no engine was built "
                              "(pip install 'mcompress[tensorrt]' or '[tensorrt-rtx]').")
        elif device is None and not b.is_rtx(trt):
            meta["reason"] = f"{module} {package['version']} builds engines only on an NVIDIA GPU, and none is visible."
        else:
            facts = b.build_engine(trt, onnx_file, engine_file, profile, options)
            meta.update(engine_file=engine_file.name, build=facts)
            if b.is_rtx(trt):
                meta["compiled_for"] = (list(cfg.compute_capabilities) or "TensorRT-RTX default: portable across the "
                                        "compute capabilities its support matrix lists (8.0, 8.6, 8.9, 12.0 in the 1.7 docs)")
                meta["build_mode"] = "ahead-of-time (no GPU)" if device is None else "on the GPU present"
            else:
                meta["compiled_for"] = device["compute_capability"]
                meta["build_mode"] = "on the GPU present"
        measured = False
        if meta["engine_file"] and device is not None:
            try:
                self.runner(engine_file)
                measured = True
            except TargetUnavailable as err:
                meta["reason"] = err.message
        elif meta["engine_file"]:
            meta["reason"] = "no NVIDIA GPU is visible here, so the engine was built ahead of time but not run."
        meta["engine_measured"] = measured
        if not measured:
            meta["gated_artifact"] = f"{onnx_file.name} on ONNX Runtime CPU (stand-in for the engine)"
            meta["reason"] += " The engine's accuracy and latency need an NVIDIA GPU."
        (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        logger.info("tensorrt build: engine %s, measured %s", meta["engine_file"], measured)
        return engine_file if measured else onnx_file

    def build_summary(self, out_dir: Path) -> dict:
        path = Path(out_dir) / METADATA_FILE
        return json.loads(path.read_text()) if path.is_file() else {}
