"""Cross-check and mutant results for people and scripts: rich tables on the terminal, JSON files
(written atomically)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.cache import atomic_write_text
from harness.checks.mutants import MutantOutcome, MutantResult
from harness.checks.registry import CheckResult, Verdict

VERDICT_STYLE = {Verdict.PASS: "green", Verdict.FAIL: "red", Verdict.HANG: "red", Verdict.ERROR: "yellow",
                 Verdict.NOT_RUN: "dim", Verdict.NOT_APPLICABLE: "dim", Verdict.UNVERIFIED: "yellow"}


def print_table(results: Sequence[CheckResult], title: str) -> None:
    table = Table(title=title)
    for column in ("check", "verdict", "key figures", "seconds"):
        table.add_column(column)
    for r in results:
        verdict = f"[{VERDICT_STYLE[r.verdict]}]{r.verdict.value.upper() if r.verdict.indicts_kernel else r.verdict.value}[/]"
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


def print_mutant_table(results: Sequence[MutantResult]) -> None:
    killed = sum(r.killed for r in results)
    expected = sum(r.as_expected for r in results)
    table = Table(title=f"numa-harness mutants: {killed} of {len(results)} killed, {expected} by the check their header names")
    for column in ("mutant", "outcome", "expected", "failed checks", "seconds", "what it breaks / first diff"):
        table.add_column(column)
    for r in results:
        colour = "green" if r.killed else "red" if r.outcome is MutantOutcome.SURVIVED else "yellow"
        named = ", ".join(r.mutant.expected) + (" (hang)" if r.mutant.expects_hang else "")
        table.add_row(r.mutant.name, f"[{colour}]{r.outcome.value}[/{colour}]",
                      named + ("" if r.as_expected or not r.killed else " [yellow]not by these[/yellow]"),
                      ", ".join(r.failed_checks) or "-", f"{r.seconds:.0f}", r.detail or r.mutant.subject)
    _console().print(table)


def write_mutants_json(path: Path, results: Sequence[MutantResult]) -> None:
    data = {"killed": sum(r.killed for r in results), "total": len(results), "mutants": [r.as_json() for r in results]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _console() -> Console:
    """A terminal gets its own width; a log file or CI gets 160 columns instead of rich's 80."""
    return Console() if sys.stdout.isatty() else Console(width=160)
