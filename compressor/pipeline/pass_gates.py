"""Gates after chosen passes (``gates.after``): the model a pass produced is evaluated on the eval
data and held to ``gates.max_drop``; the first pass that breaks the budget stops the run (exit 3)
with its name, before later passes spend time on a model that cannot ship.

An instrument of the PassManager: it sees every finished pass, and reads the evaluation the
per-pass evaluator already made when there is one.
"""

from __future__ import annotations

import logging
from typing import Callable

from mcompress.core.errors import GateFailure, InputError
from mcompress.core.manager import Instrument
from mcompress.metrics.gates import GateResult, accuracy_drop_gate

logger = logging.getLogger(__name__)


def check_gate_passes(recipe, pass_names: list[str]) -> None:
    """An InputError, before any work, for a name in gates.after that the pipeline does not run."""
    unknown = [n for n in recipe.gates.after if n not in pass_names]
    if unknown:
        raise InputError(f"recipe gates.after names {', '.join(repr(n) for n in unknown)}, but this target's pipeline "
                         f"runs {', '.join(pass_names)}.", "Name passes of the pipeline (e.g. prune, distill, quantize).")


class PassGate(Instrument):
    """``evaluate(pass, state) -> EvalResult`` evaluates a pass's model on the eval data (or
    returns the evaluation already made for it: instruments.PassEvaluations)."""

    def __init__(self, recipe, reference, evaluate: Callable):
        self.after = list(recipe.gates.after)
        self.max_drop, self.drop_type = reference.task.gate_budget(recipe.gates)
        self.seed = recipe.seed
        self.reference = reference
        self.evaluate = evaluate
        self.results: list[GateResult] = []

    def run_after_pass(self, p, result, record) -> None:
        if p.name not in self.after:
            return
        candidate = self.evaluate(p, result.state)
        gate = accuracy_drop_gate(self.reference, candidate, self.max_drop, self.seed, self.drop_type,
                                  name=f"{self.reference.metric}_{self.reference.task.gate_change}_after_{p.name}")
        self.results.append(gate)
        record.evaluation["gate"] = gate.as_dict()
        logger.info("gate after %s: drop %.3f %s (budget %s): %s", p.name, gate.value, gate.unit, gate.threshold,
                    "pass" if gate.passed else "FAIL")
        if not gate.passed:
            raise GateFailure(f"gate failed after pass '{p.name}': {self.reference.metric.replace('_', ' ')} drop {gate.value:.3f} {gate.unit} > "
                              f"budget {gate.threshold} ({gate.detail}); later passes did not run.",
                              "Relax gates.max_drop, or change that pass's settings.")
