"""Run the chosen scenarios against every system, each in its own fresh database on the
server under test, and collect the results in one JSON-able dict."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import drain as dr
from . import history as hi
from . import scenarios as sc
from . import soak as so
from .common import drop_database, log, machine_info, server_info
from .systems import FACTORIES, make, missing_packages
from .systems.base import System

ALL_SCENARIOS = ("drain", "enqueue", "web_enqueue", "latency", "dag", "soak", "history")
ORCHWF_ONLY = ("dag", "soak", "history")
SOAK_SHARE = 0.6  # the soak's default rate: this share of orchwf's drain rate on the same server


@dataclass
class Options:
    scenarios: list[str]
    systems: list[str]
    sizes: sc.Sizes
    rounds: int
    workdir: Path
    concurrency: int | None = None  # workers of latency, DAG, soak and history (None: defaults)
    soak_rate: float | None = None
    vacuum_naptime: float | None = None
    orchwf_setup_sql: str = ""
    keep_databases: bool = False
    host_rounds: int = 1


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


class Runner:
    """Fresh database per (system, scenario) on one server; failures are recorded, not raised."""

    def __init__(self, server: so.Server, opts: Options, results: dict[str, Any]) -> None:
        self.server, self.opts, self.results = server, opts, results
        self.logdir = opts.workdir / "logs" / server.name
        self.logdir.mkdir(parents=True, exist_ok=True)

    def with_system(self, name: str, label: str, concurrency: int | None, body: Callable[[System], Any]) -> Any:
        dbname = f"orchwf_bench_{name}_{label}_{os.getpid()}"
        kw: dict[str, Any] = {"concurrency": concurrency}
        if name == "orchwf" and self.opts.orchwf_setup_sql:
            kw["setup_sql"] = self.opts.orchwf_setup_sql
        system = make(name, **kw)
        self.results["settings"].setdefault(self.server.name, {}).setdefault(name, {})[
            system.knob_label()] = system.settings
        try:
            system.setup(self.server.dsn, dbname)
            return body(system)
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not lose the others
            log(f"{name}/{label} on {self.server.name} FAILED: {exc}")
            self.results["errors"].append({"server": self.server.name, "system": name, "scenario": label,
                                           "error": repr(exc), "traceback": traceback.format_exc()})
            return None
        finally:
            system.close()
            if not self.opts.keep_databases:
                try:
                    drop_database(self.server.dsn, dbname)
                except Exception as exc:  # noqa: BLE001
                    log(f"could not drop {dbname}: {exc}")

    def drains(self, names: list[str], rounds: int) -> dict[str, Any]:
        sizes = self.opts.sizes
        return dr.run_cases(
            systems=names, sizes=sizes.drain, case_list=dr.cases(sizes.drain_concurrency), rounds=rounds,
            logdir=self.logdir, batch=sizes.batch, timeout=sizes.drain_timeout,
            with_system=lambda name, label, case, body: self.with_system(name, label, case.concurrency, body))

    def soak_rate(self) -> tuple[float | None, str]:
        """--soak-rate, else SOAK_SHARE of orchwf's drain window rate at the first N, in
        the case whose workers match the soak's, measured in this run on this server;
        without one, a calibration drain first."""
        if self.opts.soak_rate:
            return self.opts.soak_rate, "--soak-rate"
        c = self.opts.concurrency
        case = "defaults" if c is None else f"c{c}"
        for entry in (self.results.get("drain") or {}).get("cases", []):
            r = entry["systems"].get("orchwf")
            if entry["case"] == case and r:
                rate = float(r["window_per_s"]["median"])
                return SOAK_SHARE * rate, (f"{SOAK_SHARE:.0%} of orchwf's drain rate in this run "
                                           f"({rate:,.0f}/s, {entry['n']:,} jobs, {entry['label']}, steady window)")
        n = self.opts.sizes.drain[0]
        log(f"soak: no drain of orchwf measured yet; calibrating with a drain of {n:,}")
        r = self.with_system("orchwf", "calibration", c, lambda s: dr.drain_once(
            s, n, self.logdir, batch=self.opts.sizes.batch, timeout=self.opts.sizes.drain_timeout))
        if r is None:
            return None, "the calibration drain failed (see the errors); pass --soak-rate"
        return SOAK_SHARE * r["window_per_s"], (f"{SOAK_SHARE:.0%} of a calibration drain on this server "
                                                f"({r['window_per_s']:,.0f}/s, {n:,} jobs, steady window)")


def run(server: so.Server, host: so.Server | None, opts: Options) -> dict[str, Any]:
    names, skipped = available_systems(opts.systems)
    if "orchwf" not in names:
        raise SystemExit("orchwf must be among the systems")
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    results: dict[str, Any] = {
        "meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(),
                 "server": server_info(server.dsn), "server_name": server.name,
                 "host_server": server_info(host.dsn) if host else None,
                 "sizes": opts.sizes.__dict__, "scenarios": opts.scenarios, "skipped": skipped,
                 "rounds": opts.rounds, "loadavg_start": _loadavg()},
        "settings": {},
        "errors": [],
    }
    runner = Runner(server, opts, results)
    for scenario in opts.scenarios:
        targets = ["orchwf"] if scenario in ORCHWF_ONLY else names
        if scenario == "drain":
            results["drain"] = runner.drains(names, opts.rounds)
            if host is not None:
                log(f"--- drain on the host server ({host.dsn})")
                results["drain_host"] = Runner(host, opts, results).drains(names, opts.host_rounds)
            continue
        out: dict[str, Any] = {}
        for name in targets:
            log(f"--- {scenario}: {name}")
            c = opts.concurrency
            if scenario == "enqueue":
                out[name] = runner.with_system(name, scenario, c, lambda s: sc.enqueue(s, opts.sizes))
            elif scenario == "web_enqueue":
                out[name] = runner.with_system(name, scenario, c, lambda s: sc.web_enqueue(s, opts.sizes))
            elif scenario == "latency":
                out[name] = runner.with_system(name, scenario, c,
                                               lambda s: sc.latency(s, opts.sizes, runner.logdir))
            elif scenario == "dag":
                out[name] = runner.with_system(name, scenario, c, lambda s: sc.dag(s, opts.sizes, runner.logdir))
            elif scenario == "soak":
                rate, why = runner.soak_rate()
                if rate is None:
                    log(f"soak skipped: {why}")
                    out[name] = None
                    continue
                log(f"soak rate {rate:,.0f}/s: {why}")
                r = runner.with_system(name, scenario, c, partial(
                    so.soak, rate=rate, sizes=opts.sizes, logdir=runner.logdir, server=server,
                    vacuum_naptime=opts.vacuum_naptime))
                if r is not None:
                    r["rate_source"] = why
                out[name] = r
            elif scenario == "history":
                out[name] = runner.with_system(name, scenario, c,
                                               lambda s: hi.history(s, opts.sizes, runner.logdir))
        results[scenario] = out
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["meta"]["loadavg_end"] = _loadavg()
    return results


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
