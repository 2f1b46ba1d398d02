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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcompress.core.errors import InputError, TargetUnavailable
from mcompress.core.formats import TENSORRT_ENGINE, format_of
from mcompress.core.sections import Table
from mcompress.core.target_base import BuildInputs, BuildResult, Target, TargetCapabilities, TargetSettings
from mcompress.targets.front import torch_front_passes

logger = logging.getLogger(__name__)

ENGINE_FILE = TENSORRT_ENGINE.model_file
METADATA_FILE = "tensorrt_build.json"
COMMAND_FILE = "trtexec_command.txt"
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

    def settings(self, recipe) -> "TensorRTSettings":
        from mcompress.core.recipe import Recipe, TensorRTConfig

        recipe = recipe or Recipe()
        return TensorRTSettings(recipe.tensorrt or TensorRTConfig(), recipe.max_length, recipe.eval.batch_size)

    def runner(self, model_path: Path, threads: int | None = None, settings: TargetSettings | None = None):
        """An engine file runs on the GPU; an ONNX file (the engine's input: intermediate graphs
        and the no-GPU stand-in) runs on ONNX Runtime CPU, and says so in its name."""
        if format_of(model_path) is TENSORRT_ENGINE:
            from mcompress.targets.tensorrt.runner import TensorRTRunner

            return TensorRTRunner(model_path)
        from mcompress.engines.onnxruntime_cpu import OrtRunner

        return OrtRunner(model_path, threads, name="onnxruntime-cpu (TensorRT-ready Q/DQ ONNX, stand-in for the engine)")

    def build(self, state, out_dir: Path, inputs: BuildInputs | None = None) -> BuildResult:
        """model.onnx + config.json + tokenizer files (the engine's source, runnable on its own),
        trtexec_command.txt, the engine where a builder is present, and tensorrt_build.json (the
        facts below, kept in the build: what the engine was built for)."""
        import onnx

        from mcompress.targets.onnx_cpu.target import write_onnx_build
        from mcompress.targets.tensorrt import builder as b

        inputs = inputs or BuildInputs()
        settings = self.settings(inputs.recipe)
        cfg = settings.config
        onnx_file = write_onnx_build(state, out_dir)
        bad = b.nonstandard_ops(onnx_file)
        if bad:
            raise b.EngineBuildError(f"the graph holds operators TensorRT's ONNX parser cannot read: {', '.join(bad)}.",
                                     "The tensorrt pipeline must not run ONNX Runtime's transformer fusion.")
        graph_inputs = [i.name for i in onnx.load(str(onnx_file), load_external_data=False).graph.input]
        profile = b.ShapeProfile.from_data([n for n in b.TOKEN_INPUTS if n in graph_inputs], inputs.token_lengths,
                                           settings.max_length, settings.eval_batch_size, cfg)
        trt = b.find_tensorrt()
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
        meta = self._engine(trt, package, onnx_file, out_dir / ENGINE_FILE, profile, options, cfg, state)
        (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        logger.info("tensorrt build: engine %s, measured %s", meta["engine_file"], meta["engine_measured"])
        if meta["engine_measured"]:
            return self._result(out_dir, out_dir / ENGINE_FILE, settings, meta)
        return self._result(out_dir, onnx_file, settings, meta, artifact_measured=False,
                            unmeasured_reason=meta["reason"], stand_in=meta["gated_artifact"])

    def _engine(self, trt, package, onnx_file: Path, engine_file: Path, profile, options, cfg, state) -> dict[str, Any]:
        """Build the engine where this machine can, try to load it, and say what happened."""
        from mcompress.targets.tensorrt import builder as b

        device = b.cuda_device()
        module = package["module"] if package else "tensorrt"
        meta = {"schema": 1, "onnx_file": onnx_file.name, "engine_file": None, "package": package,
                "gpu": device, "cuda": (device or {}).get("cuda"), "profile": profile.as_dict(),
                "builder_optimization_level": cfg.builder_optimization_level,
                "sparsity": state.annotations.get("sparsity"), "quantization": state.annotations.get("quantization")}
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
        return meta

    def build_table(self, summary) -> Table:
        """The engine, the builder, the GPU and the optimization profile; a note when the engine
        itself was not measured."""
        package, gpu, build = summary.get("package") or {}, summary.get("gpu") or {}, summary.get("build") or {}
        engine = summary.get("engine_file") or "not built"
        if summary.get("engine_file"):
            engine += (f" ({(build.get('engine_bytes') or 0) / 1e6:.1f} MB, built in {build.get('build_s')} s, "
                       f"{summary.get('build_mode')})")
        rows = [("engine", engine),
                ("builder", f"{package.get('distribution') or package.get('module') or 'none installed'} "
                            f"{package.get('version') or ''}".rstrip()),
                ("GPU", gpu.get("name", "none") + (f" (compute capability {gpu['compute_capability']}, CUDA "
                                                   f"{gpu.get('cuda')})" if gpu else ""))]
        if summary.get("compiled_for"):
            cc = summary["compiled_for"]
            rows.append(("compiled for", ", ".join(cc) if isinstance(cc, list) else cc))
        profile = summary.get("profile") or {}
        if profile:
            bq, sq = profile.get("batch", {}), profile.get("sequence", {})
            rows.append(("optimization profile", f"batch {bq.get('min')}/{bq.get('opt')}/{bq.get('max')}, sequence "
                                                 f"{sq.get('min')}/{sq.get('opt')}/{sq.get('max')} (min/opt/max)"))
        notes = ()
        if summary.get("engine_measured") is False:
            notes = (f"Not measured on the target: {summary.get('reason', '')} The gates ran on "
                     f"{summary.get('gated_artifact')}; the latency table is that stand-in's, not the engine's, "
                     "and latency gates were not applied.",)
        return Table("Target build", ("fact", "value"), tuple(rows), notes)


@dataclass(frozen=True)
class TensorRTSettings(TargetSettings):
    """The recipe's engine settings and the shape bounds they default to."""

    config: Any  # core.recipe.TensorRTConfig
    max_length: int
    eval_batch_size: int
