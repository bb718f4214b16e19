"""Plots for the HTML report, rendered with matplotlib (Agg) into PNG data URIs so that the
report stays a single self-contained file."""

from __future__ import annotations

import base64
import io
from typing import Any

COUNTERS = ("numa_hint_faults", "numa_hint_faults_local", "numa_pages_migrated", "numa_pte_updates")


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def counters_timeline(topology: str, timeline: list[dict[str, Any]]) -> str | None:
    """The NUMA event counters over the whole check run (read at every check's start and end):
    their course over time, and what each check added (log scale: counters differ by orders)."""
    if len(timeline) < 2:
        return None
    plt = _pyplot()
    figure, (course, per_check) = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    t = [p["t"] for p in timeline]
    styles = ("-", "--", ":", "-.")
    for index, name in enumerate(COUNTERS):
        base = timeline[0]["vmstat"].get(name, 0)
        course.step(t, [p["vmstat"].get(name, 0) - base for p in timeline], where="post", label=name,
                    linestyle=styles[index], linewidth=2.2 - 0.4 * index, marker="o", markersize=3)
    for point in timeline:
        if point["check"].endswith(" start"):
            course.axvline(point["t"], color="0.85", linewidth=0.8)
            course.annotate(point["check"][:-6], (point["t"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                            fontsize=7, color="0.4", va="top", ha="right")
    course.set_yscale("symlog")  # convergence adds orders of magnitude more than the other checks
    course.set_title(f"{topology}: NUMA event counters during the checks (symlog)", fontsize=9)
    course.set_xlabel("seconds since the checks started")
    course.set_ylabel("events since the first check")
    course.legend(fontsize=7, loc="center left")
    starts = {p["check"][:-6]: p["vmstat"] for p in timeline if p["check"].endswith(" start")}
    ends = {p["check"][:-4]: p["vmstat"] for p in timeline if p["check"].endswith(" end")}
    checks = [c for c in starts if c in ends]
    width = 0.8 / len(COUNTERS)
    for index, name in enumerate(COUNTERS):
        deltas = [max(ends[c].get(name, 0) - starts[c].get(name, 0), 0) + 1 for c in checks]
        per_check.bar([i + index * width for i in range(len(checks))], deltas, width=width, label=name)
    per_check.set_yscale("log")
    per_check.set_xticks([i + 0.4 - width / 2 for i in range(len(checks))], checks, rotation=30, ha="right", fontsize=7)
    per_check.set_title("added by each check (+1, log scale)", fontsize=9)
    return _png(figure)


def convergence_plots(topology: str, runs: dict[str, Any]) -> list[tuple[str, str]]:
    """For each numa01/numa02 run: pages per node and local share over time, the counters over
    time, and the scan offset's progress. Returns (caption, data URI) pairs."""
    plt = _pyplot()
    plots = []
    for name, run in runs.items():
        series = run["series"]
        t = series["t"]
        figure, (placement, counters, scan) = plt.subplots(1, 3, figsize=(13, 3.2))
        nodes = list(zip(*series["pages_on_node"], strict=True))
        placement.stackplot(t, *nodes, labels=[f"node {n}" for n in range(len(nodes))], alpha=0.8)
        share = placement.twinx()
        share.plot(t, series["local_share"], color="black", linewidth=1.5, label="local share")
        share.set_ylim(0, 1.05)
        share.set_ylabel("share of slice pages local")
        placement.set_title(f"{name}: pages per node", fontsize=9)
        placement.set_xlabel("seconds")
        placement.set_ylabel("pages")
        placement.legend(loc="upper left", fontsize=7)
        first = series["vmstat"][0]
        for index, counter in enumerate(COUNTERS):
            counters.plot(t, [v[index] - first[index] for v in series["vmstat"]], label=counter)
        counters.set_title(f"{name}: hint faults, migrations", fontsize=9)
        counters.set_xlabel("seconds")
        counters.legend(fontsize=7)
        for pid in sorted({s["pid"] for s in run["scan"]}):
            points = [s for s in run["scan"] if s["pid"] == pid]
            scan.plot([s["t"] for s in points], [s["offset_mib"] if s["offset_mib"] is not None else float("nan")
                                                 for s in points], marker=".", label=f"pid {pid} offset")
            scan.step([s["t"] for s in points], [s["seq"] for s in points], where="post", linestyle=":",
                      label=f"pid {pid} numa_scan_seq")
        scan.set_title(f"{name}: scan offset (MiB), seq", fontsize=9)
        scan.set_xlabel("seconds (host clock)")
        if run["scan"]:
            scan.legend(fontsize=7)
        plots.append((f"{topology} {name}: final local share {run['final_share']:.0%}", _png(figure)))
    return plots
