"""Gates: budgets a build must meet, checked on the deployed artifact's own outputs.

Accuracy drop is ``(reference - candidate) * 100`` in absolute points, on the same examples.
Its 95% interval is a paired bootstrap: resample example indices with replacement, recompute
the drop on both models' per-example correctness, and take the 2.5th and 97.5th percentiles.
A drop whose interval straddles the budget is within noise of it; the verdict uses the point
estimate, the interval is shown so a reader can judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mcompress.evaluation import EvalResult, LatencyResult


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


def bootstrap_drop_ci(reference_correct: np.ndarray, candidate_correct: np.ndarray, seed: int = 0,
                      resamples: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(reference_correct)
    diff = reference_correct - candidate_correct
    idx = rng.integers(0, n, size=(resamples, n))
    drops = diff[idx].mean(axis=1) * 100.0
    return float(np.percentile(drops, 2.5)), float(np.percentile(drops, 97.5))


def accuracy_drop_gate(reference: EvalResult, candidate: EvalResult, max_drop: float, seed: int = 0) -> GateResult:
    # From the counts, in one rounding: (0.90 - 0.89) * 100 is 1.0000000000000009, which would
    # fail a 1.0-point budget that the build meets exactly.
    drop = float(reference.correct().sum() - candidate.correct().sum()) * 100.0 / reference.n
    ci = bootstrap_drop_ci(reference.correct(), candidate.correct(), seed)
    agree = float((reference.predictions == candidate.predictions).mean())
    detail = (f"accuracy {reference.accuracy:.4f} -> {candidate.accuracy:.4f} on {reference.n} examples; "
              f"predictions agree on {agree:.2%}")
    return GateResult("accuracy_drop", drop <= max_drop, drop, max_drop, "points", detail, ci)


def latency_gates(reference: LatencyResult, candidate: LatencyResult, max_latency_ms: float | None,
                  min_speedup: float | None) -> list[GateResult]:
    """Gates on p50 latency at the reference shape (batch 1, sequence 128 by default)."""
    gates = []
    shape = f"batch {candidate.batch_size}, sequence {candidate.sequence_length}"
    if max_latency_ms is not None:
        gates.append(GateResult("latency_p50", candidate.p50_ms <= max_latency_ms, candidate.p50_ms, max_latency_ms,
                                "ms", f"p50 at {shape}"))
    if min_speedup is not None:
        speedup = reference.p50_ms / candidate.p50_ms
        gates.append(GateResult("speedup", speedup >= min_speedup, speedup, min_speedup, "x",
                                f"FP32 PyTorch p50 {reference.p50_ms:.2f} ms / build p50 {candidate.p50_ms:.2f} ms at {shape}"))
    return gates
