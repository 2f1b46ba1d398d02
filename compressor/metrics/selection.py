"""The one rule every choice between builds follows (quantization candidates, float-fallback
candidates, CPU targets): the fastest candidate that meets the accuracy budget; candidates within
``tie_tolerance`` of the fastest are tied and the first in preference order wins, so timing noise
between near-equal candidates does not change the build from run to run. When none meets the
budget, the most accurate is kept (first in order among equals) and the caller fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    chosen: object
    within_budget: bool  # False: nothing met the budget and the most accurate was kept


def fastest_within_budget(candidates: Sequence[T], within_budget: Callable[[T], bool], latency: Callable[[T], float],
                          score: Callable[[T], float], tie_tolerance: float = 0.0) -> Choice:
    """``candidates`` in preference order; ``latency`` lower is better, ``score`` higher is better."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    passing = [c for c in candidates if within_budget(c)]
    if passing:
        best = min(latency(c) for c in passing)
        return Choice(next(c for c in passing if latency(c) <= best * (1 + tie_tolerance)), True)
    best_score = max(score(c) for c in candidates)
    return Choice(next(c for c in candidates if score(c) == best_score), False)
