"""Which patch of a series made a check fail: a binary search over the series' prefixes.

The base (the source with the harness's own series) is GOOD; the base with every candidate
patch is BAD. BAD is checked first, with every check (or --checks), and the checks that fail
there are the ones run at every later step; GOOD is checked to make sure the base passes them.
Then the prefix halfway between the last good and the first bad one is built and checked, until
they are adjacent: the first bad prefix's last patch is the culprit. With n candidates that is
2 + ceil(log2(n)) check runs. A prefix that cannot be built or booted, or whose checks end in a
harness error, is skipped (`git bisect`'s exit 125): the nearest untested prefix is tried
instead, and if every prefix in the range is skipped the culprit is reported as one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.checks.checkrun import BootFailure, check_kernel
from harness.checks.registry import CheckResult, Verdict
from harness.errors import BadInput, HarnessError, SeriesError
from harness.guest.launch import LaunchRequest
from harness.kernel.patches import Patch
from harness.kernel.pipeline import BuildRequest, build


class StepOutcome(StrEnum):
    GOOD = "good"  # every check run passed
    BAD = "bad"  # a check failed or hung, or the kernel crashed at boot
    SKIP = "skip"  # could not be tested: build, boot or harness error


class BisectVerdict(StrEnum):
    FOUND = "culprit found"
    NOTHING_FAILS = "no check fails with every patch applied: nothing to bisect"
    BASE_FAILS = "the base without any of the patches already fails: not caused by the series"
    UNTESTABLE = "the series with every patch applied could not be tested"
    AMBIGUOUS = "every prefix between the last good and the first bad one was skipped"


@dataclass(frozen=True)
class BisectStep:
    """One check run: how many candidate patches were applied, its outcome, the checks that
    failed, the first failing check's first diff (or the error), and its cost."""

    applied: int
    outcome: StepOutcome
    failed: tuple[str, ...]
    detail: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "outcome": self.outcome.value, "failed": list(self.failed),
                "detail": self.detail, "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class BisectResult:
    candidates: tuple[str, ...]
    checks: tuple[str, ...]  # the checks run at every step after BAD
    verdict: BisectVerdict
    # The culprit range, as counts of applied patches: the culprit is candidates[first - 1];
    # first < last only when skipped prefixes leave several possible.
    first_bad: int | None
    last_good: int | None
    steps: tuple[BisectStep, ...]

    @property
    def culprits(self) -> tuple[str, ...]:
        if self.first_bad is None or self.last_good is None:
            return ()
        return self.candidates[self.last_good:self.first_bad]

    def as_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "candidates": list(self.candidates), "checks": list(self.checks),
                "culprits": list(self.culprits), "first_bad": self.first_bad, "last_good": self.last_good,
                "check_runs": len(self.steps), "steps": [s.as_json() for s in self.steps]}


def candidate_paths(patches: Sequence[Patch]) -> tuple[Path, ...]:
    """The candidates are applied as --patch files are (-p1); say so for a series entry that is not."""
    for patch in patches:
        if patch.strip != 1:
            raise SeriesError(f"{patch.origin}: {patch.name} applies with -p{patch.strip}; bisect applies the candidates "
                              f"with -p1. Refresh the patch with a/ b/ prefixes, or pass it with --patch")
    return tuple(p.path for p in patches)


def _outcome(results: Sequence[CheckResult]) -> tuple[StepOutcome, tuple[str, ...], str]:
    failed = tuple(r.name for r in results if r.verdict.indicts_kernel)
    if failed:
        first = next(r for r in results if r.verdict.indicts_kernel)
        return StepOutcome.BAD, failed, f"{first.name}: {first.diffs[0] if first.diffs else first.summary}"
    errors = [r for r in results if r.verdict is Verdict.ERROR]
    if errors:
        return StepOutcome.SKIP, (), f"{errors[0].name}: {errors[0].summary}"
    return StepOutcome.GOOD, (), ""


@dataclass(frozen=True)
class CheckedKernel:
    """What one build-boot-check round said about a kernel: the bisect step without its place."""

    outcome: StepOutcome
    failed: tuple[str, ...]
    detail: str
    seconds: float


