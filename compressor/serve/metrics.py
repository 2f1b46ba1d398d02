"""The server's Prometheus metrics (prometheus-client), in a registry of the app's own (a second
app in one process does not share counters). Names and meanings: docs/serving.md."""

from __future__ import annotations

from mcompress.bundle.monitoring import CONFIDENCE_EDGES, SIGNALS, token_length_edges

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    def __init__(self, max_batch_size: int, max_length: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch_size})
        self.requests = Counter("mcompress_requests", "HTTP requests by route and status code", ("route", "status"),
                                registry=registry)
        self.latency = Histogram("mcompress_request_latency_seconds", "Request latency, arrival to response",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_latency = Histogram("mcompress_queue_latency_seconds", "Time a predict request waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.inference_latency = Histogram("mcompress_inference_latency_seconds", "Model time per micro-batch",
                                           buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_texts = Histogram("mcompress_batch_texts", "Texts per micro-batch", buckets=batch_buckets,
                                     registry=registry)
        self.batch_requests = Histogram("mcompress_batch_requests", "Requests per micro-batch", buckets=batch_buckets,
                                        registry=registry)
        self.texts = Counter("mcompress_texts", "Texts predicted", registry=registry)
        self.in_flight = Gauge("mcompress_in_flight_requests", "HTTP requests being handled", registry=registry)
        self.queue_depth = Gauge("mcompress_queue_depth", "Predict requests waiting for the model", registry=registry)
        self.predictions = Counter("mcompress_predictions", "Predicted labels (a tagger: entity types)", ("label",),
                                   registry=registry)
        self.confidence = Histogram("mcompress_prediction_confidence", "Confidence of each prediction",
                                    buckets=CONFIDENCE_EDGES[1:], registry=registry)
        self.input_tokens = Histogram("mcompress_input_tokens", "Tokens per text after truncation",
                                      buckets=token_length_edges(max_length)[1:], registry=registry)
        self.truncated = Counter("mcompress_truncated_texts", "Texts cut at max_sequence_length", registry=registry)
        self.drift = Gauge("mcompress_drift_psi", "PSI of a signal against the bundle's reference", ("signal",),
                           registry=registry)
        self.drift_alarm = Gauge("mcompress_drift_alarm", "1 when any signal's PSI exceeds the threshold",
                                 registry=registry)
        self.ready = Gauge("mcompress_ready", "1 once the model is loaded and warmed up", registry=registry)

    def observe_batch(self, requests: int, texts: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_texts.observe(texts)
        self.inference_latency.observe(seconds)
        self.texts.inc(texts)

    def observe_predictions(self, observations: list[list[tuple[str, float]]], token_lengths: list[int],
                            truncated: list[bool]) -> None:
        for per_text in observations:
            for label, confidence in per_text:
                self.predictions.labels(label).inc()
                self.confidence.observe(confidence)
        for length in token_lengths:
            self.input_tokens.observe(length)
        self.truncated.inc(sum(truncated))

    def set_drift(self, report: dict) -> None:
        for name in SIGNALS:
            value = (report["signals"].get(name) or {}).get("psi")
            if value is not None:
                self.drift.labels(name).set(value)
        self.drift_alarm.set(1 if report["verdict"] == "drift" else 0)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
