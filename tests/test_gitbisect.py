"""`numa-harness bisect --source TREE GOOD BAD`: the driver of `git bisect run`, on real git trees.

The commits here are small trees whose file `value` says what a kernel built from them would do;
the step (in-process for BAD and GOOD, and the command `git bisect run` runs) reads it. What is
under test is the driver: the harness's own copy of the tree (the user's checkout untouched), the
range checks, the order BAD, GOOD, then git's steps, skips, and reading the culprit from
`git bisect log`. A kernel bisected for real is the series form's test in test_bisect.py, and the
note on this form's end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from harness.checks.bisect import BisectVerdict, StepOutcome
from harness.checks.gitbisect import STEP_EXIT, Commit, GitStep, StepState, bisect_commits, commit_range, git
from harness.errors import BadInput
from harness.guest.launch import LaunchRequest
from harness.kernel.pipeline import BuildRequest

# The step `git bisect run` runs here: the same rule as _Rule, from the state file's checks.
_STEP = """
import json, subprocess, sys
state = json.load(open(sys.argv[1]))
rule = json.load(open(sys.argv[2]))
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
subject = subprocess.run(["git", "log", "-1", "--format=%s"], capture_output=True, text=True).stdout.strip()
value = int(open("value").read())
outcome = "skip" if value in rule["untestable"] else "bad" if value >= rule["culprit"] else "good"
failed = list(state["checks"] or ["cow-sharing"]) if outcome == "bad" else []
with open(state["steps"], "a") as steps:
    steps.write(json.dumps({"commit": head, "subject": subject, "outcome": outcome, "failed": failed,
                            "detail": "cow-sharing: 1024 hinted" if failed else "", "seconds": 1.0}) + "\\n")
sys.exit({"good": 0, "bad": 1, "skip": 125}[outcome])
"""


def _tree(path: Path, n: int) -> list[str]:
    """A git tree of n commits, "c1".."cn", whose `value` is the commit's number; its shas."""
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    shas = []
    for i in range(1, n + 1):
        (path / "value").write_text(f"{i}\n")
        git(path, "add", "value")
        git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"c{i}")
        shas.append(git(path, "rev-parse", "HEAD").strip())
    return shas


class _Rule:
    """Commit i is bad from `culprit` on; the ones in `untestable` cannot be built."""

    def __init__(self, tmp_path: Path, culprit: int, untestable: Sequence[int] = ()) -> None:
        self.culprit, self.untestable = culprit, tuple(untestable)
        self.file = tmp_path / "rule.json"
        self.file.write_text(json.dumps({"culprit": culprit, "untestable": list(untestable)}))
        self.script = tmp_path / "step.py"
        self.script.write_text(_STEP)
        self.asked: list[tuple[int, tuple[str, ...] | None, bool]] = []

    def __call__(self, repo: Path, checks: Sequence[str] | None, fail_fast: bool, skip_bad_input: bool) -> GitStep:
        value = int((repo / "value").read_text())
        self.asked.append((value, tuple(checks) if checks is not None else None, fail_fast))
        head = Commit(git(repo, "rev-parse", "HEAD").strip(), f"c{value}")
        if value in self.untestable:
            return GitStep(head, StepOutcome.SKIP, (), "build failed", 1.0)
        if value >= self.culprit:
            return GitStep(head, StepOutcome.BAD, ("cow-sharing",), "cow-sharing: 1024 hinted", 1.0)
        return GitStep(head, StepOutcome.GOOD, (), "", 1.0)

    def command(self) -> list[str]:
        # git bisect run appends nothing; the driver appends the state file, the rule comes after
        # it through a wrapper so that the order matches the real step's `... STATE`.
        wrapper = self.script.parent / "step.sh"
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {self.script} "$1" {self.file}\n')
        wrapper.chmod(0o755)
        return [str(wrapper)]


def _request(tmp_path: Path) -> LaunchRequest:
    return LaunchRequest(build=BuildRequest(cache_dir=tmp_path / "cache"))


def _untouched(tree: Path, head: str) -> None:
    assert git(tree, "rev-parse", "HEAD").strip() == head
    assert git(tree, "status", "--porcelain") == ""
    assert not (tree / ".git" / "BISECT_LOG").exists() and not (tree / ".git" / "BISECT_START").exists()


@pytest.mark.parametrize(("n", "culprit"), [(2, 2), (6, 4), (9, 2), (9, 9), (17, 11)])
def test_the_first_bad_commit_is_named_in_two_plus_log2_runs(tmp_path: Path, n: int, culprit: int) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, n)
    rule = _Rule(tmp_path, culprit)
    result = bisect_commits(_request(tmp_path), tree, shas[0], shas[-1], tester=rule, step_command=rule.command())
    assert result.verdict is BisectVerdict.FOUND
    assert result.culprits == (Commit(shas[culprit - 1], f"c{culprit}"),)
    # n commits: n - 1 candidates after GOOD; BAD and GOOD, then git's halvings.
    assert len(result.steps) <= 2 + (n - 2).bit_length()
    assert [step.commit.sha for step in result.steps[:2]] == [shas[-1], shas[0]]
    # BAD with every check, GOOD with the ones that failed there, stopping at the first failure;
    # git's steps get the same checks through the state file.
    assert rule.asked == [(n, None, False), (1, ("cow-sharing",), True)]
    assert all(step.failed == ("cow-sharing",) for step in result.steps if step.outcome is StepOutcome.BAD)
    step = result.culprit_step()
    assert step is not None and step.detail == "cow-sharing: 1024 hinted"
    _untouched(tree, shas[-1])


