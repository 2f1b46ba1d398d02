"""Charts as inline SVG for report.html, drawn here: no matplotlib, no JavaScript, no fonts or styles
fetched from anywhere, so the page opens offline and the same figures always give the same bytes.
SVG inside HTML5 needs no namespace declaration, so a chart holds no URL.
"""

from __future__ import annotations

import html
import math

_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d"]


def escape(x) -> str:
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
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="ct">{escape(title)}</text>' + "".join(body) + "</svg>")


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
                    f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">{escape(_fmt(t))}</text>')
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
                        f'fill="{color}"><title>{escape(label)}: {escape(_fmt(v))} {escape(unit)}</title></rect>'
                        f'<text x="{cx:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" class="val">{escape(_fmt(v))}</text>')
        body.append(f'<text transform="translate({cx:.1f},{top + plot_h + 10}) rotate(35)" class="tick">{escape(label)}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>'
                f'<text transform="translate(12,{top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" class="tick">{escape(unit)}</text>')
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
                    f'<text x="{x:.1f}" y="{height - bottom + 12}" text-anchor="middle" class="tick">{escape(_fmt(t))}</text>')
    zero = x_of(0.0)
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * row
        x0, x1 = sorted((zero, x_of(v)))
        color = _PALETTE[3] if highlight and i in highlight else _PALETTE[0]
        note = f" {notes[i]}" if notes else ""
        body.append(f'<text x="{left - 6}" y="{y + row * 0.7:.1f}" text-anchor="end" class="tick">{escape(label)}</text>'
                    f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(0.5, x1 - x0):.1f}" height="{row - 4}" fill="{color}">'
                    f'<title>{escape(label)}: {escape(_fmt(v))} {escape(unit)}{escape(note)}</title></rect>'
                    f'<text x="{x1 + 4:.1f}" y="{y + row * 0.7:.1f}" class="val">{escape(_fmt(v))}{escape(note)}</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" class="tick">{escape(unit)}</text>')
    return _svg(width, height, body, title)


def scatter_chart(title: str, series: list[tuple[str, list[tuple[float, float, str]]]], xlabel: str, ylabel: str,
                  hline: tuple[float, str] | None = None, chosen: tuple[float, float] | None = None,
                  width: int = 760, height: int = 380) -> str:
    """Points (x, y, label) or (x, y, label, radius) per named series; an optional horizontal budget
    line and a ring on the chosen point."""
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
                    f'<text x="{x_of(t):.1f}" y="{top + plot_h + 13}" text-anchor="middle" class="tick">{escape(_fmt(t))}</text>')
    for t in yt:
        body.append(f'<line x1="{left}" y1="{y_of(t):.1f}" x2="{left + plot_w}" y2="{y_of(t):.1f}" class="grid"/>'
                    f'<text x="{left - 4}" y="{y_of(t) + 3:.1f}" text-anchor="end" class="tick">{escape(_fmt(t))}</text>')
    if hline:
        y = y_of(hline[0])
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="budget"/>'
                    f'<text x="{left + 4}" y="{y - 4:.1f}" class="tick" fill="#cf222e">{escape(hline[1])}</text>')
    for si, (name, pts) in enumerate(series):
        color = _PALETTE[si % len(_PALETTE)]
        for x, y, label, *radius in pts:
            r = f"{radius[0]:.1f}" if radius else "5"
            body.append(f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="{r}" '
                        f'fill="{color}" fill-opacity="0.85">'
                        f'<title>{escape(name)}: {escape(label)} — accuracy {y:.4f}, {x:.3f} ms</title></circle>')
        ly = top + 14 + si * 16
        body.append(f'<circle cx="{left + plot_w + 12}" cy="{ly - 4}" r="5" fill="{color}"/>'
                    f'<text x="{left + plot_w + 22}" y="{ly}" class="tick">{escape(name)}</text>')
    if chosen:
        body.append(f'<circle cx="{x_of(chosen[0]):.1f}" cy="{y_of(chosen[1]):.1f}" r="9" fill="none" stroke="#222" '
                    f'stroke-width="2"><title>kept</title></circle>')
        ly = top + 14 + len(series) * 16
        body.append(f'<circle cx="{left + plot_w + 12}" cy="{ly - 4}" r="6" fill="none" stroke="#222" stroke-width="2"/>'
                    f'<text x="{left + plot_w + 22}" y="{ly}" class="tick">kept</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" class="tick">{escape(xlabel)}</text>'
                f'<text transform="translate(14,{top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" class="tick">{escape(ylabel)}</text>')
    return _svg(width, height, body, title)
