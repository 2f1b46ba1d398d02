"""OpenVINO on Intel (and other x86) CPUs: the exported ONNX lowered to OpenVINO IR, INT8 through
NNCF (passes/quantize/nncf_ptq.py), compiled and gated on the OpenVINO CPU plugin.

Pipeline: [prune] -> [distill] -> export (ONNX, parity vs PyTorch) -> convert (OpenVINO IR, parity
vs ONNX Runtime) -> quantize (NNCF; with accuracy control against the recipe's budget by default).
No ONNX Runtime transformer fusion: OpenVINO fuses the graph itself when the CPU plugin compiles it.
The build holds model.xml + model.bin, config.json (label map), the tokenizer files,
openvino_build.json (versions, how the CPU plugin compiled the model) and the report.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mcompress.core.errors import InputError, TargetUnavailable
from mcompress.core.formats import OPENVINO_IR, format_of
from mcompress.core.sections import Table
from mcompress.core.target_base import (BuildInputs, BuildResult, PrecisionVariant, Target, TargetCapabilities,
                                        TargetSettings, recipe_precision)
from mcompress.targets.front import torch_front_passes

METADATA_FILE = "openvino_build.json"
MODEL_FILE = OPENVINO_IR.model_file
# recipe openvino.inference_precision -> the CPU plugin's OPTIMIZATION_CAPABILITIES entry it needs
PRECISION_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
INSTALL_HINT = "pip install 'mcompress[openvino]' (openvino and nncf), or use --target onnx-cpu."


def missing_packages() -> list[str]:
    return [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]


def cpu_capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES on this machine (e.g. FP32, INT8, BF16)."""
    import openvino as ov
    import openvino.properties.device as device

    return list(ov.Core().get_property("CPU", device.capabilities))


