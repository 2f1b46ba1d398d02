"""Step 4: build the target's artifact into the staging dir and gate the file that ships — a
fresh runner on the final model file, evaluated on the eval data, timed beside the original.

Latency: every (batch, sequence) shape of the recipe, the original and the build alternating in
interleaved rounds (metrics.evaluation.latency_race), so machine noise hits both alike; each in
its own process (``latency.isolation: process``, pipeline/timing.py), so PyTorch's threads never
share a process with the build's runtime. The
latency gates read batch 1 at sequence 128 (the first shape when 128 is not measured). A task
with latency figures of its own (a decoder's prefill and decode rate, Task.task_latency) measures
them next, on the same two models, and adds their gates.

Accuracy as deployed: the build is evaluated at every batch size of ``eval.batching`` (default:
each text alone, and eval.batch_size), and the accuracy gate takes the worst
(metrics/deployed.py); ``candidate`` is the build at that batching.

A target whose artifact cannot run here (a TensorRT engine without a GPU) gates a stand-in,
skips the latency gates (the stand-in's latency is not the target's), and the run ends
UNVERIFIED once the build is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcompress.core.hashing import file_digest
from mcompress.core.state import ModelState
from mcompress.core.target_base import BuildInputs, BuildResult
from mcompress.core.task import TaskLatencyRequest
from mcompress.metrics.deployed import DeployedAccuracy, deployed_accuracy
from mcompress.metrics.evaluation import EvalResult, LatencyResult, latency_race
from mcompress.metrics.gates import GateResult, latency_gates, size_gate
from mcompress.metrics.roofline import gemm_peaks
from mcompress.pipeline.prepare import Prepared, ProgressFactory
from mcompress.pipeline.reference import Reference
from mcompress.pipeline.timing import reference_runner, timing_runners

GATE_SHAPE = (1, 128)  # (batch, sequence) the latency gates read


@dataclass
class GatedBuild:
    build: BuildResult  # what the target wrote: files, model file, facts, whether it was measured
    runner: object  # a fresh runner of build.model_file
    tokenizer: object  # the build's tokenizer (the source's, or a pruned vocabulary's)
    candidate: EvalResult  # the build on the eval data, at the batching with the largest drop
    deployed: DeployedAccuracy  # the build at every batching it is gated at
    gates: list[GateResult]
    latency: dict[str, list[LatencyResult]]  # "reference" / "build": one per shape, in the same order
    files: dict  # every file of the build: name -> {bytes, sha256}
    median_tokens: int
    truncated_fraction: float
    gemm_peaks: dict  # {precision: GMAC/s} of this CPU's GEMM kernels, measured after the latency race
    task_latency: object = None  # the task's own latency figures (core.task.TaskLatency), if it has any

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def gate_latency(results: list[LatencyResult]) -> LatencyResult:
    """The measurement the latency gates read (GATE_SHAPE, else the first shape)."""
    return next((r for r in results if (r.batch_size, r.sequence_length) == GATE_SHAPE), results[0])


def _latency(prepared: Prepared, reference: Reference, build: BuildResult, runner, tokenizer, lengths: np.ndarray,
             progress: ProgressFactory):
    latency = prepared.recipe.latency
    data_length = int(max(2, min(prepared.recipe.max_length, np.median(lengths))))
    shapes = [(b, data_length if s == "data" else s, latency.iterations)
              for s in latency.sequence_lengths for b in latency.batch_sizes]
    factories = {"reference": (reference_runner, prepared.checkpoint, reference.threads),
                 "build": (build.runner, reference.threads)}
    opened = {"reference": reference.timing} if reference.timing is not None else None
    with timing_runners(prepared.recipe, {"reference": reference.runner, "build": runner}, factories, opened) as runners:
        raced = latency_race(runners, {"reference": reference.tokenizer, "build": tokenizer}, prepared.eval_data.texts,
                             shapes, latency.warmup, progress("measuring latency", len(shapes)), latency.settle_s)
    return {side: [raced[(b, s)][side] for b, s, _ in shapes] for side in ("reference", "build")}


def gate_build(prepared: Prepared, reference: Reference, target, state: ModelState, staging: Path,
               pass_gates: list[GateResult], run_eval, progress: ProgressFactory) -> GatedBuild:
    recipe = prepared.recipe
    eval_data = prepared.eval_data
    lengths = reference.eval_lengths
    budget, drop_type = prepared.task.gate_budget(recipe.gates)  # max_drop, or a decoder's max_ppl_increase
    build = target.build(state, staging, BuildInputs(recipe, np.minimum(lengths, recipe.max_length), prepared.cache_root))
    runner = build.runner(reference.threads)
    deployed = deployed_accuracy(reference.eval, {
        batch: run_eval(runner, eval_data, f"the build (batch {batch})", batch, state.tokenizer)
        for batch in recipe.eval.deployed_batchings()},
        budget, recipe.seed, drop_type)
    candidate = deployed.results[deployed.worst]
    gates = [deployed.gate(), *pass_gates]
    latency = _latency(prepared, reference, build, runner, state.tokenizer, lengths, progress)
    task_latency = None
    if build.artifact_measured:
        gates += latency_gates(gate_latency(latency["reference"]), gate_latency(latency["build"]),
                               recipe.gates.max_latency_ms, recipe.gates.min_speedup, recipe.gates.max_latency_p95_ms)
        task_latency = prepared.task.task_latency(TaskLatencyRequest(
            prepared.checkpoint, build.model_file, state.tokenizer, eval_data.texts, reference.threads, recipe.gates,
            recipe.latency.isolation))
        gates += task_latency.gates if task_latency else []
    if recipe.gates.max_size_ratio is not None:
        gates.append(size_gate(build.model_bytes, reference.size_bytes, recipe.gates.max_size_ratio))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in build.files}
    return GatedBuild(build, runner, state.tokenizer, candidate, deployed, gates, latency, files,
                      int(np.median(lengths)), round(float((lengths > recipe.max_length).mean()), 4),
                      gemm_peaks(reference.threads), task_latency)
