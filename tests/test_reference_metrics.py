"""The in-house metrics against the reference libraries (test extras only, never runtime
dependencies): entity-level precision/recall/F1 against seqeval, macro-F1 against scikit-learn,
on many seeded random inputs.

Random tag sequences include malformed IOB2 (an ``I-X`` after ``O`` or after another type):
compressor/metrics/entity_metrics.py follows seqeval's default (conlleval) mode, so on any sequence
they must agree. seqeval's ``mode="strict"`` differs from the default only on such malformed
sequences, so on well-formed IOB2 all three must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from sklearn.metrics import f1_score as sklearn_f1_score

from mcompress.metrics.entity_metrics import entity_report, sentence_counts
from mcompress.metrics.evaluation import macro_f1

# seqeval averages empty per-type arrays when a type never occurs; numpy warns about that
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")

TYPES = ["LOC", "MISC", "ORG", "PER"]
TAGS = ["O", *(f"{p}-{t}" for t in TYPES for p in "BI")]
CASES = 150


def _any_tags(rng: np.random.Generator, length: int) -> list[str]:
    """Any sequence of the tags, IOB2 or not; mostly O, as in real data."""
    weights = np.array([6.0] + [1.0] * (len(TAGS) - 1))
    return [TAGS[i] for i in rng.choice(len(TAGS), size=length, p=weights / weights.sum())]


def _iob2_tags(rng: np.random.Generator, length: int) -> list[str]:
    """A well-formed IOB2 sequence: every I-X continues a B-X or I-X."""
    tags: list[str] = []
    for _ in range(length):
        previous = tags[-1][2:] if tags and tags[-1] != "O" else None
        choice = rng.random()
        if previous and choice < 0.4:
            tags.append(f"I-{previous}")
        elif choice < 0.7:
            tags.append("O")
        else:
            tags.append(f"B-{TYPES[rng.integers(len(TYPES))]}")
    return tags


def _well_formed(tags: list[str]) -> list[str]:
    """The tags with every stray I-X (not continuing an X entity) replaced by O."""
    out: list[str] = []
    for tag in tags:
        stray = tag.startswith("I-") and (not out or out[-1][2:] != tag[2:])
        out.append("O" if stray else tag)
    return out


def _corpus(rng: np.random.Generator, make) -> tuple[list[list[str]], list[list[str]]]:
    lengths = rng.integers(0, 12, size=rng.integers(1, 8))
    gold = [make(rng, int(n)) for n in lengths]
    # Predictions: the gold tags with some words re-drawn, so that many entities match exactly.
    predicted = [[t if rng.random() < 0.7 else make(rng, 1)[0] for t in sentence] for sentence in gold]
    return gold, predicted


def _compare(gold, predicted, **seqeval_mode) -> None:
    report = entity_report(sentence_counts(gold, predicted, TYPES), TYPES)
    micro = report["micro"]
    kw = {"zero_division": 0, **seqeval_mode}
    assert micro["precision"] == pytest.approx(precision_score(gold, predicted, **kw), abs=1e-12)
    assert micro["recall"] == pytest.approx(recall_score(gold, predicted, **kw), abs=1e-12)
    assert micro["f1"] == pytest.approx(f1_score(gold, predicted, **kw), abs=1e-12)
    reference = classification_report(gold, predicted, output_dict=True, **kw)
    for kind, ours in report["per_type"].items():
        if kind not in reference:  # seqeval lists only types that occur in gold or predictions
            assert ours["support"] == ours["predicted"] == 0
            continue
        theirs = reference[kind]
        assert ours["support"] == theirs["support"]
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"]), abs=1e-12)


def test_entity_scores_match_seqeval_default_mode_on_any_tags():
    rng = np.random.default_rng(0)
    for _ in range(CASES):
        _compare(*_corpus(rng, _any_tags))


def test_entity_scores_match_seqeval_strict_iob2_on_well_formed_tags():
    rng = np.random.default_rng(1)
    for _ in range(CASES):
        gold, predicted = _corpus(rng, _iob2_tags)
        predicted = [_well_formed(sentence) for sentence in predicted]
        _compare(gold, predicted)
        _compare(gold, predicted, mode="strict", scheme=IOB2)


@pytest.mark.parametrize("classes", [2, 3, 8])
def test_macro_f1_matches_scikit_learn(classes):
    rng = np.random.default_rng(classes)
    for _ in range(CASES):
        n = int(rng.integers(1, 40))
        labels = rng.integers(0, classes, n)
        # some classes absent from the labels, or never predicted, or both
        predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes + 1, n))
        assert macro_f1(predictions, labels) == pytest.approx(
            sklearn_f1_score(labels, predictions, average="macro", zero_division=0), abs=1e-12)
