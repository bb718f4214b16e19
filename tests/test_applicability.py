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


def _check(*needs: Mechanism, releases: frozenset[str] = frozenset({MODELLED_RELEASE})) -> Check:
    return Check("toy", lambda ctx: Finding("ran"), 1.0, frozenset(needs), releases)


def _ran(verdict: Verdict) -> CheckResult:
    return CheckResult("toy", verdict, "outcome")


def test_a_missing_mechanism_is_named_and_the_check_never_runs() -> None:
    def never() -> CheckResult:
        raise AssertionError("a check whose mechanism is missing must not run")
    result = judge_applicability(_check(Mechanism.VMA_NUMAB), KernelProfile("6.1.192", frozenset()), never)
    assert result.verdict is Verdict.NOT_APPLICABLE
    assert "Linux 6.1.192 has no per-VMA scan state" in result.summary and "6.4" in result.summary


@pytest.mark.parametrize("verdict", [Verdict.PASS, Verdict.FAIL])
@pytest.mark.parametrize(("release", "judged_by"), [("6.1.192", "6.1"), ("6.6.30", MODELLED_RELEASE)])
def test_a_release_the_check_does_not_follow_makes_pass_and_fail_unverified(verdict: Verdict, release: str,
                                                                           judged_by: str) -> None:
    """6.1 is a release the model knows, but this check was not verified against its rules; 6.6
    the model does not know at all (judged by the default release's rules)."""
    result = judge_applicability(_check(), KernelProfile(release, EVERYTHING), lambda: _ran(verdict))
    assert result.verdict is Verdict.UNVERIFIED
    assert result.figures["outcome_under_modelled_rules"] == verdict.value
    assert f"follows the rules of Linux {MODELLED_RELEASE}" in result.summary
    assert f"under Linux {judged_by}'s rules" in result.summary


def test_a_check_that_follows_two_releases_keeps_its_verdicts_on_both() -> None:
    both = _check(releases=frozenset({MODELLED_RELEASE, "6.1"}))
    for release in (f"{MODELLED_RELEASE}.117", "6.1.192"):
        profile = KernelProfile(release, EVERYTHING)
        assert judge_applicability(both, profile, lambda: _ran(Verdict.FAIL)).verdict is Verdict.FAIL


def test_a_release_without_rules_cannot_be_declared() -> None:
    from harness.checks.registry import check

    with pytest.raises(ValueError, match=r"no rules for release 5\.15"):
        check("toy-5.15", seconds=1, releases=("5.15",))(lambda ctx: Finding("ran"))


@pytest.mark.parametrize("verdict", [Verdict.HANG, Verdict.ERROR])
def test_a_hang_or_harness_error_stays_what_it_is(verdict: Verdict) -> None:
    assert judge_applicability(_check(), KernelProfile("6.1.192", EVERYTHING), lambda: _ran(verdict)).verdict is verdict


def test_the_modelled_release_keeps_its_verdicts() -> None:
    profile = KernelProfile(f"{MODELLED_RELEASE}.117", EVERYTHING)
    assert profile.series == MODELLED_RELEASE
    assert judge_applicability(_check(Mechanism.MTHP), profile, lambda: _ran(Verdict.PASS)).verdict is Verdict.PASS
    assert judge_applicability(_check(Mechanism.MTHP), profile, lambda: _ran(Verdict.FAIL)).verdict is Verdict.FAIL


def test_exit_status_of_the_new_verdicts() -> None:
    assert verdict_exit([_ran(Verdict.PASS), _ran(Verdict.NOT_APPLICABLE)]) is ExitCode.OK
    assert verdict_exit([_ran(Verdict.PASS), _ran(Verdict.UNVERIFIED)]) is ExitCode.HARNESS_FAILED
    assert verdict_exit([_ran(Verdict.FAIL), _ran(Verdict.UNVERIFIED)]) is ExitCode.CHECK_FAILED
