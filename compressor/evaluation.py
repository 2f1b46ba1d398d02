"""Running a model on labelled text: predictions, accuracy, and latency.

A runner is anything with ``input_names`` and ``logits(inputs) -> np.ndarray``; the reference
is the FP32 PyTorch original (here), candidates come from the target (e.g. ONNX Runtime).
Latency is wall time per call on inputs padded to exactly the stated sequence length, with
warm-up calls discarded; p50/p95 are over the timed calls.
"""

from __future__ import annotations

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


@dataclass
class EvalResult:
    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    logits: np.ndarray

    @property
    def n(self) -> int:
        return len(self.labels)

    def correct(self) -> np.ndarray:
        return (self.predictions == self.labels).astype(np.float64)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.predictions, self.labels)


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


def evaluate(runner: Runner, tokenizer, data: LabelledTexts, max_length: int, batch_size: int = 32,
             on_batch=None, what: str | None = None) -> EvalResult:
    """Accuracy of ``runner`` on ``data``; ``what`` names the model in errors (e.g. "after quantize")."""
    if data.labels is None:
        raise ValueError(f"{data.source} has no labels to evaluate against")
    logits = predict_logits(runner, tokenizer, data.texts, max_length, batch_size, on_batch)
    check_finite_logits(logits, runner, data.source, what)
    predictions = logits.argmax(-1)
    labels = np.asarray(data.labels)
    return EvalResult(float((predictions == labels).mean()), predictions, labels, logits)


def check_finite_logits(logits: np.ndarray, runner: Runner, source: str, what: str | None = None) -> None:
    """A NaN/Inf logit would still give an argmax, and a silently wrong accuracy: fail instead,
    naming the runner and the first offending example (index in the data's order)."""
    bad = ~np.isfinite(logits).all(axis=-1)
    if not bad.any():
        return
    from mcompress.errors import NumericalFault

    first = int(np.argmax(bad))
    kind = "NaN" if np.isnan(logits[first]).any() else "Inf"
    model = f"{runner.name} ({what})" if what else runner.name
    raise NumericalFault(f"{model} produced non-finite logits ({kind}) for example {first} of {source} "
                         f"({int(bad.sum())} of {len(bad)} examples affected).",
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
