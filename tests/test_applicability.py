"""A check on a kernel that lacks what it needs is not applicable; on a release the model does not
follow, its outcome is unverified; neither is ever a silent pass."""

from __future__ import annotations

import pytest

from harness.checks.registry import Check, CheckResult, Finding, Mechanism, Verdict
from harness.checks.runner import KernelProfile, judge_applicability
from harness.cli.checks import verdict_exit
from harness.errors import ExitCode
from harness.model import MODELLED_RELEASE

EVERYTHING = frozenset(Mechanism)


def _check(*needs: Mechanism) -> Check:
    return Check("toy", lambda ctx: Finding("ran"), 1.0, frozenset(needs))


def _ran(verdict: Verdict) -> CheckResult:
    return CheckResult("toy", verdict, "outcome")


def test_a_missing_mechanism_is_named_and_the_check_never_runs() -> None:
    def never() -> CheckResult:
        raise AssertionError("a check whose mechanism is missing must not run")
    result = judge_applicability(_check(Mechanism.VMA_NUMAB), KernelProfile("6.1.192", frozenset()), never)
    assert result.verdict is Verdict.NOT_APPLICABLE
    assert "Linux 6.1.192 has no per-VMA scan state" in result.summary and "6.4" in result.summary


@pytest.mark.parametrize("verdict", [Verdict.PASS, Verdict.FAIL])
def test_an_unmodelled_release_makes_pass_and_fail_unverified(verdict: Verdict) -> None:
    result = judge_applicability(_check(), KernelProfile("6.1.192", EVERYTHING), lambda: _ran(verdict))
    assert result.verdict is Verdict.UNVERIFIED
    assert result.figures["outcome_under_modelled_rules"] == verdict.value
    assert f"the model follows Linux {MODELLED_RELEASE}" in result.summary


@pytest.mark.parametrize("verdict", [Verdict.HANG, Verdict.ERROR])
def test_a_hang_or_harness_error_stays_what_it_is(verdict: Verdict) -> None:
    assert judge_applicability(_check(), KernelProfile("6.1.192", EVERYTHING), lambda: _ran(verdict)).verdict is verdict


def test_the_modelled_release_keeps_its_verdicts() -> None:
    profile = KernelProfile(f"{MODELLED_RELEASE}.117", EVERYTHING)
    assert profile.modelled
    assert judge_applicability(_check(Mechanism.MTHP), profile, lambda: _ran(Verdict.PASS)).verdict is Verdict.PASS
    assert judge_applicability(_check(Mechanism.MTHP), profile, lambda: _ran(Verdict.FAIL)).verdict is Verdict.FAIL


def test_exit_status_of_the_new_verdicts() -> None:
    assert verdict_exit([_ran(Verdict.PASS), _ran(Verdict.NOT_APPLICABLE)]) is ExitCode.OK
    assert verdict_exit([_ran(Verdict.PASS), _ran(Verdict.UNVERIFIED)]) is ExitCode.HARNESS_FAILED
    assert verdict_exit([_ran(Verdict.FAIL), _ran(Verdict.UNVERIFIED)]) is ExitCode.CHECK_FAILED
