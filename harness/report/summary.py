"""summary.json of a `numa-harness ci` run: what it contains (SCHEMA, a JSON Schema the README
documents field by field) and how a run compares with a baseline run (regressions)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks.mutants import MutantOutcome
from harness.checks.registry import Verdict
from harness.errors import BadInput, ExitCode

SCHEMA_ID = "numa-harness/summary/1"

# summary.json's `status` for each exit code a ci run can end with.
STATUS = {ExitCode.OK: "pass", ExitCode.CHECK_FAILED: "check-failed", ExitCode.REGRESSION: "regression",
          ExitCode.HARNESS_FAILED: "infrastructure-failure"}

_CHECK = {
    "type": "object",
    "required": ["name", "passed", "verdict", "summary", "figures", "diffs", "seconds", "vmstat_delta"],
    "properties": {
        "name": {"type": "string"},
        "passed": {"type": "boolean"},
        "verdict": {"enum": [v.value for v in Verdict]},
        "summary": {"type": "string"},
        "figures": {"type": "object"},
        "diffs": {"type": "array", "items": {"type": "string"}},
        "seconds": {"type": "number", "minimum": 0},
        "vmstat_delta": {"type": "object", "additionalProperties": {"type": "integer"}},
        "spent": {"type": "object", "additionalProperties": {"type": "number"}},
        "snapshot_file": {"type": ["string", "null"]},
        "kernel_bugs": {"type": "array", "items": {"type": "string"}},
    },
}

_TOPOLOGY = {
    "type": "object",
    "required": ["topology", "passed", "checks", "console_log", "seconds"],
    "properties": {
        "topology": {"type": "string"},
        "accel": {"type": ["string", "null"]},
        "boot_seconds": {"type": ["number", "null"]},
        "seconds": {"type": "number"},
        "guests": {"type": "integer", "minimum": 1},
        "passed": {"type": "boolean"},
        "console_log": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "kernel_bug": {"type": ["string", "null"]},
        "vmstat_delta": {"type": "object", "additionalProperties": {"type": "integer"}},
        "timeline": {"type": "array", "items": {"type": "object", "required": ["t", "check", "vmstat"]}},
        "checks": {"type": "array", "items": _CHECK},
    },
}

_MUTANT = {
    "type": "object",
    "required": ["mutant", "subject", "outcome", "killed", "failed_checks", "seconds"],
    "properties": {
        "mutant": {"type": "string"},
        "subject": {"type": "string"},
        "outcome": {"enum": [o.value for o in MutantOutcome]},
        "killed": {"type": "boolean"},
        "expected_checks": {"type": "array", "items": {"type": "string"}},
        "as_expected": {"type": "boolean"},
        "failed_checks": {"type": "array", "items": {"type": "string"}},
        "seconds": {"type": "number"},
        "build_seconds": {"type": "number"},
        "built": {"type": "boolean"},
        "detail": {"type": "string"},
        "console_log": {"type": ["string", "null"]},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "numa-harness ci summary",
    "type": "object",
    "required": ["schema", "harness_version", "status", "exit_code", "started", "seconds", "host", "kernel",
                 "topologies", "mutants", "regressions", "errors"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "harness_version": {"type": "string"},
        "status": {"enum": list(STATUS.values())},
        "exit_code": {"enum": [0, 1, 3, 125]},
        "started": {"type": "string"},
        "seconds": {"type": "number"},
        "host": {"type": "object", "required": ["qemu", "python", "drgn"]},
        "kernel": {
            "type": "object",
            "required": ["kernel_release", "build_id", "config_sha256", "patches", "source", "build_seconds"],
            "properties": {
                "kernel_release": {"type": ["string", "null"]},
                "build_id": {"type": ["string", "null"]},
                "config_sha256": {"type": ["string", "null"]},
                "patches": {"type": "array"},
                "source": {"type": ["object", "null"]},
                "build_seconds": {"type": "number"},
                "cache_hit": {"type": "boolean"},
            },
        },
        "topologies": {"type": "array", "items": _TOPOLOGY},
        "mutants": {
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["killed", "total", "mutants"],
                 "properties": {"killed": {"type": "integer"}, "total": {"type": "integer"},
                                "mutants": {"type": "array", "items": _MUTANT}}},
            ],
        },
        "regressions": {
            "type": "array",
            "items": {"type": "object", "required": ["kind", "where", "baseline", "current", "message"]},
        },
        "baseline": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}


# Figures compared with a baseline, and how far each may move before it is a regression: the
# run-to-run noise measured on this kind of machine (TCG, 2 cores), stated once here.
@dataclass(frozen=True)
class Tracked:
    description: str
    absolute: float  # allowed movement in the figure's unit
    worse_when: str  # "lower" or "higher": only a move in this direction is a regression


TRACKED: dict[str, Tracked] = {
    "convergence.final_share": Tracked("final local share of a free numa01/numa02 run", 0.05, "lower"),
    "convergence.time_to_converged": Tracked("seconds until a free run reached 90 % local", 3.0, "higher"),
    "check.seconds": Tracked("seconds a check took (noise is wide under TCG)", 30.0, "higher"),
}


def regressions(current: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """What got worse since the baseline run: a check that passed and now fails or hangs (same
    topology; a harness error or a check not run says nothing about the kernel, so it is no
    regression), a mutant that was killed and now survives, a tracked figure that moved the
    wrong way by more than its noise."""
    found: list[dict[str, Any]] = []
    base_checks = {(t["topology"], c["name"]): c for t in baseline.get("topologies", []) for c in t.get("checks", [])}
    for topology in current.get("topologies", []):
        for check in topology.get("checks", []):
            where = f"{topology['topology']}/{check['name']}"
            before = base_checks.get((topology["topology"], check["name"]))
            if before is None:
                continue
            if before["passed"] and Verdict(check["verdict"]).indicts_kernel:
                first = check["diffs"][0] if check.get("diffs") else check["summary"]
                found.append({"kind": "check", "where": where, "baseline": "pass", "current": check["verdict"],
                              "message": f"{where} passed in the baseline and now is {check['verdict']}: {first}"})
            found.extend(_figure_regressions(where, before, check))
    base_mutants = {m["mutant"]: m for m in (baseline.get("mutants") or {}).get("mutants", [])}
    for mutant in (current.get("mutants") or {}).get("mutants", []):
        before = base_mutants.get(mutant["mutant"])
        if before is not None and before["killed"] and mutant["outcome"] == MutantOutcome.SURVIVED:
            found.append({"kind": "mutant", "where": mutant["mutant"], "baseline": before["outcome"],
                          "current": mutant["outcome"],
                          "message": f"mutant {mutant['mutant']} was {before['outcome']} in the baseline and now "
                                     f"{mutant['outcome']}: the checks lost their teeth for it"})
    return found


def _figure_regressions(where: str, before: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    pairs: list[tuple[str, str, float | None, float | None]] = [
        ("check.seconds", f"{where} seconds", before.get("seconds"), now.get("seconds"))]
    if now["name"] == "convergence":
        old_runs, new_runs = before["figures"].get("runs", {}), now["figures"].get("runs", {})
        for run, figures in new_runs.items():
            if not run.endswith("-free") or run not in old_runs:
                continue
            for figure in ("final_share", "time_to_converged"):
                pairs.append((f"convergence.{figure}", f"{where} {run} {figure}", old_runs[run].get(figure),
                              figures.get(figure)))
    found = []
    for key, label, old, new in pairs:
        tracked = TRACKED[key]
        if old is None or new is None:
            if key == "convergence.time_to_converged" and old is not None and new is None:
                found.append({"kind": "figure", "where": label, "baseline": old, "current": None,
                              "message": f"{label}: converged in {old} s in the baseline, not at all now"})
            continue
        moved = new - old if tracked.worse_when == "higher" else old - new
        if moved > tracked.absolute:
            found.append({"kind": "figure", "where": label, "baseline": old, "current": new,
                          "message": f"{label}: {old} -> {new}, worse by more than its noise ({tracked.absolute}; "
                                     f"{tracked.description})"})
    return found


def exit_code_of(summary: dict[str, Any]) -> ExitCode:
    """ExitCode.most_telling over what the run found (its docstring says why regressions come
    first and infrastructure failures last)."""
    checks = [c for t in summary["topologies"] for c in t["checks"]]
    infrastructure = (bool(summary["errors"]) or not summary["topologies"] or any(t.get("error") for t in summary["topologies"])
                      or any(c["verdict"] in (Verdict.ERROR, Verdict.UNVERIFIED) for c in checks))
    failed = any(Verdict(c["verdict"]).indicts_kernel for c in checks)
    survived = summary["mutants"] is not None and any(m["outcome"] == MutantOutcome.SURVIVED
                                                      for m in summary["mutants"]["mutants"])
    found = [ExitCode.REGRESSION] if summary["regressions"] else []
    found += [ExitCode.CHECK_FAILED] if failed or survived else []
    found += [ExitCode.HARNESS_FAILED] if infrastructure else []
    return ExitCode.most_telling(found)


def read_summary_json(path: Path, refusal: Callable[[Exception], str]) -> dict[str, Any]:
    """A summary.json as a dict; unreadable or not JSON is bad input, worded by the caller."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BadInput(refusal(err)) from err
    return data
