"""KCIDB output from summary.json (pure): statuses, ids, paths and patchset_hash as KCIDB
defines them, validated against the schema kcidb-io ships."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import kcidb_io

from harness.report.kcidb import patchset_hash, to_kcidb


def _summary() -> dict[str, Any]:
    def check(name: str, verdict: str) -> dict[str, Any]:
        return {"name": name, "passed": verdict == "pass", "verdict": verdict, "summary": f"{name} {verdict}",
                "figures": {}, "diffs": ["0x1000: node 0, model node 1"] if verdict == "fail" else [], "seconds": 3.5,
                "vmstat_delta": {"numa_hint_faults": 12}}
    return {
        "started": "2026-11-27T01:30:00+00:00",
        "kernel": {"kernel_release": "6.12.117", "build_id": "ab" * 20, "config_sha256": "cd" * 32, "build_seconds": 291.0,
                   "cache_hit": False, "patches": [{"name": "0001-x.patch", "origin": "series", "sha256": "ef" * 32}],
                   "source": {"kind": "git", "identity": "git HEAD " + "12" * 20, "digest": "34" * 32, "version": "6.12.117"}},
        "topologies": [
            {"topology": "2x2", "accel": "tcg", "checks": [check("two-stage-filter", "pass"), check("thp", "fail"),
                                                          check("placement", "error"), check("convergence", "not-run")]},
            {"topology": "4x1", "accel": "tcg", "error": "the guest did not boot", "kernel_bug": None, "checks": []},
        ],
        "mutants": {"mutants": [
            {"mutant": "0001-two-stage-filter-never-refuses", "subject": "s", "outcome": "killed", "seconds": 60.0,
             "failed_checks": ["two-stage-filter"], "as_expected": True},
            {"mutant": "0003-scan-budget-halved", "subject": "s", "outcome": "survived", "seconds": 90.0,
             "failed_checks": []},
            {"mutant": "0006-declined-fault-leaves-pte-protnone", "subject": "s", "outcome": "error", "seconds": 9.0,
             "failed_checks": []}]},
    }


def test_every_verdict_maps_to_its_kcidb_status_and_validates() -> None:
    data = to_kcidb(_summary(), compiler="gcc (Debian 12.2.0-14) 12.2.0")
    kcidb_io.schema.LATEST.validate(data)
    status = {t["path"]: t["status"] for t in data["tests"]}
    assert status == {
        "numa_balancing.2x2.two_stage_filter": "PASS", "numa_balancing.2x2.thp": "FAIL",
        "numa_balancing.2x2.placement": "ERROR", "numa_balancing.2x2.convergence": "SKIP",
        "numa_balancing.4x1.boot": "ERROR",
        "numa_balancing.mutants.0001_two_stage_filter_never_refuses": "PASS",
        "numa_balancing.mutants.0003_scan_budget_halved": "FAIL",
        "numa_balancing.mutants.0006_declined_fault_leaves_pte_protnone": "ERROR",
    }
    [checkout] = data["checkouts"]
    assert checkout["git_commit_hash"] == "12" * 20 and checkout["id"].startswith("numa_harness:")
    assert len({t["id"] for t in data["tests"]}) == len(data["tests"])


def test_patchset_hash_is_kcidbs_shell_recipe(tmp_path: Path) -> None:
    """KCIDB: `sha256sum *.patch | cut -c-64 | sha256sum | cut -c-64`; empty for no patches."""
    for name, text in (("0001-a.patch", "a\n"), ("0002-b.patch", "b\n")):
        (tmp_path / name).write_text(text)
    recipe = subprocess.run("sha256sum *.patch | cut -c-64 | sha256sum | cut -c-64", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.strip()
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp_path.glob("*.patch"))]
    assert patchset_hash(digests) == recipe
    assert patchset_hash([]) == ""
