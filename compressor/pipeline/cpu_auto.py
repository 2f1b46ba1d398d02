"""``--target cpu`` (the default) and ``--target cpu-auto``: build every CPU target (onnx-cpu,
openvino-cpu) at every precision this CPU offers, gate each build on the eval data, race the
builds, and keep the fastest that passes.

Candidates are (target, precision) pairs: each target lists its precision variants
(``Target.precision_variants``: the recipe as given, then e.g. onnx-cpu's FP32 floor and, where the
CPU plugin offers BF16, openvino-cpu's INT8 IR with BF16 float ops) and the precisions this machine
does not offer it, with the reason; the report keeps both. ``cpu`` races the CPU targets that are
installed and accept the recipe (the others are listed with why); ``cpu-auto`` requires all of them.

An orchestrator above the job: one validation, one reference (the FP32 original is evaluated
once), then ``job.build_target`` per candidate into ``candidates/NAME`` of the final build's
staging dir; the pass cache shares identical prefixes (distillation, export) between candidates.
A candidate stopped by a gate after a pass has no build and counts as failed. With the default
recipe the run plans in a time budget (pipeline/budget.py): the first candidate, then a
prune-distill plan's builds when they fit, then the other candidates while the budget lasts.

Criterion: p50 latency at batch 1 and the recipe's ``max_length``, each build timed in its own
process in interleaved rounds (metrics.evaluation.latency_race via pipeline/timing.py), so machine
noise hits all alike. Batch 8 is measured and reported too, but does not decide. The choice follows
metrics.selection.fastest_within_budget: builds whose batch-1 p50 are within
``quantize.latency_tie_tolerance`` of each other are tied and the first candidate wins (onnx-cpu
before openvino-cpu: fewer runtime dependencies; the recipe's precision before the variants), so
near-equal timings do not flip the choice between runs. When no build passes its gates, the one
with the best gated metric (the smallest drop) is kept and the run fails (exit 3), as a
single-target run would.

The kept build's files move to the top of the staging dir, the others' reports stay in
``candidates/NAME.report.json``, and the kept report gains a ``cpu_auto`` section: the criterion,
what the CPU offered, every candidate's precision, gates, gated metric and raced latency, and the
reason for the choice.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mcompress.core.errors import GateFailure, InputError, TargetUnavailable
from mcompress.core.task import task_for_architecture
from mcompress.metrics.evaluation import RACE_ROUNDS, b1_b8_shapes, latency_race
from mcompress.metrics.machine import other_processes_cpu
from mcompress.metrics.selection import fastest_within_budget
from mcompress.pipeline.budget import PRUNE_DISTILL, fits_another_build, plan_prune_distill, time_budget_of
from mcompress.pipeline.job import TargetBuild, build_target, raise_for_outcome
from mcompress.pipeline.outputs import staged_dir
from mcompress.pipeline.pass_gates import check_gate_passes
from mcompress.pipeline.prepare import Prepared, ProgressFactory, RunRequest, prepare, request_recipe
from mcompress.pipeline.reference import Reference, measure_reference
from mcompress.pipeline.timing import shared_reference_timing, timing_runners
from mcompress.report.schema import CpuAutoChoice, Report
from mcompress.report.write import write_report
from mcompress.targets import CPU, CPU_AUTO, CPU_AUTO_TARGETS, CPU_CHOICES, get_target

CANDIDATES_DIR = "candidates"


@dataclass(frozen=True)
class CandidateSpec:
    """One (target, precision) pair to build: its name in the report, and its run with the
    variant's recipe."""

    name: str
    precision: str
    target: object  # core.target_base.Target
    prepared: Prepared


@dataclass
class Candidate:
    spec: CandidateSpec
    build: TargetBuild | None  # None: a gate after a pass stopped it
    stopped: str | None = None  # that gate's message
    seconds: float = 0.0  # wall time of its passes and gates

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def passed(self) -> bool:
        return self.build is not None and self.build.passed


