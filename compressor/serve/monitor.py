"""Drift of the served traffic against the bundle's monitoring reference (the math and the
threshold: compressor/bundle/monitoring.py). The monitor keeps the last ``window`` texts' signals
(their predictions' labels and confidences, their token counts) and computes the PSI of each
signal on demand."""

from __future__ import annotations

import threading
from collections import deque

from mcompress.bundle.monitoring import SIGNALS, bin_index, label_vectors, psi


class DriftMonitor:
    def __init__(self, reference: dict | None, window: int):
        self.reference = reference if reference and "signals" in reference else None
        self.unavailable = (reference or {}).get("unavailable", "the bundle's manifest has no monitoring reference")
        self._texts: deque = deque(maxlen=window)  # (observations, token length) per text
        self._lock = threading.Lock()

    def observe(self, observations: list[list[tuple[str, float]]], token_lengths: list[int]) -> None:
        with self._lock:
            self._texts.extend(zip(observations, token_lengths))

    def _observed(self) -> tuple[dict[str, int], list[int], list[int], int]:
        signals = self.reference["signals"]
        confidence_edges, length_edges = signals["confidence"]["edges"], signals["token_length"]["edges"]
        labels: dict[str, int] = {}
        confidences = [0] * (len(confidence_edges) - 1)
        lengths = [0] * (len(length_edges) - 1)
        with self._lock:
            texts = list(self._texts)
        predictions = 0
        for observations, length in texts:
            lengths[bin_index(length_edges, length)] += 1
            for label, confidence in observations:
                labels[label] = labels.get(label, 0) + 1
                confidences[bin_index(confidence_edges, confidence)] += 1
                predictions += 1
        return labels, confidences, lengths, predictions

    def report(self) -> dict:
        """GET /v1/monitor: per signal PSI, the threshold and a verdict (ok, drift or insufficient data)."""
        if self.reference is None:
            return {"verdict": "no_reference", "reason": self.unavailable, "signals": {}}
        signals = self.reference["signals"]
        labels, confidences, lengths, predictions = self._observed()
        expected_labels, observed_labels = label_vectors(signals["label"]["counts"], labels)
        values = {"label": psi(expected_labels, observed_labels),
                  "confidence": psi(signals["confidence"]["counts"], confidences),
                  "token_length": psi(signals["token_length"]["counts"], lengths)}
        threshold = self.reference["threshold"]
        minimum = self.reference["min_observations"]
        texts = sum(lengths)
        if predictions < minimum:
            verdict = "insufficient_data"
        else:
            verdict = "drift" if any(v is not None and v > threshold for v in values.values()) else "ok"
        return {"verdict": verdict, "threshold": threshold, "method": self.reference["method"],
                "window_texts": texts, "window_predictions": predictions, "min_observations": minimum,
                "reference": {"texts": self.reference["texts"], "predictions": self.reference["predictions"],
                              "source": self.reference.get("source")},
                "signals": {name: {"psi": None if values[name] is None else round(values[name], 6),
                                   "drifted": values[name] is not None and values[name] > threshold}
                            for name in SIGNALS},
                "observed_labels": dict(sorted(labels.items()))}
