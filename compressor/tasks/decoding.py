"""What the bundle runtime (compressor/bundle/runtime.py) needs from a task: turning a model's
logits into predictions, with numpy only (no torch, transformers or metrics). Each task names its
decoder in its registry line (core/task.py, ``TaskEntry.runtime_decoder``)."""

from __future__ import annotations


def softmax(logits):
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def class_scores(logits, labels: list[str]) -> list[dict]:
    """Text classification, one row of logits per text: {"label": name, "score": its softmax
    probability, "scores": {label: probability}} for each."""
    results = []
    for row in softmax(logits) if len(logits) else []:
        best = int(row.argmax())
        results.append({"label": labels[best], "score": float(row[best]),
                        "scores": {label: float(p) for label, p in zip(labels, row)}})
    return results