def test_commits_that_cannot_be_built_are_skipped_and_can_hide_the_culprit(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, 6)
    rule = _Rule(tmp_path, 4, untestable=(3, 4))
    result = bisect_commits(_request(tmp_path), tree, shas[0], shas[-1], tester=rule, step_command=rule.command())
    assert result.verdict is BisectVerdict.AMBIGUOUS
    assert {c.sha for c in result.culprits} == set(shas[2:5])
    assert {step.commit.subject for step in result.steps if step.outcome is StepOutcome.SKIP} == {"c3", "c4"}
    _untouched(tree, shas[-1])


def test_a_skipped_neighbour_still_leaves_one_culprit(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, 8)
    rule = _Rule(tmp_path, 5, untestable=(3,))
    result = bisect_commits(_request(tmp_path), tree, shas[0], shas[-1], tester=rule, step_command=rule.command())
    assert result.verdict is BisectVerdict.FOUND and result.culprits[0].sha == shas[4]


def test_nothing_to_bisect_and_a_base_that_already_fails(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, 4)
    passing = _Rule(tmp_path, 99)
    result = bisect_commits(_request(tmp_path), tree, shas[0], shas[-1], tester=passing,
                            step_command=passing.command())
    assert result.verdict is BisectVerdict.NOTHING_FAILS and len(result.steps) == 1
    failing = _Rule(tmp_path, 1)
    result = bisect_commits(_request(tmp_path), tree, shas[0], shas[-1], tester=failing,
                            step_command=failing.command())
    assert result.verdict is BisectVerdict.BASE_FAILS and result.culprits == () and len(result.steps) == 2


def test_the_copy_is_reused_and_left_clean_for_the_next_run(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, 5)
    rule = _Rule(tmp_path, 3)
    first = bisect_commits(_request(tmp_path), tree, shas[0], shas[-1], tester=rule, step_command=rule.command())
    copies = list((tmp_path / "cache" / "bisect").iterdir())
    assert len(copies) == 1
    repo = copies[0] / "repo"
    assert not (repo / ".git" / "BISECT_LOG").exists()
    # The copy borrows the tree's objects rather than duplicating them.
    assert (repo / ".git" / "objects" / "info" / "alternates").read_text().strip() == str(tree / ".git" / "objects")
    # A later commit of the user's tree is reachable from the copy with no fetch.
    (tree / "value").write_text("6\n")
    git(tree, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "c6")
    head = git(tree, "rev-parse", "HEAD").strip()
    second = bisect_commits(_request(tmp_path), tree, shas[1], head, tester=rule, step_command=rule.command())
    assert first.culprits == second.culprits == (Commit(shas[2], "c3"),)
    assert list((tmp_path / "cache" / "bisect").iterdir()) == copies


def test_a_range_that_is_not_one_is_bad_input(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, 3)
    with pytest.raises(BadInput, match="not an ancestor of BAD"):
        commit_range(tree, shas[2], shas[0])
    with pytest.raises(BadInput, match="same commit"):
        commit_range(tree, shas[1], "HEAD~1")
    with pytest.raises(BadInput, match=r"'v9\.9' is not a commit"):
        commit_range(tree, "v9.9", shas[2])


def test_the_step_command_tests_the_copys_commit_and_skips_one_that_is_no_kernel_tree(tmp_path: Path) -> None:
    """The real step (`python -m harness.checks.gitbisect STATE`) tests the commit checked out in
    the harness's copy, not the user's tree the request names; a commit the pipeline cannot take
    is git's 125, with the reason in the steps file, never 1 (bad)."""
    tree = tmp_path / "linux"
    shas = _tree(tree, 3)
    copy = tmp_path / "copy"
    git(tmp_path, "clone", "--quiet", "--shared", str(tree), str(copy))
    git(copy, "checkout", "--quiet", "--detach", shas[1])
    steps = tmp_path / "steps.jsonl"
    state = tmp_path / "state.json"
    request = _request(tmp_path)
    StepState(replace(request, build=replace(request.build, source=str(tree))), copy, ("cow-sharing",),
              steps).write(state)
    result = subprocess.run([sys.executable, "-m", "harness.checks.gitbisect", str(state)], capture_output=True,
                            text=True, cwd=copy)
    assert result.returncode == STEP_EXIT[StepOutcome.SKIP] == 125, result.stderr
    step = GitStep.from_json(json.loads(steps.read_text()))
    assert step.commit == Commit(shas[1], "c2") and step.outcome is StepOutcome.SKIP
    assert "cannot be tested" in step.detail and str(copy) in step.detail, step.detail


def test_the_command_line_rejects_a_tarball_and_a_patch(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    shas = _tree(tree, 2)
    cli = [sys.executable, "-m", "harness.cli", "bisect"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\n")
    (plain / "Kconfig").write_text("")
    result = subprocess.run([*cli, "--source", str(plain), "a", "b"], capture_output=True, text=True)
    assert result.returncode == 2 and "not a git tree" in result.stderr, result.stderr
    patch = tmp_path / "x.patch"
    patch.write_text("")
    result = subprocess.run([*cli, "--source", str(tree), "--patch", str(patch), shas[0], shas[1]],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--patch has nothing to add" in result.stderr, result.stderr
    result = subprocess.run([*cli, "--source", str(tree), shas[0]], capture_output=True, text=True)
    assert result.returncode == 2 and "expected two commits" in result.stderr, result.stderr
