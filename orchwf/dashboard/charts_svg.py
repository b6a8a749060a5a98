"""Draw the overview's trend charts as inline SVG: lines over the last hour, one point
per minute.

The last minute is the current one, so far. Server-rendered, no script: the y axis is cut at a round number (1, 2 or 5 times a power
of ten) with its labels formatted for people; a minute without a value breaks its line
rather than drawing it at zero; each minute has a hover box (an SVG ``<title>``) with
every series' value. Colours come from CSS classes (``series-<n>``), so the page's
Content-Security-Policy needs no inline styles. Every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import escape

WIDTH = 460
HEIGHT = 170
LEFT = 62     # room for the y labels
RIGHT = 10
TOP = 10
BOTTOM = 24   # room for the x labels
GRID_LINES = 4


@dataclass(frozen=True)
class Series:
    """One line: ``values[i]`` is minute ``i`` of the chart (None: no value)."""

    name: str
    values: Sequence[float | None]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is >= ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def count_label(value: float) -> str:
    """850,000 and 2,333; 2.5 below ten."""
    if value >= 10 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}"


def ms_label(value: float) -> str:
    """Milliseconds for people: 0.4 ms, 2.5 ms, 250 ms, 1.5 s, 2 min."""
    if value == 0:
        return "0"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:,.0f} ms"
    if value < 60_000:
        return f"{value / 1000:,.3g} s"
    return f"{value / 60_000:,.3g} min"


def minutes(now: datetime, count: int) -> list[datetime]:
    """The last ``count`` minutes (UTC), oldest first; the last is the current one, so far."""
    current = now.astimezone(timezone.utc).replace(second=0, microsecond=0)
    return [current - timedelta(minutes=count - 1 - i) for i in range(count)]


def line_chart(title: str, series: Sequence[Series], times: Sequence[datetime], *,
               label: Callable[[float], str] = count_label, element_id: str = "") -> str:
    """A chart of ``series`` over ``times`` (one per minute, oldest first), as HTML."""
    n = len(times)
    top = nice_ceiling(max((v for s in series for v in s.values if v is not None), default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'role="img" aria-label="{escape(title)}">']
    for g in range(GRID_LINES + 1):
        v = top * g / GRID_LINES
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="y-label" x="{LEFT - 6}" y="{y(v) + 4:.1f}">{escape(label(v))}</text>')
    for i in range(0, n - 10, 15) if n > 1 else ():  # none too close to the last
        parts.append(f'<text class="x-label" x="{x(i):.1f}" y="{HEIGHT - 6}">{times[i]:%H:%M}</text>')
    if n > 1:
        parts.append(f'<text class="x-label last" x="{x(n - 1):.1f}" y="{HEIGHT - 6}">{times[-1]:%H:%M}</text>')
    for k, s in enumerate(series):
        for run in _runs(s.values):
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            if len(run) == 1:
                (i, v), = run
                parts.append(f'<circle class="line series-{k}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2"/>')
            else:
                parts.append(f'<polyline class="line series-{k}" points="{points}"/>')
    step = plot_w / (n - 1) if n > 1 else plot_w
    for i, t in enumerate(times):
        values = "; ".join(f"{s.name} {_value(s.values[i], label)}" for s in series)
        parts.append(f'<rect class="hover" x="{x(i) - step / 2:.1f}" y="{TOP}" width="{step:.1f}" '
                     f'height="{plot_h}"><title>{t:%H:%M} UTC: {escape(values)}</title></rect>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key series-{k}">{escape(s.name)}</span>' for k, s in enumerate(series))
    ident = f' id="{escape(element_id)}"' if element_id else ""
    return (f'<figure class="chart"{ident}><figcaption>{escape(title)}</figcaption>{"".join(parts)}'
            f'<div class="legend">{legend}</div></figure>')


def _value(value: float | None, label: Callable[[float], str]) -> str:
    return "–" if value is None else label(value)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive minutes that have a value."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, float(v)))
    if current:
        runs.append(current)
    return runs
