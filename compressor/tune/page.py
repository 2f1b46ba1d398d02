"""tune.html: the search as one self-contained page (no script, no URL, styles and charts inline).

The chart is the Pareto front: gated score on the test split against batch-1 p50 latency, one
marker per completed trial with its area proportional to the model's size, drawn at the latency the
final race measured on the machine that ran tune (the figures the front and the choice used; the
workers' own latencies are in the table), the kept build ringed.
"""

from __future__ import annotations

import math

from mcompress.report.html import CSS
from mcompress.report.svg import escape, scatter_chart
from mcompress.tune.results import TrialRecord

MIN_RADIUS, MAX_RADIUS = 3.0, 12.0


def _radius(model_bytes: int | None, largest: int) -> float:
    """Marker area proportional to size: radius ~ sqrt(bytes)."""
    if not model_bytes or not largest:
        return MIN_RADIUS
    return max(MIN_RADIUS, MAX_RADIUS * math.sqrt(model_bytes / largest))


def _chart(records: list[TrialRecord], summary: dict) -> str:
    built = [r for r in records if r.has_build]
    largest = max((r.model_bytes or 0 for r in built), default=0)
    point = lambda r, x: (x, r.score, f"{r.label()}, {(r.model_bytes or 0) / 1e6:.1f} MB", _radius(r.model_bytes, largest))
    series = [("trials (raced here)", [point(r, r.b1_ms) for r in built if not r.on_front]),
              ("front (raced here)", [point(r, r.b1_ms) for r in built if r.on_front])]
    chosen = next((r for r in built if r.trial_id == summary.get("chosen")), None)
    ring = (chosen.b1_ms, chosen.score) if chosen else None
    reference = summary.get("reference_score")
    budget = summary.get("max_drop")
    hline = (reference - budget / 100.0, f"budget: {reference:.4f} - {budget} points") \
        if reference is not None and budget is not None and summary.get("drop_type", "absolute") == "absolute" else None
    return scatter_chart("Pareto front: accuracy vs batch-1 latency (marker area = model size)",
                         [(name, pts) for name, pts in series if pts], "batch-1 p50 latency (ms)",
                         f"{summary.get('metric') or 'score'} (test split)", hline=hline, chosen=ring, width=900, height=460)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return escape(value)


def _trial_table(records: list[TrialRecord]) -> str:
    columns = ["trial", "status", "front", "layers", "heads", "FFN", "quantize", "val score", "test score",
               "drop (pts)", "gates", "worker b1 ms", "raced b1 ms", "size MB", "error"]
    rows = []
    for r in records:
        prune = r.recipe.get("prune") or {}
        kept = [prune.get(k) or "all" for k in ("keep_layers", "heads_per_layer", "ffn_neurons_per_layer")]
        cells = [r.trial_id, r.status, "yes" if r.on_front else "", *kept, (r.recipe.get("quantize") or {}).get("mode"), r.val_score, r.score,
                 r.drop, None if r.passed is None else ("pass" if r.passed else "FAIL"), r.latency_ms,
                 r.raced["b1"]["p50_ms"] if r.raced else None,
                 None if r.model_bytes is None else r.model_bytes / 1e6, r.error]
        rows.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_tune_html(summary: dict, records: list[TrialRecord]) -> str:
    chosen = summary.get("chosen")
    verdict = summary.get("verdict", "")
    lines = [f"<h1>mcompress tune: <span class=\"{'pass' if verdict == 'PASS' else 'fail'}\">{escape(verdict)}</span></h1>",
             f"<p>{escape(summary.get('model_dir', ''))} for {escape(summary.get('target', ''))}: "
             f"{summary.get('trials_completed', 0)} of {len(records)} trials completed, "
             f"{summary.get('trials_stopped', 0)} stopped early, {summary.get('trials_failed', 0)} failed, "
             f"in {summary.get('search_s', 0):.0f} s (budget {summary.get('time_budget_s', 0):.0f} s).</p>",
             f"<p>Kept: <b>{escape(chosen or 'none')}</b>. {escape(summary.get('reason', ''))}</p>",
             f"<p><small>Final race: {escape(summary.get('race_note', ''))}</small></p>",
             _chart(records, summary), "<h2>Trials</h2>", _trial_table(records)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mcompress tune</title>"
            f"<style>{CSS}</style></head><body>" + "".join(lines) + "</body></html>\n")
