"""Running a model on labelled text: predictions, the task's metric, and latency.

A runner is anything with ``input_names`` and ``logits(inputs) -> np.ndarray``; the reference
is the FP32 PyTorch original (here), candidates come from the target (e.g. ONNX Runtime).

The data decides the task (``data.task``): text classification is scored by accuracy, token
classification (calibration/tagged.py) by entity-level F1 (compressor/metrics/entity_metrics.py), with
each word predicted from its first sub-token. Either metric is a function of per-example counts
(``EvalResult.stats``: [correct, 1] per text; [TP, predicted, gold entities] per sentence), which
is what the gates' paired bootstrap resamples.

Latency is wall time per call on inputs padded to exactly the stated sequence length, with
warm-up calls discarded; p50/p95 are over the timed calls.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mcompress.calibration.datasets import LabelledTexts, length_batches, tokenize


class Runner(Protocol):
    name: str
    input_names: list[str]

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class TorchRunner:
    """The FP32 PyTorch original, eager mode."""

    def __init__(self, model, threads: int | None = None, name: str = "pytorch-fp32"):
        import inspect

        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.name = name
        params = inspect.signature(model.forward).parameters
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device  # the CPU, or a GPU while distilling there
        with torch.inference_mode():
            feed = {k: torch.from_numpy(v).to(device) for k, v in inputs.items() if k in self.input_names}
            return self.model(**feed).logits.float().cpu().numpy()


def _accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return np.divide(counts[..., 0], counts[..., 1], out=np.zeros(counts.shape[:-1]), where=counts[..., 1] > 0)


def metric_from_counts(metric: str, counts: np.ndarray) -> np.ndarray:
    """The metric of summed per-example counts (last axis): accuracy or entity_f1."""
    from mcompress.metrics.entity_metrics import f1_from_counts

    return {"accuracy": _accuracy_from_counts, "entity_f1": f1_from_counts}[metric](counts)


@dataclass
class EvalResult:
    """``accuracy``: of texts (classification) or of words' tags (tagging). ``predictions`` and
    ``labels`` hold one entry per text, or per word (all sentences concatenated) for a tagger.
    ``metric`` names the task's gated metric and ``stats`` its per-example counts (None: the
    per-text correctness)."""

    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    metric: str = "accuracy"
    stats: np.ndarray | None = None
    details: dict = field(default_factory=dict)  # per entity type scores, for taggers

    def __post_init__(self):
        if self.stats is None:
            self.stats = np.stack([self.correct(), np.ones(len(self.labels))], axis=1)

    @property
    def n(self) -> int:
        """Examples: texts, or sentences for a tagger (the bootstrap's unit)."""
        return len(self.stats)

    @property
    def score(self) -> float:
        """The gated metric's value, in [0, 1]."""
        return float(metric_from_counts(self.metric, self.stats.sum(axis=0)))

    def correct(self) -> np.ndarray:
        return (self.predictions == self.labels).astype(np.float64)

    def logit_labels(self) -> np.ndarray:
        """The labels of ``logits``' rows: ``labels``, or for a tagger those of the words kept
        within max_length (words beyond it have no logits)."""
        return self.details.get("logit_labels", self.labels)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.predictions, self.labels)

    def summary(self) -> dict:
        """What the report shows for a model: the metric's value as ``score``, and the task's
        own figures (accuracy and macro-F1; or entity F1, precision, recall and word accuracy)."""
        if self.metric == "entity_f1":
            micro = self.details["micro"]
            return {"score": round(self.score, 6), "entity_f1": round(micro["f1"], 6),
                    "precision": round(micro["precision"], 6), "recall": round(micro["recall"], 6),
                    "accuracy": round(self.accuracy, 6)}
        return {"score": self.accuracy, "accuracy": self.accuracy, "macro_f1": round(self.macro_f1, 6)}


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in the labels or the predictions
    (scikit-learn's ``f1_score(average="macro")``); a class never predicted scores 0."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(predictions, labels)
    if len(classes) == 0:
        return 0.0
    scores = []
    for c in classes:
        tp = float(np.sum((predictions == c) & (labels == c)))
        denominator = float(np.sum(predictions == c) + np.sum(labels == c))
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def predict_logits(runner: Runner, tokenizer, texts: list[str], max_length: int, batch_size: int = 32,
                   on_batch=None) -> np.ndarray:
    """Logits for every text, in input order, batched by calibration.datasets.length_batches."""
    out: np.ndarray | None = None
    for idx in length_batches(texts, batch_size):
        batch = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        logits = runner.logits({k: v for k, v in batch.items() if k in runner.input_names})
        if out is None:
            out = np.empty((len(texts), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
        if on_batch:
            on_batch(len(idx))
    return out


def evaluate(runner: Runner, tokenizer, data, max_length: int, batch_size: int = 32,
             on_batch=None, what: str | None = None) -> EvalResult:
    """``runner`` scored on ``data`` (LabelledTexts or TaggedSentences); ``what`` names the model
    in errors (e.g. "after quantize")."""
    if data.labels is None:
        raise ValueError(f"{data.source} has no labels to evaluate against")
    evaluator = {"text-classification": _evaluate_texts, "token-classification": _evaluate_tagging}[data.task]
    return evaluator(runner, tokenizer, data, max_length, batch_size, on_batch, what)


def _evaluate_texts(runner: Runner, tokenizer, data: LabelledTexts, max_length: int, batch_size: int,
                    on_batch, what: str | None) -> EvalResult:
    logits = predict_logits(runner, tokenizer, data.texts, max_length, batch_size, on_batch)
    check_finite_logits(logits, runner, data.source, what)
    predictions = logits.argmax(-1)
    labels = np.asarray(data.labels)
    return EvalResult(float((predictions == labels).mean()), predictions, labels, logits)


def predict_word_logits(runner: Runner, tokenizer, words: list[list[str]], max_length: int, batch_size: int = 32,
                        on_batch=None) -> list[np.ndarray]:
    """Per sentence, the logits of each word's first sub-token, shape (words kept, labels); words
    beyond ``max_length`` sub-tokens are missing. Batched like predict_logits (same texts, same
    batches), so a tagger's dynamic-INT8 predictions do not depend on who runs it."""
    from mcompress.calibration.tagged import tokenize_words

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
    """A tagger's logits as rows, one per word kept within max_length (sentences concatenated),
    checked finite; and the number of words kept per sentence."""
    per_sentence = predict_word_logits(runner, tokenizer, data.words, max_length, batch_size, on_batch)
    kept = np.array([len(x) for x in per_sentence], dtype=np.int64)
    logits = np.concatenate(per_sentence)
    check_finite_logits(logits, runner, data.source, what, example_of_row=np.repeat(np.arange(len(kept)), kept))
    return logits, kept


def _kept_tags(labels: list[list[int]], kept: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(tags[:count], dtype=np.int64) for tags, count in zip(labels, kept)])


def scored_logits(runner: Runner, tokenizer, data, max_length: int, batch_size: int = 32,
                  what: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, labels) of the units a task's predictions are made on, as 2-D rows: one per text;
    for a tagger one per word kept within max_length (first sub-token), sentences concatenated.
    For comparing models row by row (passes/quantize/sensitivity.py); checked finite."""
    if data.task != "token-classification":
        logits = predict_logits(runner, tokenizer, data.texts, max_length, batch_size)
        check_finite_logits(logits, runner, data.source, what)
        return logits, None if data.labels is None else np.asarray(data.labels)
    logits, kept = _word_rows(runner, tokenizer, data, max_length, batch_size, what=what)
    return logits, None if data.labels is None else _kept_tags(data.labels, kept)


def _evaluate_tagging(runner: Runner, tokenizer, data, max_length: int, batch_size: int,
                      on_batch, what: str | None) -> EvalResult:
    """Entity-level F1 (seqeval semantics, compressor/metrics/entity_metrics.py) over sentences; each word
    is tagged from its first sub-token's argmax, words cut off by max_length are tagged O."""
    from mcompress.calibration.tagged import entity_types
    from mcompress.metrics.entity_metrics import entity_report, sentence_counts

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
    return EvalResult(float((predictions == labels).mean()), predictions, labels, logits, metric="entity_f1",
                      stats=counts.sum(axis=1), details=report)


def check_finite_logits(logits: np.ndarray, runner: Runner, source: str, what: str | None = None,
                        example_of_row: np.ndarray | None = None) -> None:
    """A NaN/Inf logit would still give an argmax, and a silently wrong accuracy: fail instead,
    naming the runner and the first offending example (index in the data's order). For a tagger's
    per-word logits, ``example_of_row`` maps each row to its sentence."""
    bad_rows = ~np.isfinite(logits).all(axis=-1)
    if not bad_rows.any():
        return
    from mcompress.core.errors import NumericalFault

    first_row = int(np.argmax(bad_rows))
    kind = "NaN" if np.isnan(logits[first_row]).any() else "Inf"
    rows_to_examples = example_of_row if example_of_row is not None else np.arange(len(bad_rows))
    first = int(rows_to_examples[first_row])
    affected = len(np.unique(rows_to_examples[bad_rows]))
    total = len(np.unique(rows_to_examples)) if example_of_row is not None else len(bad_rows)
    model = f"{runner.name} ({what})" if what else runner.name
    raise NumericalFault(f"{model} produced non-finite logits ({kind}) for example {first} of {source} "
                         f"({affected} of {total} examples affected).",
                         "Check the model for overflow (e.g. FP16 or quantization ranges) and its weights for NaN/Inf.")


@dataclass
class LatencyResult:
    batch_size: int
    sequence_length: int
    p50_ms: float
    p95_ms: float
    iterations: int
    raw_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "sequence_length": self.sequence_length,
                "p50_ms": round(self.p50_ms, 3), "p95_ms": round(self.p95_ms, 3), "iterations": self.iterations}


def latency_inputs(tokenizer, texts: list[str], batch_size: int, sequence_length: int) -> dict[str, np.ndarray]:
    """Real texts, truncated or padded to exactly ``sequence_length`` tokens."""
    chosen = [texts[i % len(texts)] for i in range(batch_size)]
    return tokenize(tokenizer, chosen, sequence_length, pad_to=sequence_length)


def measure_latency(runner: Runner, inputs: dict[str, np.ndarray], warmup: int = 5, iterations: int = 40) -> LatencyResult:
    feed = {k: v for k, v in inputs.items() if k in runner.input_names}
    for _ in range(warmup):
        runner.logits(feed)
    times = np.empty(iterations)
    for i in range(iterations):
        started = time.perf_counter()
        runner.logits(feed)
        times[i] = (time.perf_counter() - started) * 1000.0
    batch, seq = feed["input_ids"].shape
    return LatencyResult(batch, seq, float(np.percentile(times, 50)), float(np.percentile(times, 95)), iterations, times.tolist())


RACE_ROUNDS = 5  # interleaved rounds of every latency comparison (the gate, quantize candidates, CPU targets)


def b1_b8_shapes(sequence_length: int, iterations: int) -> list[tuple[int, int, int]]:
    """(batch, sequence, calls) for a choice between builds: batch 1 with ``iterations`` calls,
    batch 8 with a quarter of them (each call is about 8x longer)."""
    return [(1, sequence_length, iterations), (8, sequence_length, max(RACE_ROUNDS, iterations // 4))]


def latency_race(runners: dict[str, Runner], tokenizer, texts: list[str], shapes: list[tuple[int, int, int]],
                 warmup: int = 3, on_shape=None) -> dict[tuple[int, int], dict[str, LatencyResult]]:
    """Every runner at every (batch, sequence, calls) shape on the same real texts, in
    ``RACE_ROUNDS`` interleaved rounds (fewer when there are fewer calls), so that machine noise
    hits all runners alike: {(batch, sequence): {runner name: LatencyResult}}."""
    results = {}
    for batch, sequence, calls in shapes:
        rounds = min(RACE_ROUNDS, calls)
        inputs = latency_inputs(tokenizer, texts, batch, sequence)
        results[(batch, sequence)] = interleaved_latency(runners, inputs, rounds, math.ceil(calls / rounds), warmup)
        if on_shape:
            on_shape(1)
    return results


def interleaved_latency(runners: dict[str, Runner], inputs: dict[str, np.ndarray], rounds: int = 5,
                        per_round: int = 8, warmup: int = 3) -> dict[str, LatencyResult]:
    """Latency of several runners on the same inputs, measured in interleaved rounds (each runner
    runs ``per_round`` calls per round) so that a burst of machine noise hits all of them alike.
    Each round starts with one untimed call: the previous runner's thread pool may still be
    spinning for a moment after its last call, and that cost belongs to neither of them."""
    for runner in runners.values():
        measure_latency(runner, inputs, warmup=warmup, iterations=1)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            times[name] += measure_latency(runner, inputs, warmup=1, iterations=per_round).raw_ms
    batch, seq = inputs["input_ids"].shape
    return {name: LatencyResult(batch, seq, float(np.percentile(t, 50)), float(np.percentile(t, 95)), len(t), t)
            for name, t in times.items()}
