"""Mutation self-check: build each deliberately broken kernel in kernel-config/patches/mutants/
(incrementally, on the cached tree), boot it, run the cross-checks, and call the mutant killed
when a check fails or hangs (never when one merely ends in a harness error). A survivor means
the checks lost their teeth for the behaviour the mutant's header describes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.checks.catalog import CHECKS
from harness.checks.checkrun import BootFailure, check_kernel
from harness.checks.registry import CheckResult, Verdict, kill_order
from harness.errors import BadInput, HarnessError, SeriesError
from harness.guest.launch import LaunchRequest
from harness.kernel.pipeline import KCONFIG_DIR, build, default_series_dir

MUTANTS_DIR = KCONFIG_DIR / "patches" / "mutants"


def mutants_dir_for(release: str) -> Path:
    """The mutants written for a kernel release: next to its default series (6.1's ports in
    kernel-config/patches-6.1/mutants, each naming the 6.12 mutant it ports)."""
    return default_series_dir(release) / "mutants"


@dataclass(frozen=True)
class Mutant:
    path: Path
    subject: str
    breaks: str  # the header's "What it breaks" paragraph
    # From the header's "Expected:" paragraph: the registered checks that must catch it, and
    # whether it must be caught as a hang (a livelock) instead.
    expected: tuple[str, ...] = ()
    expects_hang: bool = False

    @property
    def name(self) -> str:
        return self.path.stem


class MutantOutcome(StrEnum):
    # A check failed on the mutant kernel, or it logged a kernel bug.
    KILLED = "killed"
    # A check reported a hang (detected in bounded time): a kill too.
    HANG = "hang"
    # Every check that ran passed: the checks missed what the mutant breaks.
    SURVIVED = "survived"
    # The mutant could not be built or booted for a reason that is not a kernel bug, or a check
    # ended in a harness error and none failed: nothing is known about the mutant.
    ERROR = "error"

    @property
    def killed(self) -> bool:
        return self in (MutantOutcome.KILLED, MutantOutcome.HANG)


@dataclass(frozen=True)
class MutantResult:
    mutant: Mutant
    outcome: MutantOutcome
    failed_checks: tuple[str, ...]
    seconds: float
    detail: str = ""
    kernel_dir: Path | None = None  # the cache entry of the mutant's kernel, when it was built
    # Of `seconds`, what finding or building the kernel took (an incremental build, or a cache hit).
    build_seconds: float = 0.0

    @property
    def seconds_after_build(self) -> float:
        return self.seconds - self.build_seconds

    @property
    def killed(self) -> bool:
        return self.outcome.killed

    @property
    def as_expected(self) -> bool:
        """Killed by what its header names: one of its expected checks failed, or it hung."""
        if self.mutant.expects_hang and self.outcome is MutantOutcome.HANG:
            return True
        return self.killed and bool(set(self.mutant.expected) & set(self.failed_checks))

    def as_json(self) -> dict[str, Any]:
        return {"mutant": self.mutant.name, "subject": self.mutant.subject, "outcome": self.outcome.value,
                "killed": self.killed, "expected_checks": list(self.mutant.expected), "as_expected": self.as_expected,
                "failed_checks": list(self.failed_checks), "seconds": round(self.seconds, 1),
                "build_seconds": round(self.build_seconds, 1), "built": self.kernel_dir is not None,
                "detail": self.detail}


def outcome_of(results: Sequence[CheckResult]) -> MutantOutcome:
    """Killed only by a check's fail (kernel bugs included) or hang; an error leaves it unknown."""
    if any(r.verdict is Verdict.HANG for r in results):
        return MutantOutcome.HANG
    if any(r.verdict is Verdict.FAIL for r in results):
        return MutantOutcome.KILLED
    if any(r.verdict is Verdict.ERROR for r in results):
        return MutantOutcome.ERROR
    return MutantOutcome.SURVIVED


def discover(directory: Path = MUTANTS_DIR) -> list[Mutant]:
    if not directory.is_dir():
        raise SeriesError(f"Mutant directory {directory} does not exist. Pass a directory of *.patch files.")
    mutants = []
    for path in sorted(directory.glob("*.patch")):
        text = path.read_text(errors="replace")
        subject = next((line.split("]", 1)[-1].strip() for line in text.splitlines() if line.startswith("Subject:")), "")
        header = text.split("\n---\n", 1)[0]
        breaks = header.split("What it breaks:", 1)[1].split("\n\n", 1)[0] if "What it breaks:" in header else ""
        if not subject or not breaks:
            raise SeriesError(f"Mutant {path} has no Subject: line or no 'What it breaks:' paragraph in its header. "
                              f"Every mutant says what it breaks, so a survivor points at a behaviour.")
        expected, hang = _expected(path, header)
        mutants.append(Mutant(path, subject, " ".join(breaks.split()), expected, hang))
    if not mutants:
        raise SeriesError(f"Mutant directory {directory} holds no *.patch files.")
    return mutants


