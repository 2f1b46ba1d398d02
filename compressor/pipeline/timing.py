"""The runners latency is measured with: in their own processes (``latency.isolation: process``,
metrics/isolated.py) or the run's in-process runners (``shared``). A run that gates several builds
(cpu-auto) opens the original's timing process once (``shared_reference_timing``) and every gate
times its build against that one process, instead of loading PyTorch and the checkpoint again per
build; each model is still timed in its own process, in alternating rounds."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Callable, Iterator, Mapping, Optional, Union

from mcompress.metrics.evaluation import TorchRunner
from mcompress.metrics.isolated import IsolatedRunner


def reference_runner(checkpoint, threads: int) -> TorchRunner:
    """The FP32 PyTorch original, loaded from its checkpoint (in a timing process)."""
    from mcompress.core.checkpoint import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(checkpoint)
    return TorchRunner(model, threads)


@contextmanager
def shared_reference_timing(prepared, reference) -> Iterator[object]:
    """``reference`` with its timing process open (``Reference.timing``) for as long as the block
    runs, so the gates of several builds share it; ``reference`` as it is with ``isolation: shared``."""
    if prepared.recipe.latency.isolation == "shared":
        yield reference
        return
    with IsolatedRunner(reference_runner, prepared.checkpoint, reference.threads, name=reference.runner.name) as timing:
        yield replace(reference, timing=timing)


@contextmanager
def timing_runners(recipe, in_process: Union[Mapping, Callable[[], Mapping]],
                   factories: dict[str, tuple], opened: Optional[Mapping] = None) -> Iterator[dict]:
    """{name: runner} to time: ``in_process`` as they are with ``isolation: shared``, else one
    IsolatedRunner per name built from ``factories[name]`` = (callable, *args); closed on exit.
    ``in_process`` may be a callable that makes them, called only with ``shared`` (a caller that has
    no runners yet need not load every build here only to time it elsewhere). ``opened``: isolated
    runners the caller keeps open (shared_reference_timing), used for their names instead of new ones."""
    if recipe.latency.isolation == "shared":
        yield in_process() if callable(in_process) else in_process
        return
    named = {} if callable(in_process) else in_process  # an isolated runner takes its loaded runner's name
    opened = opened or {}
    with ExitStack() as stack:
        yield {name: opened[name] if name in opened else
               stack.enter_context(IsolatedRunner(factory, *args, name=getattr(named.get(name), "name", "")))
               for name, (factory, *args) in factories.items()}
