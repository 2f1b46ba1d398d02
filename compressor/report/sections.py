"""The report's sections, built once from a Report as blocks (report/blocks.py); report.md and
report.html render this one list.

Order: the verdict and what was built, the gates, the passes, latency, the cpu-auto choice, the
quantize/fallback candidates, the float fallback and its sensitivity ranking; then the sections a
task or a target contributes (report/contributed.py, then ``Report.sections``); then the footer.
"""

from __future__ import annotations

from mcompress.core.sections import Table
from mcompress.report.blocks import (BarChart, Block, ChartRow, Heading, LongTable, Paragraph, RankingChart, ScatterChart,
                                     VerdictHeading, verdict_cell)
from mcompress.report.contributed import contributed_sections
from mcompress.report.formats import gflops, mb, ms, ratio, score
from mcompress.report.schema import CpuAutoChoice, PassEntry, Report

SENSITIVITY_PREVIEW_ROWS = 15  # rows of the sensitivity table in report.md (all of them in report.html)
SENSITIVITY_CHART_ROWS = 40
PASS_NOTE_KEYS = ("fused_operators", "chosen", "parity_max_abs_diff", "skipped", "heads_per_layer", "ffn_size", "sparsity",
                  "steps", "best_step", "selection_accuracy", "float_layers", "latency_cost_ms", "quantized_operations",
                  "vocabulary_kept", "vocabulary_before")


def build_sections(report: Report) -> list[Block]:
    blocks: list[Block] = [VerdictHeading(report.verdict()), *_intro(report), _gates(report), *_as_deployed(report),
                           *_passes(report), _latency(report), *_distance_to_limit(report)]
    metric = report.metric.replace("_", " ")
    blocks += _cpu_auto(report.cpu_auto, metric) + _candidates(report)
    fallback = _pass_metrics(report, "fallback")
    blocks += _fallback(fallback, metric) + _sensitivity(fallback)
    blocks += contributed_sections(report) + list(report.sections)
    return blocks + [_footer(report)]


def _pass_metrics(report: Report, name: str) -> dict:
    return next((p.metrics for p in report.passes if p.name == name), {})


def _intro(report: Report) -> list[Block]:
    art, ref, tb = report.artifact, report.reference, report.target_build or {}
    stand_in = ([] if report.artifact_measured() else
                [Paragraph(f"**The deployed artifact was not measured**: the gates ran on "
                           f"{tb.get('gated_artifact', 'a stand-in')}. {tb.get('reason', '')}".rstrip())])
    kept = ", ".join(f"`{layer}`" for layer in art.float_layers)
    seg = report.data.eval.segmentation
    vocabulary = ([Paragraph(f"The build has its own (pruned) vocabulary: on the eval texts "
                             f"{seg['tokens_out_of_vocabulary']:.2%} of the original tokens are not in it and "
                             f"{seg['texts_resegmented']:.2%} of the texts segment differently; the gates measured the effect.")]
                  if seg else [])
    launch = report.distributed
    launched = ([Paragraph(f"Built under a distributed launch: {launch.world_size} processes, backend {launch.backend}; "
                           "distillation ran data-parallel, everything else on rank 0.")] if launch else [])
    return stand_in + vocabulary + launched + [
        Paragraph(f"Target **{report.target}**, recipe **{report.recipe.get('name', '')}**, source `{report.source.path}` "
                  f"(sha256 {report.source.sha256[:12]}…), eval data `{report.data.eval.source}` "
                  f"({report.data.eval.examples} examples)."),
        Paragraph(f"Build size {mb(art.model_bytes)} MB = {ratio(art.size_ratio)}× the FP32 checkpoint "
                  f"({mb(ref.size_bytes)} MB). Quantization: {art.quantization} on the {art.graph or 'exported'} graph"
                  + (f"; layers kept in float: {kept}" if kept else "") + "."),
    ]


