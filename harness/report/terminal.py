"""Reports of cross-check results: a terminal table, JSON and JUnit XML (written atomically)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.checks.faults import CheckResult
from harness.checks.mutants import MutantResult


def print_table(results: Sequence[CheckResult], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("check", "verdict", "key figures", "seconds"):
        table.add_column(column)
    for r in results:
        verdict = "[green]pass[/green]" if r.passed else "[red]HANG[/red]" if r.hung else "[red]FAIL[/red]"
        table.add_row(r.name, verdict, r.summary, f"{r.seconds:.1f}")
    console = _console()
    console.print(table)
    for r in results:
        if r.diffs:
            console.print(f"[bold red]{r.name}[/bold red]: model vs kernel")
            for diff in r.diffs:
                console.print(f"  {diff}", highlight=False, markup=False)


def write_json(path: Path, results: Sequence[CheckResult], context: dict[str, Any]) -> None:
    data = {**context, "passed": all(r.passed for r in results), "checks": [r.as_json() for r in results]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_junit(path: Path, results: Sequence[CheckResult], suite: str) -> None:
    root = ET.Element("testsuites")
    failures = sum(not r.passed for r in results)
    element = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                            errors="0", time=f"{sum(r.seconds for r in results):.2f}")
    for r in results:
        case = ET.SubElement(element, "testcase", classname=suite, name=r.name, time=f"{r.seconds:.2f}")
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.summary)
            failure.text = "\n".join(r.diffs) or r.summary
        out = ET.SubElement(case, "system-out")
        out.text = json.dumps(r.figures)
    ET.indent(root)
    atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def print_mutant_table(results: Sequence[MutantResult]) -> None:
    from rich.table import Table

    killed = sum(r.killed for r in results)
    table = Table(title=f"numa-harness mutants: {killed} of {len(results)} killed")
    for column in ("mutant", "outcome", "failed checks", "seconds", "what it breaks / first diff"):
        table.add_column(column)
    colour = {"killed": "green", "hang": "green", "survived": "red", "error": "yellow"}
    for r in results:
        table.add_row(r.mutant.name, f"[{colour[r.outcome]}]{r.outcome}[/{colour[r.outcome]}]",
                      ", ".join(r.failed_checks) or "-", f"{r.seconds:.0f}", r.detail or r.mutant.subject)
    _console().print(table)


def write_mutants_json(path: Path, results: Sequence[MutantResult]) -> None:
    data = {"killed": sum(r.killed for r in results), "total": len(results), "mutants": [r.as_json() for r in results]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _console() -> Any:
    """A terminal gets its own width; a log file or CI gets 160 columns instead of rich's 80."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def write_ci_junit(path: Path, summary: dict[str, Any]) -> None:
    """One test suite per topology (a test case per check; the failure text is the diff, plus the
    kernel-bug title if any) and one for the mutants (a survivor is a failure)."""
    root = ET.Element("testsuites", name="numa-harness ci")
    for topology in summary["topologies"]:
        suite_name = f"numa-harness.{topology['topology']}"
        checks = topology["checks"]
        suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(checks) or 1),
                              failures=str(sum(not c["passed"] for c in checks)),
                              errors="1" if topology.get("error") else "0",
                              time=f"{sum(c['seconds'] for c in checks):.2f}")
        if topology.get("error"):
            case = ET.SubElement(suite, "testcase", classname=suite_name, name="boot", time="0")
            error = ET.SubElement(case, "error", message=(topology.get("kernel_bug") or "the guest did not boot"))
            error.text = topology["error"]
        for check in checks:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=check["name"], time=f"{check['seconds']:.2f}")
            if not check["passed"]:
                bugs = check.get("kernel_bugs") or []
                failure = ET.SubElement(case, "failure", message=(f"kernel bug: {bugs[0]}; " if bugs else "") + check["summary"],
                                        type=check["verdict"])
                failure.text = "\n".join(check["diffs"]) or check["summary"]
            out = ET.SubElement(case, "system-out")
            out.text = json.dumps({"figures": check["figures"], "vmstat_delta": check["vmstat_delta"],
                                   "snapshot_file": check.get("snapshot_file")})
    if summary.get("mutants"):
        mutants = summary["mutants"]["mutants"]
        suite = ET.SubElement(root, "testsuite", name="numa-harness.mutants", tests=str(len(mutants)),
                              failures=str(sum(m["outcome"] == "survived" for m in mutants)),
                              errors=str(sum(m["outcome"] == "error" for m in mutants)),
                              time=f"{sum(m['seconds'] for m in mutants):.2f}")
        for m in mutants:
            case = ET.SubElement(suite, "testcase", classname="numa-harness.mutants", name=m["mutant"],
                                 time=f"{m['seconds']:.2f}")
            if m["outcome"] == "survived":
                failure = ET.SubElement(case, "failure", message=f"survived: {m['subject']}")
                failure.text = f"No check failed on this mutant kernel: {m['subject']}"
            elif m["outcome"] == "error":
                error = ET.SubElement(case, "error", message="could not be built or booted")
                error.text = m.get("detail", "")
    ET.indent(root)
    atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
