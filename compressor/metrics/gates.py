"""Gates: budgets a build must meet, checked on the deployed artifact's own outputs.

Accuracy drop is ``(reference - candidate) * 100`` in absolute points, on the same examples, or with
``gates.drop_type: relative`` ``(reference - candidate) / reference * 100``, percent of the reference.
Its 95% interval is a paired bootstrap: resample example indices with replacement, recompute
the drop on both models' per-example correctness, and take the 2.5th and 97.5th percentiles.
A drop whose interval straddles the budget is within noise of it; the verdict uses the point
estimate, the interval is shown so a reader can judge.

The gated metric is the task's (``EvalResult.task``, core/task.py): accuracy for classifiers,
entity-level F1 for taggers (gate ``entity_f1_drop``). Both are functions of per-example counts
summed over the examples (``EvalResult.stats``: [correct, 1] per text; [TP, predicted, gold] per
sentence), so one bootstrap serves both: resample examples (sentences for a tagger), sum their
counts for each model, recompute the metric (``Task.metric_of_counts``), take the drop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from mcompress.metrics.evaluation import EvalResult, LatencyResult, ratio_from_counts


@dataclass
class GateResult:
    name: str
    passed: bool
    value: float
    threshold: float
    unit: str
    detail: str
    ci95: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["value"] = round(self.value, 4)
        if self.ci95:
            d["ci95"] = [round(x, 4) for x in self.ci95]
        return d


def metric_drop(reference: float, candidate: float, drop_type: str = "absolute") -> float:
    """Drop of a metric in [0, 1]: ``absolute`` in points, (reference - candidate) * 100;
    ``relative`` in percent of the reference, (reference - candidate) / reference * 100."""
    if drop_type == "relative":
        return (reference - candidate) / reference * 100.0 if reference > 0 else 0.0
    return (reference - candidate) * 100.0


def bootstrap_drop_ci(reference_stats: np.ndarray, candidate_stats: np.ndarray, seed: int = 0,
                      resamples: int = 2000, drop_type: str = "absolute",
                      of_counts: Callable[[np.ndarray], np.ndarray] = ratio_from_counts,
                      drops_of: Callable | None = None) -> tuple[float, float]:
    """95% paired-bootstrap interval of the drop. ``*_stats``: per-example counts, shape (n, k),
    whose sums ``of_counts`` turns into the metric (or per-example correctness, shape (n,), for
    accuracy). ``drops_of(reference, candidate, drop_type)``: the gate's value from arrays of both
    metrics (Task.drops: a perplexity increase for a causal LM); None: the metric's drop."""
    rng = np.random.default_rng(seed)
    reference_stats, candidate_stats = np.asarray(reference_stats, float), np.asarray(candidate_stats, float)
    if reference_stats.ndim == 1:  # correctness vectors
        reference_stats = np.stack([reference_stats, np.ones_like(reference_stats)], axis=1)
        candidate_stats = np.stack([candidate_stats, np.ones_like(candidate_stats)], axis=1)
    n = len(reference_stats)
    idx = rng.integers(0, n, size=(resamples, n))
    ref = of_counts(reference_stats[idx].sum(axis=1))
    cand = of_counts(candidate_stats[idx].sum(axis=1))
    if drops_of is not None:
        drops = drops_of(ref, cand, drop_type)
    else:
        drops = (ref - cand) * 100.0
        if drop_type == "relative":
            drops = np.divide(drops, ref, out=np.zeros_like(drops), where=ref > 0)
    return float(np.percentile(drops, 2.5)), float(np.percentile(drops, 97.5))


def accuracy_drop_gate(reference: EvalResult, candidate: EvalResult, max_drop: float, seed: int = 0,
                       drop_type: str = "absolute", name: str | None = None) -> GateResult:
    """The drop of the task's metric (accuracy, or entity F1 for a tagger) from the reference to
    the candidate on the same examples (for a causal LM, the perplexity increase: Task.drops);
    gate ``<metric>_<Task.gate_change>`` (``accuracy_drop``) unless ``name`` is given."""
    task = reference.task
    drop = task.metric_drop(reference, candidate, drop_type)
    ci = bootstrap_drop_ci(reference.stats, candidate.stats, seed, drop_type=drop_type, of_counts=task.metric_of_counts,
                           drops_of=task.drops)
    unit = "% of reference" if drop_type == "relative" else "points"
    return GateResult(name or f"{task.metric}_{task.gate_change}", drop <= max_drop, drop, max_drop, unit,
                      task.gate_detail(reference, candidate), ci)


def latency_gates(reference: LatencyResult, candidate: LatencyResult, max_latency_ms: float | None,
                  min_speedup: float | None, max_latency_p95_ms: float | None = None) -> list[GateResult]:
    """Gates on p50/p95 latency at the reference shape (batch 1, sequence 128 by default)."""
    gates = []
    shape = f"batch {candidate.batch_size}, sequence {candidate.sequence_length}"
    if max_latency_ms is not None:
        gates.append(GateResult("latency_p50", candidate.p50_ms <= max_latency_ms, candidate.p50_ms, max_latency_ms,
                                "ms", f"p50 at {shape}"))
    if max_latency_p95_ms is not None:
        gates.append(GateResult("latency_p95", candidate.p95_ms <= max_latency_p95_ms, candidate.p95_ms,
                                max_latency_p95_ms, "ms", f"p95 at {shape} over {candidate.iterations} calls"))
    if min_speedup is not None:
        speedup = reference.p50_ms / candidate.p50_ms
        gates.append(GateResult("speedup", speedup >= min_speedup, speedup, min_speedup, "x",
                                f"FP32 PyTorch p50 {reference.p50_ms:.2f} ms / build p50 {candidate.p50_ms:.2f} ms at {shape}"))
    return gates


def size_gate(model_bytes: int, reference_bytes: int, max_ratio: float) -> GateResult:
    ratio = model_bytes / reference_bytes
    return GateResult("size_ratio", ratio <= max_ratio, ratio, max_ratio, "x",
                      f"model file {model_bytes / 1e6:.1f} MB / FP32 original {reference_bytes / 1e6:.1f} MB")
