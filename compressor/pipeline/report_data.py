"""Step 5: the report of one target build, from what the earlier steps measured."""

from __future__ import annotations

from mcompress import __version__
from mcompress.core.formats import format_of
from mcompress.core.manager import PassRecord
from mcompress.metrics.machine import library_versions, machine_info
from mcompress.metrics.roofline import PEAK_SHAPE, distance_to_limit
from mcompress.metrics.tokenization import segmentation_change
from mcompress.pipeline.gating import GatedBuild
from mcompress.pipeline.prepare import Prepared
from mcompress.pipeline.reference import Reference
from mcompress.core.provenance import build_provenance
from mcompress.engines import distributed
from mcompress.report.schema import REPORT_SCHEMA, Report


# What the instruments add to a pass's record besides the task's summary (EvalResult.summary()).
INSTRUMENT_KEYS = ("latency", "flops_seq128", "gate")


def _pass_scores(evaluation: dict) -> dict:
    """A pass's figures on the eval data, as the task summarised them; accuracy and macro-F1 are
    None when the pass's model was not evaluated."""
    return {"accuracy": None, "macro_f1": None, **{k: v for k, v in evaluation.items() if k not in INSTRUMENT_KEYS}}


def _pass_entry(r: PassRecord) -> dict:
    return {"name": r.name, "wall_s": round(r.wall_s, 2), "modified": r.modified, "size_bytes": r.size_bytes,
            **_pass_scores(r.evaluation),
            "flops_seq128": r.evaluation.get("flops_seq128"), "gate": r.evaluation.get("gate"),
            "latency": r.evaluation.get("latency"),
            "metrics": r.metrics,
            "cached": r.cached, "cache_key": r.cache_key}


def _data_section(prepared: Prepared, reference: Reference, gated: GatedBuild) -> dict:
    eval_data, data = prepared.eval_data, prepared.data
    resegmented = ({} if gated.tokenizer is reference.tokenizer else  # a pruned vocabulary: how the eval text changed
                   {"segmentation": segmentation_change(reference.tokenizer, gated.tokenizer, eval_data.texts)})
    return {
        "eval": {"source": eval_data.source, "examples": len(eval_data), "sha256": eval_data.content_hash(),
                 "median_tokens": gated.median_tokens, "truncated_fraction": gated.truncated_fraction, **resegmented},
        "selection": {"source": data.selection.source, "examples": len(prepared.selection_data),
                      "sha256": prepared.selection_data.content_hash()},
        "calibration": {"source": data.calibration.source, "examples": len(data.calibration),
                        "sha256": data.calibration.content_hash()},
        "notes": data.notes,
    }


def _distance_to_limit(reference: Reference, state, records: list[PassRecord], gated: GatedBuild) -> dict:
    """The original's and the build's GMAC/s at sequence 128 against this CPU's measured GEMM peaks."""
    build_flops = next((r.evaluation["flops_seq128"] for r in reversed(records) if "flops_seq128" in r.evaluation),
                       reference.flops)
    precision = state.annotations.get("precision", "fp32")
    pairs = list(zip(gated.latency["reference"], gated.latency["build"]))
    return {"peaks_gmacs": gated.gemm_peaks, "peak_shape": list(PEAK_SHAPE), "build_precision": precision,
            "kernels": "onnxruntime MLAS MatMul (fp32) / MatMulInteger u8 x s8 (int8)",
            "shapes": distance_to_limit(reference.flops // 2, build_flops // 2, pairs, gated.gemm_peaks, precision)}


def assemble_report(prepared: Prepared, reference: Reference, target, state, records: list[PassRecord],
                    gated: GatedBuild, wall_s: float) -> Report:
    ckpt = prepared.checkpoint
    report = {
        "schema": REPORT_SCHEMA,
        "mcompress_version": __version__,
        "target": target.name,
        "recipe": prepared.recipe.model_dump(mode="json"),
        "versions": library_versions(),
        "machine": machine_info(),
        "source": {"path": str(ckpt.path), "sha256": ckpt.content_hash, "model_type": ckpt.model_type,
                   "architecture": ckpt.architecture, "task": ckpt.task, "labels": ckpt.id2label},
        "data": _data_section(prepared, reference, gated),
        "metric": prepared.metric,
        "reference": {"runtime": reference.runner.name, **reference.eval.summary(), **prepared.task.report_fields(reference.eval),
                      "size_bytes": reference.size_bytes, "flops_seq128": reference.flops},
        "passes": [_pass_entry(r) for r in records],
        "build": {"runtime": gated.runner.name, **gated.candidate.summary(), **prepared.task.report_fields(gated.candidate)},
        "latency": {**{side: [r.as_dict() for r in results] for side, results in gated.latency.items()},
                    "isolation": prepared.recipe.latency.isolation},
        "gates": [g.as_dict() for g in gated.gates],
        "as_deployed": gated.deployed.as_dict(),
        "distance_to_limit": _distance_to_limit(reference, state, records, gated),
        "passed": gated.passed,
        "artifact": {"model_file": gated.build.model_file.name, "model_bytes": gated.build.model_bytes,
                     "size_ratio": round(gated.build.model_bytes / reference.size_bytes, 4),
                     "quantization": state.annotations.get("quantization", "none"),
                     "float_layers": state.annotations.get("float_layers", []),
                     "graph": state.annotations.get("graph"), "files": gated.files},
        "wall_s": round(wall_s, 1),
    }
    if gated.build.summary:
        report["target_build"] = dict(gated.build.summary)
    session = distributed.active()
    if session is not None:
        report["distributed"] = session.summary()
    if gated.task_latency is not None:  # a task's own latency figures (a decoder's), and their section
        report["task_latency"] = gated.task_latency.figures
        report["sections"] = list(gated.task_latency.tables)
    model_format = format_of(gated.build.model_file)
    model_files = [p.name for p in model_format.files(gated.build.model_file)] if model_format else [gated.build.model_file.name]
    report["provenance"] = build_provenance(report, model_files)
    return Report.model_validate(report)
