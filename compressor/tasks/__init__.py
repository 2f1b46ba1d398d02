"""The tasks mcompress compresses, one module each (the interface: compressor/core/task.py), and
the entry points that pick a task from the data they are given."""

from __future__ import annotations

from mcompress.core.task import get_task


def evaluate(runner, tokenizer, data, max_length: int, batch_size: int = 32, on_batch=None, what: str | None = None):
    """``runner`` scored on ``data`` by the data's task (Task.evaluate)."""
    return get_task(data.task).evaluate(runner, tokenizer, data, max_length, batch_size, on_batch, what)