def _gates(report: Report) -> Table:
    rows = tuple((g.name, f"{g.value:.3f} {g.unit}", f"{'≥' if g.name == 'speedup' else '≤'} {g.threshold}",
                  f"[{g.ci95[0]:.2f}, {g.ci95[1]:.2f}]" if g.ci95 else "–", verdict_cell(g.passed), g.detail)
                 for g in report.gates)
    return Table("Gates", ("gate", "value", "budget", "95% CI", "verdict", "detail"), rows)


def _as_deployed(report: Report) -> list[Block]:
    """The build at each batching it was gated at, and whether its answers depend on the batching."""
    deployed = report.as_deployed
    if deployed is None:
        return []
    metric = report.metric.replace("_", " ")
    rows = tuple(("each text alone" if m.batch_size == 1 else f"batches of {m.batch_size} (length-bucketed)",
                  score(report.shown_score(m.score)), f"{m.drop:.2f}", f"[{m.ci95[0]:.2f}, {m.ci95[1]:.2f}]" if m.ci95 else "–",
                  f"{m.agreement:.2%}", "gated" if m.batch_size == deployed.gated_batch_size else "")
                 for m in deployed.modes)
    table = Table(f"Accuracy as deployed ({metric})", ("batching", metric, "drop", "95% CI",
                                                        "predictions equal to the first batching", ""), rows)
    diff = deployed.max_logit_difference
    # Dynamic INT8 scales each activation by the range of the whole padded batch; with fixed scales (static,
    # NNCF, float) only the kernels differ: a batch takes other GEMM blockings and summation orders than one row.
    cause = ("dynamically quantized INT8 takes activation ranges over the padded batch"
             if "dynamic" in report.artifact.quantization else
             "its scales are fixed, so the difference is the kernels': a batch runs other GEMM blockings and summation orders")
    note = (f"The build's answers depend on what shares a batch (largest logit difference between batchings "
            f"{diff:.2g} > {deployed.tolerance:g}; {cause}): the gate took the worst batching." if deployed.batch_dependent else
            f"The build's answers do not depend on the batching (largest logit difference {diff:.2g})." if diff is not None
            else "")
    return [table, Paragraph(note)] if note and len(deployed.modes) > 1 else [table]


def _pass_notes(p: PassEntry) -> str:
    notes = ", ".join(f"{k}={v}" for k, v in p.metrics.items() if k in PASS_NOTE_KEYS)
    if p.gate:
        notes += (f"{', ' if notes else ''}gate {'pass' if p.gate.passed else 'FAIL'} "
                  f"({p.gate.value:.3f} {p.gate.unit})")
    return notes


def _passes(report: Report) -> list[Block]:
    """The passes table (original, each pass, the build) and its four bar charts."""
    (first_title, first), (second_title, second) = report.metric_columns()
    ref, build, art = report.reference, report.build, report.artifact
    shape = report.pass_shape()
    timed = report.latency_at(*shape) if shape else next(((r, b) for r, b in report.latency.pairs() if b.batch_size == 1), None)
    ref_ms, build_ms = (timed[0].p50_ms, timed[1].p50_ms) if timed else (None, None)
    rows = [("original (PyTorch FP32)", "–", mb(ref.size_bytes), score(getattr(ref, first)), score(getattr(ref, second)),
             ms(ref_ms if shape else None), gflops(ref.flops_seq128), "", "")]
    rows += [(p.name, f"{p.wall_s:.1f}", mb(p.size_bytes), score(getattr(p, first)), score(getattr(p, second)),
              ms(p.p50_ms), gflops(p.flops_seq128), "yes" if p.cached else "", _pass_notes(p)) for p in report.passes]
    rows.append(("build (fresh session)", "–", mb(art.model_bytes), score(getattr(build, first)),
                 score(getattr(build, second)), ms(build_ms if shape else None), "", "", ""))
    table = Table("Passes", ("pass", "wall s", "size MB", first_title, second_title, "p50 ms (batch 1)",
                             "GFLOPs (seq 128)", "cached", "notes"), tuple(rows))
    labels = ("original", *(p.name for p in report.passes), "build")
    figures = lambda key, last: (getattr(ref, key), *(getattr(p, key) for p in report.passes), last)
    shape = shape or (timed and (timed[1].batch_size, timed[1].sequence_length))
    charts = ChartRow((
        BarChart(f"{first_title[0].upper()}{first_title[1:]} (eval data)", labels, figures(first, getattr(build, first)), first_title),
        BarChart(f"{second_title[0].upper()}{second_title[1:]} (eval data)", labels, figures(second, getattr(build, second)),
                 second_title),
        BarChart(f"Latency p50, {f'batch {shape[0]}, sequence {shape[1]}' if shape else 'batch 1'}", labels,
                 (ref_ms, *(p.p50_ms for p in report.passes), build_ms), "ms"),
        BarChart("Model size", labels, tuple(None if s is None else s / 1e6 for s in figures("size_bytes", art.model_bytes)),
                 "MB"),
    ))
    return [table, charts]


