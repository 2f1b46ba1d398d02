"""The main job: validate every input, run the target's passes, gate the built artifact, write it.

Order matters: everything a user can get wrong is checked before any heavy work, and the build
directory appears only when complete (see outputs.staged_dir).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mcompress import __version__
from mcompress.pipeline.cache import DEFAULT_MAX_GB, PassCache, default_cache_dir
from mcompress.calibration.datasets import LabelledTexts, is_split_dir, split_file, token_lengths
from mcompress.calibration.tagged import TaggedSentences
from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
from mcompress.core.errors import GateFailure, InputError, TargetUnavailable
from mcompress.metrics.evaluation import TorchRunner, evaluate, interleaved_latency, latency_inputs, measure_latency
from mcompress.metrics.flops import encoder_flops
from mcompress.metrics.gates import accuracy_drop_gate, latency_gates, size_gate
from mcompress.core.manager import PassManager, PassRecord
from mcompress.pipeline.outputs import check_output_dir, staged_dir
from mcompress.core.pass_base import PassContext
from mcompress.pipeline.pass_gates import PassGate, check_gate_passes
from mcompress.core.recipe import Recipe, load_recipe, validate_against_checkpoint, validate_training_data
from mcompress.core.hashing import file_digest
from mcompress.metrics.machine import library_versions, machine_info
from mcompress.report.schema import Report
from mcompress.report.write import write_report
from mcompress.core.state import ModelKind, ModelState
from mcompress.core.target_base import BuildInputs
from mcompress.targets import get_target
from mcompress.core.tasks import TASKS, TaskSpec, gated_metric, load_task_data

logger = logging.getLogger(__name__)

LATENCY_ROUNDS = 5  # interleaved rounds of the gate's latency measurement (recipe latency.iterations in all)

# A UI hook: task(description, total) returns an advance(n) callable. The CLI draws rich bars.
TaskFactory = Callable[[str, int], Callable[[int], None]]


def _no_ui(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class RunRequest:
    model_dir: Path
    target: str = "onnx-cpu"
    out: Path | None = None
    recipe_path: Path | None = None
    eval_data: Path | None = None
    calib_data: Path | None = None
    text_column: str | None = None  # None: the task's default (text/label; tokens/tags for a tagger)
    label_column: str | None = None
    force: bool = False
    allow_pickle: bool = False
    overrides: dict = field(default_factory=dict)  # dotted recipe keys, e.g. {"gates.max_drop": 0.5}
    cache_dir: Path | None = None  # pass cache (compressor/pipeline/cache.py); None = $MCOMPRESS_CACHE_DIR or ~/.cache/mcompress
    use_cache: bool = True
    cache_max_gb: float = DEFAULT_MAX_GB


@dataclass
class DataSplits:
    eval: LabelledTexts | TaggedSentences
    calibration: LabelledTexts | TaggedSentences
    selection: LabelledTexts | TaggedSentences
    notes: list[str]
    calibration_is_eval: bool = False


def resolve_data(req: RunRequest, label2id: dict[str, int], task: TaskSpec = TASKS["text-classification"]) -> DataSplits:
    """Eval data is required; calibration and selection default to the example's splits.

    With a split dir (``MODEL_DIR/splits`` by default), eval = test, selection = validation and
    calibration = train. Without one, selection falls back to the eval data and calibration to
    the eval texts, and the report says so.
    """
    notes = []
    default_splits = req.model_dir / "splits"
    eval_path = req.eval_data or (default_splits if is_split_dir(default_splits) else None)
    if eval_path is None:
        raise InputError("no evaluation data: the model dir has no splits/ directory.",
                         "Pass --eval-data FILE (CSV or JSONL with text and label columns; CoNLL or JSONL with "
                         "tokens and tags for a tagger).")
    load = lambda p, split, labels=True: load_task_data(task, p, label2id, req.text_column, req.label_column, split, labels)
    eval_data = load(eval_path, "test")
    split_dir = Path(eval_path) if Path(eval_path).is_dir() else None
    if split_dir is not None and split_file(split_dir, "validation"):
        selection = load(split_dir, "validation")
    else:
        selection = eval_data
        notes.append("no validation split: quantization candidates were scored on the eval data")
    if req.calib_data is not None:
        calibration = load(req.calib_data, "train", labels=False)
    elif split_dir is not None and split_file(split_dir, "train"):
        calibration = load(split_dir, "train", labels=False)
    else:
        calibration = eval_data.without_labels()
        notes.append("no calibration data given: calibrated on the eval texts (pass --calib-data)")
        return DataSplits(eval_data, calibration, selection, notes, calibration_is_eval=True)
    return DataSplits(eval_data, calibration, selection, notes)


def run(req: RunRequest, task: TaskFactory = _no_ui) -> Report:
    from mcompress.targets import CPU_AUTO

    if req.target == CPU_AUTO:  # a choice between targets: each is built by this function
        from mcompress.pipeline.cpu_auto import run_cpu_auto

        return run_cpu_auto(req, task)
    started = time.perf_counter()
    # 1. Validate everything the user gave, before any heavy work.
    recipe: Recipe = load_recipe(req.recipe_path).with_overrides(**req.overrides)
    target = get_target(req.target)
    target.check_available()
    target.validate_recipe(recipe)
    check_gate_passes(recipe, [p.name for p in target.pipeline(recipe)])
    ckpt = inspect_checkpoint(req.model_dir, allow_pickle=req.allow_pickle)
    metric = gated_metric(ckpt.task_spec, recipe.gates.metric)
    validate_against_checkpoint(recipe, ckpt)
    max_positions = ckpt.config.get("max_position_embeddings")
    if max_positions and recipe.max_length > max_positions:
        raise InputError(f"recipe max_length {recipe.max_length} exceeds the model's max_position_embeddings {max_positions}.",
                         f"Set max_length <= {max_positions}.")
    out = req.out or Path("build") / f"{req.model_dir.resolve().name}-{req.target}"
    data = resolve_data(req, ckpt.label2id, ckpt.task_spec)
    validate_training_data(recipe, len(data.calibration), data.calibration_is_eval)
    input_paths = [req.model_dir] + [p for p in (req.eval_data, req.calib_data, req.recipe_path) if p]
    cache_root = Path(req.cache_dir or default_cache_dir()).expanduser() if req.use_cache else None
    check_output_dir(out, req.force, input_paths)
    if cache_root and out.resolve() in (cache_root.resolve(), *cache_root.resolve().parents):
        raise InputError(f"the cache directory {cache_root} lies inside --out {out}: replacing the build would delete it.",
                         "Choose another --cache-dir or --out.")
    cache = PassCache.open(cache_root, req.cache_max_gb) if cache_root else None
    eval_data = data.eval.head(recipe.eval.max_examples)

    # 2. The reference: the FP32 PyTorch original on the same data.
    import torch

    torch.manual_seed(recipe.seed)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    threads = recipe.latency.threads or os.cpu_count()
    reference_runner = TorchRunner(model, threads)

    def run_eval(runner, dataset: LabelledTexts, label: str):
        advance = task(f"evaluating {label}", len(dataset))
        return evaluate(runner, tokenizer, dataset, recipe.max_length, recipe.eval.batch_size, advance, what=label)

    reference = run_eval(reference_runner, eval_data, "PyTorch FP32")
    reference_selection = (reference if data.selection is data.eval
                           else run_eval(reference_runner, data.selection.head(recipe.quantize.selection_examples),
                                         "PyTorch FP32 (selection split)"))
    reference_size = ModelState(ModelKind.TORCH, ckpt, tokenizer, torch_model=model).size_bytes()
    reference_flops = encoder_flops(model, 128)

    with tempfile.TemporaryDirectory(prefix="mcompress-") as work:
        ctx = PassContext(recipe, target, Path(work), data.calibration, data.selection,
                          reference_selection.score, progress=task,
                          resume_dir=cache_root / "resume" if cache_root else None)

        evaluated = {}  # pass name -> EvalResult on the eval data, shared with the gates after passes
        pass_runner = lambda s: TorchRunner(s.torch_model, threads) if s.kind is ModelKind.TORCH else target.runner(s.model_file, threads)
        # Batch-1 latency of every pass's model, at the shape the latency gates use.
        pass_seq = 128 if 128 in recipe.latency.sequence_lengths else next(
            (s for s in recipe.latency.sequence_lengths if isinstance(s, int)), 128)

        def evaluate_pass(p, result, record: PassRecord):
            if not recipe.eval.evaluate_each_pass or not result.modified:
                return
            runner = pass_runner(result.state)
            evaluated[p.name] = evaluation = run_eval(runner, eval_data, f"after {p.name}")
            record.evaluation.update(evaluation.summary())
            timing = measure_latency(runner, latency_inputs(tokenizer, eval_data.texts, 1, pass_seq),
                                     recipe.latency.warmup, recipe.latency.iterations)
            record.evaluation["latency"] = {"batch_size": 1, "sequence_length": pass_seq, "p50_ms": round(timing.p50_ms, 3)}

        pass_gate = PassGate(recipe, reference, lambda p, s: evaluated.get(p.name) or run_eval(pass_runner(s), eval_data, f"after {p.name}"))

        flops = {"current": reference_flops}

        def count_flops(p, result, record: PassRecord):
            # FLOPs at batch 1, sequence 128. ONNX passes keep the architecture (quantization changes
            # the precision of the same operations), so the count carries over from the last torch model.
            if result.state.kind is ModelKind.TORCH:
                flops["current"] = encoder_flops(result.state.torch_model, 128)
            record.evaluation["flops_seq128"] = flops["current"]

        manager = PassManager(target.pipeline(recipe), instruments=[evaluate_pass, count_flops, pass_gate], cache=cache)
        state, records = manager.run(ModelState(ModelKind.TORCH, ckpt, tokenizer, torch_model=model), ctx)
        if any(r.cached for r in records):
            logger.info("reused cached %s from %s", ", ".join(r.name for r in records if r.cached), cache.root)

        # 3. Gate the artifact that ships: a fresh session on the final file.
        with staged_dir(out) as staging:
            lengths = token_lengths(tokenizer, eval_data.texts, 100_000)
            model_file = target.build(state, staging, BuildInputs(recipe, np.minimum(lengths, recipe.max_length), cache_root))
            # A target whose artifact cannot run here (a TensorRT engine without a GPU) gates a
            # stand-in, skips the latency gates (the stand-in's latency is not the target's) and
            # the run ends with TargetUnavailable once the build is written.
            target_build = target.build_summary(staging)
            engine_measured = target_build.get("engine_measured", True)
            build_runner = target.runner(model_file, threads)
            candidate = run_eval(build_runner, eval_data, "the build")
            gates = [accuracy_drop_gate(reference, candidate, recipe.gates.max_drop, recipe.seed, recipe.gates.drop_type)]
            gates += pass_gate.results

            data_length = int(max(2, min(recipe.max_length, np.median(lengths))))
            shapes = [(b, data_length if s == "data" else s) for s in recipe.latency.sequence_lengths for b in recipe.latency.batch_sizes]
            ref_latency, build_latency = [], []
            advance = task("measuring latency", len(shapes))
            # The original and the build alternate in rounds, so machine noise hits both alike.
            rounds = min(LATENCY_ROUNDS, recipe.latency.iterations)
            for batch, seq in shapes:
                inputs = latency_inputs(tokenizer, eval_data.texts, batch, seq)
                measured = interleaved_latency({"reference": reference_runner, "build": build_runner}, inputs, rounds,
                                               math.ceil(recipe.latency.iterations / rounds), recipe.latency.warmup)
                ref_latency.append(measured["reference"])
                build_latency.append(measured["build"])
                advance(1)
            gate_ref = next((r for r in ref_latency if (r.batch_size, r.sequence_length) == (1, 128)), ref_latency[0])
            gate_build = build_latency[ref_latency.index(gate_ref)]
            if engine_measured:
                gates += latency_gates(gate_ref, gate_build, recipe.gates.max_latency_ms, recipe.gates.min_speedup,
                                       recipe.gates.max_latency_p95_ms)

            files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(staging.iterdir()) if p.is_file()}
            model_bytes = model_file.stat().st_size
            if model_file.suffix == ".xml":  # an OpenVINO IR: the graph, and its weights beside it
                model_bytes += model_file.with_suffix(".bin").stat().st_size
            if recipe.gates.max_size_ratio is not None:
                gates.append(size_gate(model_bytes, reference_size, recipe.gates.max_size_ratio))
            report = Report.model_validate({
                "schema": 1,
                "mcompress_version": __version__,
                "target": target.name,
                "recipe": recipe.model_dump(mode="json"),
                "versions": library_versions(),
                "machine": machine_info(),
                "source": {"path": str(ckpt.path), "sha256": ckpt.content_hash, "model_type": ckpt.model_type,
                           "architecture": ckpt.architecture, "task": ckpt.task, "labels": ckpt.id2label},
                "data": {
                    "eval": {"source": eval_data.source, "examples": len(eval_data), "sha256": eval_data.content_hash(),
                             "median_tokens": int(np.median(lengths)),
                             "truncated_fraction": round(float((lengths > recipe.max_length).mean()), 4)},
                    "selection": {"source": data.selection.source, "examples": len(data.selection.head(recipe.quantize.selection_examples))},
                    "calibration": {"source": data.calibration.source, "examples": len(data.calibration)},
                    "notes": data.notes,
                },
                "metric": metric,
                "reference": {"runtime": reference_runner.name, **reference.summary(), **_entity_details(reference),
                              "size_bytes": reference_size, "flops_seq128": reference_flops},
                "passes": [{"name": r.name, "wall_s": round(r.wall_s, 2), "modified": r.modified, "size_bytes": r.size_bytes,
                            **_pass_scores(r.evaluation),
                            "flops_seq128": r.evaluation.get("flops_seq128"), "gate": r.evaluation.get("gate"),
                            "latency": r.evaluation.get("latency"),
                            "metrics": r.metrics,
                            "cached": r.cached, "cache_key": r.cache_key} for r in records],
                "build": {"runtime": build_runner.name, **candidate.summary(), **_entity_details(candidate)},
                "latency": {"reference": [r.as_dict() for r in ref_latency], "build": [r.as_dict() for r in build_latency]},
                "gates": [g.as_dict() for g in gates],
                "passed": all(g.passed for g in gates),
                "artifact": {"model_file": model_file.name, "model_bytes": model_bytes,
                             "size_ratio": round(model_bytes / reference_size, 4),
                             "quantization": state.annotations.get("quantization", "none"),
                             "float_layers": state.annotations.get("float_layers", []),
                             "graph": state.annotations.get("graph"), "files": files},
                "wall_s": round(time.perf_counter() - started, 1),
                **({"target_build": target_build} if target_build else {}),
            })
            write_report(report, staging)
    report.out = str(out.resolve())
    if not report.passed:
        failed = "; ".join(f"{g.name} {g.value:.3f} {g.unit} vs budget {g.threshold}" for g in gates if not g.passed)
        raise GateFailure(f"gate failed: {failed}. Report: {out / 'report.md'}")
    if not engine_measured:
        raise TargetUnavailable(f"{target.name}: {target_build.get('reason', 'the built artifact cannot run on this machine.')}",
                                f"Build written to {out}; gated stand-in: {target_build.get('gated_artifact')}, "
                                f"{metric.replace('_', ' ')} {candidate.score:.4f}, gates passed.")
    return report


def _pass_scores(evaluation: dict) -> dict:
    """A pass's figures on the eval data (EvalResult.summary()); accuracy and macro-F1 are None
    when the pass's model was not evaluated."""
    keys = ("score", "accuracy", "macro_f1", "entity_f1", "precision", "recall")
    return {"accuracy": None, "macro_f1": None, **{k: evaluation[k] for k in keys if k in evaluation}}


def _entity_details(result) -> dict:
    """A tagger's per entity type scores and truncated words, for the report."""
    if result.metric != "entity_f1":
        return {}
    per_type = {t: {k: round(v, 6) if isinstance(v, float) else v for k, v in s.items()}
                for t, s in result.details["per_type"].items()}
    return {"per_entity": per_type, "truncated_words": result.details["truncated_words"]}
