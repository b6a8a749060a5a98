"""PNG plots of a results dict (matplotlib; skipped with a message when it is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import log

COLORS = {"orchwf": "tab:blue", "pgqueuer": "tab:orange", "procrastinate": "tab:green"}


def plots(results: dict[str, Any], outdir: Path) -> dict[str, str]:
    """Write every plot the results allow; return {name: file name}."""
    try:
        import matplotlib
    except ImportError:  # the smoke run in CI does not need the plots
        log("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return {}
    matplotlib.use("Agg")
    outdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    if (results.get("drain") or {}).get("cases"):
        made["drain_startup"] = _drain_startup(results["drain"], outdir / "drain_startup.png")
    if any(r and r.get("samples_ms") for r in (results.get("latency") or {}).values()):
        made["latency"] = _latency(results, outdir / "latency.png")
    soak = (results.get("soak") or {}).get("orchwf")
    if soak and soak.get("minutes"):
        made.update(_soak(soak, outdir))
    return made


def _median_run(r: dict[str, Any]) -> dict[str, Any]:
    runs = sorted(r["runs"], key=lambda x: x["per_s"])
    return runs[len(runs) // 2]


def _drain_startup(drain: dict[str, Any], path: Path) -> str:
    import matplotlib.pyplot as plt

    case_names = list(dict.fromkeys(e["case"] for e in drain["cases"]))
    sizes = sorted({e["n"] for e in drain["cases"]})
    fig, axes = plt.subplots(1, len(case_names), figsize=(6 * len(case_names), 4.5), sharey=True, squeeze=False)
    for ax, case in zip(axes[0], case_names, strict=True):
        for entry in (e for e in drain["cases"] if e["case"] == case):
            style = "-" if entry["n"] == sizes[0] else "--"
            for name, r in entry["systems"].items():
                if not r:
                    continue
                run = _median_run(r)
                xs = [i + 0.5 for i in range(len(run["first_seconds"]))]
                ax.plot(xs, run["first_seconds"], style, marker="o", markersize=3, color=COLORS.get(name),
                        label=f"{name}, {entry['n']:,} jobs ({r['knob']})")
        ax.set_title(next(e["label"] for e in drain["cases"] if e["case"] == case))
        ax.set_xlabel("seconds after the worker process(es) were launched")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("jobs completed in that second")
    fig.suptitle("Drain: completions per second in the first 10 s after launch (median round)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _latency(results: dict[str, Any], path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, r in (results.get("latency") or {}).items():
        if r and r.get("samples_ms"):
            v = sorted(max(0.01, x) for x in r["samples_ms"])
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))],
                    label=f"{name} (p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms)", color=COLORS.get(name))
    dag = (results.get("dag") or {}).get("orchwf")
    if dag and dag.get("delay_light_samples_ms"):
        v = sorted(max(0.01, x) for x in dag["delay_light_samples_ms"])
        ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], color="tab:purple", linestyle="--",
                label=f"orchwf parent commit → child start (p50 {dag['delay_light']['p50']:.1f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("enqueue commit → job start, ms (log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("Latency with idle workers, one job at a time at a steady rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _soak(soak: dict[str, Any], outdir: Path) -> dict[str, str]:
    import matplotlib.pyplot as plt

    minutes = soak["minutes"]
    x = [m["t_to"] / 60 for m in minutes]
    title = f"orchwf soak: {soak['seconds'] / 60:.1f} min at {soak['rate']:,.0f} jobs/s"
    made: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, [m["completed_per_s"] for m in minutes], marker="o", label="completed/s (per minute)")
    ax.axhline(soak["rate"], color="gray", linestyle=":", label=f"offered {soak['rate']:,.0f}/s")
    ax.set_ylabel("jobs/s")
    ax2 = ax.twinx()
    ax2.plot([t / 60 for t, _ in soak["backlog_samples"]], [b for _, b in soak["backlog_samples"]],
             color="tab:red", alpha=0.5, linewidth=0.8, label="backlog (ready jobs)")
    ax2.set_ylabel("backlog, jobs")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(ln.get_label()) for ln in lines], fontsize=8)
    ax.set_xlabel("minutes")
    ax.set_title(title + ": throughput and backlog")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(outdir / "soak_throughput.png", dpi=110)
    plt.close(fig)
    made["soak_throughput"] = "soak_throughput.png"

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, [m["wait_p99_ms"] for m in minutes], marker="o", label="p99")
    ax.plot(x, [m["wait_p50_ms"] for m in minutes], marker="o", label="p50")
    ax.axhline(250, color="gray", linestyle=":", label="target: p99 < 250 ms")
    ax.set_yscale("log")
    ax.set_ylabel("queue wait (ready → started), ms")
    ax.set_xlabel("minutes")
    ax.set_title(title + ": queue wait per minute")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "soak_latency.png", dpi=110)
    plt.close(fig)
    made["soak_latency"] = "soak_latency.png"

    tables = sorted({t for m in minutes for t in m["tables"]})
    snapshots = [soak["start_tables"], *(m["tables"] for m in minutes)]  # minute 0: the start
    xs = [0.0, *x]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, name in enumerate(tables):
        color = f"C{i}"
        ax.plot(xs, [s.get(name, {}).get("heap_bytes", 0) / 2**20 for s in snapshots], color=color,
                label=f"{name} heap")
        ax.plot(xs, [s.get(name, {}).get("index_bytes", 0) / 2**20 for s in snapshots], color=color,
                linestyle="--", label=f"{name} indexes")
    ax.set_ylabel("MiB")
    ax.set_xlabel("minutes")
    ax.set_title(title + ": table and index sizes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(outdir / "soak_sizes.png", dpi=110)
    plt.close(fig)
    made["soak_sizes"] = "soak_sizes.png"

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in tables:
        ax.plot(xs, [s.get(name, {}).get("dead", 0) for s in snapshots], marker="o", markersize=3, label=name)
    ax.set_ylabel("dead tuples")
    ax.set_xlabel("minutes")
    ax.set_title(title + ": dead tuples (autovacuum runs in the report)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "soak_dead.png", dpi=110)
    plt.close(fig)
    made["soak_dead"] = "soak_dead.png"
    return made
