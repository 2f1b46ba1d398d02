"""The build report as typed data: report.json is ``Report.model_dump(mode="json")``.

A model dumps the fields it was built or loaded with, in declaration order, and any keys it did
not declare (a report written by another version keeps them): a field left unset is absent from
report.json rather than written as null, so the file has the keys it always had, and a report
written by an earlier version loads (defaults fill what it lacks) and dumps back unchanged.

Numbers the job writes as ints stay ints (``Number``: 1, not 1.0), and NaN/Infinity are written as
``json.dumps`` writes them, so report.json is byte-compatible with the dict it replaces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from mcompress.core.errors import InputError
from mcompress.core.sections import Table

REPORT_SCHEMA = 1
Number = int | float  # smart union: an int stays an int


class _ReportModel(BaseModel):
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants", validate_assignment=True,
                              populate_by_name=True, serialize_by_alias=True)

    @model_serializer(mode="wrap")
    def _dump_given_fields(self, handler) -> dict:
        given = {field.alias or name for name, field in type(self).model_fields.items() if name in self.model_fields_set}
        return {key: value for key, value in handler(self).items() if key in given or key in (self.__pydantic_extra__ or {})}


class Gate(_ReportModel):
    name: str
    passed: bool
    value: Number
    threshold: Number | None = None
    unit: str = ""
    detail: str = ""
    ci95: list[Number] | None = None


class Latency(_ReportModel):
    """One measured shape; a pass's batch-1 timing has p50 only."""
    batch_size: int
    sequence_length: int
    p50_ms: Number
    p95_ms: Number | None = None
    iterations: int | None = None


class EntityScores(_ReportModel):
    precision: Number
    recall: Number
    f1: Number
    support: int


class Measured(_ReportModel):
    """A model's figures on the eval data (EvalResult.summary()): ``score`` is the gated metric;
    older reports have accuracy only."""
    runtime: str = ""
    score: Number | None = None
    entity_f1: Number | None = None
    precision: Number | None = None
    recall: Number | None = None
    accuracy: Number | None = None
    macro_f1: Number | None = None
    per_entity: dict[str, EntityScores] | None = None
    truncated_words: int | None = None
    perplexity: Number | None = None  # causal-lm: 1 / score, with its windowing
    windowing: dict[str, int] | None = None
    scored_tokens: int | None = None

    @property
    def gated_score(self) -> float | None:
        return self.accuracy if self.score is None else self.score


class Reference(Measured):
    size_bytes: int | None = None
    flops_seq128: int | None = None


class PassEntry(_ReportModel):
    name: str
    wall_s: Number = 0.0
    modified: bool = True
    size_bytes: int | None = None
    accuracy: Number | None = None  # None: the pass's model was not evaluated
    macro_f1: Number | None = None
    score: Number | None = None
    entity_f1: Number | None = None
    precision: Number | None = None
    recall: Number | None = None
    perplexity: Number | None = None  # causal-lm
    flops_seq128: int | None = None
    gate: Gate | None = None
    latency: Latency | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)  # the pass's own record (PassResult.metrics)
    cached: bool = False
    cache_key: str | None = None

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency else None


class Source(_ReportModel):
    path: str = ""
    sha256: str = ""
    model_type: str | None = None
    architecture: str | None = None
    task: str | None = None
    labels: dict[int | str, str] = Field(default_factory=dict)


class EvalData(_ReportModel):
    source: str = ""
    examples: int = 0
    sha256: str | None = None
    median_tokens: int | None = None
    truncated_fraction: Number | None = None
    # the build's tokenizer vs the original's on the eval texts (a pruned vocabulary; metrics/tokenization.py)
    segmentation: dict[str, Number] | None = None


class SplitData(_ReportModel):
    source: str = ""
    examples: int = 0
    sha256: str | None = None  # content_hash() of the examples; reports before provenance have none


class Data(_ReportModel):
    eval: EvalData = Field(default_factory=EvalData)
    selection: SplitData | None = None
    calibration: SplitData | None = None
    notes: list[str] = Field(default_factory=list)


