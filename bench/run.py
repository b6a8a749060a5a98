"""Run scenarios against every system, each in its own fresh database, and collect results."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import scenarios as sc
from .common import drop_database, log, machine_info, server_info
from .systems import FACTORIES, make, missing_packages
from .systems.base import System

# Memory is measured inside latency (idle, after the workers settled) and drain (peak
# under load), so it needs no worker start of its own.
ALL_SCENARIOS = ("enqueue", "drain", "latency", "dag", "soak")
ORCHWF_ONLY = ("dag", "soak")


def available_systems(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, skipped = [], {}
    for name in wanted:
        if name not in FACTORIES:
            raise SystemExit(f"unknown system {name!r} (known: {', '.join(FACTORIES)})")
        missing = missing_packages(name)
        if missing:
            skipped[name] = f"not installed ({', '.join(missing)}; pip install -e '.[bench]')"
        else:
            ok.append(name)
    return ok, skipped


def run(
    *,
    dsn: str,
    scenarios: list[str],
    systems: list[str],
    sizes: sc.Sizes,
    options: dict[str, dict[str, Any]],
    soak_rate: float | None,
    workdir: Path,
    keep_databases: bool = False,
    orchwf_sweep: tuple[int, ...] = (),
    vacuum_naptime: float | None = None,
    repeat: int = 1,
) -> dict[str, Any]:
    names, skipped = available_systems(systems)
    if "orchwf" not in names:
        raise SystemExit("orchwf must be among the systems")
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    results: dict[str, Any] = {
        "meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(),
                 "server": server_info(dsn), "sizes": sizes.__dict__, "scenarios": scenarios,
                 "skipped": skipped},
        "settings": {},
        "errors": [],
    }
    results["meta"]["loadavg_start"] = _loadavg()
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}"

    def with_system(name: str, scenario: str, body: Callable[[System], Any]) -> Any:
        dbname = f"orchwf_bench_{name}_{scenario}_{token}"
        system = make(name, **options.get(name, {}))
        results["settings"][name] = system.settings
        try:
            system.setup(dsn, dbname)
            return body(system)
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not lose the others
            log(f"{name}/{scenario} FAILED: {exc}")
            results["errors"].append({"system": name, "scenario": scenario, "error": repr(exc),
                                      "traceback": traceback.format_exc()})
            return None
        finally:
            system.close()
            if not keep_databases:
                try:
                    drop_database(dsn, dbname)
                except Exception as exc:  # noqa: BLE001
                    log(f"could not drop {dbname}: {exc}")

    for scenario in scenarios:
        targets = ["orchwf"] if scenario in ORCHWF_ONLY else names
        out: dict[str, Any] = {}
        if scenario == "drain":
            out = _drains(targets, sizes, repeat, logdir, with_system)
            if "orchwf" in targets and orchwf_sweep:
                results["orchwf_concurrency_sweep"] = _sweep(orchwf_sweep, sizes, options, logdir, with_system,
                                                             results)
            results[scenario] = out
            continue
        for name in targets:
            log(f"--- {scenario}: {name}")
            if scenario == "enqueue":
                out[name] = with_system(name, scenario, lambda s: sc.enqueue(s, sizes))
            elif scenario == "latency":
                out[name] = with_system(name, scenario, lambda s: sc.latency(s, sizes, logdir))
            elif scenario == "dag":
                out[name] = with_system(name, scenario, lambda s: sc.dag(s, sizes, logdir))
            elif scenario == "soak":
                rate = soak_rate or _half_peak(results)
                out[name] = with_system(name, scenario,
                                        lambda s, r=rate: sc.soak(s, r, sizes, logdir, vacuum_naptime))
        results[scenario] = out
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["meta"]["loadavg_end"] = _loadavg()
    return results


SLOW_RUN_SECONDS = 60.0  # a system whose drain took longer is not repeated at that size


def _drains(targets: list[str], sizes: sc.Sizes, repeat: int, logdir: Path,
            with_system: Callable[..., Any]) -> dict[str, Any]:
    """Every drain size, ``repeat`` rounds, the systems interleaved within a round, so
    that a change of load on a shared machine hits every system alike. The reported
    run of a system is its median by rate; all rates are kept."""
    out: dict[str, Any] = {name: {} for name in targets}
    for n in sizes.drain:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for rnd in range(repeat):
            for name in targets:
                if rnd > 0 and (not runs[name] or runs[name][0]["seconds"] > SLOW_RUN_SECONDS):
                    continue
                log(f"--- drain {n:,}: {name} (round {rnd + 1} of {repeat})")
                r = with_system(name, f"drain{n}", lambda s, n=n: sc.drain(s, n, sizes, logdir))
                if r is not None:
                    runs[name].append(r)
        for name in targets:
            ok = sorted(runs[name], key=lambda r: r["per_s"])
            if ok:
                median = dict(ok[len(ok) // 2])
                median["all_per_s"] = [r["per_s"] for r in runs[name]]
                out[name][str(n)] = median
            else:
                out[name][str(n)] = None
    return out


def _sweep(concurrencies: tuple[int, ...], sizes: sc.Sizes, options: dict[str, dict[str, Any]], logdir: Path,
           with_system: Callable[..., Any], results: dict[str, Any]) -> dict[str, Any]:
    sweep: dict[str, Any] = {}
    base = dict(options.get("orchwf", {}))
    for conc in concurrencies:
        options["orchwf"] = {**base, "concurrency": conc}
        try:
            for n in sizes.drain:
                log(f"--- drain {n:,}: orchwf --concurrency {conc}")
                r = with_system("orchwf", f"drain{n}c{conc}", lambda s, n=n: sc.drain(s, n, sizes, logdir))
                sweep[f"{conc}/{n}"] = None if r is None else {
                    k: r[k] for k in ("n", "per_s", "cpu_us_per_job", "seconds")}
        finally:
            options["orchwf"] = base
            results["settings"]["orchwf"] = make("orchwf", **base).settings
    return sweep


def _half_peak(results: dict[str, Any]) -> float:
    """50% of orchwf's measured drain rate (the first drain size), else a default."""
    runs = (results.get("drain") or {}).get("orchwf") or {}
    rates = [r["per_s"] for r in runs.values() if r]
    if rates:
        return 0.5 * rates[0]
    log("soak: no drain measured in this run; using 2,000/s (pass --soak-rate)")
    return 2000.0


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="orchwf-bench-"))


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
