"""The runners latency is measured with: in their own processes (``latency.isolation: process``,
metrics/isolated.py) or the run's in-process runners (``shared``)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Mapping, Union

from mcompress.metrics.evaluation import TorchRunner
from mcompress.metrics.isolated import IsolatedRunner


def reference_runner(checkpoint, threads: int) -> TorchRunner:
    """The FP32 PyTorch original, loaded from its checkpoint (in a timing process)."""
    from mcompress.core.checkpoint import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(checkpoint)
    return TorchRunner(model, threads)


@contextmanager
def timing_runners(recipe, in_process: Union[Mapping, Callable[[], Mapping]],
                   factories: dict[str, tuple]) -> Iterator[dict]:
    """{name: runner} to time: ``in_process`` as they are with ``isolation: shared``, else one
    IsolatedRunner per name built from ``factories[name]`` = (callable, *args); closed on exit.
    ``in_process`` may be a callable that makes them, called only with ``shared`` (a caller that has
    no runners yet need not load every build here only to time it elsewhere)."""
    if recipe.latency.isolation == "shared":
        yield in_process() if callable(in_process) else in_process
        return
    named = {} if callable(in_process) else in_process  # an isolated runner takes its loaded runner's name
    with ExitStack() as stack:
        yield {name: stack.enter_context(IsolatedRunner(factory, *args, name=getattr(named.get(name), "name", "")))
               for name, (factory, *args) in factories.items()}
