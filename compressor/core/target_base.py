"""What a deployment target declares: capabilities as data, its pass pipeline, build and runner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mcompress.core.pass_base import Pass
from mcompress.core.state import ModelState


@dataclass(frozen=True)
class TargetCapabilities:
    # Quantization modes the target's runtime executes efficiently.
    quantization_modes: tuple[str, ...]
    # ONNX Runtime QuantType names.
    activation_type: str
    weight_type: str = "QInt8"
    int8_symmetric_only: bool = False
    quantize_bias: bool = True
    # reduce_range (7-bit weights) only helps CPUs without VNNI; off by default.
    reduce_range: bool = False
    # One Q/DQ pair per consuming node (ONNX Runtime's DedicatedQDQPair) instead of one pair
    # shared by every consumer of a tensor: TensorRT fuses a DequantizeLinear into its consumer
    # only when it has exactly one.
    dedicated_qdq_pair: bool = False
    # Q/DQ on the outputs of quantized ops too (ORT quantizes a Gemm's output by default). TensorRT
    # runs a layer in INT8 from the Q/DQ pairs on its inputs; an output pair only rounds the
    # float result again (the pooler before Tanh, the logits).
    quantize_outputs: bool = True
    # The runtime reads ONNX Runtime's com.microsoft contrib ops (the fused Attention,
    # SkipLayerNormalization, ...). TensorRT's ONNX parser reads only standard ai.onnx ops.
    contrib_ops: bool = True


@dataclass(frozen=True)
class BuildInputs:
    """What a target's build may need besides the model: the recipe, the eval data's tokenized
    lengths (engine optimization profiles) and a persistent directory (e.g. timing caches)."""

    recipe: Any = None
    token_lengths: Any = None  # numpy array of token counts per eval example, after truncation
    cache_dir: Optional[Path] = None  # None when the run keeps no cache


class Target(ABC):
    name: str
    description: str
    capabilities: TargetCapabilities

    def check_available(self) -> None:
        """Raise TargetUnavailable when the runtime or hardware is missing."""

    def validate_recipe(self, recipe) -> None:
        """Raise InputError for recipe settings this target cannot honour (before any work)."""

    @abstractmethod
    def pipeline(self, recipe) -> list[Pass]: ...

    @abstractmethod
    def runner(self, model_path: Path, threads: int | None = None): ...

    @abstractmethod
    def build(self, state: ModelState, out_dir: Path, inputs: Optional[BuildInputs] = None) -> Path:
        """Write the deployable files into ``out_dir``; return the path of the model file that the
        run gates (with ``runner``)."""

    def build_summary(self, out_dir: Path) -> dict:
        """Facts about a finished build for the report, read back from ``out_dir``. A target whose
        built artifact could not be run here returns ``{"engine_measured": False, "reason": ...}``:
        the run then gates a stand-in (what ``build`` returned) and ends with TargetUnavailable."""
        return {}
