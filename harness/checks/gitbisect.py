"""Which commit of a git tree made a check fail: `git bisect run`, in the harness's own copy.

The user's checkout is never touched. The harness clones it with `git clone --shared`: the copy
borrows the tree's objects through `.git/objects/info/alternates` and writes nothing into the
tree. The copy lives in <cache>/bisect/<id>/repo, one per tree, and is kept between runs. To the
kernel pipeline it is an ordinary git source, whose one working tree per source path takes only
the files a checkout changed (`harness.kernel.worktree`), so every commit after the first is an
incremental build.

The harness checks BAD first, with every check (or --checks), then GOOD with the checks that
failed at BAD. That way a range whose BAD passes, or whose GOOD already fails, is reported as such
before any bisecting. Then it runs `git bisect start BAD GOOD` and `git bisect run`, with this
module as the command (`python -m harness.checks.gitbisect STATE`). The command tests the commit
git checked out, appends its step to steps.jsonl and exits with:
- 0 (good);
- 1 (bad): a check failed or hung, or the kernel crashed at boot;
- 125 (skip): the commit did not build or boot, the harness's series does not apply to it, or a
  check ended in a harness error. A harness error is never a "bad".

The culprit is read from `git bisect log`: its "# first bad commit:" line, or, when skipped
commits hide it, its "# possible first bad commit:" lines.

The copy needs the range's commits to stay in the tree's object store while it runs: do not
`git gc --prune` the tree during a bisect.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.cache import atomic_write_text, ensure_dir, file_lock, staged_entry
from harness.checks.bisect import BisectVerdict, CheckedKernel, StepOutcome, check_build
from harness.errors import BadInput, ExitCode, InfrastructureError, SourceError
from harness.guest.launch import LaunchRequest
from harness.kernel.source import resolve_source

# What the step command exits with: `git bisect run`'s contract (git-bisect(1), "Bisect run").
STEP_EXIT = {StepOutcome.GOOD: 0, StepOutcome.BAD: 1, StepOutcome.SKIP: 125}
_FIRST_BAD = re.compile(r"^# first bad commit: \[([0-9a-f]+)\] ?(.*)$")
_POSSIBLE_BAD = re.compile(r"^# possible first bad commit: \[([0-9a-f]+)\] ?(.*)$")


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str

    def describe(self) -> str:
        return f"{self.sha[:12]} {self.subject}"

    def as_json(self) -> dict[str, str]:
        return {"commit": self.sha, "subject": self.subject}


@dataclass(frozen=True)
class GitStep:
    """One check run on one commit."""

    commit: Commit
    outcome: StepOutcome
    failed: tuple[str, ...]
    detail: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {**self.commit.as_json(), "outcome": self.outcome.value, "failed": list(self.failed),
                "detail": self.detail, "seconds": round(self.seconds, 1)}

    def describe(self) -> str:
        """The progress line: commit, outcome, time, and the failing checks' first diff."""
        return (f"{self.commit.describe()}: {self.outcome.value} ({self.seconds:.0f} s)"
                + (f" {', '.join(self.failed)}: {self.detail[:200]}" if self.detail else ""))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GitStep:
        return cls(Commit(data["commit"], data["subject"]), StepOutcome(data["outcome"]), tuple(data["failed"]),
                   data["detail"], float(data["seconds"]))


@dataclass(frozen=True)
class GitBisectResult:
    tree: str
    good: Commit
    bad: Commit
    checks: tuple[str, ...]  # the checks run at every step after BAD
    verdict: BisectVerdict
    culprits: tuple[Commit, ...]  # one when found; the candidates when skipped commits hide it
    steps: tuple[GitStep, ...]

    def culprit_step(self) -> GitStep | None:
        """The step that saw the (first) culprit fail, for its failing check and first diff."""
        for culprit in self.culprits:
            for step in self.steps:
                if step.commit.sha == culprit.sha and step.outcome is StepOutcome.BAD:
                    return step
        return None

    def as_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "tree": self.tree, "good": self.good.as_json(),
                "bad": self.bad.as_json(), "checks": list(self.checks),
                "culprits": [c.as_json() for c in self.culprits], "check_runs": len(self.steps),
                "steps": [s.as_json() for s in self.steps]}


def git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise InfrastructureError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def git_tree(source: str | None) -> Path:
    """--source for a commit range must be a git tree: the commits are its own."""
    if source is None:
        raise BadInput("bisect GOOD BAD: the commits are a git tree's; give the tree with --source TREE.")
    spec = resolve_source(source, install_default=False)
    if spec.kind != "git":
        raise SourceError(f"bisect GOOD BAD: --source {source} is not a git tree ({spec.kind}), so it has no commits "
                          f"to bisect. Give a git checkout, or bisect a patch series with --patch/--series.")
    return spec.path