def _latency(report: Report) -> Table:
    rows = tuple((str(b.batch_size), str(b.sequence_length), ms(r.p50_ms), ms(r.p95_ms), ms(b.p50_ms), ms(b.p95_ms),
                  f"{r.p50_ms / b.p50_ms:.2f}×") for r, b in report.latency.pairs())
    where = "each in its own process" if report.latency.isolation == "process" else "same process"
    return Table(f"Latency (ms, {where}, interleaved rounds)",
                 ("batch", "sequence", "PyTorch FP32 p50", "p95", "build p50", "p95", "speedup (p50)"), rows)


def _distance_to_limit(report: Report) -> list[Block]:
    limit = report.distance_to_limit
    if limit is None or not limit.shapes:
        return []
    peaks = ", ".join(f"{p.upper()} {v:.0f} GMAC/s" for p, v in limit.peaks_gmacs.items())
    rows = tuple((str(s.batch_size), str(s.sequence_length), f"{s.reference_gmacs:.1f}", f"{s.reference_share:.0%}",
                  f"{s.build_gmacs:.1f}", "–" if s.build_share is None else f"{s.build_share:.0%}") for s in limit.shapes)
    table = Table("Distance to the limit (GMAC/s at p50)", ("batch", "sequence", "PyTorch FP32", "of FP32 peak",
                                                             f"build ({limit.build_precision.upper()})",
                                                             f"of {limit.build_precision.upper()} peak"), rows)
    return [table, Paragraph(f"Peaks measured on this CPU with {limit.kernels}, "
                             f"{' x '.join(map(str, limit.peak_shape))}, same threads: {peaks}. MACs counted for the "
                             "Linear layers and attention matmuls only; time spent elsewhere lowers the share.")]


def _cpu_auto(choice: CpuAutoChoice | None, metric: str) -> list[Block]:
    """Which (CPU target, precision) build the CPU choice kept, why, every candidate's numbers, and
    what this CPU did not offer."""
    if not choice:
        return []
    rows = tuple((name, c.precision or "-", verdict_cell(c.passed), score(c.score if c.score is not None else c.accuracy),
                  ratio(c.drop if c.drop is not None else c.accuracy_drop),
                  *(ms(getattr((c.race or {}).get(b), q, None)) for b in ("b1", "b8") for q in ("p50_ms", "p95_ms")),
                  mb(c.model_bytes)) for name, c in choice.candidates.items())
    note = (f"Latency measured in interleaved rounds ({choice.race_rounds}), at sequence "
            f"{choice.sequence_length}; other processes' CPU during the race: {choice.other_processes_cpu_percent}%.")
    left_out = [f"{name}: {why}" for name, why in choice.offered.items() if why.startswith("not offered")]
    left_out += [f"{name} not built: {why}" for name, why in choice.unavailable.items()]
    blocks = [Heading("CPU target choice (cpu-auto)"), Paragraph(f"**Kept {choice.chosen}**: {choice.reason}"),
              Paragraph(f"Criterion: {choice.criterion}"),
              Table("", ("candidate", "precision", "gates", metric, "drop (points)", "b1 p50 ms", "b1 p95 ms",
                         "b8 p50 ms", "b8 p95 ms", "model MB"), rows, (note,))]
    blocks += [Paragraph("Not raced on this machine: " + "; ".join(left_out) + ".")] if left_out else []
    return blocks + _time_budget(choice.time_budget)


