"""Small hand-written inline SVG charts for the HTML report: bars, a histogram, lines.

Every function returns one `<svg>` element as text, sized in CSS pixels, with all user text
escaped (`html.escape`), so it can be pasted into the page as is. No scripts, no external URLs.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f", "#bab0ac")
TEXT = "#333"
GRID = "#e3e3e3"
CHAR_PX = 7.4  # generous width of one 12px sans-serif character, for label layout


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a line chart: a name and its points."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]


def esc(text: object) -> str:
    """Text made safe for HTML and SVG content and attributes."""
    return html.escape(str(text), quote=True)


def shorten(text: str, max_chars: int, *, middle: bool = False) -> str:
    """`text` on one line, cut to `max_chars` with an ellipsis (in the middle when `middle`)."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    keep = max(1, max_chars - 1)
    if not middle:
        return flat[:keep] + "…"
    head = (keep + 1) // 2
    return flat[:head] + "…" + flat[len(flat) - (keep - head) :]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps): the first ≤ lo, the last ≥ hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / (max(1, count) + 1)  # at most count + 1 steps once the ends are rounded
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    ticks = []
    k = first
    while True:  # up to the first tick at or above `hi`: the last tick covers the data
        value = round(k * step, 12)
        ticks.append(value)
        if value >= hi - step * 1e-9 and len(ticks) > 1:
            return ticks
        k += 1


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" '
        f'font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12">'
        f"<title>{esc(title)}</title>"
        f'<text x="0" y="14" font-size="13" font-weight="600" fill="{TEXT}">{esc(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _num(v: float) -> str:
    return f"{v:.1f}"


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    fmt: Callable[[float], str],
    groups: Sequence[int] | None = None,
    legend: Sequence[str] = (),
    width: int = 520,
    max_bars: int = 30,
) -> str:
    """Horizontal bars with their values; `groups` colours bars (named by `legend`)."""
    colour = list(groups) if groups is not None else [0] * len(labels)
    bars = list(zip(labels, values, colour, strict=True))[:max_bars]
    more = len(labels) - len(bars)
    label_chars = min(30, max([len(str(lab)) for lab, _, _ in bars] + [4]))
    left = int(label_chars * CHAR_PX) + 12
    bar_h, gap = 18, 5
    top = 26 + (18 * len(legend) if legend else 0)
    value_w = 78
    plot_w = max(60, width - left - value_w)
    vmax = max([v for _, v, _ in bars if math.isfinite(v)] + [0.0])
    height = top + len(bars) * (bar_h + gap) + (18 if more else 4)
    body: list[str] = []
    for i, name in enumerate(legend):
        ly = 26 + 18 * i + 10
        body.append(
            f'<rect x="{left}" y="{ly - 9}" width="12" height="12" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{left + 18}" y="{ly + 1}" '
            f'fill="{TEXT}">{esc(shorten(name, 60, middle=True))}</text>'
        )
    for i, (label, value, group) in enumerate(bars):
        y = top + i * (bar_h + gap)
        v = value if math.isfinite(value) else 0.0
        w = 0.0 if vmax <= 0 else max(0.0, v) / vmax * plot_w
        fill = PALETTE[group % len(PALETTE)]
        name = f"{legend[group]} · {label}" if group < len(legend) else str(label)
        body.append(
            f"<g><title>{esc(name)}: {esc(fmt(value))}</title>"
            f'<text x="{left - 6}" y="{y + bar_h - 5}" text-anchor="end" fill="{TEXT}">'
            f"{esc(shorten(str(label), label_chars, middle=True))}</text>"
            f'<rect x="{left}" y="{y}" width="{_num(w)}" height="{bar_h}" fill="{fill}"/>'
            f'<text x="{_num(left + w + 4)}" y="{y + bar_h - 5}" fill="{TEXT}">'
            f"{esc(fmt(value))}</text></g>"
        )
    if more:
        body.append(
            f'<text x="{left}" y="{height - 4}" fill="#777">… {more} more (see the table)</text>'
        )
    return _svg(width, height, title, body)


