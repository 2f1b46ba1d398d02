"""``--target cpu-auto``: build every CPU target (onnx-cpu, openvino-cpu), gate each on the eval
data, race the builds, and keep the faster one that passes its gates.

An orchestrator above the job: one validation for every target, one reference (the FP32
original is evaluated once), then ``job.build_target`` per target into ``candidates/NAME`` of the
final build's staging dir. A target stopped by a gate after a pass has no build and counts as
failed.

Criterion: p50 latency at batch 1 and the recipe's ``max_length``, the builds measured in ONE
process in interleaved rounds (metrics.evaluation.latency_race), so machine noise hits both alike.
Batch 8 is measured and reported too, but does not decide. The choice follows
metrics.selection.fastest_within_budget: builds whose batch-1 p50 are within
``quantize.latency_tie_tolerance`` of each other are tied and the first target in
``CPU_AUTO_TARGETS`` wins (onnx-cpu: the build with fewer runtime dependencies), so near-equal
timings do not flip the choice between runs. When no build passes its gates, the one with the best
gated metric (the smallest drop) is kept and the run fails (exit 3), as a single-target run would.

The kept build's files move to the top of the staging dir, the others' reports stay in
``candidates/NAME.report.json``, and the kept report gains a ``cpu_auto`` section: the criterion,
every candidate's gates, gated metric and raced latency, and the reason for the choice.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mcompress.core.errors import GateFailure
from mcompress.metrics.evaluation import RACE_ROUNDS, b1_b8_shapes, latency_race
from mcompress.metrics.machine import other_processes_cpu
from mcompress.metrics.selection import fastest_within_budget
from mcompress.pipeline.job import TargetBuild, build_target, raise_for_outcome
from mcompress.pipeline.outputs import staged_dir
from mcompress.pipeline.prepare import Prepared, ProgressFactory, RunRequest, prepare
from mcompress.pipeline.reference import Reference, measure_reference
from mcompress.pipeline.timing import timing_runners
from mcompress.report.schema import CpuAutoChoice, Report
from mcompress.report.write import write_report
from mcompress.targets import CPU_AUTO, CPU_AUTO_TARGETS

CANDIDATES_DIR = "candidates"


@dataclass
class Candidate:
    name: str
    build: TargetBuild | None  # None: a gate after a pass stopped it
    stopped: str | None = None  # that gate's message

    @property
    def passed(self) -> bool:
        return self.build is not None and self.build.passed


def run_cpu_auto(req: RunRequest, progress: ProgressFactory) -> Report:
    started = time.perf_counter()
    prepared = prepare(req, CPU_AUTO_TARGETS)
    out = prepared.out
    reference = measure_reference(prepared, progress)
    with staged_dir(out) as staging:
        work = staging / CANDIDATES_DIR
        candidates = [_build(prepared, reference, name, work / name, progress, started) for name in CPU_AUTO_TARGETS]
        built = [c for c in candidates if c.build is not None]
        if not built:
            raise GateFailure(f"no CPU target produced a build: {'; '.join(c.stopped for c in candidates)}")
        choice = _choose(candidates, _race(built, prepared, reference, progress), prepared.recipe)
        kept = next(c for c in candidates if c.name == choice["chosen"]).build
        _keep(kept, built, staging, work)
        kept.report.cpu_auto = CpuAutoChoice.model_validate(choice)
        write_report(kept.report, staging)
    kept.report.out = str(Path(out).resolve())
    raise_for_outcome(kept, Path(out), prefix=f"no CPU target passed its gates; kept {kept.target.name} "
                                              "(smallest drop of the gated metric): ")
    return kept.report


@contextmanager
def _candidate_dir(path: Path):
    path.mkdir(parents=True)
    yield path


def _build(prepared: Prepared, reference: Reference, name: str, out_dir: Path, progress, started: float) -> Candidate:
    try:
        return Candidate(name, build_target(prepared, reference, prepared.targets[name], lambda: _candidate_dir(out_dir),
                                            progress, started))
    except GateFailure as stop:  # a gate after a pass: this target has no build; the others still race
        shutil.rmtree(out_dir, ignore_errors=True)
        return Candidate(name, None, str(stop))


def _keep(kept: TargetBuild, built: list[Candidate], staging: Path, work: Path) -> None:
    """The kept build's files to the top of the staging dir; the others' reports beside them."""
    for path in kept.out_dir.iterdir():
        shutil.move(str(path), staging / path.name)
    for c in built:
        if c.build is not kept:
            shutil.copyfile(c.build.out_dir / "report.json", work / f"{c.name}.report.json")
        shutil.rmtree(c.build.out_dir)


def _race(built: list[Candidate], prepared: Prepared, reference: Reference, progress) -> dict:
    """Interleaved latency of the built artifacts at batch 1 and 8: {name: {"b1": ..., "b8": ...}}."""
    recipe = prepared.recipe
    in_process = {c.name: c.build.gated.runner for c in built}
    factories = {c.name: (c.build.gated.build.runner, reference.threads) for c in built}
    shapes = b1_b8_shapes(recipe.max_length, recipe.latency.iterations)
    load_before = other_processes_cpu(0.5)
    with timing_runners(recipe, in_process, factories) as runners:  # each build in its own process
        raced = latency_race(runners, {c.name: c.build.gated.tokenizer for c in built}, prepared.eval_data.texts, shapes,
                             on_shape=progress("racing CPU targets", len(shapes)))
    load_after = other_processes_cpu(0.5)
    race = {c.name: {f"b{b}": raced[(b, s)][c.name].as_dict() for b, s, _ in shapes} for c in built}
    return {"race": race, "rounds": min(RACE_ROUNDS, shapes[0][2]), "threads": reference.threads,
            "other_processes_cpu_percent": max(load_before, load_after)}


def _summary(c: Candidate, race: dict) -> dict:
    if c.build is None:
        return {"passed": False, "stopped": c.stopped, "failed_gates": ["gates.after"], "race": None}
    report = c.build.report
    gate = next(g for g in report.gates if g.name == f"{report.metric}_drop")
    return {"passed": report.passed, "metric": report.metric, "score": c.build.gated.candidate.score,
            "accuracy": report.build.accuracy, "drop": gate.value, "accuracy_drop": gate.value,
            "runtime": report.build.runtime, "model_bytes": report.artifact.model_bytes,
            "failed_gates": [g.name for g in report.gates if not g.passed], "race": race[c.name]}


def _choose(candidates: list[Candidate], raced: dict, recipe) -> dict:
    race = raced["race"]
    summaries = {c.name: _summary(c, race) for c in candidates}
    b1 = {name: race[name]["b1"]["p50_ms"] for name in race}
    tolerance = recipe.quantize.latency_tie_tolerance
    built = [c.name for c in candidates if c.build is not None]
    choice = fastest_within_budget(built, lambda n: summaries[n]["passed"], lambda n: b1[n],
                                   lambda n: summaries[n]["score"], tolerance)
    chosen = choice.chosen
    seq = recipe.max_length
    if choice.within_budget:
        reason = (f"passed its gates with the lowest batch-1 p50 at sequence {seq}: {b1[chosen]:.2f} ms; "
                  + "; ".join(_why_not(n, chosen, summaries, b1, tolerance) for n in summaries if n != chosen))
    else:
        reason = "no CPU target passed its gates; kept the one with the smallest drop of the gated metric"
    return {"criterion": f"fastest p50 at batch 1, sequence {seq} among the builds that pass their gates "
                         f"(ties within {tolerance:.0%} go to the first of {', '.join(CPU_AUTO_TARGETS)})",
            "chosen": chosen, "reason": reason, "candidates": summaries, "sequence_length": seq,
            "race_rounds": raced["rounds"], "threads": raced["threads"],
            "other_processes_cpu_percent": raced["other_processes_cpu_percent"],
            "candidate_reports": {n: f"{CANDIDATES_DIR}/{n}.report.json" for n in built if n != chosen}}


def _why_not(other: str, chosen: str, summaries: dict, b1: dict, tolerance: float) -> str:
    if summaries[other]["race"] is None:
        return f"{other} was stopped by a gate after a pass ({summaries[other]['stopped']})"
    if not summaries[other]["passed"]:
        return f"{other} failed its gates ({', '.join(summaries[other]['failed_gates'])})"
    if b1[other] < b1[chosen]:
        return (f"{other} was {b1[other]:.2f} ms, within the {tolerance:.0%} tie tolerance, and ties go "
                f"to {chosen} (listed first)")
    return f"{other} was {b1[other]:.2f} ms ({b1[other] / b1[chosen]:.2f}× slower)"


__all__ = ["run_cpu_auto", "CPU_AUTO", "CANDIDATES_DIR"]
