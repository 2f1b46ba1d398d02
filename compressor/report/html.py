"""report.html: the report with plots, in one self-contained file.

Plots are inline SVG drawn here (no matplotlib, no JavaScript, no fonts or styles fetched from
anywhere): the file opens offline, in a CI artifact viewer or a browser, and the same report
always gives the same bytes. SVG inside HTML5 needs no namespace declaration, so the file holds
no URL at all.

Charts: accuracy, batch-1 latency and size per pass; the layer sensitivity ranking; accuracy
against latency for every candidate the quantize and fallback passes tried.
"""

from __future__ import annotations

import html
import math
import re

from mcompress.report.markdown import (_cpu_auto_lines, _pass_ms, _reference_b1, _target_build_lines,
                              artifact_measured, metric_columns, task_lines, verdict)

_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d"]


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.3g}"
    return f"{x:.2g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="ct">{_e(title)}</text>' + "".join(body) + "</svg>")


def bar_chart(title: str, labels: list[str], values: list[float | None], unit: str, width: int = 380,
              height: int = 250, colors: list[str] | None = None) -> str:
    """Vertical bars; a missing value is drawn as 'n/a'."""
    left, right, top, bottom = 48, 10, 28, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    present = [v for v in values if v is not None]
    hi = max(present, default=1.0)
    ticks = _ticks(0.0, hi if hi > 0 else 1.0)
    scale = plot_h / (ticks[-1] or 1.0)
    body = []
    for t in ticks:
        y = top + plot_h - t * scale
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>'
                    f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">{_e(_fmt(t))}</text>')
    slot = plot_w / max(1, len(labels))
    bar_w = min(44.0, slot * 0.7)
    for i, (label, v) in enumerate(zip(labels, values)):
        cx = left + slot * (i + 0.5)
        color = (colors or _PALETTE)[i % len(colors or _PALETTE)]
        if v is None:
            body.append(f'<text x="{cx:.1f}" y="{top + plot_h - 4:.1f}" text-anchor="middle" class="tick">n/a</text>')
        else:
            h = max(0.0, v * scale)
            body.append(f'<rect x="{cx - bar_w / 2:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                        f'fill="{color}"><title>{_e(label)}: {_e(_fmt(v))} {_e(unit)}</title></rect>'
                        f'<text x="{cx:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" class="val">{_e(_fmt(v))}</text>')
        body.append(f'<text transform="translate({cx:.1f},{top + plot_h + 10}) rotate(35)" class="tick">{_e(label)}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>'
                f'<text transform="translate(12,{top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" class="tick">{_e(unit)}</text>')
    return _svg(width, height, body, title)


def hbar_chart(title: str, labels: list[str], values: list[float], unit: str, notes: list[str] | None = None,
               width: int = 1000, highlight: set[int] | None = None) -> str:
    """Horizontal bars, one row per label (the sensitivity ranking)."""
    row, top, bottom, left, right = 18, 28, 34, 420, 130
    height = top + bottom + row * max(1, len(labels))
    plot_w = width - left - right
    lo, hi = min(0.0, min(values, default=0.0)), max(0.0, max(values, default=1.0))
    ticks = _ticks(lo, hi if hi > lo else lo + 1.0)
    span = (ticks[-1] - ticks[0]) or 1.0
    x_of = lambda v: left + (v - ticks[0]) / span * plot_w
    body = []
    for t in ticks:
        x = x_of(t)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" class="grid"/>'
                    f'<text x="{x:.1f}" y="{height - bottom + 12}" text-anchor="middle" class="tick">{_e(_fmt(t))}</text>')
    zero = x_of(0.0)
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * row
        x0, x1 = sorted((zero, x_of(v)))
        color = _PALETTE[3] if highlight and i in highlight else _PALETTE[0]
        note = f" {notes[i]}" if notes else ""
        body.append(f'<text x="{left - 6}" y="{y + row * 0.7:.1f}" text-anchor="end" class="tick">{_e(label)}</text>'
                    f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(0.5, x1 - x0):.1f}" height="{row - 4}" fill="{color}">'
                    f'<title>{_e(label)}: {_e(_fmt(v))} {_e(unit)}{_e(note)}</title></rect>'
                    f'<text x="{x1 + 4:.1f}" y="{y + row * 0.7:.1f}" class="val">{_e(_fmt(v))}{_e(note)}</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" class="tick">{_e(unit)}</text>')
    return _svg(width, height, body, title)


