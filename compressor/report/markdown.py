"""report.json (for machines and CI), report.md (the summary a person reads first) and report.html
(the same with plots, self-contained: report/html.py)."""

from __future__ import annotations

import json
from pathlib import Path

from mcompress.core.sections import Table
from mcompress.core.task import UNRECORDED_TASK, Task, get_task

REPORT_SCHEMA = 1
def artifact_measured(report: dict) -> bool:
    """False when the gates ran on a stand-in because the target's own artifact cannot run here
    (a TensorRT engine without a GPU): its accuracy and latency are then unmeasured."""
    return bool((report.get("target_build") or {}).get("engine_measured", True))


def verdict(report: dict) -> str:
    """PASS, FAIL, or UNVERIFIED: every gate passed, but on a stand-in, not the deployed artifact."""
    if not report["passed"]:
        return "FAIL"
    return "PASS" if artifact_measured(report) else "UNVERIFIED"


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    from mcompress.report.html import render_html

    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}"


def _acc(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _reference_b1(report: dict, passes: list[dict]) -> float | None:
    """The FP32 original's p50 at the shape the passes were timed at (batch 1)."""
    shape = next(([p["latency"]["batch_size"], p["latency"]["sequence_length"]] for p in passes if p.get("latency")), None)
    for r in report["latency"]["reference"]:
        if shape and [r["batch_size"], r["sequence_length"]] == shape:
            return r["p50_ms"]
    return None


def _pass_ms(p: dict) -> float | None:
    return (p.get("latency") or {}).get("p50_ms")


def report_task(report: dict) -> Task:
    """The task of the model a report is about (reports without one are a classifier's)."""
    return get_task((report.get("source") or {}).get("task", UNRECORDED_TASK))


def metric_columns(report: dict) -> list[tuple[str, str]]:
    """(title, key) of the two metric columns of the pass tables and charts: the gated metric
    first, then the task's other figure (Task.summary_columns)."""
    return list(report_task(report).summary_columns)


def table_lines(table: Table) -> list[str]:
    """A report section as Markdown: its heading, the table, then its notes."""
    lines = ["", f"## {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return lines + [f"\n{note}" for note in table.notes]


def task_lines(report: dict) -> list[str]:
    """The task's own sections (Task.report_tables, e.g. a tagger's per entity scores)."""
    return [line for table in report_task(report).report_tables(report) for line in table_lines(table)]


def _gflops(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e9:.3g}"


def render_markdown(report: dict) -> str:
    ref = report["reference"]
    stand_in = "" if artifact_measured(report) else (
        f"**The deployed artifact was not measured**: the gates ran on "
        f"{report['target_build'].get('gated_artifact', 'a stand-in')}. {report['target_build'].get('reason', '')}\n\n")
    lines = [
        f"# mcompress build: {verdict(report)}",
        "",
        stand_in + f"Target **{report['target']}**, recipe **{report['recipe']['name']}**, source `{report['source']['path']}` "
        f"(sha256 {report['source']['sha256'][:12]}…), eval data `{report['data']['eval']['source']}` "
        f"({report['data']['eval']['examples']} examples).",
        "",
        "## Gates",
        "",
        "| gate | value | budget | 95% CI | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for g in report["gates"]:
        ci = f"[{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]" if g.get("ci95") else "–"
        op = "≥" if g["name"] == "speedup" else "≤"
        lines.append(f"| {g['name']} | {g['value']:.3f} {g['unit']} | {op} {g['threshold']} | {ci} | "
                     f"{'pass' if g['passed'] else '**FAIL**'} | {g['detail']} |")
    (first_title, first), (second_title, second) = metric_columns(report)
    lines += ["", "## Passes", "", f"| pass | wall s | size MB | {first_title} | {second_title} | p50 ms (batch 1) | GFLOPs (seq 128) | notes |",
              "|---|---|---|---|---|---|---|---|",
              f"| original (PyTorch FP32) | – | {_mb(ref['size_bytes'])} | {_acc(ref.get(first))} | {_acc(ref.get(second))} | "
              f"{_ms(_reference_b1(report, report['passes']))} | {_gflops(ref.get('flops_seq128'))} | |"]
    for p in report["passes"]:
        notes = ", ".join(f"{k}={v}" for k, v in p["metrics"].items()
                          if k in ("fused_operators", "chosen", "parity_max_abs_diff", "skipped", "heads_per_layer",
                                   "ffn_size", "sparsity", "steps", "best_step", "selection_accuracy", "float_layers",
                                   "latency_cost_ms", "quantized_operations"))
        if p.get("gate"):
            notes += f"{', ' if notes else ''}gate {'pass' if p['gate']['passed'] else 'FAIL'} ({p['gate']['value']:.3f} {p['gate']['unit']})"
        lines.append(f"| {p['name']} | {p['wall_s']:.1f} | {_mb(p['size_bytes'])} | {_acc(p.get(first))} | "
                     f"{_acc(p.get(second))} | {_ms(_pass_ms(p))} | {_gflops(p.get('flops_seq128'))} | {notes} |")
    lines += ["", "## Latency (ms, same process)", "",
              "| batch | sequence | PyTorch FP32 p50 | p95 | build p50 | p95 | speedup (p50) |", "|---|---|---|---|---|---|---|"]
    for r, c in zip(report["latency"]["reference"], report["latency"]["build"]):
        lines.append(f"| {c['batch_size']} | {c['sequence_length']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{c['p50_ms']:.2f} | {c['p95_ms']:.2f} | {r['p50_ms'] / c['p50_ms']:.2f}× |")
    lines += _cpu_auto_lines(report.get("cpu_auto"))
    lines += task_lines(report)
    lines += _target_build_lines(report.get("target_build"), report)
    lines += _fallback_markdown(report)
    art = report["artifact"]
    lines += ["", f"Build size {_mb(art['model_bytes'])} MB = {art['size_ratio']:.3f}× the FP32 checkpoint "
              f"({_mb(ref['size_bytes'])} MB). Quantization: {art.get('quantization', 'none')} on the {art.get('graph') or 'exported'} graph.", ""]
    return "\n".join(lines)


def _target_build_lines(tb: dict | None, report: dict | None = None) -> list[str]:
    """What a target's build step recorded (e.g. a TensorRT engine), and whether the gated
    artifact is the target's own or a stand-in."""
    if not tb:
        return []
    if tb.get("openvino"):
        return _openvino_build_lines(tb, report or {})
    lines = ["", "## Target build", ""]
    if tb.get("engine_measured") is False:
        lines.append(f"**Not measured on the target:** {tb.get('reason', '')} The gates above ran on "
                     f"{tb.get('gated_artifact')}; the latency table is that stand-in's, not the engine's, "
                     "and latency gates were not applied.")
        lines.append("")
    package = tb.get("package") or {}
    gpu = tb.get("gpu") or {}
    build = tb.get("build") or {}
    lines.append(f"- engine: {tb.get('engine_file') or 'not built'}"
                 + (f" ({_mb(build.get('engine_bytes'))} MB, built in {build.get('build_s')} s, {tb.get('build_mode')})"
                    if tb.get("engine_file") else ""))
    lines.append(f"- builder: {package.get('distribution') or package.get('module') or 'none installed'} {package.get('version') or ''}".rstrip())
    lines.append(f"- GPU: {gpu.get('name', 'none')}" + (f" (compute capability {gpu['compute_capability']}, CUDA {gpu.get('cuda')})" if gpu else ""))
    if tb.get("compiled_for"):
        cc = tb["compiled_for"]
        lines.append(f"- compiled for: {', '.join(cc) if isinstance(cc, list) else cc}")
    profile = tb.get("profile") or {}
    if profile:
        b, q = profile.get("batch", {}), profile.get("sequence", {})
        lines.append(f"- optimization profile: batch {b.get('min')}/{b.get('opt')}/{b.get('max')}, "
                     f"sequence {q.get('min')}/{q.get('opt')}/{q.get('max')} (min/opt/max)")
    return lines



def _openvino_build_lines(tb: dict, report: dict) -> list[str]:
    compiled, requested = tb.get("compiled") or {}, tb.get("requested") or {}
    lines = ["", "## Target build (OpenVINO)", "",
             f"- runtime: openvino {tb['openvino'].split('-')[0]} on {tb.get('device', 'CPU')}, NNCF {tb.get('nncf')}",
             f"- compiled with: inference precision {compiled.get('inference_precision')} (asked "
             f"{requested.get('inference_precision')}), {compiled.get('inference_num_threads')} threads, "
             f"performance hint {compiled.get('performance_hint')}, {compiled.get('num_streams')} stream(s)",
             f"- quantization: {tb.get('quantization')}"]
    quantize = next((p["metrics"] for p in report.get("passes", []) if p["name"] == "quantize"), {})
    control = quantize.get("accuracy_control")
    if control:
        reverted = control.get("reverted_operations") or []
        lines.append(f"- NNCF accuracy control on the selection split ({control['selection_examples']} examples, budget "
                     f"{control['budget']} {control['drop_type']}): FP32 IR {_acc(control.get('fp32_selection_accuracy'))}, "
                     f"fully INT8 {_acc(control.get('int8_selection_accuracy'))}; {control.get('nncf_verdict')}")
        lines.append(f"- reverted to float: {', '.join(f'`{n}`' for n in reverted) if reverted else 'nothing'} "
                     f"({quantize.get('quantized_operations')} of {control.get('quantized_operations_before')} "
                     "quantized operations stay INT8)")
    elif quantize:
        lines.append("- accuracy control off (openvino.accuracy_control: false): plain nncf.quantize")
    return lines


def _cpu_auto_lines(choice: dict | None) -> list[str]:
    """Which CPU target cpu-auto kept, why, and both candidates' numbers."""
    if not choice:
        return []
    lines = ["", "## CPU target choice (cpu-auto)", "", f"**Kept {choice['chosen']}**: {choice['reason']}", "",
             f"Criterion: {choice['criterion']}", "",
             "| target | gates | accuracy | drop (points) | b1 p50 ms | b1 p95 ms | b8 p50 ms | b8 p95 ms | model MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in choice["candidates"].items():
        lat = c.get("race") or {}
        cells = [_ms((lat.get(k) or {}).get(q)) for k in ("b1", "b8") for q in ("p50_ms", "p95_ms")]
        lines.append(f"| {name} | {'pass' if c['passed'] else '**FAIL**'} | {_acc(c['accuracy'])} | {c['accuracy_drop']:.3f} | "
                     f"{' | '.join(cells)} | {_mb(c['model_bytes'])} |")
    lines += ["", f"Latency measured in one process, interleaved ({choice['race_rounds']} rounds), at sequence "
                  f"{choice['sequence_length']}; other processes' CPU during the race: {choice.get('other_processes_cpu_percent')}%."]
    return lines


def _fallback_markdown(report: dict) -> list[str]:
    """Layers left in float by the fallback pass, and the sensitivity ranking it used."""
    fallback = next((p["metrics"] for p in report["passes"] if p["name"] == "fallback"), None)
    if not fallback or "initial" not in fallback:
        return []
    unit = "% rel." if fallback.get("drop_type") == "relative" else "points"
    initial = fallback["initial"]
    lines = ["", "## Float fallback (selection split)", "",
             f"INT8 model ({fallback['quantization']}): accuracy {initial['score']:.4f}, drop {initial['drop']:.3f} {unit} "
             f"(budget {fallback['max_drop']}, fallback margin {fallback.get('margin', 0)}), p50 {initial['p50_ms_b1_s128']:.2f} ms at batch 1, sequence 128."]
    if "candidates" in fallback:
        kept = fallback["float_layers"]
        lines += ["", f"Kept in float: {', '.join(f'`{k}`' for k in kept) or 'nothing'} "
                      f"(latency cost {fallback['latency_cost_ms']:+.2f} ms; {fallback['reason']}; stopped: {fallback['stopped']}).",
                  "", "| step | layers in float | accuracy | drop | within budget | p50 ms | cost ms |", "|---|---|---|---|---|---|---|"]
        for c in fallback["candidates"]:
            added = f"+`{c['float_layers'][-1]}`" if c["float_layers"] else "– (INT8 as quantized)"
            lines.append(f"| {c['step']} | {added} | {c['score']:.4f} | {c['drop']:.3f} | "
                         f"{'yes' if c['within_budget'] else 'no'} | {c['p50_ms_b1_s128']:.2f} | {c['latency_cost_ms']:+.2f} |")
    elif fallback.get("skipped"):
        lines += ["", fallback["skipped"] + "."]
    sens = fallback.get("sensitivity")
    if sens:
        lines += ["", f"Sensitivity ({sens['examples']} examples; ranked by {sens['ranked_by']}; fully INT8: accuracy "
                      f"{sens['int8']['accuracy']:.4f}, mean KL {sens['int8']['mean_kl']:.3g}; FP32 ONNX accuracy "
                      f"{sens['fp32_onnx_accuracy']:.4f}):", "",
                  "| rank | layer | accuracy with it in float | Δ points | mean KL | KL reduction | max abs logit diff |",
                  "|---|---|---|---|---|---|---|"]
        for row in sens["layers"][:15]:
            lines.append(f"| {row['rank']} | `{row['layer']}` | {row['accuracy']:.4f} | {row['accuracy_change_points']:+.2f} | "
                         f"{row['mean_kl']:.3g} | {row['kl_reduction']:.3g} | {row['max_abs_logit_diff']:.3g} |")
        if len(sens["layers"]) > 15:
            lines.append(f"| … | {len(sens['layers']) - 15} more in report.json | | | | | |")
        if sens["unmeasured"]:
            lines.append(f"\nNot measured (time budget): {len(sens['unmeasured'])} layers.")
    return lines
