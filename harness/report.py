"""Reports of cross-check results: a terminal table, JSON and JUnit XML (written atomically)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import atomic_write_text
from .crosscheck import CheckResult
from .mutants import MutantResult


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