def scatter_chart(title: str, series: list[tuple[str, list[tuple[float, float, str]]]], xlabel: str, ylabel: str,
                  hline: tuple[float, str] | None = None, chosen: tuple[float, float] | None = None,
                  width: int = 760, height: int = 380) -> str:
    """Points (x, y, label) per named series; an optional horizontal budget line and a ring on the chosen point."""
    left, right, top, bottom = 60, 170, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts] + ([hline[0]] if hline else [])
    if not xs:
        return ""
    xpad = (max(xs) - min(xs)) * 0.08 or max(abs(max(xs)) * 0.05, 0.01)
    ypad = (max(ys) - min(ys)) * 0.08 or max(abs(max(ys)) * 0.02, 0.005)
    xt, yt = _ticks(min(xs) - xpad, max(xs) + xpad), _ticks(min(ys) - ypad, max(ys) + ypad)
    x_of = lambda v: left + (v - xt[0]) / ((xt[-1] - xt[0]) or 1) * plot_w
    y_of = lambda v: top + plot_h - (v - yt[0]) / ((yt[-1] - yt[0]) or 1) * plot_h
    body = []
    for t in xt:
        body.append(f'<line x1="{x_of(t):.1f}" y1="{top}" x2="{x_of(t):.1f}" y2="{top + plot_h}" class="grid"/>'
                    f'<text x="{x_of(t):.1f}" y="{top + plot_h + 13}" text-anchor="middle" class="tick">{_e(_fmt(t))}</text>')
    for t in yt:
        body.append(f'<line x1="{left}" y1="{y_of(t):.1f}" x2="{left + plot_w}" y2="{y_of(t):.1f}" class="grid"/>'
                    f'<text x="{left - 4}" y="{y_of(t) + 3:.1f}" text-anchor="end" class="tick">{_e(_fmt(t))}</text>')
    if hline:
        y = y_of(hline[0])
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="budget"/>'
                    f'<text x="{left + 4}" y="{y - 4:.1f}" class="tick" fill="#cf222e">{_e(hline[1])}</text>')
    for si, (name, pts) in enumerate(series):
        color = _PALETTE[si % len(_PALETTE)]
        for x, y, label in pts:
            body.append(f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="5" fill="{color}" fill-opacity="0.85">'
                        f'<title>{_e(name)}: {_e(label)} — accuracy {y:.4f}, {x:.3f} ms</title></circle>')
        ly = top + 14 + si * 16
        body.append(f'<circle cx="{left + plot_w + 12}" cy="{ly - 4}" r="5" fill="{color}"/>'
                    f'<text x="{left + plot_w + 22}" y="{ly}" class="tick">{_e(name)}</text>')
    if chosen:
        body.append(f'<circle cx="{x_of(chosen[0]):.1f}" cy="{y_of(chosen[1]):.1f}" r="9" fill="none" stroke="#222" '
                    f'stroke-width="2"><title>kept</title></circle>')
        ly = top + 14 + len(series) * 16
        body.append(f'<circle cx="{left + plot_w + 12}" cy="{ly - 4}" r="6" fill="none" stroke="#222" stroke-width="2"/>'
                    f'<text x="{left + plot_w + 22}" y="{ly}" class="tick">kept</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" class="tick">{_e(xlabel)}</text>'
                f'<text transform="translate(14,{top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" class="tick">{_e(ylabel)}</text>')
    return _svg(width, height, body, title)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Cell content that is already HTML."""


def _inline(text: str) -> _Raw:
    """Escape, then the two markdown marks report.md's sections use: **bold** and `code`."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", _e(text))
    return _Raw(re.sub(r"`(.+?)`", r"<code>\1</code>", out))


def _markdown_section(lines: list[str]) -> str:
    """HTML for one of report.md's section line lists (report.py): headings, paragraphs, bullet
    lists and pipe tables; the markdown and the HTML report then say the same thing."""
    parts, bullets, rows = [], [], []

    def flush():
        if bullets:
            parts.append("<ul>" + "".join(f"<li>{b}</li>" for b in bullets) + "</ul>")
            bullets.clear()
        if rows:
            parts.append(_table(rows[0], [[_inline(c) for c in r] for r in rows[1:]]))
            rows.clear()

    for line in lines + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # not the |---| separator
                rows.append(cells)
            continue
        if line.startswith("- "):
            if rows:
                flush()
            bullets.append(_inline(line[2:]))
            continue
        flush()
        if line.startswith("## "):
            parts.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    return "".join(parts)