def run_cpu_auto(req: RunRequest, progress: ProgressFactory) -> Report:
    started = time.perf_counter()
    budget_s = time_budget_of(req)
    names, unavailable = _cpu_targets(req)
    prepared = prepare(req, names)
    specs, offered = _candidate_specs(prepared)
    out = prepared.out
    reference = measure_reference(prepared, progress)
    with staged_dir(out) as staging:
        work = staging / CANDIDATES_DIR
        # one timing process of the original for every candidate's gate (pipeline/timing.py)
        with shared_reference_timing(prepared, reference) as timed:
            def build(spec: CandidateSpec) -> Candidate:
                return _build(spec, timed, work / spec.name, progress, started)

            if budget_s is None:
                candidates, time_budget = [build(spec) for spec in specs], None
            else:
                candidates, time_budget = _build_in_budget(prepared, specs, offered, build, budget_s, started)
        built = [c for c in candidates if c.build is not None]
        if not built:
            raise GateFailure(f"no CPU target produced a build: {'; '.join(c.stopped for c in candidates)}")
        choice = _choose(candidates, _race(built, prepared, reference, progress), prepared.recipe)
        kept = next(c for c in candidates if c.name == choice["chosen"]).build
        _keep(kept, built, staging, work)
        kept.report.wall_s = round(time.perf_counter() - started, 1)  # the whole choice, not the kept build's own steps
        if time_budget is not None:
            time_budget["wall_s"] = kept.report.wall_s
        kept.report.cpu_auto = CpuAutoChoice.model_validate({**choice, "offered": offered, "unavailable": unavailable,
                                                             "time_budget": time_budget})
        write_report(kept.report, staging)
    kept.report.out = str(Path(out).resolve())
    raise_for_outcome(kept, Path(out), prefix=f"no CPU target passed its gates; kept {kept.target.name} "
                                              "(smallest drop of the gated metric): ")
    return kept.report


def _build_in_budget(prepared: Prepared, specs: list[CandidateSpec], offered: dict, build, budget_s: float,
                     started: float) -> tuple[list[Candidate], dict]:
    """The default recipe's builds in its time budget (pipeline/budget.py): the first candidate
    (the recipe's precision on the first target), then the prune-distill plan's builds when what
    is left allows, then the other candidates while the budget lasts; until some build has passed,
    the others are built whatever the time (the FP32 floor is among them)."""
    candidates = [build(specs[0])]
    plan = plan_prune_distill(prepared, budget_s, time.perf_counter() - started, [c.seconds for c in candidates])
    if plan.run is not None:
        planned = _plan_specs(plan.run, "+" + PRUNE_DISTILL)
        offered.update({s.name: s.precision for s in planned})
        candidates += [build(spec) for spec in planned]
    floor = [c.seconds for c in candidates[:1]]
    skipped = {}
    for spec in specs[1:]:
        elapsed = time.perf_counter() - started
        if any(c.passed for c in candidates) and not fits_another_build(budget_s, elapsed, floor):
            skipped[spec.name] = (f"not built: {budget_s - elapsed:.0f} s of the budget were left, under a build "
                                  f"(~{sum(floor) / len(floor):.0f} s) and the reserve for the race")
            continue
        candidates.append(build(spec))
        floor.append(candidates[-1].seconds)
    return candidates, {"budget_s": budget_s, "skipped": skipped,
                        "plans": {prepared.recipe.name: {"built": True, "reason": "the floor: built first"},
                                  PRUNE_DISTILL: plan.figures}}


def targets_to_build(req: RunRequest) -> tuple[str, ...]:
    """The registered targets a run of ``req.target`` builds: a CPU choice's CPU targets, or the one."""
    return _cpu_targets(req)[0] if req.target in CPU_CHOICES else (req.target,)


def _cpu_targets(req: RunRequest) -> tuple[tuple[str, ...], dict[str, str]]:
    """The CPU targets to build, and those left out with why. ``cpu-auto`` requires every CPU
    target (prepare raises for one that is missing or refuses the recipe); ``cpu`` builds those
    that are installed and accept the recipe, and fails only when none does."""
    if req.target == CPU_AUTO:
        return CPU_AUTO_TARGETS, {}
    recipe = request_recipe(req)
    task = _task_of(req.model_dir)
    usable, unavailable, first_error = [], {}, None
    for name in CPU_AUTO_TARGETS:
        target = get_target(name)
        try:
            target.check_available()
            target.validate_recipe(recipe)
            if task is not None:
                target.check_task(task)
        except (TargetUnavailable, InputError) as err:
            unavailable[name] = err.one_line()
            first_error = first_error or err
            continue
        usable.append(name)
    if not usable:
        raise first_error
    return tuple(usable), unavailable


