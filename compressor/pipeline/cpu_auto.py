"""``--target cpu-auto``: build every CPU target (onnx-cpu, openvino-cpu), gate each on the eval
data, race the builds, and keep the faster one that passes its gates.

Criterion: p50 latency at batch 1 and the recipe's ``max_length``, both builds measured in ONE
process in interleaved rounds (evaluation.interleaved_latency), so machine noise hits both alike.
Batch 8 is measured and reported too, but does not decide. Builds whose batch-1 p50 are within
``quantize.latency_tie_tolerance`` of each other are tied, and the first target in
``CPU_AUTO_TARGETS`` wins (onnx-cpu: the build with fewer runtime dependencies), so near-equal
timings do not flip the choice between runs. When neither build passes its gates, the one with the
smallest accuracy drop is kept and the run fails (exit 3), as a single-target run would.

Each candidate is built by the ordinary job (compressor/pipeline/job.py) inside the final build's staging
dir; the kept build's files move to the top of it, the other's report stays in ``candidates/``,
and the kept report gains a ``cpu_auto`` section: the criterion, both candidates' gates, accuracy
and raced latency, and the reason for the choice. The build appears in ``--out`` only when complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from mcompress.core.errors import GateFailure
from mcompress.metrics.evaluation import interleaved_latency, latency_inputs
from mcompress.pipeline.outputs import check_output_dir, staged_dir
from mcompress.core.recipe import load_recipe
from mcompress.metrics.machine import other_processes_cpu
from mcompress.report.schema import CpuAutoChoice, Report
from mcompress.report.write import write_report
from mcompress.targets import CPU_AUTO, CPU_AUTO_TARGETS, get_target

CANDIDATES_DIR = "candidates"


def run_cpu_auto(req, task) -> Report:
    from mcompress.core.checkpoint import inspect_checkpoint
    from mcompress.pipeline.job import run
    from mcompress.pipeline.pass_gates import check_gate_passes

    # Everything a user can get wrong, for every target, before the first build starts.
    recipe = load_recipe(req.recipe_path).with_overrides(**req.overrides)
    targets = {name: get_target(name) for name in CPU_AUTO_TARGETS}
    for target in targets.values():
        target.check_available()
        target.validate_recipe(recipe)
        check_gate_passes(recipe, [p.name for p in target.pipeline(recipe)])
    out = req.out or Path("build") / f"{req.model_dir.resolve().name}-{CPU_AUTO}"
    input_paths = [req.model_dir] + [p for p in (req.eval_data, req.calib_data, req.recipe_path) if p]
    check_output_dir(out, req.force, input_paths)
    inspect_checkpoint(req.model_dir, allow_pickle=req.allow_pickle)

    with staged_dir(out) as staging:
        work = staging / CANDIDATES_DIR
        reports: dict[str, Report] = {}
        for name in CPU_AUTO_TARGETS:
            build = work / name
            try:
                reports[name] = run(dataclasses.replace(req, target=name, out=build, force=False), task)
            except GateFailure:  # the build and its report are written; the race still measures it
                reports[name] = Report.load(build / "report.json")
        choice = _race(reports, {n: work / n for n in reports}, targets, recipe, req, task)
        chosen = choice.chosen
        for path in (work / chosen).iterdir():
            shutil.move(str(path), staging / path.name)
        for name in reports:
            if name != chosen:
                shutil.copyfile(work / name / "report.json", work / f"{name}.report.json")
            shutil.rmtree(work / name)
        report = reports[chosen]
        report.cpu_auto = choice
        write_report(report, staging)
    report.out = str(Path(out).resolve())
    if not report.passed:
        failed = "; ".join(f"{g.name} {g.value:.3f} {g.unit} vs budget {g.threshold}"
                           for g in report.gates if not g.passed)
        raise GateFailure(f"gate failed: no CPU target passed its gates; kept {chosen} (smallest accuracy drop): "
                          f"{failed}. Report: {Path(out) / 'report.md'}")
    return report


def _race(reports: dict[str, Report], builds: dict[str, Path], targets: dict, recipe, req, task) -> CpuAutoChoice:
    """Interleaved latency of the built artifacts; the choice and why."""
    from transformers import AutoTokenizer

    from mcompress.core.checkpoint import inspect_checkpoint
    from mcompress.pipeline.job import resolve_data

    ckpt = inspect_checkpoint(req.model_dir, allow_pickle=req.allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(ckpt.path, local_files_only=True)
    texts = resolve_data(req, ckpt.label2id).eval.head(recipe.eval.max_examples).texts
    threads = recipe.latency.threads or os.cpu_count()
    runners = {}
    for name, report in reports.items():
        target = targets[name]
        target.validate_recipe(recipe)  # runner settings (e.g. OpenVINO inference precision) from the recipe
        runners[name] = target.runner(builds[name] / report.artifact.model_file, threads)
    seq = recipe.max_length
    rounds = 5
    per_round = max(2, recipe.latency.iterations // rounds)
    advance = task("racing CPU targets", 2)
    load_before = other_processes_cpu(0.5)
    race = {}
    for batch, calls in ((1, per_round), (8, max(2, per_round // 4))):
        measured = interleaved_latency(runners, latency_inputs(tokenizer, texts, batch, seq), rounds, calls)
        for name, result in measured.items():
            race.setdefault(name, {})[f"b{batch}"] = result.as_dict()
        advance(1)
    load_after = other_processes_cpu(0.5)

    candidates = {}
    for name, report in reports.items():
        gate = next(g for g in report.gates if g.name == "accuracy_drop")
        candidates[name] = {"passed": report.passed, "accuracy": report.build.accuracy,
                            "accuracy_drop": gate.value, "runtime": report.build.runtime,
                            "model_bytes": report.artifact.model_bytes,
                            "failed_gates": [g.name for g in report.gates if not g.passed],
                            "race": race[name]}
    b1 = {name: race[name]["b1"]["p50_ms"] for name in race}
    passing = [n for n in CPU_AUTO_TARGETS if candidates[n]["passed"]]
    tolerance = recipe.quantize.latency_tie_tolerance
    if passing:
        best = min(b1[n] for n in passing)
        chosen = next(n for n in passing if b1[n] <= best * (1 + tolerance))
        others = [n for n in CPU_AUTO_TARGETS if n != chosen]
        parts = []
        for other in others:
            if not candidates[other]["passed"]:
                parts.append(f"{other} failed its gates ({', '.join(candidates[other]['failed_gates'])})")
            elif b1[other] < b1[chosen]:
                parts.append(f"{other} was {b1[other]:.2f} ms, within the {tolerance:.0%} tie tolerance, and ties go "
                             f"to {chosen} (listed first)")
            else:
                parts.append(f"{other} was {b1[other]:.2f} ms ({b1[other] / b1[chosen]:.2f}× slower)")
        reason = (f"passed its gates with the lowest batch-1 p50 at sequence {seq}: {b1[chosen]:.2f} ms; "
                  + "; ".join(parts))
    else:
        chosen = min(CPU_AUTO_TARGETS, key=lambda n: candidates[n]["accuracy_drop"])
        reason = "no CPU target passed its gates; kept the one with the smallest accuracy drop"
    return CpuAutoChoice.model_validate({"criterion": f"fastest p50 at batch 1, sequence {seq} among the builds that pass their gates "
                         f"(ties within {tolerance:.0%} go to the first of {', '.join(CPU_AUTO_TARGETS)})",
            "chosen": chosen, "reason": reason, "candidates": candidates, "sequence_length": seq,
            "race_rounds": rounds, "threads": threads,
            "other_processes_cpu_percent": max(load_before, load_after),
            "candidate_reports": {n: f"{CANDIDATES_DIR}/{n}.report.json" for n in reports if n != chosen}})