class OpenVINOCpuTarget(Target):
    name = "openvino-cpu"
    description = "OpenVINO runtime, CPU plugin (IR, INT8 via NNCF)"
    capabilities = TargetCapabilities(
        # NNCF quantizes ahead of time with calibrated ranges (FakeQuantize); OpenVINO has no
        # run-time (dynamic) activation quantization of the ONNX Runtime kind.
        quantization_modes=("static",),
        # NNCF's mixed preset, its default for transformers: asymmetric (uint8-like) activations,
        # symmetric int8 weights per output channel. The CPU plugin runs u8 x s8 on VNNI/AMX.
        activation_type="QUInt8",
        weight_type="QInt8",
        int8_symmetric_only=False,
        quantize_bias=False,  # biases stay float; NNCF's bias correction adjusts them
        contrib_ops=False,  # the IR comes from the standard-op export; OpenVINO fuses on compile
    )

    def check_available(self) -> None:
        missing = missing_packages()
        if missing:
            raise TargetUnavailable(f"target openvino-cpu needs {' and '.join(missing)}, which "
                                    f"{'is' if len(missing) == 1 else 'are'} not installed.", INSTALL_HINT)

    def validate_recipe(self, recipe) -> None:
        mode = recipe.quantize.mode
        if mode not in ("auto", "static", "none"):
            raise InputError(f"target openvino-cpu cannot run quantize.mode '{mode}': NNCF quantizes with calibrated "
                             "(static) ranges only.", "Use --quantize static (or auto), or none for an FP32 IR.")
        if recipe.fallback.enabled or recipe.sensitivity.run == "always":
            raise InputError("recipe fallback/sensitivity apply to the onnx-cpu target only; openvino-cpu reverts "
                             "layers to float with NNCF's accuracy control.",
                             "Remove the fallback/sensitivity sections, and use openvino.accuracy_control.")
        precision = recipe.openvino.inference_precision
        if precision != "f32" and not missing_packages():
            supported = cpu_capabilities()
            if PRECISION_CAPABILITY[precision] not in supported:
                raise InputError(f"recipe openvino.inference_precision {precision}: this CPU's OpenVINO plugin supports "
                                 f"{', '.join(supported)}.", "Use f32.")

    def precision_variants(self, recipe):
        """The recipe as given and, where the CPU plugin offers BF16 (AMX or AVX-512 BF16) and the
        recipe leaves the float operations in f32, the same INT8 IR with its float operations in
        BF16. OpenVINO's FP32 is not raced: onnx-cpu's FP32 build is the float floor."""
        weights = recipe_precision(recipe)
        variants = [PrecisionVariant("", f"{weights}, {recipe.openvino.inference_precision} float ops")]
        if recipe.openvino.inference_precision != "f32":
            return variants, {}
        supported = cpu_capabilities()
        if PRECISION_CAPABILITY["bf16"] not in supported:
            return variants, {"bf16": f"this CPU's OpenVINO plugin offers {', '.join(supported)} (BF16 needs AMX or "
                                      "AVX-512 BF16)"}
        return variants + [PrecisionVariant("+bf16", f"{weights}, bf16 float ops",
                                            {"openvino.inference_precision": "bf16"})], {}

    def pipeline(self, recipe):
        from mcompress.passes.convert.openvino_ir import ConvertOpenVINO
        from mcompress.passes.export.onnx_export import ExportOnnx
        from mcompress.passes.quantize.nncf_ptq import QuantizeNNCF

        return [*torch_front_passes(recipe), ExportOnnx(), ConvertOpenVINO(), QuantizeNNCF()]

    def settings(self, recipe) -> "OpenVINOSettings":
        return OpenVINOSettings(recipe.openvino.inference_precision) if recipe is not None else OpenVINOSettings()

    def runner(self, model_path: Path, threads: int | None = None, settings: TargetSettings | None = None):
        """An IR runs on the OpenVINO CPU plugin; an ONNX file (the export pass's output,
        evaluated after that pass) on ONNX Runtime CPU."""
        if format_of(model_path) is OPENVINO_IR:
            from mcompress.engines.openvino_cpu import OpenVINORunner

            return OpenVINORunner(model_path, threads, (settings or OpenVINOSettings()).inference_precision)
        from mcompress.engines.onnxruntime_cpu import OrtRunner

        return OrtRunner(model_path, threads)

    def build(self, state, out_dir: Path, inputs: BuildInputs | None = None) -> BuildResult:
        """model.xml + model.bin, config.json, the tokenizer files, and openvino_build.json (the
        facts below, kept in the build for whoever deploys it)."""
        import nncf
        import openvino as ov

        from mcompress.core.recipe import Recipe
        from mcompress.engines.openvino_cpu import OpenVINORunner
        from mcompress.targets.onnx_cpu.target import write_config_and_tokenizer

        inputs = inputs or BuildInputs()
        recipe = inputs.recipe or Recipe()
        settings = self.settings(recipe)
        out_dir.mkdir(parents=True, exist_ok=True)
        xml = OPENVINO_IR.copy(state.model_file, out_dir, MODEL_FILE)
        write_config_and_tokenizer(state, out_dir)
        threads = recipe.latency.threads or os.cpu_count()
        compiled = OpenVINORunner(xml, threads, settings.inference_precision)
        meta = {"schema": 1, "model_file": MODEL_FILE, "weights_file": OPENVINO_IR.companions(xml)[0].name,
                "openvino": ov.__version__, "nncf": nncf.__version__, "device": "CPU",
                "requested": {"inference_precision": settings.inference_precision, "threads": threads,
                              "performance_hint": "LATENCY"},
                "compiled": compiled.properties,
                "quantization": state.annotations.get("quantization"),
                "float_layers": state.annotations.get("float_layers", [])}
        (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return self._result(out_dir, xml, settings, meta)

    def build_table(self, summary) -> Table:
        compiled, requested = summary.get("compiled") or {}, summary.get("requested") or {}
        rows = (("runtime", f"openvino {str(summary.get('openvino')).split('-')[0]} on {summary.get('device', 'CPU')}, "
                            f"NNCF {summary.get('nncf')}"),
                ("compiled with", f"inference precision {compiled.get('inference_precision')} (asked "
                                  f"{requested.get('inference_precision')}), {compiled.get('inference_num_threads')} "
                                  f"threads, performance hint {compiled.get('performance_hint')}, "
                                  f"{compiled.get('num_streams')} stream(s)"),
                ("quantization", str(summary.get("quantization"))))
        return Table("Target build (OpenVINO)", ("fact", "value"), rows)


@dataclass(frozen=True)
class OpenVINOSettings(TargetSettings):
    inference_precision: str = "f32"  # recipe openvino.inference_precision: the CPU plugin's float precision
