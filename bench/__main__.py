"""``python -m bench all|smoke|run|drain|check|sqlcost`` -- see docs/benchmarks.md.

  all     every scenario, full size, on the benchmark's own cluster; writes docs/benchmarks.md
          (the generated section), docs/benchmarks/*.png and docs/benchmarks/results.json
          (--out DIR to write elsewhere)
  smoke   every scenario at a tiny size (under a minute on --dsn), for CI; peers that are
          not installed are skipped
  run     chosen scenarios (--scenarios drain,soak ...), full size unless --small
  drain   the drain cases only: 20,000 and 100,000 jobs x (each system's defaults, all at 50),
          rounds of the systems in turn; prints medians, spreads and orchwf/pgqueuer ratios
  check   the CI gate on cost growing with history (~4 min, orchwf only, own cluster):
          drains of 5,000, 3 in turns on an empty history and on one of 300,000 seeded
          finished workflows (medians: seeded >= 0.8x empty), then a 2-minute soak at 40%
          of the empty drains' rate (last minute's queue wait p99 <= max(2x the first
          minute's, 250 ms); backlog never growing for more than 30 s; runtime tables at
          the end <= max(2x minute 1, 1 MiB)); prints the figures, exits 1 if a gate fails
  sqlcost instructions per step of the SQL hot path, under callgrind (see bench/sqlcost.py)
  tracing the drain with OpenTelemetry tracing on and off (bench/tracing.py)
  keys    concurrency keys: the drain with and without a key on every step, and a keyed load
          against its limits (bench/keys.py)
  inprocess the library's Orchestrator with DBStateManager, one workflow at a time
          (bench/inprocess.py)
  defaults orchwf alone at --concurrency 10, 25, 50 and 100, no-op steps and steps waiting
          10 ms on I/O (bench/defaults.py): the measurement behind the default

By default the benchmark starts its own PostgreSQL 15 cluster with production settings
(bench/cluster.py: autovacuum on, 1 GB shared_buffers, ...) and deletes it at the end;
--dsn benchmarks an existing server instead, --host-dsn adds the drains on a second one.
Everything but `all` writes its report into a scratch directory unless --out is given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import check, plots, report
from . import cluster as cl
from . import run as runner
from . import scenarios as sc
from .common import ROOT, log
from .soak import Server


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: workers are stopped, databases dropped, the cluster deleted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["all", "smoke", "run", "drain", "check"])
    p.add_argument("--dsn", default=os.environ.get("ORCHWF_BENCH_DSN"),
                   help="benchmark this existing server (its admin database; every system gets fresh "
                        "databases on it) instead of the benchmark's own cluster [env ORCHWF_BENCH_DSN]")
    p.add_argument("--host-dsn", default=None,
                   help="also run the drain cases on this server, reported as a 'host server' comparison")
    p.add_argument("--keep-cluster", action="store_true", help="leave the own cluster's directory (stopped)")
    p.add_argument("--pg-bin", default=None, help="PostgreSQL binaries of the own cluster [/usr/lib/postgresql/15/bin]")
    p.add_argument("--cluster-dir", default=str(cl.BASE_DIR), help="parent of the own cluster's directory [%(default)s]")
    p.add_argument("--systems", default="orchwf,pgqueuer,procrastinate")
    p.add_argument("--scenarios", default=",".join(runner.ALL_SCENARIOS),
                   help="for `run`: a comma-separated subset of %(default)s")
    p.add_argument("--small", action="store_true", help="for `run` and `drain`: small sizes (drains of 2,000 and 10,000)")
    p.add_argument("--rounds", type=int, default=None,
                   help="drain rounds, systems interleaved [all, drain: 3; drain --small, run, smoke: 1]")
    p.add_argument("--host-rounds", type=int, default=1, help="drain rounds on --host-dsn [1]")
    p.add_argument("--drain-sizes", default=None, help="comma-separated N for the drain [20000,100000]")
    p.add_argument("--drain-concurrency", type=int, default=None,
                   help="the common concurrency/batch of the second drain case [50]")
    p.add_argument("--concurrency", type=int, default=None,
                   help="workers' concurrency/batch in latency, DAG, soak and history [each system's default]")
    p.add_argument("--soak-seconds", type=float, default=None, help="soak duration [1800; --small 120; smoke 6]")
    p.add_argument("--soak-rate", type=float, default=None,
                   help=f"soak jobs/s [{runner.SOAK_SHARE * 100:.0f}%% of orchwf's drain rate measured on the same server]")
    p.add_argument("--vacuum-naptime", type=float, default=None,
                   help="soak on a server with autovacuum off: emulate autovacuum with this naptime "
                        "(opt-in; the own cluster runs the real autovacuum)")
    p.add_argument("--history-seed", type=int, default=None,
                   help="finished workflows seeded for the history scenario [2,000,000; smoke 20,000]")
    p.add_argument("--orchwf-setup-sql", default="",
                   help="SQL run on orchwf's databases after the migrations (for ablation experiments)")
    p.add_argument("--out", default=None, help="where to write the report (a directory)")
    p.add_argument("--keep-databases", action="store_true")
    return p


@contextlib.contextmanager
def server_under_test(a: argparse.Namespace) -> Iterator[Server]:
    if a.dsn:
        yield Server("dsn", a.dsn)
        return
    with cl.running(a.pg_bin, keep=a.keep_cluster, base_dir=Path(a.cluster_dir)) as cluster:
        yield Server("own cluster", cluster.dsn, cluster.log_file)


def run_check(a: argparse.Namespace) -> int:
    """``check``: its own sizes and gates (bench/check.py); no report files. The worker
    logs are kept when it fails (or with ORCHWF_BENCH_KEEP_LOGS): CI shows where."""
    work = runner.scratch()
    rc = 1
    try:
        with server_under_test(a) as server:
            rc = check.check(server, work / "logs", soak_seconds=a.soak_seconds, seed=a.history_seed,
                             concurrency=a.concurrency)
        return rc
    finally:
        if rc != 0 or os.environ.get("ORCHWF_BENCH_KEEP_LOGS"):
            log(f"worker logs kept in {work / 'logs'}")
        else:
            runner.cleanup(work)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["sqlcost"]:
        from . import sqlcost

        return sqlcost.main(args[1:])
    if args[:1] == ["defaults"]:
        return _defaults(args[1:])
    if args[:1] == ["tracing"]:
        return _tracing(args[1:])
    if args[:1] == ["keys"]:
        return _keys(args[1:])
    if args[:1] == ["inprocess"]:
        return _inprocess(args[1:])
    p = parser()
    a = p.parse_args(args)
    if a.command == "check":
        return run_check(a)

    sizes = sc.SMOKE if a.command == "smoke" else sc.SMALL if a.small else sc.Sizes()
    changes: dict[str, object] = {}
    if a.soak_seconds is not None:
        changes["soak_seconds"] = a.soak_seconds
    if a.drain_sizes:
        changes["drain"] = tuple(int(x) for x in a.drain_sizes.split(","))
    if a.drain_concurrency:
        changes["drain_concurrency"] = a.drain_concurrency
    if a.history_seed is not None:
        changes["history_seed"] = a.history_seed
    sizes = dataclasses.replace(sizes, **changes)  # type: ignore[arg-type]
    if a.command == "run":
        scenarios = [s for s in a.scenarios.split(",") if s]
    elif a.command == "drain":
        scenarios = ["drain"]
    else:
        scenarios = list(runner.ALL_SCENARIOS)
    unknown = set(scenarios) - set(runner.ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    rounds = a.rounds or (3 if a.command == "all" or (a.command == "drain" and not a.small) else 1)

    if a.command == "all":
        out = Path(a.out) if a.out else ROOT / "docs"
        doc, imgdir, prefix = out / "benchmarks.md", out / "benchmarks", "benchmarks/"
    else:
        out = Path(a.out) if a.out else runner.scratch()
        doc, imgdir, prefix = out / "benchmarks.md", out, ""

    t0 = time.monotonic()
    work = runner.scratch()
    opts = runner.Options(scenarios=scenarios, systems=a.systems.split(","), sizes=sizes, rounds=rounds,
                          workdir=work, concurrency=a.concurrency, soak_rate=a.soak_rate,
                          vacuum_naptime=a.vacuum_naptime, orchwf_setup_sql=a.orchwf_setup_sql,
                          keep_databases=a.keep_databases, host_rounds=a.host_rounds)
    try:
        with server_under_test(a) as server:
            host = Server("host server", a.host_dsn) if a.host_dsn else None
            results = runner.run(server, host, opts)
            if server.log_file is not None:  # the own cluster
                results["meta"]["cluster_settings"] = dict(cl.SETTINGS)
    finally:
        if a.command == "all" or os.environ.get("ORCHWF_BENCH_KEEP_LOGS"):
            log(f"worker logs kept in {work / 'logs'}")
        else:
            runner.cleanup(work)
    results["meta"]["command"] = " ".join(["python -m bench", *args])
    runner.save(results, imgdir / "results.json")
    images = plots.plots(results, imgdir)
    report.write_markdown(results, doc, images, prefix)
    print()
    print(report.console(results))
    print()
    log(f"report: {doc} ({time.monotonic() - t0:.0f}s)")
    if results["errors"]:
        for e in results["errors"]:
            print(f"ERROR {e['server']}: {e['system']}/{e['scenario']}: {e['error']}", file=sys.stderr)
        return 1
    return 0


def _orchwf_only(argv: list[str], prog: str, module: Any, extra: Callable[[argparse.ArgumentParser], None],
                 run: Callable[[str, Path, argparse.Namespace], dict[str, Any]]) -> int:
    """An orchwf-only measurement (``defaults``, ``tracing``): its own flags, the server
    (the own cluster unless --dsn), a scratch directory, and the module's table printed."""
    p = argparse.ArgumentParser(prog=f"python -m bench {prog}", description=module.__doc__)
    p.add_argument("--dsn", default=os.environ.get("ORCHWF_BENCH_DSN"),
                   help="an existing server instead of the benchmark's own cluster")
    p.add_argument("--pg-bin", default=None)
    p.add_argument("--cluster-dir", default=str(cl.BASE_DIR))
    extra(p)
    a = p.parse_args(argv)
    work = runner.scratch()
    try:
        with server_under_test(argparse.Namespace(dsn=a.dsn, pg_bin=a.pg_bin, keep_cluster=False,
                                                  cluster_dir=a.cluster_dir)) as server:
            result = run(server.dsn, work, a)
    finally:
        runner.cleanup(work)
    print()
    print(module.table(result))
    return 0