class LatencyTable(_ReportModel):
    """The original and the build, measured in interleaved rounds, shape by shape; ``isolation``:
    "process" (each in its own process) or "shared" (both in the run's process)."""
    reference: list[Latency] = Field(default_factory=list)
    build: list[Latency] = Field(default_factory=list)
    isolation: str | None = None  # reports before isolation was recorded: shared

    def pairs(self) -> list[tuple[Latency, Latency]]:
        return list(zip(self.reference, self.build))


class DeployedMode(_ReportModel):
    """The build at one batching: its gated metric, drop (with its interval) and the share of its
    predictions equal to those at the first batching."""
    batch_size: int
    score: Number
    drop: Number
    ci95: list[Number] | None = None
    agreement: Number


class AsDeployed(_ReportModel):
    """The build evaluated the way it is called (metrics/deployed.py); the gate took the worst batching."""
    modes: list[DeployedMode]
    gated_batch_size: int
    batch_dependent: bool
    max_logit_difference: Number | None = None
    tolerance: Number | None = None


class LimitShape(_ReportModel):
    batch_size: int
    sequence_length: int
    reference_gmacs: Number
    reference_share: Number  # of the FP32 peak
    build_gmacs: Number
    build_share: Number | None = None  # of the peak of the build's precision; None: no peak measured for it (int4)


class DistanceToLimit(_ReportModel):
    """Achieved GMAC/s against this CPU's measured GEMM peaks (metrics/roofline.py)."""
    peaks_gmacs: dict[str, Number]
    peak_shape: list[int] = Field(default_factory=list)
    build_precision: str = "fp32"
    kernels: str = ""
    shapes: list[LimitShape] = Field(default_factory=list)


class ArtifactFile(_ReportModel):
    bytes: int
    sha256: str


class Artifact(_ReportModel):
    model_file: str = ""
    model_bytes: int
    size_ratio: Number | None = None
    quantization: str = "none"
    float_layers: list[str] = Field(default_factory=list)
    graph: str | None = None
    files: dict[str, ArtifactFile] = Field(default_factory=dict)


class CpuAutoCandidate(_ReportModel):
    """One (CPU target, precision) build in the race; one stopped by a gate after a pass has no
    figures and no race."""
    passed: bool
    target: str = ""  # reports before precision variants: the candidate's name is its target
    precision: str = ""  # e.g. "int8", "fp32", "int8, bf16 float ops"
    recipe: str = ""  # the recipe's name: the default's, or a time-budget plan's (pipeline/budget.py)
    stopped: str | None = None
    metric: str | None = None
    score: Number | None = None
    accuracy: Number | None = None
    drop: Number | None = None  # of the gated metric
    accuracy_drop: Number | None = None
    runtime: str = ""
    model_bytes: int | None = None
    failed_gates: list[str] = Field(default_factory=list)
    race: dict[str, Latency] | None = None  # "b1", "b8"


class CpuAutoChoice(_ReportModel):
    """Which CPU target ``--target cpu-auto`` kept, why, and both candidates' numbers."""
    criterion: str
    chosen: str
    reason: str
    candidates: dict[str, CpuAutoCandidate]
    sequence_length: int
    race_rounds: int
    threads: int | None = None
    other_processes_cpu_percent: Number | None = None
    candidate_reports: dict[str, str] = Field(default_factory=dict)
    # Candidate name -> its precision, and precision -> "not offered: target: why" for the
    # precisions this CPU does not offer.
    offered: dict[str, str] = Field(default_factory=dict)
    unavailable: dict[str, str] = Field(default_factory=dict)  # CPU target -> why it was not built (--target cpu)
    # The default recipe's time budget (--time-budget): budget_s, wall_s, and per plan whether it
    # was built and why, with the figures that decided it (pipeline/budget.py). None: a recipe was given.
    time_budget: dict | None = None


class DistributedRun(_ReportModel):
    """The launch a build was made under (torchrun / accelerate launch; engines/distributed.py):
    its world size, the process group's backend, and the collective timeout. The distill pass's
    metrics say which backend its tensors used (gloo on the CPU, nccl on GPUs)."""
    world_size: int
    backend: str
    timeout_s: Number | None = None


