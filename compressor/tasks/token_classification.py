"""Token classification (NER): an IOB2 tag per word (``*ForTokenClassification``), gated by
entity-level F1 with seqeval's semantics (compressor/metrics/entity_metrics.py).

Data: CoNLL or JSONL with ``tokens`` and ``tags``, or a split dir (calibration/tagged.py). Each
word is predicted from its first sub-token; words cut off by max_length are tagged O. One
sentence is one bootstrap unit, with counts [TP, predicted, gold entities], so the metric of summed
counts is the micro F1 = 2 TP / (P + G). The logits are per sub-token, shape (batch, sequence,
labels); the training passes score them at each word's first sub-token only.
"""

from __future__ import annotations

import numpy as np

from mcompress.calibration.datasets import length_batches
from mcompress.calibration.tagged import (IGNORE_INDEX, PREDICTED, entity_types, load_tagged_sentences,
                                          tokenize_words, word_targets)
from mcompress.core.sections import Table
from mcompress.core.task import Task
from mcompress.metrics.entity_metrics import entity_report, f1_from_counts, sentence_counts
from mcompress.metrics.evaluation import EvalResult, Runner, check_finite_logits
from mcompress.metrics.gates import metric_drop


def predict_word_logits(runner: Runner, tokenizer, words: list[list[str]], max_length: int, batch_size: int = 32,
                        on_batch=None) -> list[np.ndarray]:
    """Per sentence, the logits of each word's first sub-token, shape (words kept, labels); words
    beyond ``max_length`` sub-tokens are missing. Batched like metrics.evaluation.predict_logits
    (same texts, same batches), so a tagger's dynamic-INT8 predictions do not depend on who runs it."""
    out: list = [None] * len(words)
    texts = [" ".join(w) for w in words]
    for idx in length_batches(texts, batch_size):
        inputs, first = tokenize_words(tokenizer, [words[i] for i in idx], max_length)
        logits = runner.logits({k: v for k, v in inputs.items() if k in runner.input_names})
        for row, i in enumerate(idx):
            out[i] = np.asarray(logits[row, first[row]], dtype=np.float32)
        if on_batch:
            on_batch(len(idx))
    return out