def _axes(
    left: int,
    top: int,
    plot_w: int,
    plot_h: int,
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
    x_label: str,
    y_label: str,
) -> list[str]:
    """Grid lines, tick labels and axis titles; tick positions are in plot pixels."""
    out: list[str] = []
    for py, text in y_ticks:
        y = top + plot_h - py
        out.append(
            f'<line x1="{left}" y1="{_num(y)}" x2="{left + plot_w}" y2="{_num(y)}" '
            f'stroke="{GRID}"/><text x="{left - 5}" y="{_num(y + 4)}" text-anchor="end" '
            f'fill="{TEXT}">{esc(text)}</text>'
        )
    for px, text in x_ticks:
        x = left + px
        out.append(
            f'<line x1="{_num(x)}" y1="{top + plot_h}" x2="{_num(x)}" y2="{top + plot_h + 4}" '
            f'stroke="{TEXT}"/><text x="{_num(x)}" y="{top + plot_h + 17}" text-anchor="middle" '
            f'fill="{TEXT}">{esc(text)}</text>'
        )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="{TEXT}"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 34}" text-anchor="middle" '
        f'fill="{TEXT}">{esc(x_label)}</text>'
        f'<text x="{left}" y="{top - 8}" fill="#666">{esc(y_label)}</text>'
    )
    return out


def histogram(
    values: Sequence[float],
    *,
    title: str,
    x_label: str,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    bins: int = 30,
    width: int = 520,
    height: int = 240,
) -> str:
    """A histogram of `values` (non-finite values ignored)."""
    data = sorted(v for v in values if math.isfinite(v))
    left, top, right, bottom = 48, 40, 12, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    if not data:
        return _svg(width, 60, title, ['<text x="0" y="40" fill="#777">no data</text>'])
    lo, hi = data[0], data[-1]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(1, min(bins, len(data)))
    step = (hi - lo) / n
    counts = [0] * n
    for v in data:
        counts[min(n - 1, int((v - lo) / step))] += 1
    cmax = max(counts)
    body: list[str] = []
    y_ticks = [(t / cmax * plot_h, f"{t:g}") for t in nice_ticks(0, cmax, 4) if t <= cmax]
    x_ticks = [((t - lo) / (hi - lo) * plot_w, fmt(t)) for t in nice_ticks(lo, hi, 5)]
    x_ticks = [(px, text) for px, text in x_ticks if -0.5 <= px <= plot_w + 0.5]
    body += _axes(left, top, plot_w, plot_h, x_ticks, y_ticks, x_label, "count")
    bar_w = plot_w / n
    for i, c in enumerate(counts):
        if not c:
            continue
        h = c / cmax * plot_h
        x0, x1 = lo + i * step, lo + (i + 1) * step
        body.append(
            f'<rect x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(1.0, bar_w - 1):.1f}" height="{h:.1f}" fill="{PALETTE[0]}">'
            f"<title>{esc(fmt(x0))} – {esc(fmt(x1))}: {c}</title></rect>"
        )
    return _svg(width, height, title, body)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    fmt_x: Callable[[float], str] = lambda v: f"{v:g}",
    fmt_y: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 640,
    height: int = 280,
) -> str:
    """Step lines (one per series, with a legend when there are several)."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True)]
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return _svg(width, 60, title, ['<text x="0" y="40" fill="#777">no data</text>'])
    legend_h = 18 * len(series) if len(series) > 1 else 0
    left, top, right, bottom = 64, 40, 16, 42 + legend_h
    plot_w, plot_h = width - left - right, height - top - bottom
    xmin, xmax = min(x for x, _ in points), max(x for x, _ in points)
    ymax = max(max(y for _, y in points), 0.0)
    if xmin >= 0:
        xmin = 0.0  # time since the start: the axis starts at zero
    xt = nice_ticks(xmin, xmax if xmax > xmin else xmin + 1, 5)
    yt = nice_ticks(0.0, ymax if ymax > 0 else 1.0, 4)
    x0, x1 = xt[0], xt[-1]
    y1 = yt[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - y / y1 * plot_h

    body = _axes(
        left,
        top,
        plot_w,
        plot_h,
        [((t - x0) / (x1 - x0) * plot_w, fmt_x(t)) for t in xt],
        [(t / y1 * plot_h, fmt_y(t)) for t in yt],
        x_label,
        y_label,
    )
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(x, y) for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(x + y)]
        if not pts:
            continue
        path = [f"M{px(pts[0][0]):.1f},{py(0.0):.1f}"]
        for x, y in pts:
            path.append(f"H{px(x):.1f}V{py(y):.1f}")
        body.append(
            f'<path d="{"".join(path)}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{esc(s.name)}</title></path>"
        )
        if len(series) > 1:
            ly = height - legend_h + 18 * i + 6
            body.append(
                f'<rect x="{left}" y="{ly - 9}" width="12" height="3" fill="{color}"/>'
                f'<text x="{left + 18}" y="{ly}" fill="{TEXT}">{esc(shorten(s.name, 80))}</text>'
            )
    return _svg(width, height, title, body)
