"""Recipes: the typed, validated description of one compression run.

A recipe is YAML validated by pydantic with ``extra="forbid"`` at every level, so a misspelt key
is an error that names it. Defaults live here; ``recipes/ptq.yaml`` spells out the default recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mcompress.errors import InputError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportConfig(_Strict):
    opset: int = Field(17, ge=14, le=21)
    # Max |logit difference| allowed between PyTorch and the exported ONNX on real inputs.
    parity_atol: float = Field(1e-4, gt=0)
    parity_examples: int = Field(16, ge=1)


class OptimizeConfig(_Strict):
    # ONNX Runtime's transformer fusions (Attention, EmbedLayerNormalization, SkipLayerNorm, Gelu).
    # auto: keep both the fused and the unfused graph and let the quantize pass measure which is
    # faster after quantization (fused INT8 graphs measured slower than unfused ones here).
    fusion: Literal["auto", "fused", "unfused"] = "auto"
    fuse_attention: bool = True


class StaticQuantConfig(_Strict):
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_examples: int = Field(256, ge=1, le=100_000)
    percentile: float = Field(99.999, gt=90, le=100)
    op_types: list[str] = ["MatMul", "Gemm"]


class QuantizeConfig(_Strict):
    # auto: build dynamic and static candidates, keep the fastest within the accuracy budget.
    mode: Literal["auto", "dynamic", "static", "none"] = "auto"
    per_channel: bool = True
    static: StaticQuantConfig = StaticQuantConfig()
    # Examples of the selection split used to score candidates in auto mode (null = all).
    selection_examples: Optional[int] = Field(None, ge=1)
    # Candidates whose latency score is within this fraction of the fastest count as tied; the
    # first in candidate order wins, so near-equal timings do not flip the build between runs.
    latency_tie_tolerance: float = Field(0.05, ge=0, le=1)


class GateConfig(_Strict):
    metric: Literal["accuracy"] = "accuracy"
    # Largest allowed drop of the metric, in absolute points (1.0 = one percentage point).
    max_drop: float = Field(1.0, ge=0, le=100)
    max_latency_ms: Optional[float] = Field(None, gt=0)  # p50 at batch 1, sequence 128
    min_speedup: Optional[float] = Field(None, gt=0)  # vs the FP32 PyTorch original, batch 1, seq 128


class LatencyConfig(_Strict):
    batch_sizes: list[int] = [1, 8]
    # "data" means the eval data's median tokenized length.
    sequence_lengths: list[Union[int, Literal["data"]]] = [128, "data"]
    warmup: int = Field(5, ge=0)
    iterations: int = Field(40, ge=3)
    threads: Optional[int] = Field(None, ge=1)  # null = all cores

    @model_validator(mode="after")
    def _positive(self):
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch_sizes must be >= 1")
        if any(isinstance(s, int) and s < 2 for s in self.sequence_lengths):
            raise ValueError("sequence_lengths must be >= 2")
        return self


class EvalConfig(_Strict):
    max_examples: Optional[int] = Field(None, ge=1)  # null = the whole eval split
    batch_size: int = Field(32, ge=1)
    evaluate_each_pass: bool = True


class Recipe(_Strict):
    name: str = "ptq"
    seed: int = 0
    max_length: int = Field(128, ge=8, le=4096)
    export: ExportConfig = ExportConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    gates: GateConfig = GateConfig()
    latency: LatencyConfig = LatencyConfig()
    eval: EvalConfig = EvalConfig()

    def with_overrides(self, **updates) -> "Recipe":
        """Apply CLI overrides given as dotted keys, e.g. {"gates.max_drop": 0.5}."""
        data = self.model_dump()
        for dotted, value in updates.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        return _validate(data, "command-line overrides")


def _validate(data: dict, origin: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise InputError(f"recipe {origin}: unknown key '{where}'.",
                             "Check its spelling against recipes/ptq.yaml.") from None
        raise InputError(f"recipe {origin}: '{where}': {first['msg']} (got {first.get('input')!r}).") from None


def load_recipe(path: str | Path | None) -> Recipe:
    import yaml

    if path is None:
        path = RECIPES_DIR / "ptq.yaml"
        if not path.is_file():  # installed non-editable: recipes ship as package data
            from importlib.resources import files

            path = Path(str(files("mcompress.recipes") / "ptq.yaml"))
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe file {path} does not exist.", "Pass --recipe with a YAML file, e.g. recipes/ptq.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise InputError(f"recipe {path} must be a YAML mapping of keys to values.")
    return _validate(data, str(path))
