"""Numerical helpers shared across layers (numpy only, imported lazily by their callers).

``log_softmax(z) = z - max(z) - log(sum(exp(z - max(z))))`` along the last axis, in float64: the
shift by the row maximum keeps ``exp`` from overflowing and does not change the result."""

from __future__ import annotations

import numpy as np


def log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
