"""Small charts as inline SVG, drawn on the server: no JavaScript, no external URLs, and only
SVG presentation attributes (the pages' Content-Security-Policy allows no inline styles).

Two kinds: ``bar_chart`` (counts per minute) and ``line_chart`` (one or more series, on a linear
or a log scale, gaps where a value is missing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

INK, MUTED, GRID = "#1d1d1f", "#6b6b70", "#e4e2dc"
FONT = 'font-family="system-ui, sans-serif" font-size="10"'
LEFT, RIGHT, TOP, BOTTOM = 46, 8, 18, 20
DASH = ' stroke-dasharray="4 3"'


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str
    dashed: bool = False


def format_seconds(s: float) -> str:
    """10 ms, 250 ms, 1.5 s, 2 min, 1 h."""
    if s < 1:
        return f"{s * 1000:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def format_count(v: float) -> str:
    return f"{v:.0f}" if v == int(v) else f"{v:.2g}"


def nice_ticks(top: float, *, count: int = 3, integer: bool = False) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 × 10ⁿ; whole numbers when ``integer``) up to at least ``top``."""
    top = max(top, 1e-9)
    raw = max(top / count, 1.0) if integer else top / count
    power = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * power for m in steps if m * power >= raw)
    return [round(i * step, 12) for i in range(math.ceil(top / step - 1e-9) + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Decades (and 1-3-10 steps when the range is short) covering [low, high]."""
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if hi == lo:
        hi += 1
    ticks = [10.0 ** e for e in range(lo, hi + 1)]
    if hi - lo <= 2:
        ticks = sorted(ticks + [3 * 10.0 ** e for e in range(lo, hi)])
    return ticks


def bar_chart(values: Sequence[float], *, title: str, color: str, x_labels: dict[int, str],
              width: int = 400, height: int = 130, fmt: Callable[[float], str] = format_count) -> Markup:
    ticks = nice_ticks(max(values, default=0) or 1, integer=True)
    plot = _Plot(width, height, len(values), y=lambda v: v / ticks[-1])
    slot = plot.w / max(len(values), 1)
    bars = []
    for i, v in enumerate(values):
        if v:
            h = plot.h * v / ticks[-1]
            bars.append(f'<rect x="{plot.x0 + i * slot + slot * 0.12:.1f}" y="{plot.y0 + plot.h - h:.1f}" '
                        f'width="{slot * 0.76:.1f}" height="{h:.1f}" fill="{color}">'
                        f'<title>{escape(fmt(v))}</title></rect>')
    body = plot.y_axis(ticks, fmt) + plot.x_axis(x_labels, centre=True) + "".join(bars)
    return _svg(width, height, title, body)


def line_chart(series: Sequence[Series], *, title: str, x_labels: dict[int, str], log: bool = False,
               width: int = 400, height: int = 130, fmt: Callable[[float], str] = format_seconds) -> Markup:
    values = [v for s in series for v in s.values if v is not None and (v > 0 or not log)]
    points = max((len(s.values) for s in series), default=0)
    if log:
        ticks = log_ticks(min(values, default=0.01), max(values, default=1.0))
        lo, hi = math.log10(ticks[0]), math.log10(ticks[-1])
        scale = lambda v: (math.log10(max(v, ticks[0])) - lo) / (hi - lo)  # noqa: E731
    else:
        ticks = nice_ticks(max(values, default=0) or 1)
        scale = lambda v: v / ticks[-1]  # noqa: E731
    plot = _Plot(width, height, points, y=scale)
    lines = []
    for s in series:
        dash = DASH if s.dashed else ""
        for run in _runs(s.values):
            if len(run) == 1:
                i, v = run[0]
                lines.append(f'<circle cx="{plot.x(i):.1f}" cy="{plot.y(v):.1f}" r="2.2" fill="{s.color}">'
                             f'<title>{escape(s.name)}: {escape(fmt(v))}</title></circle>')
            else:
                pts = " ".join(f"{plot.x(i):.1f},{plot.y(v):.1f}" for i, v in run)
                lines.append(f'<polyline points="{pts}" fill="none" stroke="{s.color}" stroke-width="1.8"'
                             f'{dash} stroke-linejoin="round"><title>{escape(s.name)}</title></polyline>')
    legend = "".join(
        f'<line x1="{LEFT + 4 + k * 64}" y1="8" x2="{LEFT + 18 + k * 64}" y2="8" stroke="{s.color}" stroke-width="2"'
        f'{DASH if s.dashed else ""}/>'
        f'<text x="{LEFT + 22 + k * 64}" y="11" {FONT} fill="{MUTED}">{escape(s.name)}</text>'
        for k, s in enumerate(series))
    body = plot.y_axis(ticks, fmt) + plot.x_axis(x_labels, centre=False) + "".join(lines) + legend
    return _svg(width, height, title, body)


class _Plot:
    def __init__(self, width: int, height: int, points: int, *, y: Callable[[float], float]) -> None:
        self.x0, self.y0 = LEFT, TOP
        self.w, self.h = width - LEFT - RIGHT, height - TOP - BOTTOM
        self.points = max(points, 1)
        self._y = y

    def x(self, i: int) -> float:
        return self.x0 + (self.w * i / (self.points - 1) if self.points > 1 else self.w / 2)

    def y(self, v: float) -> float:
        return self.y0 + self.h * (1 - min(max(self._y(v), 0.0), 1.0))

    def y_axis(self, ticks: list[float], fmt: Callable[[float], str]) -> str:
        out = []
        for t in ticks:
            y = self.y(t)
            out.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x0 + self.w}" y2="{y:.1f}" stroke="{GRID}"/>'
                       f'<text x="{self.x0 - 4}" y="{y + 3:.1f}" text-anchor="end" {FONT} fill="{MUTED}">'
                       f'{escape(fmt(t))}</text>')
        return "".join(out)

    def x_axis(self, labels: dict[int, str], *, centre: bool) -> str:
        out = [f'<line x1="{self.x0}" y1="{self.y0 + self.h}" x2="{self.x0 + self.w}" y2="{self.y0 + self.h}" '
               f'stroke="{MUTED}"/>']
        for i, text in labels.items():
            x = self.x0 + self.w * (i + 0.5) / self.points if centre else self.x(i)
            anchor = "end" if x > self.x0 + self.w - 20 else "start" if x < self.x0 + 20 else "middle"
            out.append(f'<text x="{x:.1f}" y="{self.y0 + self.h + 13}" text-anchor="{anchor}" {FONT} '
                       f'fill="{MUTED}">{escape(text)}</text>')
        return "".join(out)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Consecutive present values, so a missing one leaves a gap in the line."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, v))
    return [r for r in runs if r]


def _svg(width: int, height: int, title: str, body: str) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" '
                  f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>')