def _defaults(argv: list[str]) -> int:
    from . import defaults

    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rounds", type=int, default=2)
        p.add_argument("--scale", type=float, default=1.0, help="multiply the jobs per drain (0.1 for a quick look)")

    return _orchwf_only(argv, "defaults", defaults, flags,
                        lambda dsn, work, a: defaults.run(dsn, work, rounds=a.rounds, scale=a.scale))


def _tracing(argv: list[str]) -> int:
    from . import tracing

    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--jobs", type=int, default=tracing.JOBS)
        p.add_argument("--sample-ratio", type=float, default=None,
                       help="also drain with the workers' sampler keeping this ratio of instances")

    return _orchwf_only(argv, "tracing", tracing, flags,
                        lambda dsn, work, a: tracing.run(dsn, work, rounds=a.rounds, jobs=a.jobs,
                                                         sample_ratio=a.sample_ratio))


def _keys(argv: list[str]) -> int:
    from . import keys

    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--jobs", type=int, default=keys.JOBS)

    return _orchwf_only(argv, "keys", keys, flags, lambda dsn, work, a: keys.run(dsn, work, rounds=a.rounds, jobs=a.jobs))


def _inprocess(argv: list[str]) -> int:
    from . import inprocess

    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--workflows", type=int, default=inprocess.WORKFLOWS)

    return _orchwf_only(argv, "inprocess", inprocess, flags,
                        lambda dsn, work, a: inprocess.run(dsn, work, rounds=a.rounds, workflows=a.workflows))


if __name__ == "__main__":
    sys.exit(main())
