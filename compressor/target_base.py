"""What a deployment target declares: capabilities as data, its pass pipeline, build and runner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from mcompress.pass_base import Pass
from mcompress.state import ModelState


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
    def build(self, state: ModelState, out_dir: Path) -> Path:
        """Write the deployable files into ``out_dir``; return the model file's path."""