class Report(_ReportModel):
    schema_version: int = Field(REPORT_SCHEMA, alias="schema")
    mcompress_version: str = ""
    target: str = ""
    recipe: dict[str, Any] = Field(default_factory=dict)  # Recipe.model_dump(mode="json"): the recipe's own schema
    versions: dict[str, Any] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    source: Source = Field(default_factory=Source)
    data: Data = Field(default_factory=Data)
    metric: str = "accuracy"  # the gated metric; reports before NER have none
    reference: Reference
    passes: list[PassEntry] = Field(default_factory=list)
    build: Measured
    latency: LatencyTable
    gates: list[Gate]
    as_deployed: AsDeployed | None = None  # reports before the batchings were gated have none
    distance_to_limit: DistanceToLimit | None = None
    passed: bool
    artifact: Artifact
    wall_s: Number | None = None
    target_build: dict[str, Any] | None = None  # the target's build facts (target.build_summary)
    task_latency: dict[str, Any] | None = None  # the task's own latency figures (Task.task_latency: a decoder's)
    out: str | None = None
    cpu_auto: CpuAutoChoice | None = None
    distributed: DistributedRun | None = None  # None: one process (no torchrun/accelerate launch)
    sections: list[Table] = Field(default_factory=list)  # contributed by tasks and targets, shown after the standard ones
    provenance: dict[str, Any] | None = None  # in-toto Statement, SLSA provenance v1 (core/provenance.py)

    @classmethod
    def load(cls, path: Path) -> Report:
        """A report.json, with the errors a user can act on."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"report {path} does not exist.") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"report {path} is not valid JSON ({err}).") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Report | dict, name: str = "the report") -> Report:
        if isinstance(raw, Report):
            return raw
        missing = [field.alias or key for key, field in cls.model_fields.items()
                   if field.is_required() and not (isinstance(raw, dict) and key in raw)]
        if missing:
            raise InputError(f"{name} is not an mcompress report (no '{missing[0]}').", "Pass the report.json of a build.")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise InputError(f"{name} is not a valid mcompress report: {err.errors()[0]['loc']} "
                             f"{err.errors()[0]['msg']}.", "Pass the report.json of a build.") from None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def artifact_measured(self) -> bool:
        """False when the gates ran on a stand-in because the target's own artifact cannot run here
        (a TensorRT engine without a GPU): its accuracy and latency are then unmeasured."""
        return bool((self.target_build or {}).get("engine_measured", True))

    def verdict(self) -> str:
        """PASS, FAIL, or UNVERIFIED: every gate passed, but on a stand-in, not the deployed artifact."""
        if not self.passed:
            return "FAIL"
        return "PASS" if self.artifact_measured() else "UNVERIFIED"

    def metric_columns(self) -> list[tuple[str, str]]:
        """(title, key) of the two metric columns of the pass tables and charts: the gated metric
        first, then the task's other figure (Task.summary_columns)."""
        from mcompress.core.task import UNRECORDED_TASK, get_task

        return list(get_task(self.source.task or UNRECORDED_TASK).summary_columns)

    def shown_score(self, score: float) -> float:
        """A gated score as the task shows it (Task.shown_score: perplexity for a causal LM)."""
        from mcompress.core.task import UNRECORDED_TASK, get_task

        return get_task(self.source.task or UNRECORDED_TASK).shown_score(score)

    def metric_gate(self) -> Gate:
        """The gate on the task's metric: ``<metric>_drop`` (``perplexity_increase`` for a causal LM)."""
        from mcompress.core.task import UNRECORDED_TASK, get_task

        name = f"{self.metric}_{get_task(self.source.task or UNRECORDED_TASK).gate_change}"
        return next(g for g in self.gates if g.name == name)

    def pass_shape(self) -> tuple[int, int] | None:
        """(batch, sequence) the passes' models were timed at, if any was."""
        return next(((p.latency.batch_size, p.latency.sequence_length) for p in self.passes if p.latency), None)

    def latency_at(self, batch_size: int, sequence_length: int) -> tuple[Latency, Latency] | None:
        """(original, build) timings at one shape."""
        return next(((r, b) for r, b in self.latency.pairs()
                     if (b.batch_size, b.sequence_length) == (batch_size, sequence_length)), None)