def check_build(request: LaunchRequest, build_request: BuildRequest, name: str, checks: Sequence[str] | None,
                *, fail_fast: bool) -> CheckedKernel:
    """Build `build_request`, boot it as `request` does and run `checks`. A build or boot that
    fails for want of the harness (not a kernel crash), or a check's harness error, is a SKIP;
    bad input (a patch that does not apply, a bad option) is raised: the user's to fix."""
    started = time.monotonic()
    try:
        kernel = build(build_request)
        run = check_kernel(replace(request, build=build_request, name=name), kernel, checks, fail_fast=fail_fast)
    except BootFailure as err:
        if err.bug_title:  # the kernel crashed at boot: a verdict, as for a mutant
            return CheckedKernel(StepOutcome.BAD, ("boot",), f"kernel bug: {err.bug_title}", time.monotonic() - started)
        return CheckedKernel(StepOutcome.SKIP, (), f"boot failed: {err}", time.monotonic() - started)
    except BadInput:
        raise
    except HarnessError as err:
        return CheckedKernel(StepOutcome.SKIP, (), f"could not test: {err}", time.monotonic() - started)
    outcome, failed, detail = _outcome(run.results)
    return CheckedKernel(outcome, failed, detail, time.monotonic() - started)


def check_prefix(request: LaunchRequest, candidates: Sequence[Path], applied: int, checks: Sequence[str] | None,
                *, fail_fast: bool) -> BisectStep:
    """Build the base with the first `applied` candidates, boot it and run `checks`."""
    build_request = replace(request.build, extra_patches=(*request.build.extra_patches, *candidates[:applied]))
    checked = check_build(request, build_request, f"bisect-{applied}", checks, fail_fast=fail_fast)
    return BisectStep(applied, checked.outcome, checked.failed, checked.detail, checked.seconds)


Tester = Callable[[int, Sequence[str] | None, bool], BisectStep]


def bisect(names: Sequence[str], tester: Tester, checks: Sequence[str] | None = None,
           progress: Callable[[BisectStep], None] | None = None) -> BisectResult:
    """Find the first of `names` (the candidates, in order) after which a check fails.
    `tester(applied, checks, fail_fast)` runs one step; `checks` (None: all) are BAD's."""
    steps: list[BisectStep] = []

    def run(applied: int, run_checks: Sequence[str] | None, fail_fast: bool) -> BisectStep:
        step = tester(applied, run_checks, fail_fast)
        steps.append(step)
        if progress is not None:
            progress(step)
        return step

    n = len(names)
    bad = run(n, checks, False)
    if bad.outcome is not StepOutcome.BAD:
        verdict = BisectVerdict.NOTHING_FAILS if bad.outcome is StepOutcome.GOOD else BisectVerdict.UNTESTABLE
        return BisectResult(tuple(names), tuple(checks or ()), verdict, None, None, tuple(steps))
    failing = tuple(bad.failed) if bad.failed != ("boot",) else tuple(checks or ())
    good = run(0, failing or None, True)
    if good.outcome is StepOutcome.BAD:
        return BisectResult(tuple(names), failing, BisectVerdict.BASE_FAILS, None, None, tuple(steps))
    last_good, first_bad = 0, n
    skipped: set[int] = set()
    while first_bad - last_good > 1:
        middle = (last_good + first_bad) // 2
        untested = sorted((x for x in range(last_good + 1, first_bad) if x not in skipped), key=lambda x: abs(x - middle))
        if not untested:
            return BisectResult(tuple(names), failing, BisectVerdict.AMBIGUOUS, first_bad, last_good, tuple(steps))
        step = run(untested[0], failing or None, True)
        if step.outcome is StepOutcome.SKIP:
            skipped.add(step.applied)
        elif step.outcome is StepOutcome.BAD:
            first_bad = step.applied
        else:
            last_good = step.applied
    return BisectResult(tuple(names), failing, BisectVerdict.FOUND, first_bad, last_good, tuple(steps))