def commit_of(tree: Path, rev: str) -> Commit:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BadInput(f"bisect: {rev!r} is not a commit of {tree}. Give GOOD and BAD as commits, tags or branches "
                       f"of that tree (`git -C {tree} log --oneline` lists them).")
    sha = result.stdout.strip()
    return Commit(sha, git(tree, "log", "-1", "--format=%s", sha).strip())


def commit_range(tree: Path, good: str, bad: str) -> tuple[Commit, Commit]:
    """GOOD and BAD as commits; GOOD must be an ancestor of BAD (what `git bisect` searches)."""
    good_commit, bad_commit = commit_of(tree, good), commit_of(tree, bad)
    if good_commit.sha == bad_commit.sha:
        raise BadInput(f"bisect: GOOD {good} and BAD {bad} are the same commit; nothing lies between them.")
    ancestor = subprocess.run(["git", "-C", str(tree), "merge-base", "--is-ancestor", good_commit.sha, bad_commit.sha])
    if ancestor.returncode != 0:
        raise BadInput(f"bisect: GOOD {good} is not an ancestor of BAD {bad}. Give the older, passing commit first: "
                       f"numa-harness bisect --source {tree} GOOD BAD.")
    return good_commit, bad_commit


def copy_directory(tree: Path, cache_root: Path) -> Path:
    """<cache>/bisect/<id>: the harness's copy of `tree` (repo/) and the run's files."""
    return cache_root / "bisect" / hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:16]


def harness_copy(tree: Path, directory: Path) -> Path:
    """The harness's clone of `tree` in directory/repo, made once (no checkout: steps check out),
    and made ready: any bisect a killed run left behind is reset."""
    repo = directory / "repo"
    if (repo / ".git").is_dir():
        git(repo, "bisect", "reset", check=False)
        return repo
    with staged_entry(repo) as staging:
        git(staging, "clone", "--quiet", "--shared", "--no-checkout", str(tree.resolve()), ".")
    return repo


@dataclass(frozen=True)
class StepState:
    """What the step command needs, written by the parent: the launch request (as the user gave
    it: its build's source is the user's tree), the harness's copy whose checked-out commit the
    step builds instead, the checks, and where steps go."""

    request: LaunchRequest
    repo: Path
    checks: tuple[str, ...] | None
    steps: Path

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({"request": self.request.to_json(), "repo": str(self.repo),
                                            "checks": self.checks, "steps": str(self.steps)}) + "\n")

    @classmethod
    def read(cls, path: Path) -> StepState:
        data = json.loads(path.read_text())
        checks = data["checks"]
        return cls(LaunchRequest.from_json(data["request"]), Path(data["repo"]),
                   tuple(checks) if checks is not None else None, Path(data["steps"]))


def test_head(request: LaunchRequest, repo: Path, checks: Sequence[str] | None, *, fail_fast: bool,
              skip_bad_input: bool) -> GitStep:
    """Build the commit checked out in `repo` (with the request's series and options), boot it and
    run `checks`. With `skip_bad_input`, input this commit cannot take (the harness's series does
    not apply to it, its release has no default series) makes it untestable, not an error."""
    head = Commit(git(repo, "rev-parse", "HEAD").strip(), git(repo, "log", "-1", "--format=%s").strip())
    build_request = replace(request.build, source=str(repo))
    try:
        checked = check_build(request, build_request, f"bisect-{head.sha[:12]}", checks, fail_fast=fail_fast)
    except BadInput as err:
        if not skip_bad_input:
            raise
        checked = CheckedKernel(StepOutcome.SKIP, (), f"cannot be tested: {err}", 0.0)
    return GitStep(head, checked.outcome, checked.failed, checked.detail, checked.seconds)


# How the harness itself tests the commit checked out in the copy (BAD and GOOD):
# (repo, checks, fail_fast, skip_bad_input) -> the step.
HeadTester = Callable[[Path, "Sequence[str] | None", bool, bool], GitStep]