def _num(x, fmt: str = ".4f") -> str:
    return "–" if x is None else format(x, fmt)


def _verdict(passed: bool) -> _Raw:
    return _Raw('<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>')


def _pass_charts(report: dict) -> str:
    ref, passes, build = report["reference"], report["passes"], report["build"]
    labels = ["original"] + [p["name"] for p in passes] + ["build"]
    (first_title, first), (second_title, second) = metric_columns(report)
    accuracy = [ref.get(first)] + [p.get(first) for p in passes] + [build.get(first)]
    macro = [ref.get(second)] + [p.get(second) for p in passes] + [build.get(second)]
    sizes = [ref.get("size_bytes")] + [p.get("size_bytes") for p in passes] + [report["artifact"].get("model_bytes")]
    shape = next(([p["latency"]["batch_size"], p["latency"]["sequence_length"]] for p in passes if p.get("latency")), None)
    pairs = list(zip(report["latency"]["reference"], report["latency"]["build"]))
    match = next(((r, b) for r, b in pairs if shape and [b["batch_size"], b["sequence_length"]] == list(shape)),
                 next(((r, b) for r, b in pairs if b["batch_size"] == 1), None))
    ref_ms, build_ms = (match[0]["p50_ms"], match[1]["p50_ms"]) if match else (None, None)
    if match and not shape:
        shape = [match[1]["batch_size"], match[1]["sequence_length"]]
    latency = [ref_ms] + [_pass_ms(p) for p in passes] + [build_ms]
    shape_txt = f"batch {shape[0]}, sequence {shape[1]}" if shape else "batch 1"
    return "".join([
        bar_chart(f"{first_title[0].upper()}{first_title[1:]} (eval data)", labels, accuracy, first_title),
        bar_chart(f"{second_title[0].upper()}{second_title[1:]} (eval data)", labels, macro, second_title),
        bar_chart(f"Latency p50, {shape_txt}", labels, latency, "ms"),
        bar_chart("Model size", labels, [None if s is None else s / 1e6 for s in sizes], "MB"),
    ])


def _candidates(report: dict) -> tuple[list, tuple[float, float] | None, tuple[float, str] | None]:
    """Accuracy-vs-latency points of every candidate (selection split, batch 1, sequence 128)."""
    series, chosen, hline = [], None, None
    passes = {p["name"]: p["metrics"] for p in report["passes"]}
    quantize = passes.get("quantize") or {}
    if quantize.get("candidates"):
        pts = [(c["p50_ms_b1_s128"], c["score"], name) for name, c in quantize["candidates"].items()]
        series.append(("quantize candidates", pts))
        c = quantize["candidates"].get(quantize.get("chosen"))
        if c:
            chosen = (c["p50_ms_b1_s128"], c["score"])
    fallback = passes.get("fallback") or {}
    if fallback.get("candidates"):
        pts = [(c["p50_ms_b1_s128"], c["score"], f"{c['step']} layers in float") for c in fallback["candidates"]]
        series.append(("fallback candidates", pts))
        best = next((c for c in fallback["candidates"] if c["step"] == fallback.get("chosen_step")), None)
        if best:
            chosen = (best["p50_ms_b1_s128"], best["score"])
    gates = report["recipe"]["gates"]
    ref_acc = fallback.get("reference_selection_score")
    if ref_acc is None and quantize.get("candidates"):
        c = next(iter(quantize["candidates"].values()))
        ref_acc = c["score"] + c["drop_points"] / 100 if "drop_points" in c and gates.get("drop_type", "absolute") == "absolute" else None
    if ref_acc is not None:
        floor = (ref_acc * (1 - gates["max_drop"] / 100) if gates.get("drop_type") == "relative"
                 else ref_acc - gates["max_drop"] / 100)
        hline = (floor, f"budget floor {floor:.4f}")
    return series, chosen, hline


