"""The main job, as named steps: prepare (validate every input) → reference (the FP32 original)
→ passes (the target's pipeline, with instruments) → build and gates (on the artifact that ships)
→ report → the build renamed into ``--out``.

Order matters: everything a user can get wrong is checked before any heavy work, and the build
directory appears only when complete (pipeline/outputs.staged_dir). ``build_target`` runs steps
3-5 for one target into a directory it is given; a single-target run (``run``) and the cpu-auto
orchestrator (pipeline/cpu_auto.py) both call it, with one validation and one reference.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from mcompress.core.errors import GateFailure, TargetUnavailable
from mcompress.core.manager import PassManager, PassRecord
from mcompress.core.pass_base import PassContext
from mcompress.core.state import ModelState
from mcompress.engines import distributed
from mcompress.pipeline.gating import GatedBuild, gate_build
from mcompress.pipeline.instruments import FlopsCounter, PassEvaluations, PassEvaluator, state_runner
from mcompress.pipeline.outputs import staged_dir
from mcompress.pipeline.pass_gates import PassGate
from mcompress.pipeline.prepare import (DataSplits, Prepared, ProgressFactory, RunRequest, no_progress, prepare,
                                        resolve_data)
from mcompress.pipeline.reference import Reference, evaluator, measure_reference
from mcompress.pipeline.report_data import assemble_report
from mcompress.report.schema import Report
from mcompress.report.write import write_report

logger = logging.getLogger(__name__)

__all__ = ["RunRequest", "DataSplits", "resolve_data", "run", "build_target", "TargetBuild"]


@dataclass
class TargetBuild:
    """One target built and gated into ``out_dir`` (where it was written: a staging dir is renamed
    into --out afterwards); ``report`` is what report.json holds."""

    target: object
    out_dir: Path
    gated: GatedBuild
    report: Report

    @property
    def passed(self) -> bool:
        return self.report.passed


def _pass_sequence_length(recipe) -> int:
    """Every pass's model is timed at batch 1 and this sequence: the gate's 128 when measured."""
    lengths = recipe.latency.sequence_lengths
    return 128 if 128 in lengths else next((s for s in lengths if isinstance(s, int)), 128)


def _run_passes(prepared: Prepared, reference: Reference, target, work: Path, run_eval,
                progress: ProgressFactory) -> tuple[ModelState, list[PassRecord], PassGate]:
    recipe = prepared.recipe
    cache_root = prepared.cache_root
    ctx = PassContext(recipe, target, work, prepared.data.calibration, prepared.data.selection,
                      reference.selection.score, progress=progress,
                      resume_dir=cache_root / "resume" if cache_root else None, task=prepared.task,
                      on_progress=prepared.request.on_pass_progress)
    evaluations = PassEvaluations(state_runner(target, reference.threads, target.settings(recipe)),
                                  lambda state, runner, label: run_eval(runner, prepared.eval_data, label,
                                                                        model_tokenizer=state.tokenizer))
    pass_gate = PassGate(recipe, reference.eval, evaluations.get)
    instruments = [FlopsCounter(reference.flops), pass_gate]
    if recipe.eval.evaluate_each_pass:
        instruments.insert(0, PassEvaluator(evaluations, prepared.eval_data.texts,
                                            recipe.latency, _pass_sequence_length(recipe)))
    manager = PassManager(target.pipeline(recipe), instruments=instruments, cache=prepared.cache)
    state, records = manager.run(reference.state(prepared), ctx)
    if any(r.cached for r in records):
        logger.info("reused cached %s from %s", ", ".join(r.name for r in records if r.cached), prepared.cache.root)
    return state, records, pass_gate


def build_target(prepared: Prepared, reference: Reference, target, into: Callable[[], ContextManager[Path]],
                 progress: ProgressFactory, started: float) -> TargetBuild:
    """Steps 3-5 for one target: its passes, then its build written into the directory ``into()``
    yields (opened only once the passes are done, so an interrupted pass leaves no build dir), the
    gates on that build, and its report (written there too). A gate after a pass
    (``gates.after``) that fails raises GateFailure and writes nothing."""
    run_eval = evaluator(prepared, reference.tokenizer, progress)
    with tempfile.TemporaryDirectory(prefix="mcompress-") as work:
        state, records, pass_gate = _run_passes(prepared, reference, target, Path(work), run_eval, progress)
        with into() as out_dir:
            gated = gate_build(prepared, reference, target, state, out_dir, pass_gate.results, run_eval, progress)
            report = assemble_report(prepared, reference, target, state, records, gated, time.perf_counter() - started)
            write_report(report, out_dir)
    return TargetBuild(target, out_dir, gated, report)


def failed_gates_line(report: Report) -> str:
    return "; ".join(f"{g.name} {g.value:.3f} {g.unit} vs budget {g.threshold}" for g in report.gates if not g.passed)


def raise_for_outcome(build: TargetBuild, out: Path, prefix: str = "") -> None:
    """A written build that failed its gates (exit 3), or was gated on a stand-in (exit 4)."""
    report = build.report
    if not report.passed:
        raise GateFailure(f"gate failed: {prefix}{failed_gates_line(report)}. Report: {out / 'report.md'}")
    built = build.gated.build
    if not built.artifact_measured:
        raise TargetUnavailable(f"{build.target.name}: {built.unmeasured_reason or 'the built artifact cannot run on this machine.'}",
                                f"Build written to {out}; gated stand-in: {built.stand_in}, "
                                f"{report.metric.replace('_', ' ')} {build.gated.candidate.score:.4f}, gates passed.")


def run(req: RunRequest, progress: ProgressFactory = no_progress) -> Report | None:
    """``mcompress run``: the report of the written build. A failed gate raises GateFailure and an
    artifact gated on a stand-in raises TargetUnavailable, after the build is written.

    Under torchrun or ``accelerate launch`` (engines/distributed.py) rank 0 runs the whole job and
    returns its report; the other ranks only join the passes that announce a distributed section
    (distill) and return None once rank 0 is done, without writing anything."""
    world = distributed.World.from_env()
    if world is None:
        return _run_here(req, progress)
    with distributed.process_group(world):
        if not world.is_main:
            _import_model_classes(req)
            distributed.serve()
            return None
        try:
            report = _run_here(req, progress)
        except Exception:
            # Raised outside a section (one that raised is broken, and release skips it): the
            # others wait for the next section; let them go. Best effort on the way out.
            with contextlib.suppress(Exception):
                distributed.release_workers()
            raise
        distributed.release_workers()
        return report


def _import_model_classes(req: RunRequest) -> None:
    """Ranks > 0: import the checkpoint's transformers class while rank 0 validates and measures
    (tens of seconds on a loaded machine), so the first section does not wait for it. Any error
    is rank 0's to report."""
    with contextlib.suppress(Exception):
        import transformers

        from mcompress.core.checkpoint import inspect_checkpoint

        getattr(transformers, inspect_checkpoint(req.model_dir, req.allow_pickle).architecture)


def _run_here(req: RunRequest, progress: ProgressFactory) -> Report:
    from mcompress.targets import CPU_CHOICES

    if req.target in CPU_CHOICES:  # a choice between targets, orchestrated above this job
        from mcompress.pipeline.cpu_auto import run_cpu_auto

        return run_cpu_auto(req, progress)
    from mcompress.pipeline.budget import time_budget_of

    time_budget_of(req)  # a --time-budget this single-target run cannot apply: one line, before any work
    started = time.perf_counter()
    prepared = prepare(req, (req.target,))
    reference = measure_reference(prepared, progress)
    target = prepared.targets[req.target]
    build = build_target(prepared, reference, target, lambda: staged_dir(prepared.out), progress, started)
    build.report.out = str(prepared.out.resolve())
    raise_for_outcome(build, prepared.out)
    return build.report
