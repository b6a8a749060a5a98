"""History independence: does a drain slow down when millions of finished workflows sit
in the history? Drain N on an empty history, seed M finished instances (server-side,
the system's ``seed_history``), drain N again on the same database; both drains get the
same housekeeping (VACUUM ANALYZE of every table between enqueue and launch, then a
CHECKPOINT). Each side is the median of ROUNDS drains: one drain of 20,000 lasts 3 s, and
single drains on the same quiet cluster differed by up to 25% (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import log
from .drain import drain_once
from .scenarios import Sizes
from .systems.base import System

TARGET_RATIO = 0.9  # the drain on a full history keeps >= 90% of the rate on an empty one
ROUNDS = 3          # drains on each side; the median counts


def _sizes(system: System) -> dict[str, int]:
    stats = system.table_stats()
    return {t: stats.get(t, {}).get("total_bytes", 0) for t in system.history_tables}


def _drains(system: System, sizes: Sizes, logdir: Path, label: str) -> tuple[dict[str, Any], list[float]]:
    """ROUNDS drains; the median one (by launch -> last) and every rate."""
    runs = []
    for rnd in range(ROUNDS):
        log(f"history: drain {sizes.history_drain:,} on {label} ({rnd + 1} of {ROUNDS})")
        runs.append(drain_once(system, sizes.history_drain, logdir, batch=sizes.batch,
                               timeout=sizes.drain_timeout, housekeeping=True))
    runs.sort(key=lambda r: r["per_s"])
    return runs[len(runs) // 2], [r["per_s"] for r in runs]


def history(system: System, sizes: Sizes, logdir: Path) -> dict[str, Any]:
    n, m = sizes.history_drain, sizes.history_seed
    empty, empty_all = _drains(system, sizes, logdir, "an empty history")
    before = _sizes(system)
    log(f"history: seeding {m:,} finished workflows")
    seed_seconds = system.seed_history(m)
    after = _sizes(system)
    log(f"history: seeded in {seed_seconds:.1f}s; history tables {sum(before.values()) / 2**20:,.0f} -> "
        f"{sum(after.values()) / 2**20:,.0f} MiB")
    full, full_all = _drains(system, sizes, logdir, f"{m:,} finished")
    ratio = full["per_s"] / empty["per_s"]
    window_ratio = full["window_per_s"] / empty["window_per_s"]
    log(f"history: {empty['per_s']:,.0f}/s on an empty history, {full['per_s']:,.0f}/s after {m:,} "
        f"= {ratio:.2f}x (window {window_ratio:.2f}x; medians of {ROUNDS}; target >= {TARGET_RATIO})")
    return {"n": n, "seeded": m, "seed_seconds": seed_seconds, "knob": system.knob_label(),
            "empty": empty, "full": full, "ratio": ratio, "window_ratio": window_ratio,
            "empty_all": empty_all, "full_all": full_all, "rounds": ROUNDS,
            "history_bytes_before": before, "history_bytes_after": after,
            "target": TARGET_RATIO, "ok": ratio >= TARGET_RATIO}