def _sensitivity(fallback: dict) -> str:
    sens = fallback.get("sensitivity")
    if not sens:
        return ""
    rows = sens["layers"][:40]
    kept = set(fallback.get("float_layers") or [])
    chart = hbar_chart(f"Layer sensitivity: mean-KL reduction when left in float ({sens['examples']} examples)",
                       [r["layer"] for r in rows], [r["kl_reduction"] for r in rows], "reduction of mean KL(FP32 ONNX || INT8)",
                       notes=[f"(acc {r['accuracy_change_points']:+.1f} pt)" for r in rows],
                       highlight={i for i, r in enumerate(rows) if r["layer"] in kept})
    table = _table(["rank", "layer (PyTorch module)", "ONNX nodes", "accuracy in float", "Δ points", "mean KL", "KL reduction",
                    "max |Δ logit|"],
                   [[r["rank"], r["layer"], ", ".join(r["nodes"]), _num(r["accuracy"]), f"{r['accuracy_change_points']:+.2f}",
                     f"{r['mean_kl']:.3g}", f"{r['kl_reduction']:.3g}", f"{r['max_abs_logit_diff']:.3g}"] for r in sens["layers"]])
    more = (f"<p>{len(sens['layers']) - len(rows)} more layers in the table below.</p>" if len(sens["layers"]) > len(rows) else "")
    unmeasured = (f"<p>Not measured within sensitivity.max_seconds: {len(sens['unmeasured'])} layers (ranked last).</p>"
                  if sens["unmeasured"] else "")
    return (f"<h2>Layer sensitivity</h2><p>Ranked by {_e(sens['ranked_by'])}. Fully INT8: accuracy "
            f"{sens['int8']['accuracy']:.4f}, mean KL {sens['int8']['mean_kl']:.3g}; FP32 ONNX accuracy "
            f"{sens['fp32_onnx_accuracy']:.4f}; {sens['seconds']} s. Red bars: layers the fallback kept in float.</p>"
            + chart + more + unmeasured + "<details><summary>All layers</summary>" + table + "</details>")


