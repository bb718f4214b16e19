"""A `numa-harness ci` run as KCIDB JSON (KernelCI's common database of results), from its
summary.json: one checkout (the source and the patch series), one build (the kernel), and one
test per check per topology and per mutant.

Statuses follow KCIDB's definitions (kcidb-io's schema): a check that passed is PASS; one that
failed or hung found the kernel faulty, FAIL; one that ended in a harness error ran but could not
judge, ERROR; one not run (after a kernel bug or a livelock elsewhere) SKIP. A topology that did
not boot is a `boot` test: FAIL when the console shows a kernel bug, ERROR otherwise. A mutant
is a test of the checks themselves: killed PASS, survived FAIL, error ERROR.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.checks.mutants import MutantOutcome
from harness.checks.registry import Verdict
from harness.errors import InfrastructureError

ORIGIN = "numa_harness"
TEST_ROOT = "numa_balancing"
# KCIDB's DONE is "finished, no PASS/FAIL verdict": what an unverified check is; a check that
# does not apply to the kernel is SKIP, as one not run.
CHECK_STATUS = {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL", Verdict.HANG: "FAIL", Verdict.ERROR: "ERROR",
                Verdict.NOT_RUN: "SKIP", Verdict.NOT_APPLICABLE: "SKIP", Verdict.UNVERIFIED: "DONE"}
MUTANT_STATUS = {MutantOutcome.KILLED: "PASS", MutantOutcome.HANG: "PASS", MutantOutcome.SURVIVED: "FAIL",
                 MutantOutcome.ERROR: "ERROR"}


def patchset_hash(patch_sha256s: list[str]) -> str:
    """KCIDB's checkout.patchset_hash: sha256 over the newline-terminated sha256 of each patch, in
    order (`sha256sum *.patch | cut -c-64 | sha256sum`); empty for no patches."""
    if not patch_sha256s:
        return ""
    return hashlib.sha256("".join(f"{digest}\n" for digest in patch_sha256s).encode()).hexdigest()


def _segment(name: str) -> str:
    """A KCIDB path segment ([a-zA-Z0-9_-]): check names with underscores, as kernel CI spells them."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _checkout(summary: dict[str, Any]) -> dict[str, Any]:
    kernel = summary["kernel"]
    source = kernel.get("source") or {}
    patches = kernel.get("patches") or []
    hashed = patchset_hash([p["sha256"] for p in patches])
    checkout: dict[str, Any] = {
        "id": f"{ORIGIN}:{source.get('digest', 'unknown')[:24]}-{(hashed or 'nopatches')[:24]}",
        "origin": ORIGIN, "patchset_hash": hashed, "start_time": summary["started"],
        "comment": source.get("identity", ""), "valid": kernel.get("build_id") is not None,
        "misc": {"source_kind": source.get("kind"), "source_version": source.get("version"),
                 "patches": [p["name"] for p in patches]},
    }
    commit = re.match(r"git HEAD ([0-9a-f]{40})", source.get("identity", ""))
    if commit:
        checkout["git_commit_hash"] = commit.group(1)
    if source.get("version"):
        checkout["tree_name"] = f"linux-{source['version']}"
    return checkout


def _build(summary: dict[str, Any], checkout_id: str, compiler: str | None) -> dict[str, Any]:
    kernel = summary["kernel"]
    build: dict[str, Any] = {
        "id": f"{ORIGIN}:{kernel.get('build_id') or kernel.get('config_sha256') or 'failed-' + checkout_id.split(':')[1]}",
        "checkout_id": checkout_id, "origin": ORIGIN, "architecture": "x86_64", "start_time": summary["started"],
        "duration": float(kernel.get("build_seconds") or 0), "config_name": "tinyconfig+numa-harness",
        "status": "PASS" if kernel.get("build_id") else "FAIL",
        "misc": {"kernel_release": kernel.get("kernel_release"), "config_sha256": kernel.get("config_sha256"),
                 "cache_hit": kernel.get("cache_hit")},
    }
    if compiler:
        build["compiler"] = compiler
    return build


def _check_test(build_id: str, topology: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    name = topology["topology"]
    return {
        "id": f"{build_id}:{name}:{check['name']}", "build_id": build_id, "origin": ORIGIN,
        "path": f"{TEST_ROOT}.{_segment(name)}.{_segment(check['name'])}",
        "status": CHECK_STATUS[Verdict(check["verdict"])], "duration": float(check["seconds"]),
        "comment": check["summary"][:1000],
        "environment": {"comment": f"QEMU {topology.get('accel') or '?'} guest, topology {name}"},
        "misc": {"verdict": check["verdict"], "diffs": check["diffs"][:5], "vmstat_delta": check.get("vmstat_delta", {}),
                 "kernel_bugs": check.get("figures", {}).get("kernel_bugs", [])},
    }


def _boot_test(build_id: str, topology: dict[str, Any]) -> dict[str, Any]:
    name = topology["topology"]
    return {"id": f"{build_id}:{name}:boot", "build_id": build_id, "origin": ORIGIN,
            "path": f"{TEST_ROOT}.{_segment(name)}.boot", "status": "FAIL" if topology.get("kernel_bug") else "ERROR",
            "comment": (topology.get("kernel_bug") or str(topology.get("error")))[:1000]}


def _mutant_test(build_id: str, mutant: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{build_id}:mutant:{mutant['mutant']}", "build_id": build_id, "origin": ORIGIN,
            "path": f"{TEST_ROOT}.mutants.{_segment(mutant['mutant'])}",
            "status": MUTANT_STATUS[MutantOutcome(mutant["outcome"])], "duration": float(mutant["seconds"]),
            "comment": mutant["subject"][:1000],
            "misc": {"outcome": mutant["outcome"], "failed_checks": mutant["failed_checks"],
                     "as_expected": mutant.get("as_expected"), "detail": mutant.get("detail", "")[:1000]}}


def to_kcidb(summary: dict[str, Any], compiler: str | None = None) -> dict[str, Any]:
    """KCIDB JSON (schema v5) for the run `summary` describes."""
    checkout = _checkout(summary)
    build = _build(summary, checkout["id"], compiler)
    tests = []
    for topology in summary["topologies"]:
        if topology.get("error"):
            tests.append(_boot_test(build["id"], topology))
        tests.extend(_check_test(build["id"], topology, check) for check in topology["checks"])
    for mutant in (summary.get("mutants") or {}).get("mutants", []):
        tests.append(_mutant_test(build["id"], mutant))
    return {"version": {"major": 5, "minor": 3}, "checkouts": [checkout], "builds": [build], "tests": tests}


def compiler_of(config: Path) -> str | None:
    """The compiler a kernel was built with, from its .config (CONFIG_CC_VERSION_TEXT)."""
    try:
        text = config.read_text()
    except OSError:
        return None
    match = re.search(r'^CONFIG_CC_VERSION_TEXT="(.*)"$', text, flags=re.MULTILINE)
    return match.group(1) if match else None


def write_kcidb(path: Path, summary: dict[str, Any], compiler: str | None = None) -> dict[str, Any]:
    """Write the run as KCIDB JSON, validated against kcidb-io's schema first (a file KCIDB would
    refuse is the harness's bug, never written)."""
    import kcidb_io

    data = to_kcidb(summary, compiler)
    try:
        kcidb_io.schema.LATEST.validate(data)
    except Exception as err:
        raise InfrastructureError(f"The KCIDB data for {path} does not validate against kcidb-io's schema: {err}") from err
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return data