def bisect_commits(request: LaunchRequest, tree: Path, good: str, bad: str, checks: Sequence[str] | None = None,
                   progress: Callable[[GitStep], None] | None = None, *, tester: HeadTester | None = None,
                   step_command: Sequence[str] | None = None) -> GitBisectResult:
    """Find the first commit in GOOD..BAD after which a check fails.
    `tester` replaces `test_head` for BAD and GOOD, and `step_command` replaces
    `python -m harness.checks.gitbisect` as the command `git bisect run` runs (it gets the state
    file as its last argument): the driver's own tests script both."""
    def test_here(repo: Path, run_checks: Sequence[str] | None, fail_fast: bool, skip_bad_input: bool) -> GitStep:
        return test_head(request, repo, run_checks, fail_fast=fail_fast, skip_bad_input=skip_bad_input)
    test = tester or test_here
    good_commit, bad_commit = commit_range(tree, good, bad)
    directory = copy_directory(tree, request.build.cache_root)
    ensure_dir(directory)
    with file_lock(request.build.cache_root / "locks" / f"bisect-{directory.name}.lock"):
        repo = harness_copy(tree, directory)
        steps: list[GitStep] = []

        def tested(step: GitStep) -> GitStep:
            steps.append(step)
            if progress is not None:
                progress(step)
            return step

        def result(verdict: BisectVerdict, checked: tuple[str, ...], culprits: tuple[Commit, ...] = ()) -> GitBisectResult:
            return GitBisectResult(str(tree), good_commit, bad_commit, checked, verdict, culprits, tuple(steps))

        git(repo, "checkout", "--quiet", "--force", "--detach", bad_commit.sha)
        at_bad = tested(test(repo, checks, False, False))
        if at_bad.outcome is not StepOutcome.BAD:
            verdict = BisectVerdict.NOTHING_FAILS if at_bad.outcome is StepOutcome.GOOD else BisectVerdict.UNTESTABLE
            return result(verdict, tuple(checks or ()))
        failing = at_bad.failed if at_bad.failed != ("boot",) else tuple(checks or ())
        git(repo, "checkout", "--quiet", "--force", "--detach", good_commit.sha)
        at_good = tested(test(repo, failing or None, True, True))
        if at_good.outcome is StepOutcome.BAD:
            return result(BisectVerdict.BASE_FAILS, failing)

        steps_file = directory / "steps.jsonl"
        steps_file.write_text("")
        state = directory / "state.json"
        StepState(request, repo, failing or None, steps_file).write(state)
        command = [*(step_command or (sys.executable, "-m", "harness.checks.gitbisect")), str(state)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH"))))}
        try:
            git(repo, "bisect", "start", bad_commit.sha, good_commit.sha)
            if not _culprits(repo)[0]:  # adjacent GOOD and BAD: git names BAD at once
                with (directory / "git-bisect-run.log").open("w") as log:
                    # git's own output to the log; each step's progress goes to stderr.
                    subprocess.run(["git", "-C", str(repo), "bisect", "run", *command], stdout=log, env=env)
            found, culprits = _culprits(repo)
        finally:
            git(repo, "bisect", "reset", check=False)
            for line in steps_file.read_text().splitlines():
                steps.append(GitStep.from_json(json.loads(line)))
        if not culprits:
            raise InfrastructureError(f"git bisect run ended without naming a commit; its output is in "
                                      f"{directory / 'git-bisect-run.log'}")
        return result(BisectVerdict.FOUND if found else BisectVerdict.AMBIGUOUS, failing, culprits)


def _culprits(repo: Path) -> tuple[bool, tuple[Commit, ...]]:
    """From `git bisect log`: (found, culprits): the first bad commit, or every possible one."""
    log = git(repo, "bisect", "log", check=False).splitlines()
    for line in log:
        if match := _FIRST_BAD.match(line):
            return True, (Commit(match[1], match[2]),)
    return False, tuple(Commit(m[1], m[2]) for line in log if (m := _POSSIBLE_BAD.match(line)))


def step_main(state_path: Path) -> int:
    """The command `git bisect run` runs for each commit it checks out."""
    state = StepState.read(state_path)
    repo = state.repo
    try:
        step = test_head(state.request, repo, state.checks, fail_fast=True, skip_bad_input=True)
    except Exception as err:  # a harness bug must not read as "bad": git would blame this commit
        head = git(repo, "rev-parse", "HEAD", check=False).strip()
        step = GitStep(Commit(head, git(repo, "log", "-1", "--format=%s", check=False).strip()), StepOutcome.SKIP,
                       (), f"could not test: {type(err).__name__}: {err}", 0.0)
    with state.steps.open("a") as steps:
        steps.write(json.dumps(step.as_json()) + "\n")
    print(f"numa-harness: {step.describe()}", file=sys.stderr)
    return STEP_EXIT[step.outcome]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m harness.checks.gitbisect STATE (run by numa-harness bisect through git bisect run)",
              file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)
    sys.exit(step_main(Path(sys.argv[1])))
