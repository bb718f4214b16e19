"""`ci overview RUN... --out DIR`: several kernels' runs side by side on one page.

A nightly lab checks several kernel sources (each `ci` run, or each `ci merge` of its shards, is
one kernel). The overview reads their summary.json files and writes, into a fresh DIR:

- `index.html`: the verdict banner, every regression of every run, and the verdict matrix
  (check × kernel × topology), each kernel's column linking to its own report.html;
- `overview.json`: the same matrix as data, with each run's status;
- `runs/LABEL/`: a copy of each run, so the page's links work inside one CI artifact.

The exit status is the most telling of the runs' (`ExitCode.most_telling`): one kernel's
regression is the lab's regression.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.errors import BadInput, ExitCode
from harness.kernel.source import SourceSpec
from harness.report.html import STYLE, escape, source_text
from harness.report.summary import SCHEMA_ID, STATUS, read_summary_json

OVERVIEW_SCHEMA_ID = "numa-harness/overview/1"


@dataclass(frozen=True)
class Run:
    """One kernel's run: its directory, its summary, and the label the overview gives it."""

    directory: Path
    summary: dict[str, Any]
    label: str

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode(int(self.summary["exit_code"]))


def _label(summary: dict[str, Any]) -> str:
    """`6.12.117-a1b2c3d4`: the release and the build id's head, unique per kernel build."""
    kernel = summary["kernel"]
    release = kernel.get("kernel_release") or "unknown"
    build_id = str(kernel.get("build_id") or "")[:8]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{release}-{build_id}" if build_id else release)