def _fallback(fallback: dict) -> str:
    if not fallback or "initial" not in fallback:
        return ""
    initial = fallback["initial"]
    unit = "% of reference" if fallback.get("drop_type") == "relative" else "points"
    parts = [f"<h2>Float fallback</h2><p>INT8 model {_e(fallback['quantization'])} on {fallback['examples']} selection "
             f"examples: accuracy {initial['score']:.4f}, drop {initial['drop']:.3f} {unit} (budget {fallback['max_drop']}), "
             f"p50 {initial['p50_ms_b1_s128']:.2f} ms at batch 1, sequence 128.</p>"]
    if fallback.get("candidates"):
        kept = fallback["float_layers"]
        parts.append(f"<p><b>Kept in float:</b> {_e(', '.join(kept) or 'nothing')} — latency cost "
                     f"{fallback['latency_cost_ms']:+.2f} ms; {_e(fallback['reason'])}; stopped: {_e(fallback['stopped'])}.</p>")
        parts.append(_table(["step", "layer added in float", "accuracy", "macro-F1", f"drop ({unit})", "within budget", "p50 ms",
                             "cost ms"],
                            [[c["step"], c["float_layers"][-1] if c["float_layers"] else "– (as quantized)", _num(c["score"]),
                              _num(c.get("macro_f1")), f"{c['drop']:.3f}", _verdict(c["within_budget"]),
                              f"{c['p50_ms_b1_s128']:.2f}", f"{c['latency_cost_ms']:+.2f}"] for c in fallback["candidates"]]))
    elif fallback.get("skipped"):
        parts.append(f"<p>{_e(fallback['skipped'])}.</p>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1 .pass,h1 .fail{font-size:0.9em} .pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:700}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px} th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa} .charts{display:flex;flex-wrap:wrap;gap:8px} svg.chart{background:#fff;border:1px solid #eee;margin:4px}
svg .ct{font-size:13px;font-weight:600} svg .tick{font-size:10px;fill:#444} svg .val{font-size:9px;fill:#222}
svg .grid{stroke:#eee} svg .axis{stroke:#888} svg .budget{stroke:#cf222e;stroke-dasharray:5,4}
code{background:#f6f8fa;padding:1px 4px}
"""


def render_html(report: dict) -> str:
    verdict_text = verdict(report)
    verdict_html = _Raw(f'<span class="{"pass" if verdict_text == "PASS" else "fail"}">{verdict_text}</span>')
    ref, build, art = report["reference"], report["build"], report["artifact"]
    passes = {p["name"]: p["metrics"] for p in report["passes"]}
    fallback = passes.get("fallback") or {}
    gates = _table(["gate", "value", "budget", "95% CI", "verdict", "detail"],
                   [[g["name"], f"{g['value']:.3f} {g['unit']}", f"{'≥' if g['name'] == 'speedup' else '≤'} {g['threshold']}",
                     f"[{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]" if g.get("ci95") else "–", _verdict(g["passed"]), g["detail"]]
                    for g in report["gates"]])

    (first_title, first), (second_title, second) = metric_columns(report)
    pass_rows = [["original (PyTorch FP32)", "–", f"{ref['size_bytes'] / 1e6:.1f}", _num(ref.get(first)),
                  _num(ref.get(second)), _num(_reference_b1(report, report["passes"]), ".2f"), "", ""]]
    for p in report["passes"]:
        gate = p.get("gate")
        pass_rows.append([p["name"], f"{p['wall_s']:.1f}", f"{p['size_bytes'] / 1e6:.1f}", _num(p.get(first)),
                          _num(p.get(second)), _num(_pass_ms(p), ".2f"),
                          _verdict(gate["passed"]) if gate else "", "yes" if p.get("cached") else ""])
    pass_rows.append(["build (fresh session)", "–", f"{art['model_bytes'] / 1e6:.1f}", _num(build.get(first)),
                      _num(build.get(second)), "–", "", ""])
    latency = _table(["batch", "sequence", "PyTorch FP32 p50", "p95", "build p50", "p95", "speedup (p50)"],
                     [[c["batch_size"], c["sequence_length"], f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{c['p50_ms']:.2f}",
                       f"{c['p95_ms']:.2f}", f"{r['p50_ms'] / c['p50_ms']:.2f}×"]
                      for r, c in zip(report["latency"]["reference"], report["latency"]["build"])])
    series, chosen, hline = _candidates(report)
    scatter = scatter_chart("Accuracy vs latency of the candidates tried (selection split, batch 1, sequence 128)",
                            series, "p50 latency, ms", "accuracy", hline, chosen) if series else ""
    float_layers = art.get("float_layers") or []
    body = [
        f"<h1>mcompress build: {verdict_html}</h1>",
        "" if artifact_measured(report) else
        f"<p><b>The deployed artifact was not measured</b>: the gates ran on "
        f"{_e(report['target_build'].get('gated_artifact', 'a stand-in'))}. {_e(report['target_build'].get('reason', ''))}</p>",
        f"<p>Target <b>{_e(report['target'])}</b>, recipe <b>{_e(report['recipe']['name'])}</b>, source "
        f"<code>{_e(report['source']['path'])}</code> (sha256 {_e(report['source']['sha256'][:12])}…), eval data "
        f"<code>{_e(report['data']['eval']['source'])}</code> ({report['data']['eval']['examples']} examples). "
        f"Build {art['model_bytes'] / 1e6:.1f} MB = {art['size_ratio']:.3f}× the FP32 checkpoint; quantization "
        f"{_e(art.get('quantization', 'none'))} on the {_e(art.get('graph') or 'exported')} graph"
        + (f"; layers kept in float: {_e(', '.join(float_layers))}" if float_layers else "") + ".</p>",
        "<h2>Gates</h2>", gates,
        "<h2>Passes</h2>",
        _table(["pass", "wall s", "size MB", first_title, second_title, "p50 ms (batch 1)", "gate after", "cached"], pass_rows),
        f'<div class="charts">{_pass_charts(report)}</div>',
        "<h2>Latency (ms, same process)</h2>", latency,
    ]
    body.append(_markdown_section(task_lines(report)))
    if scatter:
        body += ["<h2>Candidates</h2>", "<p>Every model the quantize pass (mode × graph) and the fallback pass (layers "
                 "in float) scored; the dashed line is the lowest accuracy within the budget.</p>", scatter]
    body += [_fallback(fallback), _sensitivity(fallback)]
    body.append(_markdown_section(_cpu_auto_lines(report.get("cpu_auto")) + _target_build_lines(report.get("target_build"), report)))
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    body.append(f"<p><small>{_e(versions)}; {report.get('wall_s', '–')} s; mcompress {_e(report.get('mcompress_version', ''))}."
                "</small></p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mcompress report</title>"
            f"<style>{_CSS}</style></head><body>" + "".join(body) + "</body></html>\n")
