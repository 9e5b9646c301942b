"""Charts as hand-made SVG text: line charts and grouped bar charts, nothing to install.

Each chart is one ``<svg class="chart">`` element without ids, so any number of them can be
inlined in one HTML page; text is text (searchable, small). Axes get "nice" ticks (1, 2 or 5
times a power of ten); long series are thinned to at most a few hundred points per line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
FONT = 'font-family="system-ui, sans-serif"'
MAX_POINTS = 400


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def tick_label(value: float) -> str:
    """A short label: 1500 -> "1.5k", 2e6 -> "2M", 0.25 -> "0.25"."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _thin(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    points = list(zip(xs, ys, strict=False))
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


@dataclass
class _Frame:
    """The plotting area inside a chart and the mapping from data to pixels."""

    left: float
    top: float
    width: float
    height: float
    x_ticks: list[float]
    y_ticks: list[float]

    def x(self, value: float) -> float:
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - low) / ((high - low) or 1.0) * self.width

    def y(self, value: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.height - (value - low) / ((high - low) or 1.0) * self.height

    def axes(self, unit: str, x_label: str | None) -> list[str]:
        parts = []
        for tick in self.y_ticks:
            y = self.y(tick)
            parts.append(f'<line x1="{self.left:.1f}" x2="{self.left + self.width:.1f}" '
                         f'y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            parts.append(f'<text x="{self.left - 4:.1f}" y="{y + 3:.1f}" font-size="9" '
                         f'text-anchor="end" {FONT}>{tick_label(tick)}</text>')
        bottom = self.top + self.height
        parts.append(f'<rect x="{self.left:.1f}" y="{self.top:.1f}" width="{self.width:.1f}" '
                     f'height="{self.height:.1f}" fill="none" stroke="#999"/>')
        if x_label is not None:
            for tick in self.x_ticks:
                x = self.x(tick)
                parts.append(f'<text x="{x:.1f}" y="{bottom + 12:.1f}" font-size="9" '
                             f'text-anchor="middle" {FONT}>{tick_label(tick)}</text>')
            parts.append(f'<text x="{self.left + self.width / 2:.1f}" y="{bottom + 25:.1f}" '
                         f'font-size="9" text-anchor="middle" fill="#555" {FONT}>'
                         f'{escape(x_label)}</text>')
        parts.append(f'<text x="12" y="{self.top + self.height / 2:.1f}" font-size="9" '
                     f'text-anchor="middle" fill="#555" transform="rotate(-90 12 '
                     f'{self.top + self.height / 2:.1f})" {FONT}>{escape(unit)}</text>')
        return parts


def _legend(labels: Sequence[str], x: float, y: float, width: float) -> tuple[list[str], float]:
    """Legend entries laid out in rows from (x, y); the parts and the height used."""
    parts, cursor_x, cursor_y = [], x, y
    for number, label in enumerate(labels):
        size = 18 + 6 * len(label)
        if cursor_x + size > x + width and cursor_x > x:
            cursor_x, cursor_y = x, cursor_y + 13
        color = PALETTE[number % len(PALETTE)]
        parts.append(f'<rect x="{cursor_x:.1f}" y="{cursor_y - 7:.1f}" width="10" height="8" '
                     f'fill="{color}"/><text x="{cursor_x + 13:.1f}" y="{cursor_y:.1f}" '
                     f'font-size="9" {FONT}>{escape(label)}</text>')
        cursor_x += size
    return parts, cursor_y - y + 13


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img">'
            f'<title>{escape(title)}</title>'
            f'<text x="{width / 2:.1f}" y="14" font-size="11" font-weight="bold" '
            f'text-anchor="middle" {FONT}>{escape(title)}</text>' + "".join(body) + "</svg>")


def line_chart(title: str, xs: Sequence[float], lines: dict[str, Sequence[float]], unit: str,
               x_label: str = "seconds into the run", width: int = 470,
               height: int = 210) -> str:
    """One line per entry of ``lines`` over the common ``xs``."""
    values = [v for ys in lines.values() for v in ys if math.isfinite(v)]
    frame = _Frame(48, 24, width - 60, height - 90,
                   nice_ticks(min(xs, default=0.0), max(xs, default=1.0), 6),
                   nice_ticks(min(0.0, min(values, default=0.0)), max(values, default=1.0), 4))
    body = frame.axes(unit, x_label)
    for number, (label, ys) in enumerate(lines.items()):
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in _thin(xs, ys)
                          if math.isfinite(y))
        body.append(f'<polyline points="{points}" fill="none" stroke-width="1.4" '
                    f'stroke="{PALETTE[number % len(PALETTE)]}"><title>{escape(label)}</title>'
                    f'</polyline>')
    legend, _ = _legend(list(lines), frame.left, frame.top + frame.height + 42, frame.width)
    return _svg(width, height, title, body + legend)


@dataclass(frozen=True)
class Bar:
    cluster: str  # the group of bars on the x axis (a workload)
    label: str  # the bar's series (a configuration)
    value: float
    spread: float | None = None  # standard deviation, drawn as an error bar


def bar_chart(title: str, bars: Sequence[Bar], unit: str, height: int = 260) -> str:
    """Bars grouped by cluster, one colour per label, error bars where a spread is given."""
    clusters = list(dict.fromkeys(b.cluster for b in bars))
    labels = list(dict.fromkeys(b.label for b in bars))
    slot = 22.0
    cluster_width = slot * len(labels) + 24
    width = max(320.0, 60 + cluster_width * len(clusters))
    top = max((b.value + (b.spread or 0.0) for b in bars), default=1.0)
    frame = _Frame(48, 24, width - 60, height - 100, [0.0, 1.0], nice_ticks(0.0, top, 4))
    body = frame.axes(unit, None)
    colors = {label: PALETTE[n % len(PALETTE)] for n, label in enumerate(labels)}
    for position, cluster in enumerate(clusters):
        start = frame.left + 12 + position * (frame.width / len(clusters))
        span = frame.width / len(clusters) - 24
        step = span / len(labels)
        for number, label in enumerate(labels):
            bar = next((b for b in bars if b.cluster == cluster and b.label == label), None)
            if bar is None:
                continue
            x = start + number * step + step * 0.1
            y = frame.y(bar.value)
            base = frame.y(0.0)
            body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{step * 0.8:.1f}" '
                        f'height="{max(0.0, base - y):.1f}" fill="{colors[label]}"><title>'
                        f'{escape(label)}: {bar.value:.4g} {escape(unit)}</title></rect>')
            middle = x + step * 0.4
            if bar.spread:
                low, high = frame.y(bar.value - bar.spread), frame.y(bar.value + bar.spread)
                body.append(f'<path d="M{middle:.1f},{low:.1f}V{high:.1f}M{middle - 3:.1f},'
                            f'{high:.1f}h6M{middle - 3:.1f},{low:.1f}h6" stroke="#333"/>')
            body.append(f'<text x="{middle:.1f}" y="{y - 3:.1f}" font-size="8" '
                        f'text-anchor="middle" {FONT}>{tick_label(bar.value)}</text>')
        for line, text in enumerate(cluster.split("\n")):
            text_y = frame.top + frame.height + 13 + 11 * line
            body.append(f'<text x="{start + span / 2:.1f}" y="{text_y:.1f}" font-size="9" '
                        f'text-anchor="middle" {FONT}>{escape(text)}</text>')
    legend, _ = _legend(labels, frame.left, frame.top + frame.height + 44, frame.width)
    return _svg(width, height, title, body + legend)