def _expected(path: Path, header: str) -> tuple[tuple[str, ...], bool]:
    """The checks the header's "Expected:" paragraph names (`fails CHECK`), read against the
    registry, and whether it expects a hang; a header that names neither is refused."""
    paragraph = " ".join(header.split("Expected:", 1)[1].split("\n\n", 1)[0].split()) if "Expected:" in header else ""
    # Parentheses explain (they may say "placement" in prose); the check names stand outside them.
    plain = re.sub(r"\([^)]*\)", "", paragraph)
    named = tuple(name for name in CHECKS if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", plain))
    hang = "hang" in paragraph
    if not named and not hang:
        raise SeriesError(f"Mutant {path}: its 'Expected:' paragraph names no check ({paragraph or 'missing'!r}). "
                          f"Say which check must catch it (`fails CHECK`, one of {', '.join(CHECKS)}) or that it "
                          f"must be reported as a hang.")
    return named, hang


def select(mutants: Sequence[Mutant], names: Sequence[str]) -> list[Mutant]:
    chosen = []
    for name in names:
        found = [m for m in mutants if m.name == name or m.name.startswith(name)]
        if len(found) != 1:
            raise BadInput(f"--only {name}: {'no' if not found else 'more than one'} mutant matches. "
                               f"Mutants: {', '.join(m.name for m in mutants)}.")
        chosen.extend(found)
    return chosen


def run_mutant(mutant: Mutant, request: LaunchRequest, checks: Sequence[str] | None = None,
               console_copy: Path | None = None, full_matrix: bool = False) -> MutantResult:
    """Build, boot and check one mutant. The checks its header names run first, then the others
    cheapest first, and the first fail or hang ends the run (it is killed); with `full_matrix`
    every check runs, for a report of which checks see what."""
    started = time.monotonic()
    build_request = replace(request.build, extra_patches=(*request.build.extra_patches, mutant.path))
    try:
        kernel = build(build_request)
    except HarnessError as err:
        return MutantResult(mutant, MutantOutcome.ERROR, (), time.monotonic() - started, f"build failed: {err}")
    built = None if kernel.cache_hit else kernel.directory  # only what this run built is its to prune
    build_seconds = time.monotonic() - started
    try:
        run = check_kernel(replace(request, build=build_request, name=f"mutant-{mutant.name[:4]}"), kernel,
                           kill_order(mutant.expected, checks), console_copy=console_copy, fail_fast=not full_matrix)
    except BootFailure as err:
        if err.bug_title:  # the mutant crashed the kernel at boot: that is a kill
            return MutantResult(mutant, MutantOutcome.KILLED, ("boot",), time.monotonic() - started,
                                f"kernel bug: {err.bug_title}", built, build_seconds)
        return MutantResult(mutant, MutantOutcome.ERROR, (), time.monotonic() - started, f"boot failed: {err}", built,
                            build_seconds)
    except HarnessError as err:
        return MutantResult(mutant, MutantOutcome.ERROR, (), time.monotonic() - started, f"could not boot: {err}",
                            built, build_seconds)
    failed = tuple(r.name for r in run.results if r.verdict.indicts_kernel)
    outcome = outcome_of(run.results)
    first = next((r for r in run.results if r.verdict.indicts_kernel), None) or \
        next((r for r in run.results if r.verdict is Verdict.ERROR), None)
    detail = "" if first is None else f"{first.name}: {first.summary}" + (f"; {first.diffs[0]}" if first.diffs else "")
    return MutantResult(mutant, outcome, failed, time.monotonic() - started, detail, built, build_seconds)


def run_mutants(mutants: Sequence[Mutant], request: LaunchRequest, checks: Sequence[str] | None = None,
                console_dir: Path | None = None, progress: Callable[[MutantResult], None] | None = None,
                full_matrix: bool = False) -> list[MutantResult]:
    results = []
    for mutant in mutants:
        copy = console_dir / f"console-mutant-{mutant.name}.log" if console_dir else None
        result = run_mutant(mutant, request, checks, copy, full_matrix)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
