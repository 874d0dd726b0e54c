"""Charts as server-rendered SVG: no script, no library, nothing fetched. Colours come from static/app.css
through the ``series-N`` classes (the CSP allows no inline style)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28  # room for the axes' labels


def _nice_max(value: float) -> float:
    """A round upper bound for the y axis (1, 2, 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    scale = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return float(step * scale)
    return float(10 * scale)


def _frame(label: str, top: float, first: float, last: float, body: list[str], legend: Sequence[str]) -> Markup:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top:g}</text>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 8}">{_hhmm(first)} UTC</text>',
        f'<text class="tick" x="{LEFT + plot_w}" y="{HEIGHT - 8}" text-anchor="end">{_hhmm(last)} UTC</text>',
        *body,
        "</svg>",
    ]
    items = "".join(
        f'<li><span class="swatch series-{i}" aria-hidden="true"></span>{escape(name)}</li>'
        for i, name in enumerate(legend)
    )
    return Markup(f'<figure class="chart-box">{"".join(parts)}<figcaption><ul class="legend">{items}</ul>'
                  f"</figcaption></figure>")  # fmt: skip


def _hhmm(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%m-%d %H:%M")


def line_chart(times: Sequence[float], series: dict[str, Sequence[float]], label: str) -> Markup:
    """Step lines, one per series, over ``times`` (oldest first)."""
    if len(times) < 2:
        return Markup("")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_max(max((max(v, default=0) for v in series.values()), default=0))
    first, span = times[0], (times[-1] - times[0]) or 1.0

    def x(t: float) -> float:
        return LEFT + (t - first) / span * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    body = []
    for i, values in enumerate(series.values()):
        points = []
        for k, (t, v) in enumerate(zip(times, values, strict=True)):
            if k:
                points.append(f"{x(t):.1f},{y(values[k - 1]):.1f}")
            points.append(f"{x(t):.1f},{y(v):.1f}")
        body.append(f'<polyline class="line series-{i}" fill="none" points="{" ".join(points)}"/>')
    return _frame(label, top, times[0], times[-1], body, list(series))


def bar_chart(starts: Sequence[float], width: float, series: dict[str, Sequence[float]], label: str) -> Markup:
    """Stacked bars, one per bucket starting at ``starts`` and ``width`` seconds wide."""
    if not starts:
        return Markup('<p class="empty">No usage recorded in this period.</p>')
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(v[k] for v in series.values()) for k in range(len(starts))]
    top = _nice_max(max(totals, default=0))
    bar_w = plot_w / len(starts)
    body = []
    for k in range(len(starts)):
        base = 0.0
        for i, values in enumerate(series.values()):
            h = values[k] / top * plot_h
            if h > 0:
                y = TOP + plot_h - base - h
                body.append(
                    f'<rect class="bar series-{i}" x="{LEFT + k * bar_w + 1:.1f}" y="{y:.1f}" '
                    f'width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}"/>'
                )
                base += h
    return _frame(label, top, starts[0], starts[-1] + width, body, list(series))