def load_runs(directories: Sequence[Path]) -> list[Run]:
    runs: list[Run] = []
    for directory in directories:
        path = directory / "summary.json"
        summary = read_summary_json(path, lambda err, d=directory: (  # type: ignore[misc]
            f"ci overview: {d} has no readable summary.json ({err}). Pass `ci` or `ci merge` --out directories."))
        if summary.get("schema") != SCHEMA_ID:
            raise BadInput(f"ci overview: {path} is not a numa-harness summary (schema {summary.get('schema')!r}).")
        if summary.get("shard"):
            raise BadInput(f"ci overview: {directory} is one shard of a run; `ci merge` its shards first.")
        runs.append(Run(directory, summary, _label(summary)))
    labels = [run.label for run in runs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise BadInput(f"ci overview: the runs of kernel {', '.join(twice)} are given more than once; pass one run per "
                       f"kernel (merge its shards with `ci merge`).")
    return runs


def matrix(runs: Sequence[Run]) -> dict[str, Any]:
    """check → kernel label → topology → verdict; checks in the order they were first run."""
    checks: list[str] = []
    cells: dict[str, dict[str, dict[str, str]]] = {}
    for run in runs:
        for topology in run.summary["topologies"]:
            for check in topology["checks"]:
                if check["name"] not in checks:
                    checks.append(check["name"])
                cells.setdefault(check["name"], {}).setdefault(run.label, {})[topology["topology"]] = check["verdict"]
    return {"checks": checks, "cells": cells}


def overview_json(runs: Sequence[Run]) -> dict[str, Any]:
    exit_code = ExitCode.most_telling(run.exit_code for run in runs)
    return {
        "schema": OVERVIEW_SCHEMA_ID,
        # When the first of its runs started: what --baseline-from orders overviews by.
        "started": min(run.summary["started"] for run in runs),
        "status": STATUS[exit_code],
        "exit_code": int(exit_code),
        "runs": [{"label": run.label, "status": run.summary["status"], "exit_code": run.summary["exit_code"],
                  "kernel_release": run.summary["kernel"].get("kernel_release"),
                  "source": run.summary["kernel"].get("source"),
                  "topologies": [t["topology"] for t in run.summary["topologies"]],
                  "mutants": None if not run.summary.get("mutants") else
                  {"killed": run.summary["mutants"]["killed"], "total": run.summary["mutants"]["total"]},
                  "regressions": run.summary["regressions"], "report": f"runs/{run.label}/report.html"}
                 for run in runs],
        "matrix": matrix(runs),
    }


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    css = {"pass": "pass", "check-failed": "fail", "regression": "regression", "infrastructure-failure": "infra"}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>numa-harness overview: "
             f"{escape(data['status'])}</title><style>{STYLE}</style></head><body>",
             "<h1>numa-harness: kernels side by side</h1>",
             f"<div class='banner {css[data['status']]}' id='verdict'>{escape(data['status'].upper())}: "
             f"{sum(r['status'] == 'pass' for r in runs)} of {len(runs)} kernels pass</div>"]
    regressions = [(r["label"], g) for r in runs for g in r["regressions"]]
    if regressions:
        parts.append("<h2 id='regressions'>Regressions against each kernel's baseline</h2><ul>")
        parts.extend(f"<li>{escape(label)}: {escape(g['message'])}</li>" for label, g in regressions)
        parts.append("</ul>")
    parts.append("<h2 id='kernels'>Kernels</h2><table><tr><th>kernel</th><th>source</th><th>status</th>"
                 "<th>mutants killed</th><th>report</th></tr>")
    for r in runs:
        mutants = f"{r['mutants']['killed']} of {r['mutants']['total']}" if r["mutants"] else "not run"
        parts.append(f"<tr><td>{escape(r['label'])}</td><td>{escape(source_text(r['source']))}</td>"
                     f"<td>{escape(r['status'])}</td><td>{escape(mutants)}</td>"
                     f"<td><a href='{escape(r['report'])}'>report.html</a></td></tr>")
    parts.append("</table>")
    parts.append(_matrix_table(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _matrix_table(data: dict[str, Any]) -> str:
    columns = [(r["label"], t) for r in data["runs"] for t in r["topologies"]]
    rows = ["<h2 id='matrix'>Verdicts: check × kernel × topology</h2><table><tr><th rowspan='2'>check</th>" +
            "".join(f"<th colspan='{len(r['topologies'])}'><a href='{escape(r['report'])}'>{escape(r['label'])}</a></th>"
                    for r in data["runs"]) + "</tr><tr>" +
            "".join(f"<th>{escape(t)}</th>" for _, t in columns) + "</tr>"]
    for name in data["matrix"]["checks"]:
        by_kernel = data["matrix"]["cells"][name]
        cells = []
        for label, topology in columns:
            verdict = by_kernel.get(label, {}).get(topology)
            cells.append(f"<td class='v-{verdict}'>{escape(verdict)}</td>" if verdict else "<td>-</td>")
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    rows.append("</table>")
    return "".join(rows)


def write_overview(directories: Sequence[Path], out: Path) -> tuple[dict[str, Any], ExitCode]:
    """Write index.html, overview.json and runs/ into `out` (fresh; staged, then renamed into place)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out}: exists and is not an empty directory. Pass a fresh directory.")
    runs = load_runs(directories)
    if not runs:
        raise BadInput("ci overview: name the --out directories of the kernels' runs, e.g. "
                       "`ci overview run-6.12 run-6.1 --out all`.")
    data = overview_json(runs)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "runs").mkdir(parents=True)
    for run in runs:
        shutil.copytree(run.directory, staging / "runs" / run.label)
    atomic_write_text(staging / "overview.json", json.dumps(data, indent=1) + "\n")
    atomic_write_text(staging / "index.html", render(data))
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return data, ExitCode(data["exit_code"])


def newest_overview(directory: Path, exclude: Path | None = None) -> Path | None:
    """The newest earlier overview (a several-source `ci` --out) under `directory`, by the time
    its first run started; None on a nightly job's first night."""
    found: list[tuple[str, Path]] = []
    for candidate in sorted(directory.iterdir()) if directory.is_dir() else []:
        if exclude is not None and candidate.resolve() == exclude.resolve():
            continue
        try:
            data = json.loads((candidate / "overview.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") == OVERVIEW_SCHEMA_ID and isinstance(data.get("started"), str):
            found.append((data["started"], candidate))
    return max(found)[1] if found else None


def run_of_source(overview: Path, source: SourceSpec) -> Path | None:
    """In an earlier overview (or a single `ci` run's --out), the run of the same kernel source:
    the same tarball or tree path. Its build may differ (the tree moved on): that is what a
    baseline is compared with."""
    if (overview / "summary.json").is_file():
        candidates = [overview]
    else:
        candidates = sorted(p.parent for p in (overview / "runs").glob("*/summary.json"))
    for candidate in candidates:
        try:
            summary = json.loads((candidate / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        kernel_source = (summary.get("kernel") or {}).get("source") or {}
        if kernel_source.get("kind") == source.kind and kernel_source.get("path") == str(source.path):
            return candidate
    return None