def _time_budget(budget: dict | None) -> list[Block]:
    """The default recipe's time budget: which plans were built, and the figures that decided."""
    if not budget:
        return []
    plans = "; ".join(f"{name}: {plan['reason']}" for name, plan in budget["plans"].items())
    wall = f", {budget['wall_s']:.0f} s used" if budget.get("wall_s") is not None else ""
    skipped = "".join(f" {name} {why}." for name, why in (budget.get("skipped") or {}).items())
    return [Paragraph(f"Time budget {budget['budget_s']:.0f} s{wall}. Plans: {plans}.{skipped}")]


def _gated(candidate: dict) -> float:
    """A candidate's gated metric on the selection split ("accuracy" in reports before tasks)."""
    return candidate["score"] if "score" in candidate else candidate["accuracy"]


def _budget_floor(report: Report, quantize: dict, fallback: dict) -> tuple[float, str] | None:
    """The lowest selection accuracy within the recipe's budget, for the candidates chart."""
    gates = report.recipe.get("gates", {})
    ref_acc = fallback.get("reference_selection_score", fallback.get("reference_selection_accuracy"))
    if ref_acc is None and quantize.get("candidates"):
        first = next(iter(quantize["candidates"].values()))
        if "drop_points" in first and gates.get("drop_type", "absolute") == "absolute":
            ref_acc = _gated(first) + first["drop_points"] / 100
    if ref_acc is None:
        return None
    floor = (ref_acc * (1 - gates["max_drop"] / 100) if gates.get("drop_type") == "relative"
             else ref_acc - gates["max_drop"] / 100)
    return floor, f"budget floor {floor:.4f}"


def _candidates(report: Report) -> list[Block]:
    """Accuracy against latency of every candidate the quantize and fallback passes scored
    (selection split, batch 1, sequence 128)."""
    series, chosen = [], None
    quantize, fallback = _pass_metrics(report, "quantize"), _pass_metrics(report, "fallback")
    if quantize.get("candidates"):
        series.append(("quantize candidates", tuple((c["p50_ms_b1_s128"], _gated(c), name)
                                                    for name, c in quantize["candidates"].items())))
        kept = quantize["candidates"].get(quantize.get("chosen"))
        chosen = (kept["p50_ms_b1_s128"], _gated(kept)) if kept else None
    if fallback.get("candidates"):
        series.append(("fallback candidates", tuple((c["p50_ms_b1_s128"], _gated(c), f"{c['step']} layers in float")
                                                    for c in fallback["candidates"])))
        best = next((c for c in fallback["candidates"] if c["step"] == fallback.get("chosen_step")), None)
        chosen = (best["p50_ms_b1_s128"], _gated(best)) if best else chosen
    if not series:
        return []
    return [ScatterChart("Candidates", "Every model the quantize pass (mode × graph) and the fallback pass (layers in float) "
                         "scored; the dashed line is the lowest score of the gated metric within the budget.",
                         "Accuracy vs latency of the candidates tried (selection split, batch 1, sequence 128)",
                         tuple(series), "p50 latency, ms", report.metric.replace("_", " "),
                         _budget_floor(report, quantize, fallback), chosen)]


