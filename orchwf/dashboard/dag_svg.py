"""Draw a step graph as inline SVG, left to right, one column per dependency depth.

Layout: a step's column is the length of its longest dependency chain; within a column,
steps are ordered by the mean row of their dependencies (one barycenter sweep), which
removes most edge crossings of the usual fan-out/fan-in graphs. The compensation step
(``$compensate``) gets a column of its own at the end.

Every label is escaped; colours come from CSS classes (``status-<name>``), so the page's
Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

NODE_W = 190
NODE_H = 52
GAP_X = 56
GAP_Y = 18
PAD = 12
MAX_LABEL = 24
COMPENSATE = "$compensate"
KNOWN_STATUSES = frozenset({"pending", "running", "completed", "failed", "skipped", "retrying", "cancelled"})


@dataclass(frozen=True)
class DagNode:
    """One step: ``key`` is its step ID; ``href`` where a click goes (e.g. ``#step-3``)."""

    key: str
    status: str
    dependencies: tuple[str, ...] = ()
    detail: str = ""
    href: str = ""


@dataclass
class Layout:
    """Top-left corner of each node, and the drawing's size."""

    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    width: int = 0
    height: int = 0


def _depths(nodes: Sequence[DagNode]) -> dict[str, int]:
    by_key = {n.key: n for n in nodes}
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(key: str) -> int:
        if key in depth:
            return depth[key]
        if key in visiting:  # a cycle (never valid, but never loop on bad data)
            return 0
        visiting.add(key)
        deps = [d for d in by_key[key].dependencies if d in by_key and d != key]
        value = 1 + max(visit(d) for d in deps) if deps else 0
        visiting.discard(key)
        depth[key] = value
        return value

    for n in nodes:
        if n.key != COMPENSATE:
            visit(n.key)
    if COMPENSATE in by_key:
        depth[COMPENSATE] = max(depth.values(), default=-1) + 1
    return depth


def layout(nodes: Sequence[DagNode]) -> Layout:
    """Place the nodes; input order breaks ties (pass steps in execution order)."""
    depth = _depths(nodes)
    columns: dict[int, list[DagNode]] = {}
    for n in nodes:
        columns.setdefault(depth[n.key], []).append(n)
    row: dict[str, float] = {}
    for c in sorted(columns):
        col = columns[c]
        if c > 0:
            order = {n.key: i for i, n in enumerate(col)}

            def barycenter(n: DagNode, order: dict[str, int] = order) -> tuple[float, int]:
                rows = [row[d] for d in n.dependencies if d in row]
                return (sum(rows) / len(rows) if rows else float(order[n.key]), order[n.key])

            col.sort(key=barycenter)
        for i, n in enumerate(col):
            row[n.key] = i
    tallest = max((len(col) for col in columns.values()), default=0)
    out = Layout()
    for c, col in columns.items():
        offset = (tallest - len(col)) * (NODE_H + GAP_Y) / 2  # centre short columns
        for i, n in enumerate(col):
            out.positions[n.key] = (PAD + c * (NODE_W + GAP_X), int(PAD + offset + i * (NODE_H + GAP_Y)))
    out.width = PAD * 2 + len(columns) * NODE_W + max(0, len(columns) - 1) * GAP_X
    out.height = PAD * 2 + tallest * NODE_H + max(0, tallest - 1) * GAP_Y
    return out


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_dag(nodes: Sequence[DagNode]) -> str:
    """The graph as an ``<svg>`` element (empty string for no steps)."""
    if not nodes:
        return ""
    lay = layout(nodes)
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{lay.width}" height="{lay.height}" '
        f'viewBox="0 0 {lay.width} {lay.height}" role="img" aria-label="step graph">',
        '<defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="dag-arrow"/>'
        "</marker></defs>",
    ]
    for n in nodes:  # edges first, so nodes are drawn over them
        x2, y2 = lay.positions[n.key]
        for dep in n.dependencies:
            if dep not in lay.positions or dep == n.key:
                continue
            x1, y1 = lay.positions[dep]
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H // 2, x2, y2 + NODE_H // 2
            bend = max(GAP_X // 2, (ex - sx) // 2)
            parts.append(f'<path class="dag-edge" d="M{sx},{sy} C{sx + bend},{sy} {ex - bend},{ey} {ex},{ey}" '
                         'marker-end="url(#dag-arrow)"/>')
    for n in nodes:
        x, y = lay.positions[n.key]
        status = n.status if n.status in KNOWN_STATUSES else "unknown"
        tooltip = escape(f"{n.key}: {n.status}" + (f" · {n.detail}" if n.detail else ""))
        node = (
            f'<g class="dag-node status-{status}" transform="translate({x},{y})"><title>{tooltip}</title>'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="10" y="21" class="dag-label">{escape(_short(n.key))}</text>'
            f'<text x="10" y="40" class="dag-detail">{escape(_short(n.status + (" · " + n.detail if n.detail else ""), 30))}</text>'
            "</g>"
        )
        if n.href:
            node = f'<a href="{escape(n.href)}">{node}</a>'
        parts.append(node)
    parts.append("</svg>")
    return "".join(parts)
