"""``python -m bench all|smoke|run`` -- see docs/benchmarks.md.

  all     every scenario, full size; writes docs/benchmarks.md (the generated section),
          docs/benchmarks/*.png and docs/benchmarks/results.json
  smoke   every scenario at a tiny size (under a minute), for CI; peers that are not
          installed are skipped; writes to a temporary directory unless --out is given
  run     chosen scenarios (--scenarios drain,latency ...), full size unless --small;
          writes its results next to --out (default: a temporary directory)
  sqlcost instructions per step of the SQL hot path, under callgrind (see bench/sqlcost.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from . import report
from . import run as runner
from . import scenarios as sc
from .common import DEFAULT_DSN, ROOT, log


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: workers are stopped and databases dropped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["sqlcost"]:
        from . import sqlcost

        return sqlcost.main(args[1:])
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["all", "smoke", "run"])
    p.add_argument("--dsn", default=os.environ.get("ORCHWF_BENCH_DSN", DEFAULT_DSN),
                   help="a server's admin database; each system gets its own fresh database "
                        "[env ORCHWF_BENCH_DSN; default %(default)s]")
    p.add_argument("--systems", default="orchwf,pgqueuer,procrastinate")
    p.add_argument("--scenarios", default=",".join(runner.ALL_SCENARIOS),
                   help="for `run`: a comma-separated subset of %(default)s")
    p.add_argument("--small", action="store_true", help="for `run`: the smoke sizes")
    p.add_argument("--soak-seconds", type=float, default=None, help="soak duration [600; smoke: 6]")
    p.add_argument("--soak-rate", type=float, default=None,
                   help="soak jobs/s [50%% of orchwf's measured drain rate]")
    p.add_argument("--repeat", type=int, default=None,
                   help="drain rounds, systems interleaved; the median is reported [all: 3; else 1]")
    p.add_argument("--vacuum-naptime", type=float, default=None,
                   help="soak on a server with autovacuum off: naptime of the harness's autovacuum "
                        "emulation [the server's autovacuum_naptime]")
    p.add_argument("--drain-sizes", default=None, help="comma-separated N for drain [20000,100000]")
    p.add_argument("--orchwf-concurrency", type=int, default=50, help="orchwf worker --concurrency [50]")
    p.add_argument("--orchwf-sweep", default=None,
                   help="extra orchwf drains at these --concurrency values [all: 100,200; else none]")
    p.add_argument("--orchwf-setup-sql", default="",
                   help="SQL run on orchwf's database after the migrations (for ablation experiments)")
    p.add_argument("--pgqueuer-batch", type=int, default=50, help="pgqueuer batch_size [50]")
    p.add_argument("--procrastinate-concurrency", type=int, default=10, help="procrastinate concurrency [10]")
    p.add_argument("--out", default=None, help="where to write the report (a directory)")
    p.add_argument("--keep-databases", action="store_true")
    a = p.parse_args(args)

    sizes = sc.SMOKE if a.command == "smoke" or a.small else sc.Sizes()
    if a.soak_seconds is not None:
        sizes = dataclasses.replace(sizes, soak_seconds=a.soak_seconds)
    if a.drain_sizes:
        sizes = dataclasses.replace(sizes, drain=tuple(int(x) for x in a.drain_sizes.split(",")))
    scenarios = list(runner.ALL_SCENARIOS) if a.command != "run" else [s for s in a.scenarios.split(",") if s]
    unknown = set(scenarios) - set(runner.ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    options = {
        "orchwf": {"concurrency": a.orchwf_concurrency, "setup_sql": a.orchwf_setup_sql},
        "pgqueuer": {"batch_size": a.pgqueuer_batch},
        "procrastinate": {"concurrency": a.procrastinate_concurrency},
    }
    if a.command == "all":
        out = Path(a.out) if a.out else ROOT / "docs"
        doc, imgdir, prefix = out / "benchmarks.md", out / "benchmarks", "benchmarks/"
    else:
        out = Path(a.out) if a.out else runner.scratch()
        doc, imgdir, prefix = out / "benchmarks.md", out, ""

    sweep_text = a.orchwf_sweep if a.orchwf_sweep is not None else ("100,200" if a.command == "all" else "")
    sweep = tuple(int(x) for x in sweep_text.split(",") if x)
    t0 = time.monotonic()
    work = runner.scratch()
    try:
        results = runner.run(dsn=a.dsn, scenarios=scenarios, systems=a.systems.split(","), sizes=sizes,
                             options=options, soak_rate=a.soak_rate, workdir=work,
                             keep_databases=a.keep_databases, orchwf_sweep=sweep,
                             vacuum_naptime=a.vacuum_naptime,
                             repeat=a.repeat or (3 if a.command == "all" else 1))
    finally:
        if a.command == "all" or os.environ.get("ORCHWF_BENCH_KEEP_LOGS"):
            log(f"worker logs kept in {work / 'logs'}")
        else:
            runner.cleanup(work)
    runner.save(results, (imgdir if a.command == "all" else out) / "results.json")
    images = report.plots(results, imgdir)
    report.write_markdown(results, doc, images, prefix)
    print()
    print(report.console(results))
    print()
    log(f"report: {doc} ({time.monotonic() - t0:.0f}s)")
    if results["errors"]:
        for e in results["errors"]:
            print(f"ERROR {e['system']}/{e['scenario']}: {e['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