def _task_of(model_dir: Path):
    """The checkpoint's task from config.json's architectures, without hashing the weights; None
    when the config cannot tell (prepare's inspection then names what is wrong)."""
    import json

    try:
        architectures = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
        return next((t for t in map(task_for_architecture, architectures) if t is not None), None)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _candidate_specs(prepared: Prepared) -> tuple[list[CandidateSpec], dict[str, str]]:
    """Every target's precision variants, each a run with the variant's recipe (validated here,
    before any work), and what was not offered: {"precision": "target: why"}."""
    specs, not_offered = [], {}
    for name, target in prepared.targets.items():
        variants, missing = target.precision_variants(prepared.recipe)
        for precision, why in missing.items():
            not_offered.setdefault(precision, []).append(f"{name}: {why}")
        specs += [_spec(prepared, name, target, variant) for variant in variants]
    offered = {s.name: s.precision for s in specs}
    return specs, {**offered, **{p: "not offered: " + "; ".join(why) for p, why in not_offered.items()}}


def _plan_specs(prepared: Prepared, suffix: str) -> list[CandidateSpec]:
    """A second plan's builds (pipeline/budget.py): each target at the plan recipe's own precision
    (its first variant), named ``target+plan``."""
    return [_spec(prepared, name, target, target.precision_variants(prepared.recipe)[0][0], suffix)
            for name, target in prepared.targets.items()]


def _spec(prepared: Prepared, name: str, target, variant, plan_suffix: str = "") -> CandidateSpec:
    recipe = prepared.recipe.with_overrides(**variant.overrides) if variant.overrides else prepared.recipe
    target.validate_recipe(recipe)
    check_gate_passes(recipe, [p.name for p in target.pipeline(recipe)])
    return CandidateSpec(name + plan_suffix + variant.suffix, variant.precision, target,
                         dataclasses.replace(prepared, recipe=recipe, targets={name: target}))


@contextmanager
def _candidate_dir(path: Path):
    path.mkdir(parents=True)
    yield path


def _build(spec: CandidateSpec, reference: Reference, out_dir: Path, progress, started: float) -> Candidate:
    began = time.perf_counter()
    try:
        build = build_target(spec.prepared, reference, spec.target, lambda: _candidate_dir(out_dir), progress, started)
        return Candidate(spec, build, seconds=time.perf_counter() - began)
    except GateFailure as stop:  # a gate after a pass: this candidate has no build; the others still race
        shutil.rmtree(out_dir, ignore_errors=True)
        return Candidate(spec, None, str(stop), time.perf_counter() - began)


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
                             on_shape=progress("racing CPU targets", len(shapes)), settle_s=recipe.latency.settle_s)
    load_after = other_processes_cpu(0.5)
    race = {c.name: {f"b{b}": raced[(b, s)][c.name].as_dict() for b, s, _ in shapes} for c in built}
    return {"race": race, "rounds": min(RACE_ROUNDS, shapes[0][2]), "threads": reference.threads,
            "other_processes_cpu_percent": max(load_before, load_after)}


def _summary(c: Candidate, race: dict) -> dict:
    identity = {"target": c.spec.target.name, "precision": c.spec.precision, "recipe": c.spec.prepared.recipe.name}
    if c.build is None:
        return {**identity, "passed": False, "stopped": c.stopped, "failed_gates": ["gates.after"], "race": None}
    report = c.build.report
    gate = report.metric_gate()
    return {**identity, "passed": report.passed, "metric": report.metric, "score": c.build.gated.candidate.score,
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
                         f"(ties within {tolerance:.0%} go to the first of {', '.join(summaries)})",
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


__all__ = ["run_cpu_auto", "targets_to_build", "CPU", "CPU_AUTO", "CANDIDATES_DIR"]
