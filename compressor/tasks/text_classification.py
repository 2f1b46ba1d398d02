"""Text classification: one label per text (``*ForSequenceClassification``), gated by accuracy.

Data: CSV/TSV/JSONL with ``text`` and ``label`` columns, or a split dir (calibration/datasets.py).
Each text is one bootstrap unit with counts [correct, 1], so the metric of summed counts is the
accuracy. The logits are one row per text, shape (batch, labels).
"""

from __future__ import annotations

import numpy as np

from mcompress.calibration.datasets import load_labelled_texts, tokenize
from mcompress.core.task import Task
from mcompress.metrics.evaluation import EvalResult, check_finite_logits, predict_logits, ratio_from_counts


class TextClassification(Task):
    name = "text-classification"
    head_suffix = "ForSequenceClassification"
    auto_model = "AutoModelForSequenceClassification"
    optimum_model = "ORTModelForSequenceClassification"
    logits_axes = ("batch",)
    text_column, label_column = "text", "label"
    metric = "accuracy"
    metrics = ("accuracy",)
    summary_columns = (("accuracy", "accuracy"), ("macro-F1", "macro_f1"))

    def load_data(self, path, label2id, text_column=None, label_column=None, split="test", require_labels=True):
        return load_labelled_texts(path, label2id, text_column or self.text_column, label_column or self.label_column,
                                   split, require_labels)

    # -- scoring ---------------------------------------------------------------------------------

    def scored_logits(self, runner, tokenizer, data, max_length, batch_size=32, what=None, on_batch=None):
        logits = predict_logits(runner, tokenizer, data.texts, max_length, batch_size, on_batch)
        check_finite_logits(logits, runner, data.source, what)
        return logits, None if data.labels is None else np.asarray(data.labels)

    def evaluate(self, runner, tokenizer, data, max_length, batch_size=32, on_batch=None, what=None):
        if data.labels is None:
            raise ValueError(f"{data.source} has no labels to evaluate against")
        logits, labels = self.scored_logits(runner, tokenizer, data, max_length, batch_size, what, on_batch)
        predictions = logits.argmax(-1)
        return EvalResult(float((predictions == labels).mean()), predictions, labels, logits, self)

    def metric_of_counts(self, counts):
        return ratio_from_counts(counts)

    def metric_drop(self, reference, candidate, drop_type):
        # From the counts, in one rounding: (0.90 - 0.89) * 100 is 1.0000000000000009, which would
        # fail a 1.0-point budget that the build meets exactly.
        ref_correct, cand_correct = float(reference.correct().sum()), float(candidate.correct().sum())
        if drop_type == "relative":
            return (ref_correct - cand_correct) * 100.0 / ref_correct if ref_correct else 0.0
        return (ref_correct - cand_correct) * 100.0 / reference.n

    def gate_detail(self, reference, candidate):
        return (f"accuracy {reference.accuracy:.4f} -> {candidate.accuracy:.4f}, macro-F1 {reference.macro_f1:.4f} -> "
                f"{candidate.macro_f1:.4f} on {reference.n} examples; predictions agree on {reference.agreement(candidate):.2%}")

    def summary(self, result):
        return {"score": result.accuracy, "accuracy": result.accuracy, "macro_f1": round(result.macro_f1, 6)}

    # -- training hooks --------------------------------------------------------------------------

    def training_batch(self, tokenizer, data, indices, max_length):
        inputs = tokenize(tokenizer, [data.texts[i] for i in indices], max_length)
        return inputs, None if data.labels is None else np.asarray([data.labels[i] for i in indices], dtype=np.int64)

    def resolve_targets(self, targets, reference_logits):
        return reference_logits.argmax(-1) if targets is None else targets

    def scored_rows(self, logits, targets):
        return logits, targets
