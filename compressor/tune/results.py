"""Trial records, the Pareto front and tune.json.

A trial is ``completed`` (it reported its build's figures), ``stopped`` (ASHA ended it as
hopeless, or the time budget ran out while it ran) or ``error`` (it raised; the one-line error is
kept). The front is the completed trials with a build that no other completed trial beats on both
objectives: a higher (or equal) gated score on the test split at a lower (or equal) batch-1
latency, one of them strictly. The latency is the final race's (``b1_ms``): every completed build
timed again from the machine that runs tune (tune/race.py), since the workers' own latencies do
not compare; a record not raced (yet) counts at its worker's latency.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from mcompress.tune.trial import FINAL

TUNE_JSON = "tune.json"
TUNE_SCHEMA = 1


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # completed | stopped | error
    point: dict[str, Any]
    recipe: dict[str, Any]
    val_score: Optional[float] = None  # the last validation score distillation reported
    val_shortfall: Optional[float] = None
    score: Optional[float] = None  # the build's gated metric on the test split
    metric: Optional[str] = None
    drop: Optional[float] = None
    passed: Optional[bool] = None
    failed_gates: list[str] = field(default_factory=list)
    latency_ms: Optional[float] = None  # batch-1 p50 on the trial's worker
    model_bytes: Optional[int] = None
    size_ratio: Optional[float] = None
    quantization: Optional[str] = None
    build_dir: Optional[str] = None
    wall_s: Optional[float] = None
    error: Optional[str] = None
    on_front: bool = False
    raced: Optional[dict[str, Any]] = None  # the final race: {"b1": {...}, "b8": {...}}

    @property
    def has_build(self) -> bool:
        return self.status == "completed" and self.build_dir is not None and self.latency_ms is not None

    @property
    def b1_ms(self) -> Optional[float]:
        """Batch-1 p50: the final race's when raced, else the worker's."""
        return self.raced["b1"]["p50_ms"] if self.raced else self.latency_ms

    def label(self) -> str:
        recipe = self.recipe
        prune = recipe.get("prune") or {}
        shape = ("unpruned" if not prune else
                 f"L{prune.get('keep_layers') or '-'} H{prune.get('heads_per_layer') or '-'} "
                 f"F{prune.get('ffn_neurons_per_layer') or '-'}")
        return f"{self.trial_id}: {shape}, {recipe.get('quantize', {}).get('mode')}"


def one_line_error(error: BaseException) -> str:
    """The cause of a trial's failure as one line (Ray wraps it in a RayTaskError with the traceback)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    message = next((line for line in reversed(text) if line.strip()), "") if text else ""
    return f"{type(cause).__name__}: {message}"[:400]


def _trial_id_of_dir(name: str) -> str:
    """A trial that failed before reporting anything has no trial_id in its metrics; Ray Tune
    names its directory <trainable>_<trial id>_<index>_<config>_<date>."""
    match = re.match(r"run_trial_([0-9a-f]+)_\d+_", name)
    return match.group(1) if match else name


def record_of(result, recipe_of) -> TrialRecord:
    """A TrialRecord from a ray.tune Result; ``recipe_of(point)`` gives the trial's recipe."""
    metrics = dict(result.metrics or {})
    point = {k: (v.item() if hasattr(v, "item") else v) for k, v in (result.config or {}).items()}
    trial_id = metrics.get("trial_id") or _trial_id_of_dir(Path(str(result.path)).name)
    status = "error" if result.error is not None else "completed" if metrics.get(FINAL) else "stopped"
    known = {k: metrics.get(k) for k in ("val_score", "val_shortfall", "score", "metric", "drop", "passed",
                                          "latency_ms", "model_bytes", "size_ratio", "quantization", "build_dir",
                                          "wall_s")}
    return TrialRecord(trial_id=str(trial_id), status=status, point=point,
                       recipe=recipe_of(point).model_dump(mode="json"),
                       failed_gates=list(metrics.get("failed_gates") or []),
                       error=one_line_error(result.error) if result.error is not None else None, **known)


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """The non-dominated completed builds (score up, ``b1_ms`` down), fastest first."""
    built = [r for r in records if r.has_build]

    def dominated(r: TrialRecord) -> bool:
        return any(o.score >= r.score and o.b1_ms <= r.b1_ms and (o.score > r.score or o.b1_ms < r.b1_ms) for o in built)

    return sorted((r for r in built if not dominated(r)), key=lambda r: (r.b1_ms, -r.score))


def write_tune_json(out: Path, summary: dict, records: list[TrialRecord]) -> Path:
    path = out / TUNE_JSON
    data = {"schema": TUNE_SCHEMA, **summary, "trials": [asdict(r) for r in records]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
