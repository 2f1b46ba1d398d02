"""Float fallback: when the INT8 model breaks the accuracy budget, leave its most sensitive layers
in float until it passes.

Runs after the quantize pass, on the model it chose. The model is scored on the selection split
(accuracy against the FP32 original's, the same budget as the final gate: ``gates.max_drop`` and
``gates.drop_type``, less ``fallback.margin``) and timed at batch 1, sequence 128. Within budget, nothing changes. Otherwise
the layers are ranked by sensitivity (passes/quantize/sensitivity.py) and the float graph is
quantized again with the top 1, 2, 3, ... layers left in float (``nodes_to_exclude``; static
mode reuses one calibration), each candidate scored the same way, until one passes, or
``fallback.max_layers`` layers are in float, or ``fallback.max_seconds`` are spent. Adding layers
one at a time in sensitivity order keeps the fewest, most sensitive ones in float. Every candidate
tried is recorded (layers in float, accuracy, drop, p50 latency and its cost over the INT8 model).
The pass always ends with a model: the fastest candidate within budget, else the most accurate
(fewest float layers among equals); the final gate then judges the build on the eval data.

With ``sensitivity.run: always`` the ranking is measured (and reported) even when no fallback is
needed. Resumable: the ranking and every finished candidate are logged as they are measured
(``_SearchLog``), so a rerun after an interruption continues from the last finished candidate;
an interruption during the ranking itself measures the ranking again. The pass cache keeps the
finished result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from mcompress.metrics.evaluation import latency_inputs, measure_latency
from mcompress.passes.quantize import ort_int8, sensitivity
from mcompress.metrics.gates import metric_drop
from mcompress.metrics.selection import fastest_within_budget
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.hashing import json_digest
from mcompress.core.hashing import file_digest
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)


class _SearchLog:
    """The progress of one fallback search (the sensitivity ranking, then every finished candidate),
    saved after each measurement so an interrupted run resumes where it stopped. It lives in
    ``ctx.resume_dir`` (the pass cache's dir) and is removed when the search ends; with
    ``--no-cache`` it lives in the run's scratch dir, so resuming then works only within one run."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:  # a log cut short by a crash: start over
            self.data = {}

    def save(self, **updates) -> None:
        self.data.update(updates)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class QuantizeFallback(Pass):
    name = "fallback"
    accepts = (ModelKind.ONNX,)
    produces = ModelKind.ONNX

    def cache_key_parts(self, ctx: PassContext) -> dict:
        recipe, cfg = ctx.recipe, ctx.recipe.quantize
        return {"quantize": cfg.model_dump(mode="json"), "sensitivity": recipe.sensitivity.model_dump(mode="json"),
                "fallback": recipe.fallback.model_dump(mode="json"),
                "gates": {"max_drop": recipe.gates.max_drop, "drop_type": recipe.gates.drop_type},
                "max_length": recipe.max_length, "seed": recipe.seed,
                "calibration": dataclasses.replace(ctx.calibration.head(cfg.static.calibration_examples), labels=None).content_hash(),
                "selection": ctx.selection.content_hash(),
                "reference_selection_score": ctx.reference_selection_score,
                "capabilities": dataclasses.asdict(ctx.target.capabilities),
                "scoring": {"threads": recipe.latency.threads, "iterations": recipe.latency.iterations,
                            "warmup": recipe.latency.warmup, "eval_batch_size": recipe.eval.batch_size},
                # the cache hashes this module's code; the ranking and re-quantization live in these
                "helpers": {name: file_digest(Path(module.__file__))
                            for name, module in (("sensitivity", sensitivity), ("ort_int8", ort_int8))}}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        from mcompress.passes.quantize.sensitivity import Requantizer, ranking

        recipe = ctx.recipe
        mode, float_graph = state.annotations.get("quantization"), state.annotations.get("float_graph")
        if not mode or mode in ("fp32", "none") or float_graph is None:
            return PassResult(state, False, {"skipped": "the model is not quantized"})
        gates = recipe.gates
        score = _Scorer(state, ctx)
        started = time.perf_counter()
        initial = score(state.onnx_path, "fallback: INT8 as quantized")
        metrics: dict = {"quantization": f"{mode}/{state.annotations.get('graph')}", "examples": len(score.selection),
                         "drop_type": gates.drop_type, "max_drop": gates.max_drop, "margin": recipe.fallback.margin,
                         "reference_selection_score": ctx.reference_selection_score, "initial": initial}
        needed = recipe.fallback.enabled and not initial["within_budget"]
        skipped = ("within budget: no layer left in float" if initial["within_budget"]
                   else "over budget, but fallback.enabled is false")
        if not needed and recipe.sensitivity.run != "always":
            metrics.update(skipped=skipped, float_layers=[])
            return PassResult(state, False, metrics)

        requantizer = Requantizer(mode, Path(float_graph), state, ctx, ctx.work_dir / "fallback")
        key = json_digest(self.cache_key_parts(ctx), file_digest(Path(state.onnx_path)))[:24]
        log = _SearchLog(Path(ctx.resume_dir or ctx.work_dir) / f"fallback-{key}.json")
        layer_sensitivity, resumed = _layer_sensitivity(log, requantizer, Path(float_graph), state, ctx)
        if resumed is not None:
            metrics["resumed"] = resumed
        metrics["sensitivity"] = layer_sensitivity
        if not needed:
            metrics.update(skipped=skipped, float_layers=[])
            log.remove()
            return PassResult(state, False, metrics)

        candidates, stopped, search_started = _search(ranking(layer_sensitivity), initial, requantizer, score, log,
                                                      state, ctx)
        best, reason = _chosen(candidates, requantizer)
        log.remove()
        _remove_unkept(candidates, best)
        metrics.update({
            "candidates": [{k: v for k, v in c.items() if k != "path"} for c in candidates],
            "chosen_step": best["step"], "float_layers": best["float_layers"], "float_nodes": best["float_nodes"],
            "latency_cost_ms": best["latency_cost_ms"], "passed": best["within_budget"], "reason": reason,
            "stopped": stopped, "search_seconds": round(time.perf_counter() - search_started, 2),
            "seconds": round(time.perf_counter() - started, 2)})
        logger.info("fallback: kept %d layers in float (%s); stopped: %s", best["step"], reason, stopped)
        if best["step"] == 0:
            return PassResult(state, False, metrics)
        kept = dataclasses.replace(state, model_file=Path(best["path"]),
                                   annotations={**state.annotations, "float_layers": best["float_layers"]})
        return PassResult(kept, True, metrics)


class _Scorer:
    """Scores a model file as the final gate will, on the selection split: the task's score, its
    drop from the FP32 reference, whether that is within budget (less ``fallback.margin``), and the
    p50 latency at batch 1, sequence 128."""

    def __init__(self, state: ModelState, ctx: PassContext):
        self.ctx, self.tokenizer = ctx, state.tokenizer
        self.selection = ctx.selection.head(ctx.recipe.quantize.selection_examples)
        self.timing_inputs = latency_inputs(state.tokenizer, self.selection.texts, 1, 128)

    def __call__(self, path: Path, what: str) -> dict:
        ctx, recipe = self.ctx, self.ctx.recipe
        gates = recipe.gates
        runner = ctx.target.runner(path, recipe.latency.threads)
        result = ctx.task.evaluate(runner, self.tokenizer, self.selection, recipe.max_length, recipe.eval.batch_size,
                                   what=what)
        drop = metric_drop(ctx.reference_selection_score, result.score, gates.drop_type)
        latency = measure_latency(runner, self.timing_inputs, recipe.latency.warmup, recipe.latency.iterations)
        return {"score": round(result.score, 6), "macro_f1": round(result.macro_f1, 6),
                "drop": round(drop, 4), "within_budget": round(drop, 9) <= gates.max_drop - recipe.fallback.margin,
                "p50_ms_b1_s128": round(latency.p50_ms, 3)}


def _layer_sensitivity(log: _SearchLog, requantizer, float_graph: Path, state: ModelState, ctx: PassContext):
    """(the sensitivity ranking, {"candidates": n} when resumed else None): read back from an
    interrupted search's log, else measured and logged."""
    from mcompress.passes.quantize.sensitivity import find_layers, measure_sensitivity

    recipe = ctx.recipe
    if "sensitivity" in log.data:
        resumed = {"candidates": len(log.data.get("candidates", []))}
        logger.info("fallback: resuming an interrupted search (%d candidates done)", resumed["candidates"])
        return log.data["sensitivity"], resumed
    layers = find_layers(float_graph, Path(state.onnx_path), requantizer.op_types, recipe.sensitivity.granularity)
    measured = measure_sensitivity(layers, requantizer, Path(state.onnx_path), state, ctx,
                                   recipe.sensitivity.max_seconds, recipe.sensitivity.examples)
    log.save(sensitivity=measured)
    return measured, None


def _search(ranked: list, initial: dict, requantizer, score: _Scorer, log: _SearchLog, state: ModelState,
            ctx: PassContext):
    """Leave the top 1, 2, 3, ... ranked layers in float until a candidate passes or a limit is
    reached; candidates finished by an interrupted run are taken from the log (their files were not
    kept). (candidates, step 0 being the INT8 model; why the search stopped; when it started)."""
    fallback = ctx.recipe.fallback
    candidates = [{"step": 0, "float_layers": [], "float_nodes": [], **initial, "latency_cost_ms": 0.0,
                   "path": Path(state.onnx_path)}]
    limit = min(fallback.max_layers, len(ranked))
    search_started = time.perf_counter()
    stopped = "no layers to leave in float" if not ranked else f"max_layers ({limit} layers in float)"
    advance = ctx.progress("float fallback", limit) if ctx.progress else (lambda n: None)
    finished = log.data.get("candidates", [])  # from an interrupted run: measured, files not kept
    for k in range(1, limit + 1):
        if k <= len(finished):
            candidates.append({**finished[k - 1], "path": None})
            advance(1)
            if finished[k - 1]["within_budget"]:
                stopped = "passed"
                break
            continue
        if time.perf_counter() - search_started > fallback.max_seconds:
            stopped = f"max_seconds ({fallback.max_seconds:g} s)"
            break
        candidates.append(_measure_candidate(k, ranked, initial, requantizer, score))
        log.save(candidates=[{name: v for name, v in c.items() if name != "path"} for c in candidates[1:]])
        advance(1)
        if candidates[-1]["within_budget"]:
            stopped = "passed"
            break
    return candidates, stopped, search_started


def _measure_candidate(k: int, ranked: list, initial: dict, requantizer, score: _Scorer) -> dict:
    """Quantize the float graph again with the top ``k`` ranked layers left in float, and score it."""
    chosen_layers = ranked[:k]
    nodes = [n for layer in chosen_layers for n in layer["nodes"]]
    path = requantizer.build(nodes, f"candidate-{k}")
    c = score(path, f"fallback candidate with {k} layers in float")
    logger.info("fallback: %d layers in float: score %.4f, drop %.3f, p50 %.2f ms", k, c["score"],
                c["drop"], c["p50_ms_b1_s128"])
    return {"step": k, "float_layers": [layer["layer"] for layer in chosen_layers], "float_nodes": nodes,
            **c, "latency_cost_ms": round(c["p50_ms_b1_s128"] - initial["p50_ms_b1_s128"], 3), "path": path}


def _chosen(candidates: list[dict], requantizer) -> tuple[dict, str]:
    """The candidate kept (its file rebuilt when it was measured before an interruption) and why."""
    # in step order: on equal latency (or score) the fewest layers in float wins
    choice = fastest_within_budget(candidates, lambda c: c["within_budget"], lambda c: c["p50_ms_b1_s128"],
                                   lambda c: c["score"])
    best = choice.chosen
    reason = ("fastest candidate within the accuracy budget" if choice.within_budget
              else "no candidate within budget; kept the most accurate")
    if best["path"] is None:  # measured before an interruption: rebuild it (quantization is deterministic)
        best["path"] = requantizer.build(best["float_nodes"], f"candidate-{best['step']}")
    return best, reason


def _remove_unkept(candidates: list[dict], best: dict) -> None:
    """Delete every candidate's files but the kept one's: only that is needed later."""
    import shutil

    for c in candidates:
        if c is not best and c["step"] and c["path"] is not None:
            shutil.rmtree(Path(c["path"]).parent, ignore_errors=True)