def _fallback(fallback: dict, report_metric: str) -> list[Block]:
    """Layers left in float by the fallback pass, and every step it tried."""
    if "initial" not in fallback:
        return []
    unit = "% rel." if fallback.get("drop_type") == "relative" else "points"
    initial = fallback["initial"]
    blocks: list[Block] = [
        Heading("Float fallback (selection split)"),
        Paragraph(f"INT8 model ({fallback['quantization']}) on {fallback.get('examples', '?')} selection examples: "
                  f"{report_metric} {_gated(initial):.4f}, drop {initial['drop']:.3f} {unit} (budget {fallback['max_drop']}, fallback "
                  f"margin {fallback.get('margin', 0)}), p50 {initial['p50_ms_b1_s128']:.2f} ms at batch 1, sequence 128.")]
    if "candidates" in fallback:
        kept = ", ".join(f"`{k}`" for k in fallback["float_layers"]) or "nothing"
        blocks.append(Paragraph(f"Kept in float: {kept} (latency cost {fallback['latency_cost_ms']:+.2f} ms; "
                                f"{fallback['reason']}; stopped: {fallback['stopped']})."))
        rows = tuple((str(c["step"]), f"+`{c['float_layers'][-1]}`" if c["float_layers"] else "– (INT8 as quantized)",
                      score(_gated(c)), score(c.get("macro_f1")), f"{c['drop']:.3f}",
                      "yes" if c["within_budget"] else "no", ms(c["p50_ms_b1_s128"]), f"{c['latency_cost_ms']:+.2f}")
                     for c in fallback["candidates"])
        blocks.append(Table("", ("step", "layer added in float", report_metric, "macro-F1", f"drop ({unit})", "within budget",
                                 "p50 ms", "cost ms"), rows))
    elif fallback.get("skipped"):
        blocks.append(Paragraph(fallback["skipped"] + "."))
    return blocks


def _sensitivity(fallback: dict) -> list[Block]:
    """The layer ranking the fallback used: a chart of the top layers, and the table of all."""
    sens = fallback.get("sensitivity")
    if not sens:
        return []
    layers, kept = sens["layers"], set(fallback.get("float_layers") or [])
    charted = layers[:SENSITIVITY_CHART_ROWS]
    more = f" {len(layers) - len(charted)} more layers in the table below." if len(layers) > len(charted) else ""
    chart = RankingChart(f"Layer sensitivity: mean-KL reduction when left in float ({sens['examples']} examples)",
                         tuple(r["layer"] for r in charted), tuple(r["kl_reduction"] for r in charted),
                         "reduction of mean KL(FP32 ONNX || INT8)",
                         tuple(f"(acc {r['accuracy_change_points']:+.1f} pt)" for r in charted),
                         frozenset(i for i, r in enumerate(charted) if r["layer"] in kept),
                         "Red bars: layers the fallback kept in float." + more)
    rows = tuple((str(r["rank"]), f"`{r['layer']}`", ", ".join(r.get("nodes", [])), score(r["accuracy"]),
                  f"{r['accuracy_change_points']:+.2f}", f"{r['mean_kl']:.3g}", f"{r['kl_reduction']:.3g}",
                  f"{r['max_abs_logit_diff']:.3g}") for r in layers)
    table = Table("", ("rank", "layer", "ONNX nodes", "accuracy with it in float", "Δ points", "mean KL", "KL reduction",
                       "max abs logit diff"), rows)
    blocks: list[Block] = [
        Heading("Layer sensitivity"),
        Paragraph(f"{sens['examples']} examples; ranked by {sens['ranked_by']}; fully INT8: accuracy "
                  f"{sens['int8']['accuracy']:.4f}, mean KL {sens['int8']['mean_kl']:.3g}; FP32 ONNX accuracy "
                  f"{sens['fp32_onnx_accuracy']:.4f}; {sens.get('seconds', '–')} s."),
        chart, LongTable(table, SENSITIVITY_PREVIEW_ROWS, "All layers")]
    if sens.get("unmeasured"):
        blocks.append(Paragraph(f"Not measured within sensitivity.max_seconds: {len(sens['unmeasured'])} layers (ranked last)."))
    return blocks


def _footer(report: Report) -> Paragraph:
    versions = {"mcompress": report.mcompress_version, **report.versions}  # older reports lack versions["mcompress"]
    wall = "–" if report.wall_s is None else report.wall_s
    return Paragraph(f"{', '.join(f'{k} {v}' for k, v in versions.items())}; {wall} s.", small=True)
