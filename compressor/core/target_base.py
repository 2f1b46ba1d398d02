"""What a deployment target declares: capabilities as data, its pass pipeline, build and runner."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from mcompress.core.formats import format_of
from mcompress.core.pass_base import Pass
from mcompress.core.sections import Table
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
    # The pipeline exports, converts and runs decoders with their KV cache (a causal LM's task).
    kv_cache_decoders: bool = False


@dataclass(frozen=True)
class BuildInputs:
    """What a target's build may need besides the model: the recipe, the eval data's tokenized
    lengths (engine optimization profiles) and a persistent directory (e.g. timing caches)."""

    recipe: Any = None
    token_lengths: Any = None  # numpy array of token counts per eval example, after truncation
    cache_dir: Optional[Path] = None  # None when the run keeps no cache


@dataclass(frozen=True)
class TargetSettings:
    """How a target's runners run, derived from the recipe (``Target.settings``); a target with
    settings of its own subclasses this. Threads are not here: each caller picks them."""


@dataclass(frozen=True)
class BuildResult:
    """What ``Target.build`` wrote and what the run does with it."""

    files: tuple[Path, ...]  # every file the build wrote into its directory
    model_file: Path  # the file the run gates: the deployed artifact, or its stand-in
    runner: Callable[[Optional[int]], Any]  # threads -> a runner of model_file with the target's settings
    # Facts about the build for report.json's target_build (empty: the report has no such section).
    summary: Mapping[str, Any] = field(default_factory=dict)
    table: Optional[Table] = None  # the same facts as a report section
    # False when the deployed artifact cannot run here (a TensorRT engine without a GPU): the run
    # then gates model_file as a stand-in, skips the latency gates and ends with TargetUnavailable.
    artifact_measured: bool = True
    unmeasured_reason: str = ""  # why the artifact was not measured
    stand_in: str = ""  # what the gates ran on instead

    @property
    def model_bytes(self) -> int:
        """Size of the gated model: its file and the files beside it that its format needs."""
        return format_of(self.model_file).size(self.model_file)


@dataclass(frozen=True)
class PrecisionVariant:
    """One precision the CPU choice (``--target cpu``, pipeline/cpu_auto.py) builds a target at:
    the recipe keys that select it, and a name for the report (target name + suffix)."""

    suffix: str  # "" = the recipe as given; e.g. "+fp32", "+bf16"
    precision: str  # what the build runs in, e.g. "int8", "fp32", "int8, bf16 float ops"
    overrides: Mapping[str, Any] = field(default_factory=dict)  # dotted recipe keys


def recipe_precision(recipe) -> str:
    """The precision a recipe asks of any target's weights: INT8 unless quantization is off."""
    return "fp32" if recipe.quantize.mode == "none" else "int8"


class Target(ABC):
    name: str
    description: str
    capabilities: TargetCapabilities

    def check_available(self) -> None:
        """Raise TargetUnavailable when the runtime or hardware is missing."""

    def validate_recipe(self, recipe) -> None:
        """Raise InputError for recipe settings this target cannot honour (before any work)."""

    def check_task(self, task) -> None:
        """Raise InputError for a task whose models this target's pipeline cannot build."""
        from mcompress.core.errors import InputError

        if task.kv_cache and not self.capabilities.kv_cache_decoders:
            raise InputError(f"target {self.name} cannot build a {task.name} model: its passes do not carry the "
                             "KV cache.", "Use --target onnx-cpu (or the default, cpu).")

    def settings(self, recipe) -> TargetSettings:
        """The runner and build settings the recipe asks of this target."""
        return TargetSettings()

    def precision_variants(self, recipe) -> tuple[list[PrecisionVariant], dict[str, str]]:
        """The precisions a CPU choice builds this target at (the recipe as given first), and the
        precisions this machine does not offer for it, with the reason."""
        return [PrecisionVariant("", recipe_precision(recipe))], {}

    @abstractmethod
    def pipeline(self, recipe) -> list[Pass]: ...

    @abstractmethod
    def runner(self, model_path: Path, threads: int | None = None, settings: TargetSettings | None = None):
        """A runner of ``model_path`` (the built artifact, or an intermediate model of this
        target's pipeline) with ``settings`` (None: the default recipe's)."""

    @abstractmethod
    def build(self, state: ModelState, out_dir: Path, inputs: Optional[BuildInputs] = None) -> BuildResult:
        """Write the deployable files into ``out_dir``."""

    def build_table(self, summary: Mapping[str, Any]) -> Optional[Table]:
        """``summary`` (a BuildResult's, or report.json's target_build) as a report section."""
        return None

    def _result(self, out_dir: Path, model_file: Path, settings: TargetSettings, summary: Optional[Mapping[str, Any]] = None,
                **measured) -> BuildResult:
        """The BuildResult of a build that wrote ``out_dir``'s files; ``measured`` holds
        artifact_measured, unmeasured_reason and stand_in where the artifact was not measured."""
        summary = json.loads(json.dumps(dict(summary or {})))  # as report.json will hold it
        return BuildResult(files=tuple(sorted(p for p in Path(out_dir).iterdir() if p.is_file())),
                           model_file=model_file, runner=partial(self.runner, model_file, settings=settings),
                           summary=summary, table=self.build_table(summary) if summary else None, **measured)
