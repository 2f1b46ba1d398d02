"""Running a model on labelled text: predictions, the task's metric, and latency.

A runner is anything with ``input_names`` and ``logits(inputs) -> np.ndarray``; the reference
is the FP32 PyTorch original (here), candidates come from the target (e.g. ONNX Runtime).

The task scores a runner (core.task.Task.evaluate; compressor/tasks/): text classification by
accuracy, token classification by entity-level F1 (compressor/metrics/entity_metrics.py). Either
metric is a function of per-example counts (``EvalResult.stats``: [correct, 1] per text; [TP,
predicted, gold entities] per sentence), which is what the gates' paired bootstrap resamples.

Latency is wall time per call on inputs padded to exactly the stated sequence length, with
warm-up calls discarded; p50/p95 are over the timed calls.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mcompress.calibration.datasets import length_batches, tokenize
from mcompress.core.recipe import SETTLE_S  # measured there: the quiet before each runner's turn

if TYPE_CHECKING:
    from mcompress.core.task import Task


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


def ratio_from_counts(counts: np.ndarray) -> np.ndarray:
    """hits / total of summed [hits, total] counts (last axis); 0 where total is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.divide(counts[..., 0], counts[..., 1], out=np.zeros(counts.shape[:-1]), where=counts[..., 1] > 0)


@dataclass
class EvalResult:
    """A model scored on labelled data by its ``task`` (core.task.Task), which computes the gated
    metric from ``stats``, its per-example counts (None: [correct, 1] per prediction), and writes
    the summary. ``accuracy``: the fraction of predictions that match their labels. ``predictions``
    and ``labels`` hold one entry per prediction (a text; a tagger's word, sentences concatenated);
    ``details``: what else the task keeps (a tagger's per entity type scores)."""

    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    task: "Task"
    stats: np.ndarray | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stats is None:
            self.stats = np.stack([self.correct(), np.ones(len(self.labels))], axis=1)

    @property
    def metric(self) -> str:
        """The name of the gated metric."""
        return self.task.metric

    @property
    def n(self) -> int:
        """Examples: the bootstrap's unit (texts; sentences for a tagger)."""
        return len(self.stats)

    @property
    def score(self) -> float:
        """The gated metric's value, in [0, 1]."""
        return float(self.task.metric_of_counts(self.stats.sum(axis=0)))

    def correct(self) -> np.ndarray:
        return (self.predictions == self.labels).astype(np.float64)

    def agreement(self, other: "EvalResult") -> float:
        """The fraction of predictions equal to ``other``'s (same data)."""
        return float((self.predictions == other.predictions).mean())

    def logit_labels(self) -> np.ndarray:
        """The labels of ``logits``' rows: ``labels``, or for a tagger those of the words kept
        within max_length (words beyond it have no logits)."""
        return self.details.get("logit_labels", self.labels)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.predictions, self.labels)

    def summary(self) -> dict:
        """What the report shows for a model (Task.summary): the metric's value as ``score``, and
        the task's own figures."""
        return self.task.summary(self)


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
    """p50/p95 of ``iterations`` calls after ``warmup``; a runner in its own process
    (metrics/isolated.py) times the calls there."""
    feed = {k: v for k, v in inputs.items() if k in runner.input_names}
    if hasattr(runner, "call_times"):
        times = np.asarray(runner.call_times(feed, warmup, iterations))
    else:
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
                 warmup: int = 3, on_shape=None, settle_s: float = SETTLE_S) -> dict[tuple[int, int], dict[str, LatencyResult]]:
    """Every runner at every (batch, sequence, calls) shape on the same real texts, in
    ``RACE_ROUNDS`` interleaved rounds (fewer when there are fewer calls), so that machine noise
    hits all runners alike: {(batch, sequence): {runner name: LatencyResult}}. ``tokenizer``: one
    for all runners, or {runner name: tokenizer} when their vocabularies differ (a build with a
    pruned vocabulary); the texts and shapes are the same for all. ``settle_s``: interleaved_latency's."""
    results = {}
    tokenizers = tokenizer if isinstance(tokenizer, dict) else {name: tokenizer for name in runners}
    for batch, sequence, calls in shapes:
        rounds = min(RACE_ROUNDS, calls)
        inputs = {name: latency_inputs(tokenizers[name], texts, batch, sequence) for name in runners}
        results[(batch, sequence)] = interleaved_latency(runners, inputs, rounds, math.ceil(calls / rounds), warmup,
                                                         settle_s)
        if on_shape:
            on_shape(1)
    return results


def interleaved_latency(runners: dict[str, Runner], feeds: dict[str, dict[str, np.ndarray]], rounds: int = 5,
                        per_round: int = 8, warmup: int = 3, settle_s: float = SETTLE_S) -> dict[str, LatencyResult]:
    """Latency of several runners, each on its inputs ({runner name: inputs}, the same texts at one
    shape), measured in interleaved rounds (each runner runs ``per_round`` calls per round) so that
    a burst of machine noise hits all of them alike. Each runner's turn starts after ``settle_s``
    seconds of quiet (the previous runner's thread pool spins for a while after its last call, in
    its own process or this one, and takes a core from whoever runs next) and one untimed call."""
    for name, runner in runners.items():
        time.sleep(settle_s)
        measure_latency(runner, feeds[name], warmup=warmup, iterations=1)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            time.sleep(settle_s)
            times[name] += measure_latency(runner, feeds[name], warmup=1, iterations=per_round).raw_ms
    batch, seq = next(iter(feeds.values()))["input_ids"].shape
    return {name: LatencyResult(batch, seq, float(np.percentile(t, 50)), float(np.percentile(t, 95)), len(t), t)
            for name, t in times.items()}
