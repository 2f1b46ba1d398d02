"""The final race: every completed trial's build timed against the others on the machine that runs tune.

Trials run on different workers (other cores, other nodes, other neighbours, a trial before or after
a busy one), so their latencies do not compare: on 2 cores the same 4-layer shape measured 8.9 ms
in one trial and 12.5 ms in another. Every build with figures is timed again here, from one
process, in interleaved rounds (metrics.evaluation.latency_race, the race cpu-auto and the
quantize pass use), each build in its own timing process unless the base recipe says
``latency.isolation: shared`` (pipeline/timing.py); the front is then drawn on these latencies
(tune/results.py). Shapes: batch 1 and batch 8 at the base recipe's max_length; batch 1 decides.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from mcompress.core.recipe import Recipe
from mcompress.metrics.evaluation import RACE_ROUNDS, b1_b8_shapes, latency_race
from mcompress.metrics.machine import other_processes_cpu
from mcompress.pipeline.timing import timing_runners
from mcompress.report.schema import Report
from mcompress.targets import get_target
from mcompress.tune.results import TrialRecord


def _build_runner(build_dir: Path):
    """(runner factory: threads -> runner, tokenizer) of a build directory written by `run`."""
    from transformers import AutoTokenizer

    report = Report.load(build_dir / "report.json")
    target = get_target(report.target)
    settings = target.settings(Recipe.model_validate(report.recipe))
    factory = partial(target.runner, build_dir / report.artifact.model_file, settings=settings)
    return factory, AutoTokenizer.from_pretrained(build_dir, local_files_only=True)


def race_builds(records: list[TrialRecord], base: Recipe, texts: list[str], progress) -> dict:
    """{"race": {trial id: {"b1": ..., "b8": ...}}, "rounds", "threads", "other_processes_cpu_percent"};
    each raced record's ``raced`` is set too."""
    threads = base.latency.threads or os.cpu_count()
    built = {r.trial_id: _build_runner(Path(r.build_dir)) for r in records}
    in_process = lambda: {name: factory(threads) for name, (factory, _) in built.items()}  # noqa: E731
    factories = {name: (factory, threads) for name, (factory, _) in built.items()}
    shapes = b1_b8_shapes(base.max_length, base.latency.iterations)
    load_before = other_processes_cpu(0.5)
    with timing_runners(base, in_process, factories) as runners:
        raced = latency_race(runners, {name: tokenizer for name, (_, tokenizer) in built.items()}, texts, shapes,
                             on_shape=progress("racing the builds here", len(shapes)), settle_s=base.latency.settle_s)
    load_after = other_processes_cpu(0.5)
    race = {name: {f"b{b}": raced[(b, s)][name].as_dict() for b, s, _ in shapes} for name in built}
    for record in records:
        record.raced = race[record.trial_id]
    return {"race": race, "rounds": min(RACE_ROUNDS, shapes[0][2]), "threads": threads,
            "isolation": base.latency.isolation, "other_processes_cpu_percent": max(load_before, load_after)}