def _word_rows(runner: Runner, tokenizer, data, max_length: int, batch_size: int, on_batch=None,
               what: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits as rows, one per word kept within max_length (sentences concatenated), checked
    finite; and the number of words kept per sentence."""
    per_sentence = predict_word_logits(runner, tokenizer, data.words, max_length, batch_size, on_batch)
    kept = np.array([len(x) for x in per_sentence], dtype=np.int64)
    logits = np.concatenate(per_sentence)
    check_finite_logits(logits, runner, data.source, what, example_of_row=np.repeat(np.arange(len(kept)), kept))
    return logits, kept


def _kept_tags(labels: list[list[int]], kept: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(tags[:count], dtype=np.int64) for tags, count in zip(labels, kept)])


class TokenClassification(Task):
    name = "token-classification"
    head_suffix = "ForTokenClassification"
    auto_model = "AutoModelForTokenClassification"
    optimum_model = "ORTModelForTokenClassification"
    logits_axes = ("batch", "sequence")
    text_column, label_column = "tokens", "tags"
    metric = "entity_f1"
    metrics = ("entity_f1",)
    # the gated metric first, then the accuracy of words' tags
    summary_columns = (("entity F1", "score"), ("word accuracy", "accuracy"))

    def check_labels(self, id2label, where):
        entity_types(id2label, where)  # IOB2

    def load_data(self, path, label2id, text_column=None, label_column=None, split="test", require_labels=True):
        return load_tagged_sentences(path, label2id, text_column or self.text_column, label_column or self.label_column,
                                     split, require_labels)

    # -- scoring ---------------------------------------------------------------------------------

    def scored_logits(self, runner, tokenizer, data, max_length, batch_size=32, what=None):
        """One row per word kept within max_length (first sub-token), sentences concatenated."""
        logits, kept = _word_rows(runner, tokenizer, data, max_length, batch_size, what=what)
        return logits, None if data.labels is None else _kept_tags(data.labels, kept)

    def evaluate(self, runner, tokenizer, data, max_length, batch_size=32, on_batch=None, what=None):
        """Entity-level F1 over sentences; each word is tagged from its first sub-token's argmax,
        words cut off by max_length are tagged O."""
        if data.labels is None:
            raise ValueError(f"{data.source} has no labels to evaluate against")
        names = list(data.tag_names)
        outside = names.index("O")
        logits, kept = _word_rows(runner, tokenizer, data, max_length, batch_size, on_batch, what)
        predicted_ids, ends = [], np.cumsum(kept)
        for words, count, end in zip(data.words, kept, ends):
            predicted_ids.append(logits[end - count:end].argmax(-1).tolist() + [outside] * (len(words) - count))
        types = entity_types(dict(enumerate(names)))
        counts = sentence_counts([[names[t] for t in tags] for tags in data.labels],
                                 [[names[t] for t in tags] for tags in predicted_ids], types)
        predictions = np.concatenate([np.asarray(p, dtype=np.int64) for p in predicted_ids])
        labels = np.concatenate([np.asarray(t, dtype=np.int64) for t in data.labels])
        report = entity_report(counts, types)
        report["truncated_words"] = int(len(labels) - kept.sum())
        report["logit_labels"] = _kept_tags(data.labels, kept)
        return EvalResult(float((predictions == labels).mean()), predictions, labels, logits, self,
                          stats=counts.sum(axis=1), details=report)

    def metric_of_counts(self, counts):
        return f1_from_counts(counts)

    def metric_drop(self, reference, candidate, drop_type):
        # a ratio of counts; rounded so that float noise cannot tip an exactly-met budget
        return round(metric_drop(reference.score, candidate.score, drop_type), 9)

    def gate_detail(self, reference, candidate):
        return (f"entity F1 {reference.score:.4f} -> {candidate.score:.4f}, word accuracy {reference.accuracy:.4f} -> "
                f"{candidate.accuracy:.4f} on {reference.n} sentences ({len(reference.labels)} words); "
                f"predicted tags agree on {reference.agreement(candidate):.2%} of words")

    def summary(self, result):
        micro = result.details["micro"]
        return {"score": round(result.score, 6), "entity_f1": round(micro["f1"], 6),
                "precision": round(micro["precision"], 6), "recall": round(micro["recall"], 6),
                "accuracy": round(result.accuracy, 6)}

    def report_fields(self, result):
        """Per entity type scores and the words beyond max_length (report.json)."""
        per_type = {t: {k: round(v, 6) if isinstance(v, float) else v for k, v in s.items()}
                    for t, s in result.details["per_type"].items()}
        return {"per_entity": per_type, "truncated_words": result.details["truncated_words"]}

    def report_tables(self, report):
        """Per entity type precision/recall/F1, original against build."""
        reference, build = report["reference"], report["build"]
        if not reference.get("per_entity") or not build.get("per_entity"):
            return []
        cells = lambda side: (f"{side['precision']:.4f}", f"{side['recall']:.4f}")
        rows = []
        for kind, r in reference["per_entity"].items():
            b = build["per_entity"][kind]
            rows.append((kind, str(r["support"]), *cells(r), f"{r['f1']:.4f}", *cells(b), f"{b['f1']:.4f}",
                         f"{(b['f1'] - r['f1']) * 100:+.2f}"))
        rows.append(("all (micro)", str(sum(r["support"] for r in reference["per_entity"].values())), *cells(reference),
                     f"{reference['entity_f1']:.4f}", *cells(build), f"{build['entity_f1']:.4f}",
                     f"{(build['entity_f1'] - reference['entity_f1']) * 100:+.2f}"))
        notes = ((f"{reference['truncated_words']} words lay beyond max_length and were tagged O.",)
                 if reference.get("truncated_words") else ())
        return [Table("Entities (eval data, seqeval semantics)",
                      ("type", "gold entities", "original P", "R", "F1", "build P", "R", "F1", "F1 change (points)"),
                      tuple(rows), notes)]

    # -- training hooks: each word's first sub-token is scored, the rest is IGNORE_INDEX ---------

    def training_batch(self, tokenizer, data, indices, max_length):
        """Targets per sub-token (calibration.tagged.word_targets), always given: untagged words
        are PREDICTED, to be scored against the reference's argmax."""
        inputs, first = tokenize_words(tokenizer, [data.words[i] for i in indices], max_length)
        tags = None if data.labels is None else [data.labels[i] for i in indices]
        return inputs, word_targets(first, tags, inputs["input_ids"].shape[1])

    def resolve_targets(self, targets, reference_logits):
        import torch

        return torch.where(targets == PREDICTED, reference_logits.argmax(-1), targets)

    def scored_rows(self, logits, targets):
        keep = targets != IGNORE_INDEX
        return logits[keep], targets[keep]
