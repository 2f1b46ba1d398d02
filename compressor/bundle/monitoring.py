"""Drift monitoring of a served bundle against the reference recorded in its manifest.

``mcompress package`` runs the bundle it is writing (in memory, through the bundle runtime, so with
the gate's batching) over the build's recorded eval split and stores, under the manifest's
``monitoring`` key, three histograms of what the build predicted there:

- ``label``: the predicted labels (a classifier: one per text; a tagger: one entity type per
  entity), counts per label;
- ``confidence``: the confidence of each of those predictions (the softmax probability; a tagger's
  entity score), counts over CONFIDENCE_EDGES;
- ``token_length``: tokens per text after truncation, counts over token_length_edges(max length).

The server (compressor/serve/monitor.py) counts the same signals over a window of recent traffic
and compares each signal's distribution with the reference by the population stability index

    PSI = sum over bins b of (q_b - p_b) * ln(q_b / p_b)

where p is the reference's proportion in bin b and q the window's, each floored at EPSILON so that
an empty bin counts as very rare rather than impossible. PSI is 0 for identical distributions; the
usual reading is < 0.1 stable, 0.1-0.2 a moderate shift, > 0.2 a significant shift, so the verdict
is "drift" when any signal's PSI exceeds PSI_THRESHOLD (0.2) and the window holds at least
MIN_OBSERVATIONS predictions.

Torch-free (numpy only): the server imports it.
"""

from __future__ import annotations

import math
from bisect import bisect_right

PSI_THRESHOLD = 0.2
EPSILON = 1e-4
MIN_OBSERVATIONS = 20
UNSEEN = "(unseen)"  # the label bin of labels the reference never predicted
CONFIDENCE_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SIGNALS = ("label", "confidence", "token_length")


def token_length_edges(max_length: int) -> tuple[int, ...]:
    """Bin edges 0, 8, 16, 32, ... (doubling) up to max_length, then max_length + 1 (its own bin:
    texts that hit the limit)."""
    edges, edge = [0], 8
    while edge < max_length:
        edges.append(edge)
        edge *= 2
    return (*edges, max_length, max_length + 1)


def bin_index(edges, value: float) -> int:
    """The bin of ``value``: edges[i] <= value < edges[i + 1]; values past the ends fall in the end bins."""
    return min(max(bisect_right(edges, value) - 1, 0), len(edges) - 2)


def histogram(edges, values) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for value in values:
        counts[bin_index(edges, value)] += 1
    return counts


def psi(expected: list[float], actual: list[float]) -> float | None:
    """Population stability index of two count vectors over the same bins; None if either is empty."""
    total_expected, total_actual = sum(expected), sum(actual)
    if not total_expected or not total_actual:
        return None
    value = 0.0
    for e, a in zip(expected, actual):
        p = max(e / total_expected, EPSILON)
        q = max(a / total_actual, EPSILON)
        value += (q - p) * math.log(q / p)
    return value


def label_vectors(reference: dict[str, int], observed: dict[str, int]) -> tuple[list[int], list[int]]:
    """Both label histograms over the reference's labels plus UNSEEN (labels it never predicted)."""
    names = sorted(reference)
    unseen = sum(count for label, count in observed.items() if label not in reference)
    return [reference[n] for n in names] + [0], [observed.get(n, 0) for n in names] + [unseen]


def reference_from(observations: list[tuple[str, float]], token_lengths: list[int], max_length: int,
                   source: dict) -> dict:
    """The manifest's ``monitoring`` entry from the build's predictions on its eval split."""
    labels: dict[str, int] = {}
    for label, _ in observations:
        labels[label] = labels.get(label, 0) + 1
    length_edges = token_length_edges(max_length)
    return {
        "method": "psi", "threshold": PSI_THRESHOLD, "epsilon": EPSILON, "min_observations": MIN_OBSERVATIONS,
        "source": source, "texts": len(token_lengths), "predictions": len(observations),
        "signals": {
            "label": {"counts": dict(sorted(labels.items()))},
            "confidence": {"edges": list(CONFIDENCE_EDGES),
                           "counts": histogram(CONFIDENCE_EDGES, [c for _, c in observations])},
            "token_length": {"edges": list(length_edges), "counts": histogram(length_edges, token_lengths)},
        },
    }
