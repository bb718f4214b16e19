"""Sharded `ci` runs and their merge.

A run's work units are its topologies' check runs, then its mutants, in the order an unsharded
run does them. `ci --shard K/N` does the units whose index is K-1 modulo N (deterministic: the
same inputs give every shard the same list), and records in its summary.json which units it did.
`ci merge PART... --out DIR` checks that the parts are the N shards of one run of one kernel,
puts their units back in the unsharded order, and writes the summary.json, junit.xml,
report.html (and KCIDB JSON) an unsharded run would have written: the same verdicts, the same
regressions against the baseline, the same exit status. Console logs and failure snapshots are
copied from the parts.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BadInput, ExitCode
from harness.report.kcidb import write_kcidb
from harness.report.outputs import write_outputs
from harness.report.summary import STATUS, exit_code_of, read_summary_json, regressions

SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = SHARD_RE.match(text)
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise BadInput(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. 1/2.")
        return cls(int(match.group(1)), int(match.group(2)))

    def take(self, units: Sequence[tuple[str, str]]) -> list[tuple[int, str, str]]:
        """This shard's units, each with its index in the unsharded order."""
        return [(i, kind, name) for i, (kind, name) in enumerate(units) if i % self.count == self.index - 1]


def work_units(topologies: Sequence[str], mutants: Sequence[str]) -> list[tuple[str, str]]:
    return [("topology", t) for t in topologies] + [("mutant", m) for m in mutants]


def _load_part(directory: Path) -> dict[str, Any]:
    data = read_summary_json(directory / "summary.json", lambda err: (
        f"ci merge: {directory} has no readable summary.json ({err}). Pass the --out directories of the shards of "
        f"one run."))
    if not data.get("shard"):
        raise BadInput(f"ci merge: {directory} is not a shard (its summary.json has no 'shard'). Run "
                       f"`numa-harness ci --shard K/N` for each part.")
    return data


def merged_summary(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary an unsharded run would have written, before regressions and exit status."""
    count = parts[0]["shard"]["count"]
    indexes = sorted(p["shard"]["index"] for p in parts)
    if any(p["shard"]["count"] != count for p in parts) or indexes != list(range(1, count + 1)):
        raise BadInput(f"ci merge: the parts are shards {indexes} of {[p['shard']['count'] for p in parts]}; pass "
                       f"every shard K/N of one run, once each.")
    builds = {p["kernel"].get("build_id") for p in parts}
    if len(builds) != 1:
        raise BadInput(f"ci merge: the parts checked different kernels (build ids {sorted(map(str, builds))}); "
                       f"merge the shards of one run only.")
    units: list[tuple[int, str, str]] = sorted((int(u[0]), str(u[1]), str(u[2])) for p in parts for u in p["shard"]["units"])
    topologies = {t["topology"]: t for p in parts for t in p["topologies"]}
    mutants = {m["mutant"]: m for p in parts for m in ((p.get("mutants") or {}).get("mutants") or [])}
    ordered_mutants = [mutants[name] for _, kind, name in units if kind == "mutant" and name in mutants]
    any_mutants = any(p.get("mutants") is not None for p in parts)
    first = min(parts, key=lambda p: p["started"])
    return {
        **{k: v for k, v in first.items() if k not in ("shard", "topologies", "mutants", "errors", "seconds")},
        "seconds": max(p["seconds"] for p in parts),
        "kernel": {**first["kernel"], "build_seconds": max(p["kernel"]["build_seconds"] for p in parts),
                   "cache_hit": all(p["kernel"].get("cache_hit") for p in parts)},
        "topologies": [topologies[name] for _, kind, name in units if kind == "topology" and name in topologies],
        "mutants": {"killed": sum(m["killed"] for m in ordered_mutants), "total": len(ordered_mutants),
                    "mutants": ordered_mutants} if any_mutants else None,
        "errors": [e for p in parts for e in p["errors"]],
        "merged_from": [{"shard": f"{p['shard']['index']}/{count}", "seconds": p["seconds"]} for p in parts],
    }


def merge(parts: Sequence[Path], out: Path, baseline: dict[str, Any] | None, baseline_name: str | None,
          kcidb: Path | None) -> tuple[dict[str, Any], ExitCode]:
    """Write the merged report into `out` (fresh, written in a staging directory renamed into place)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out}: exists and is not an empty directory. Pass a fresh directory.")
    summaries = [_load_part(part) for part in parts]
    summary = merged_summary(summaries)
    summary["regressions"] = regressions(summary, baseline) if baseline is not None else []
    summary["baseline"] = baseline_name
    exit_code = exit_code_of(summary)
    summary["exit_code"], summary["status"] = int(exit_code), STATUS[exit_code]
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for part in parts:
        for item in part.iterdir():
            if item.name not in ("summary.json", "junit.xml", "report.html") and item.is_file():
                shutil.copyfile(item, staging / item.name)
    write_outputs(summary, staging)
    if kcidb is not None:
        write_kcidb(kcidb, summary)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return summary, exit_code
