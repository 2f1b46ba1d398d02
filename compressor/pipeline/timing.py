"""The runners latency is measured with: in their own processes (``latency.isolation: process``,
metrics/isolated.py) or the run's in-process runners (``shared``)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from mcompress.metrics.evaluation import TorchRunner
from mcompress.metrics.isolated import IsolatedRunner


def reference_runner(checkpoint, threads: int) -> TorchRunner:
    """The FP32 PyTorch original, loaded from its checkpoint (in a timing process)."""
    from mcompress.core.checkpoint import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(checkpoint)
    return TorchRunner(model, threads)


@contextmanager
def timing_runners(recipe, in_process: dict, factories: dict[str, tuple]) -> Iterator[dict]:
    """{name: runner} to time: ``in_process`` as they are with ``isolation: shared``, else one
    IsolatedRunner per name built from ``factories[name]`` = (callable, *args); closed on exit."""
    if recipe.latency.isolation == "shared":
        yield in_process
        return
    with ExitStack() as stack:
        yield {name: stack.enter_context(IsolatedRunner(factory, *args, name=in_process[name].name))
               for name, (factory, *args) in factories.items()}
