"""The cross-checks against the booted default kernel (they must pass) and against a mutant
kernel (they must fail, pointing at the broken behaviour); and the report files."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.checks.catalog import CHECKS
from harness.checks.mutants import MutantOutcome, discover, outcome_of, select
from harness.checks.observe import Context
from harness.checks.registry import Check, CheckResult, Finding, Verdict
from harness.checks.runner import run_check, run_checks, time_spent
from harness.cli.main import main
from harness.errors import ExitCode
from harness.guest.launch import LaunchRequest, make_guest
from harness.guest.spent import SpentReading, TimeSpent
from harness.guest.view import GuestView
from harness.kernel.pipeline import KCONFIG_DIR, BuildRequest, KernelArtifact, build
from harness.report.junit import write_junit
from harness.report.terminal import write_json

MUTANTS = KCONFIG_DIR / "patches" / "mutants"


@pytest.mark.kernel
@pytest.mark.guest
@pytest.mark.parametrize("name", list(CHECKS))
def test_default_kernel_passes(guest: GuestView, name: str, tmp_path: Path) -> None:
    """Every check passes on the unmodified kernel. Its observations are recorded, so that a
    failure here can be replayed through the model (tests/test_golden.py shows how)."""
    [result] = run_checks(guest, [name], record=tmp_path)
    assert result.passed, (f"{result.summary}\n" + "\n".join(result.diffs)
                           + f"\nrecorded observations: {sorted(str(p) for p in tmp_path.iterdir())}")
    # Where its time went: the runner's own counter reads at start and end are two looks. Looks,
    # SSH commands and workload waits, less what of them ran at once on two threads, plus the
    # rest, is the check's wall time. The runner computes other_s as the wall time less the
    # unrounded union, so the sum is off only by rounding: four figures make up `blocked`, one
    # more `other_s`, each within 0.005 s, 0.025 s in all. The union itself is at most the wall
    # time (its readings fall microseconds after the wall clock's, inside the rounding).
    spent = result.spent
    assert spent["looks"] >= 2, spent
    blocked = spent["paused_s"] + spent["ssh_s"] + spent["workload_wait_s"] - spent["overlap_s"]
    assert spent["overlap_s"] >= 0 and blocked <= result.seconds + 0.03, (spent, result.seconds)
    assert abs(blocked + spent["other_s"] - result.seconds) <= 0.03 and spent["cpu_s"] > 0, (spent, result.seconds)


@pytest.mark.kernel
@pytest.mark.guest
def test_two_stage_filter_mutant_is_caught(built_kernel: KernelArtifact, nh_cache_dir: Path | None) -> None:
    """A kernel whose should_numa_migrate_memory never refuses must fail two-stage-filter with a
    diff naming pages that moved on the first fault from the other node."""
    patch = MUTANTS / "0001-two-stage-filter-never-refuses.patch"
    mutant = build(BuildRequest(extra_patches=(patch,), cache_dir=nh_cache_dir))
    with make_guest(LaunchRequest(build=BuildRequest(cache_dir=nh_cache_dir), kernel_dir=mutant.directory,
                                  name="mutant")) as guest:
        [result] = run_checks(guest, ["two-stage-filter"])
    assert not result.passed
    assert any("two-stage filter" in diff for diff in result.diffs), result.diffs
    refused = next(r for r in result.figures["rounds"] if r["phase"] == "first fault from the far node")
    assert refused["moved_model"] == 0 < refused["moved_kernel"]


def test_reports_are_well_formed(tmp_path: Path) -> None:
    results = [CheckResult("a", Verdict.PASS, "fine", {"x": 1}, (), 1.5),
               CheckResult("b", Verdict.FAIL, "broken", {}, ("0x1000: model node 1, kernel node 0",), 2.0)]
    write_json(tmp_path / "r.json", results, {"topology": "2x2"})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False and [c["name"] for c in data["checks"]] == ["a", "b"]
    write_junit(tmp_path / "r.xml", results, "numa-harness.2x2")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = suite.find("testcase[@name='b']/failure")
    assert failure is not None and failure.text == "0x1000: model node 1, kernel node 0"


def test_junit_maps_every_verdict_and_survives_control_characters(tmp_path: Path) -> None:
    """A console tail with ESC (colour codes) and NUL (a torn line) still gives a file that parses;
    error is <error>, not-run is <skipped>, fail and hang are <failure> typed with the verdict."""
    tail = "kernel bug: \x1b[31mBUG: soft lockup\x1b[0m\x00 CPU#1 stuck"
    results = [CheckResult("hung", Verdict.HANG, "hang: a task livelocks", {}, (tail,), 45.0),
               CheckResult("broke", Verdict.ERROR, "harness error: KeyError: 'x'", {"traceback": "Traceback\x00"}),
               CheckResult("later", Verdict.NOT_RUN, "not run: a task livelocked during hung"),
               CheckResult("wrong", Verdict.FAIL, "1 diff", {}, ("0x1000: node 0, model node 1",))]
    write_junit(tmp_path / "r.xml", results, "numa-harness.2x2")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "2", "1", "1")
    hung = suite.find("testcase[@name='hung']/failure")
    assert hung is not None and hung.get("type") == "hang" and hung.text is not None and "\\x1b[31mBUG" in hung.text
    assert suite.find("testcase[@name='broke']/error") is not None
    assert suite.find("testcase[@name='later']/skipped") is not None


def _no_guest() -> Context:
    """A context with no guest behind it, for checks that never reach one: the runner reads only
    its look counters (observe's retakes, reported per check)."""
    return Context(None, None, None)  # type: ignore[arg-type]


def test_time_spent_splits_wall_time_and_tallies_count_blocks_that_raise() -> None:
    """A check's `spent`: the parts the tallies measured, the remainder of the wall time as
    `other_s` (never negative: a clock read a hair apart), and a tally counts a block that raised."""
    spent = TimeSpent()
    with pytest.raises(RuntimeError), spent.paused.timing():
        raise RuntimeError("a look that failed still paused the guest")
    assert spent.paused.count == 1 and spent.paused.seconds >= 0
    earlier = SpentReading(3, 1.0, 2, 0.5, 4, 2.0, 3.0)
    later = SpentReading(13, 3.5, 5, 1.25, 10, 6.0, 9.5)
    parts = time_spent(later.since(earlier), 10.0, 4.0)
    assert parts == {"looks": 10, "paused_s": 2.5, "ssh_commands": 3, "ssh_s": 0.75, "workload_wait_s": 4.0,
                     "overlap_s": 0.75, "other_s": 3.5, "cpu_s": 4.0}
    assert time_spent(later.since(earlier), 6.0, 1.0)["other_s"] == 0.0


def test_blocks_on_two_threads_count_once_in_the_union() -> None:
    """A look taken on a sampler thread while an SSH command blocks the check's thread: both
    tallies hold their own time, the union (what `other_s` is the rest of) the span once."""
    spent = TimeSpent()
    ssh_open, look_done = threading.Event(), threading.Event()

    def sampler() -> None:
        ssh_open.wait()
        with spent.paused.timing():
            time.sleep(0.2)
        look_done.set()

    thread = threading.Thread(target=sampler)
    thread.start()
    started = time.monotonic()
    with spent.commands.timing():
        ssh_open.set()
        look_done.wait()
        mid = spent.reading()  # counts the open command up to now
    wall = time.monotonic() - started
    thread.join()
    after = spent.reading()
    assert after.paused_s >= 0.2 and after.ssh_s >= 0.2
    assert after.ssh_s - 0.01 <= after.blocked_s <= wall + 0.01 < after.paused_s + after.ssh_s
    assert 0.2 <= mid.blocked_s <= after.blocked_s
    assert time_spent(after, wall, 0.0)["overlap_s"] >= 0.19


def test_a_check_that_raises_is_an_error_not_a_kill() -> None:
    """A Python exception in a check is the harness's error: never a fail, so never a kill."""
    def broken(ctx: object) -> Finding:
        raise KeyError("numa_scan_seq")

    result = run_check(_no_guest(), Check("broken", broken))
    assert result.verdict is Verdict.ERROR and "KeyError" in result.summary
    assert "numa_scan_seq" in result.figures["traceback"]
    assert outcome_of([result]) is MutantOutcome.ERROR
    assert not outcome_of([result]).killed
    failed = CheckResult("x", Verdict.FAIL, "diff", {}, ("a diff",))
    assert outcome_of([result, failed]) is MutantOutcome.KILLED
    assert outcome_of([CheckResult("x", Verdict.PASS, "ok")]) is MutantOutcome.SURVIVED


def test_a_workload_the_kernel_killed_is_a_fail_and_one_that_exited_an_error() -> None:
    """A fatal signal to nhmem is the kernel's doing (a fail, so a kill); nhmem exiting on its own
    (a system call it needs failed) says nothing certain about the kernel: the harness's error."""
    from harness.checks.workload import WorkloadError, WorkloadKilled

    def killed(ctx: object) -> Finding:
        raise WorkloadKilled("the kernel killed nhmem (pid 7) with SIGBUS while it ran 'read node 1'")

    result = run_check(_no_guest(), Check("killed", killed))
    assert result.verdict is Verdict.FAIL and result.summary == "the kernel killed the workload"
    assert "SIGBUS" in result.diffs[0] and outcome_of([result]) is MutantOutcome.KILLED

    def exited(ctx: object) -> Finding:
        raise WorkloadError("nhmem (pid 7) exited with status 1 while it ran 'read node 1'")

    result = run_check(_no_guest(), Check("exited", exited))
    assert result.verdict is Verdict.ERROR and not outcome_of([result]).killed


def test_an_inconclusive_run_is_retried_and_never_a_silent_pass() -> None:
    """A scenario that cannot decide is run again; one that never decides fails and says why."""
    from harness.checks.observe import INCONCLUSIVE_TRIES, Inconclusive

    tries: list[int] = []

    def decides_on_the_second_try(ctx: object) -> Finding:
        tries.append(1)
        if len(tries) == 1:
            raise Inconclusive("two placements may have run")
        return Finding("ok", {"n": 1})

    result = run_check(_no_guest(), Check("flaky-race", decides_on_the_second_try))
    assert result.verdict is Verdict.PASS and len(tries) == 2
    assert result.figures["inconclusive_tries"] == ["two placements may have run"]

    def never_decides(ctx: object) -> Finding:
        raise Inconclusive("two placements may have run")

    result = run_check(_no_guest(), Check("always-racing", never_decides))
    assert result.verdict is Verdict.FAIL and len(result.diffs) == INCONCLUSIVE_TRIES
    assert all("inconclusive" in d and "two placements" in d for d in result.diffs)
    assert outcome_of([result]) is MutantOutcome.KILLED  # a kernel that never lets a check decide is caught


@pytest.mark.kernel
@pytest.mark.guest
def test_mutants_exits_125_when_a_check_errors_on_a_mutant_kernel(built_kernel: KernelArtifact,
                                                                   nh_cache_dir: Path | None,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The real mutant 0001, built and booted; the only check run raises. The mutant is not
    killed, its outcome is error, and `numa-harness mutants` exits 125."""
    def raises(ctx: object) -> Finding:
        raise RuntimeError("a bug in the harness, not in the kernel")

    monkeypatch.setitem(CHECKS, "raises", Check("raises", raises))
    cache = ["--cache-dir", str(nh_cache_dir)] if nh_cache_dir else []
    status = main(["mutants", "--only", "0001", "--checks", "raises", *cache])
    out = capsys.readouterr().out
    assert status == ExitCode.HARNESS_FAILED and int(status) == 125
    assert "error" in out and "0 of 1 killed" in out
    assert select(discover(), ["0001"])[0].name.startswith("0001")


@pytest.mark.kernel
@pytest.mark.guest
def test_check_command_writes_reports(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    """Two `check` runs side by side on one host (each its own guest, SSH port, run directory),
    both passing, each writing its own reports."""
    import subprocess
    import sys

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "check", "--kernel", str(built_kernel.directory), "--only", "skip-rules",
             "--json", str(tmp_path / f"{name}.json"), "--junit", str(tmp_path / f"{name}.xml")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    runs = [start("c"), start("side")]
    try:
        outputs = [run.communicate(timeout=600) for run in runs]
    finally:
        for run in runs:  # a timeout leaves neither behind (its QEMU dies with it: PR_SET_PDEATHSIG)
            run.kill()
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stdout + stderr
        assert "skip-rules" in stdout and "pass" in stdout
    assert json.loads((tmp_path / "side.json").read_text())["passed"] is True
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["passed"] is True and data["kernel"]["build_id"] == built_kernel.manifest["build_id"]
    suite = ET.parse(tmp_path / "c.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--only", "nonsense"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no such check" in bad.stderr  # a user error, like other commands


