"""Accuracy as deployed: the build scored at every batching it will be called with.

A build is called with each text alone (a server at low load, an edge device) and in
length-bucketed batches (the bundle runtime, a server under load). For most builds the answers do
not depend on the batching, but dynamically quantized INT8 takes each activation's range over the
whole padded batch, so a text's logits change with what shares its batch. The gate therefore
scores the build at each batch size of ``eval.batching`` against the same reference and keeps the
worst: the accuracy gate's value is the largest drop among the batchings.

``batch_dependent``: some logit differs between two batchings by more than
``BATCH_DEPENDENCE_TOLERANCE``. FP32 and static INT8 graphs differ only by float reassociation of
padded rows (about 1e-6 here); dynamic INT8 differs by up to a quantization step (about 1e-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcompress.metrics.evaluation import EvalResult
from mcompress.metrics.gates import GateResult, accuracy_drop_gate

BATCH_DEPENDENCE_TOLERANCE = 1e-3  # max |logit difference| between batchings still called batch-independent


@dataclass
class DeployedAccuracy:
    results: dict[int, EvalResult]  # batch size -> the build's result at that batching, in the recipe's order
    gates: dict[int, GateResult]  # batch size -> the accuracy gate at that batching
    max_logit_difference: float | None  # between any two batchings; None when the logits' shapes differ

    @property
    def worst(self) -> int:
        """The batch size with the largest drop (the first of equals): the one the gate reports."""
        return max(self.gates, key=lambda b: self.gates[b].value)

    @property
    def batch_dependent(self) -> bool:
        return self.max_logit_difference is not None and self.max_logit_difference > BATCH_DEPENDENCE_TOLERANCE

    def gate(self) -> GateResult:
        """The worst batching's gate, its detail naming the batching and the others' drops."""
        worst = self.gates[self.worst]
        if len(self.gates) == 1:
            return worst
        others = ", ".join(f"batch {b}: {g.value:.2f}" for b, g in self.gates.items() if b != self.worst)
        dependence = "answers depend on the batching" if self.batch_dependent else "answers do not depend on the batching"
        return GateResult(worst.name, worst.passed, worst.value, worst.threshold, worst.unit,
                          f"worst batching, batch {self.worst} ({others}; {dependence}): {worst.detail}", worst.ci95)

    def as_dict(self) -> dict:
        first = next(iter(self.results.values()))
        modes = [{"batch_size": b, "score": r.score, "drop": round(self.gates[b].value, 4),
                  "ci95": [round(x, 4) for x in self.gates[b].ci95] if self.gates[b].ci95 else None,
                  "agreement": round(r.agreement(first), 6)} for b, r in self.results.items()]
        return {"modes": modes, "gated_batch_size": self.worst, "batch_dependent": self.batch_dependent,
                "max_logit_difference": None if self.max_logit_difference is None else float(self.max_logit_difference),
                "tolerance": BATCH_DEPENDENCE_TOLERANCE}


def _max_logit_difference(results: list[EvalResult]) -> float | None:
    shapes = {np.shape(r.logits) for r in results}
    if len(shapes) != 1:
        return None
    first = np.asarray(results[0].logits, dtype=np.float64)
    return max((float(np.abs(np.asarray(r.logits, dtype=np.float64) - first).max(initial=0.0)) for r in results[1:]),
               default=0.0)


def deployed_accuracy(reference: EvalResult, results: dict[int, EvalResult], max_drop: float, seed: int = 0,
                      drop_type: str = "absolute") -> DeployedAccuracy:
    """The accuracy gate at every batching of ``results`` (batch size -> the build's EvalResult)."""
    gates = {b: accuracy_drop_gate(reference, r, max_drop, seed, drop_type) for b, r in results.items()}
    return DeployedAccuracy(dict(results), gates, _max_logit_difference(list(results.values())))
