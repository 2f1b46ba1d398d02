"""Sections that belong to a task or a target, as Tables: a tagger's per-entity scores and a
target's build facts (a TensorRT engine, an OpenVINO compile).

They are built here from the report's data until the Task and Target interfaces contribute their
own Tables (``Report.sections``); both render through the same Table path as every other section.
"""

from __future__ import annotations

from mcompress.core.sections import Table
from mcompress.report.formats import mb, score
from mcompress.report.schema import Report

FACT_COLUMNS = ("fact", "value")


def contributed_sections(report: Report) -> list[Table]:
    tables = [entity_table(report), target_build_table(report)]
    return [t for t in tables if t is not None]


def entity_table(report: Report) -> Table | None:
    """A tagger's per entity type precision/recall/F1, original against build."""
    ref, build = report.reference, report.build
    if not ref.per_entity or not build.per_entity:
        return None
    rows = []
    for kind, r in ref.per_entity.items():
        b = build.per_entity[kind]
        rows.append((kind, str(r.support), *(score(x) for x in (r.precision, r.recall, r.f1, b.precision, b.recall, b.f1)),
                     f"{(b.f1 - r.f1) * 100:+.2f}"))
    rows.append(("all (micro)", str(sum(r.support for r in ref.per_entity.values())),
                 *(score(x) for x in (ref.precision, ref.recall, ref.entity_f1, build.precision, build.recall, build.entity_f1)),
                 f"{(build.entity_f1 - ref.entity_f1) * 100:+.2f}"))
    notes = (f"{ref.truncated_words} words lay beyond max_length and were tagged O.",) if ref.truncated_words else ()
    return Table("Entities (eval data, seqeval semantics)",
                 ("type", "gold entities", "original P", "R", "F1", "build P", "R", "F1", "F1 change (points)"),
                 tuple(rows), notes)


def target_build_table(report: Report) -> Table | None:
    """What a target's build step recorded, and whether the gated artifact is the target's own or a stand-in."""
    tb = report.target_build
    if not tb:
        return None
    if tb.get("openvino"):
        return _openvino_build_table(tb, report)
    package, gpu, build = tb.get("package") or {}, tb.get("gpu") or {}, tb.get("build") or {}
    rows = [("engine", (tb.get("engine_file") or "not built")
             + (f" ({mb(build.get('engine_bytes'))} MB, built in {build.get('build_s')} s, {tb.get('build_mode')})"
                if tb.get("engine_file") else "")),
            ("builder", f"{package.get('distribution') or package.get('module') or 'none installed'} "
                        f"{package.get('version') or ''}".rstrip()),
            ("GPU", gpu.get("name", "none")
             + (f" (compute capability {gpu['compute_capability']}, CUDA {gpu.get('cuda')})" if gpu else ""))]
    if tb.get("compiled_for"):
        compiled = tb["compiled_for"]
        rows.append(("compiled for", ", ".join(compiled) if isinstance(compiled, list) else str(compiled)))
    profile = tb.get("profile") or {}
    if profile:
        b, q = profile.get("batch", {}), profile.get("sequence", {})
        rows.append(("optimization profile", f"batch {b.get('min')}/{b.get('opt')}/{b.get('max')}, "
                                             f"sequence {q.get('min')}/{q.get('opt')}/{q.get('max')} (min/opt/max)"))
    notes = () if tb.get("engine_measured") is not False else (
        f"**Not measured on the target:** {tb.get('reason', '')} The gates above ran on {tb.get('gated_artifact')}; "
        "the latency table is that stand-in's, not the engine's, and latency gates were not applied.",)
    return Table("Target build", FACT_COLUMNS, tuple(rows), notes)


def _openvino_build_table(tb: dict, report: Report) -> Table:
    compiled, requested = tb.get("compiled") or {}, tb.get("requested") or {}
    rows = [("runtime", f"openvino {tb['openvino'].split('-')[0]} on {tb.get('device', 'CPU')}, NNCF {tb.get('nncf')}"),
            ("compiled with", f"inference precision {compiled.get('inference_precision')} (asked "
                              f"{requested.get('inference_precision')}), {compiled.get('inference_num_threads')} threads, "
                              f"performance hint {compiled.get('performance_hint')}, {compiled.get('num_streams')} stream(s)"),
            ("quantization", str(tb.get("quantization")))]
    quantize = next((p.metrics for p in report.passes if p.name == "quantize"), {})
    control = quantize.get("accuracy_control")
    if control:
        reverted = control.get("reverted_operations") or []
        rows.append(("NNCF accuracy control", f"on the selection split ({control['selection_examples']} examples, budget "
                                              f"{control['budget']} {control['drop_type']}): FP32 IR "
                                              f"{score(control.get('fp32_selection_accuracy'))}, fully INT8 "
                                              f"{score(control.get('int8_selection_accuracy'))}; {control.get('nncf_verdict')}"))
        rows.append(("reverted to float", f"{', '.join(f'`{n}`' for n in reverted) if reverted else 'nothing'} "
                                          f"({quantize.get('quantized_operations')} of "
                                          f"{control.get('quantized_operations_before')} quantized operations stay INT8)"))
    elif quantize:
        rows.append(("accuracy control", "off (openvino.accuracy_control: false): plain nncf.quantize"))
    return Table("Target build (OpenVINO)", FACT_COLUMNS, tuple(rows))
