"""Runs an OpenVINO IR (model.xml + model.bin) on the OpenVINO CPU plugin: the model that ships
is the model that is gated.

The plugin is compiled with an explicit inference precision (``INFERENCE_PRECISION_HINT``; f32
unless the recipe says otherwise: on CPUs with AMX or AVX512-BF16 the plugin would pick bf16 for
float operations on its own), the latency performance hint (one stream: what batch-1 serving
needs) and ``INFERENCE_NUM_THREADS``. What the compiled model reports back for these is recorded
in ``compiled_properties`` for the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# recipe name -> openvino.Type attribute
PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


def compile_config(threads: int | None, inference_precision: str = "f32") -> dict:
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY,
              hints.inference_precision: getattr(ov.Type, PRECISIONS[inference_precision])}
    if threads:
        config[props.inference_num_threads] = int(threads)
    return config


def compiled_properties(compiled) -> dict:
    """What the CPU plugin actually compiled with (read back, not what was asked for)."""
    import openvino.properties as props
    import openvino.properties.hint as hints

    facts = {}
    for key, prop in (("inference_precision", hints.inference_precision), ("inference_num_threads", props.inference_num_threads),
                      ("performance_hint", hints.performance_mode), ("num_streams", props.num_streams)):
        try:
            value = compiled.get_property(prop)
        except Exception:  # a property this plugin version does not report
            facts[key] = None
            continue
        if hasattr(value, "get_type_name"):  # openvino.Type: 'f32', 'bf16'
            value = value.get_type_name()
        facts[key] = str(getattr(value, "name", value))  # enums (PerformanceMode.LATENCY) by name
    return facts


class OpenVINORunner:
    def __init__(self, model_path: Path, threads: int | None = None, inference_precision: str = "f32",
                 name: str | None = None):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_path))
        self.compiled = core.compile_model(model, "CPU", compile_config(threads, inference_precision))
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self._logits = self.compiled.output("logits")
        self.properties = compiled_properties(self.compiled)
        self.name = name or (f"openvino {ov.__version__.split('-')[0]} CPU "
                             f"({self.properties['inference_precision']}, {self.properties['inference_num_threads']} threads)")

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.request.infer({k: inputs[k] for k in self.input_names})
        return np.array(self.request.get_tensor(self._logits).data, dtype=np.float32, copy=True)
