"""Entity-level precision, recall and F1 of IOB2 tag sequences, with seqeval's semantics.

Entities are read from each sentence's tags as seqeval does by default (its conlleval-compatible
mode, not ``mode="strict"``): an entity of type X starts at ``B-X``, or at an ``I-X`` that does not
continue an entity of type X (after ``O`` or another type), and runs over the following ``I-X``
tags. An entity is the triple (type, first word, last word).

A predicted entity is a true positive when the gold tags hold exactly the same triple. Summed over
all sentences, with TP true positives, P predicted and G gold entities::

    precision = TP / P      recall = TP / G      F1 = 2 * precision * recall / (precision + recall)
                                                    = 2 * TP / (P + G)

(micro average, seqeval's ``f1_score`` default; 0 where a denominator is 0). Per entity type the
same counts are taken over that type's entities only.

Because F1 is a function of the summed counts, each sentence contributes a row (TP, P, G): the
paired bootstrap of the gates (compressor/metrics/gates.py) resamples sentences and recomputes F1 from
the resampled rows' sums, so the drop's interval respects that entities come in sentences.
"""

from __future__ import annotations

import numpy as np

# entities() lives with the IOB2 scheme in calibration.tagged, where the torch-free bundle runtime reads it too
from mcompress.calibration.tagged import entities  # noqa: F401  (re-exported)


def sentence_counts(gold: list[list[str]], predicted: list[list[str]], types: list[str]) -> np.ndarray:
    """Per sentence and entity type, [TP, predicted, gold]: shape (sentences, types, 3)."""
    index = {t: k for k, t in enumerate(types)}
    counts = np.zeros((len(gold), len(types), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, predicted)):
        gold_entities, predicted_entities = entities(g), entities(p)
        for kind, column in ((gold_entities & predicted_entities, 0), (predicted_entities, 1), (gold_entities, 2)):
            for entity in kind:
                counts[i, index[entity[0]], column] += 1
    return counts


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (P + G) over the last axis [TP, P, G]; 0 where P + G is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    denominator = counts[..., 1] + counts[..., 2]
    return np.divide(2 * counts[..., 0], denominator, out=np.zeros_like(denominator), where=denominator > 0)


def scores(counts: np.ndarray) -> dict[str, float | int]:
    """precision, recall, f1 and support (gold entities) of summed [TP, P, G] counts."""
    tp, predicted, gold = (int(x) for x in counts)
    return {"precision": tp / predicted if predicted else 0.0, "recall": tp / gold if gold else 0.0,
            "f1": float(f1_from_counts(counts)), "support": gold, "predicted": predicted}


def entity_report(counts: np.ndarray, types: list[str]) -> dict:
    """Micro scores over all types, and per type: {"micro": {...}, "per_type": {TYPE: {...}}}."""
    per_type = counts.sum(axis=0)
    return {"micro": scores(per_type.sum(axis=0)), "per_type": {t: scores(per_type[k]) for k, t in enumerate(types)}}
