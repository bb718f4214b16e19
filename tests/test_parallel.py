"""`check --guests N` (harness.checks.parallel): the split, the refusals, the merge, and, on real
guests, that the merged run is the run one guest gives and that no child or QEMU outlives an
interrupt or a SIGKILL of the harness."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import process_running

from harness.checks import parallel
from harness.checks.catalog import CHECKS
from harness.checks.checkrun import CheckRun
from harness.checks.parallel import GuestShare, check_kernel_in_guests, plan_shares, validate_guests
from harness.checks.registry import CheckResult, Verdict
from harness.checks.runner import stop_reason
from harness.errors import BadInput, ExitCode
from harness.guest.launch import LaunchRequest
from harness.kernel.pipeline import KCONFIG_DIR, BuildRequest, KernelArtifact, build

CLI = [sys.executable, "-m", "harness.cli"]
MUTANTS = KCONFIG_DIR / "patches" / "mutants"


def test_every_check_lands_in_exactly_one_share_in_run_order() -> None:
    names = list(CHECKS)
    for guests in (1, 2, 3, 5):
        plan = plan_shares(names, guests)
        assert sorted(n for share in plan for n in share.names) == sorted(names)
        assert [share.index for share in plan] == list(range(1, guests + 1))
        for share in plan:
            shared = [n for n in share.names if n not in share.alone]
            assert shared == [n for n in names if n in shared]
            assert list(share.names) == shared + list(share.alone)


def test_checks_that_run_alone_go_last_in_the_first_share() -> None:
    names = list(CHECKS)
    alone = [n for n in names if CHECKS[n].alone]
    assert alone, "no check runs alone: this test has nothing to judge"
    first, *rest = plan_shares(names, 2)
    assert list(first.alone) == alone and list(first.names[-len(alone):]) == alone
    assert not any(share.alone or set(share.names) & set(alone) for share in rest)
    [only] = plan_shares(names, 1)
    assert only.alone == () and list(only.names) == names


def test_the_split_is_balanced_by_registered_cost() -> None:
    """The longest-processing-time rule: no share exceeds the even split by more than the longest
    check (and so is within 4/3 of the best split)."""
    names = list(CHECKS)
    total, longest = sum(CHECKS[n].seconds for n in names), max(CHECKS[n].seconds for n in names)
    for guests in (2, 3, 4):
        heaviest = max(share.seconds for share in plan_shares(names, guests))
        assert heaviest <= max(total / guests + longest, longest)


def test_more_guests_than_checks_boots_one_per_check() -> None:
    plan = plan_shares(["skip-rules", "task-swap"], 4)
    assert sorted(share.names for share in plan) == [("skip-rules",), ("task-swap",)]
    assert [share.index for share in plan] == [1, 2]


@pytest.mark.parametrize("guests", [0, -1])
def test_guests_below_one_are_refused(guests: int) -> None:
    with pytest.raises(BadInput, match=f"--guests {guests}"):
        validate_guests(LaunchRequest(), guests)


def test_guests_the_host_cannot_hold_are_refused_naming_a_count_that_fits() -> None:
    with pytest.raises(BadInput, match=r"--guests 4096: .* MiB available\. Pass --guests \d+ or fewer"):
        validate_guests(LaunchRequest(), 4096)


@pytest.mark.parametrize(("value", "message"), [("0", "--guests 0: expected 1 or more"),
                                                ("100000", "--guests 100000: ")])
def test_bad_guests_exit_2_and_build_nothing(tmp_path: Path, value: str, message: str) -> None:
    cache = tmp_path / "cache"
    result = subprocess.run([*CLI, "check", "--guests", value, "--cache-dir", str(cache)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_vmstat_delta_sums_each_guest_over_its_own_counters() -> None:
    timeline = ({"t": 0, "check": "a start", "vmstat": {"numa_hint_faults": 100}, "guest": 1},
                {"t": 1, "check": "a end", "vmstat": {"numa_hint_faults": 150}, "guest": 1},
                {"t": 0, "check": "b start", "vmstat": {"numa_hint_faults": 7}, "guest": 2},
                {"t": 2, "check": "b end", "vmstat": {"numa_hint_faults": 27}, "guest": 2})
    run = CheckRun("2x2", (), "tcg", 3.0, 10.0, None, timeline, guests=2)
    assert run.vmstat_delta == {"numa_hint_faults": 70}
    assert run.as_json()["guests"] == 2


@pytest.mark.parametrize(("result", "fail_fast", "reason"), [
    (CheckResult("a", Verdict.PASS, ""), True, None),
    (CheckResult("a", Verdict.FAIL, ""), False, None),
    (CheckResult("a", Verdict.FAIL, ""), True, "--fail-fast: a failed"),
    (CheckResult("a", Verdict.ERROR, ""), True, None),
    (CheckResult("a", Verdict.HANG, "", {"guest_answers": False}), False, "the guest stopped answering during a"),
    (CheckResult("a", Verdict.HANG, "", {"guest_answers": True}), False, "a task livelocked during a"),
    (CheckResult("a", Verdict.FAIL, "", {"kernel_bugs": ["BUG: oops"]}), True,
     "the kernel reported 'BUG: oops' during a"),
])
def test_what_stops_the_remaining_checks(result: CheckResult, fail_fast: bool, reason: str | None) -> None:
    assert stop_reason(result, fail_fast) == reason


@pytest.mark.kernel
@pytest.mark.guest
def test_a_child_asked_to_stop_reports_no_further_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """After its SIGTERM a child sends nothing more: the check the interrupt cut short may end in
    a harness error of the interrupt's making (its cleanup met the SSH stream the interrupt
    broke), and that is not a result."""
    monkeypatch.setattr(parallel, "_stop_requested", False)
    messages = multiprocessing.get_context("spawn").Queue()
    judged = CheckResult("thp", Verdict.PASS, "ok")
    parallel._report(messages, 1, judged)
    with pytest.raises(KeyboardInterrupt):
        parallel._interrupt(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        parallel._report(messages, 1, CheckResult("cow", Verdict.ERROR, "harness error: SSHException: Channel closed."))
    messages.put(("end",))  # FIFO: whatever was sent after the judged result comes before it
    assert messages.get(timeout=5) == ("result", 1, judged)
    assert messages.get(timeout=5) == ("end",)


def test_two_guests_give_the_verdicts_of_one_run(built_kernel: KernelArtifact, nh_cache_dir: Path | None) -> None:
    """... and a check that runs alone starts only once the other guest has finished: its result
    arrives at least its own duration after the other guest's last one (one monotonic clock for
    every process)."""
    names = ["skip-rules", "cow-sharing", "scanner-pids", "task-swap"]
    assert CHECKS["scanner-pids"].alone
    request = LaunchRequest(kernel_dir=built_kernel.directory, name="par")
    seen: list[tuple[int, str]] = []
    booted: list[int] = []
    arrived: dict[str, float] = {}

    def tell(share: GuestShare, result: CheckResult) -> None:
        seen.append((share.index, result.name))
        arrived[result.name] = time.monotonic()

    run = check_kernel_in_guests(request, built_kernel, names, 2, progress=tell,
                                 on_boot=lambda s, seconds, accel: booted.append(s.index))
    assert [r.name for r in run.results] == names
    alone = next(r for r in run.results if r.name == "scanner-pids")
    others = [name for index, name in seen if index != 1]
    assert others and arrived["scanner-pids"] - alone.seconds >= max(arrived[n] for n in others)
    assert all(r.verdict is Verdict.PASS for r in run.results), [(r.name, r.summary, r.diffs) for r in run.results]
    assert run.guests == 2 and sorted(booted) == [1, 2]
    assert sorted(name for _, name in seen) == sorted(names) and {index for index, _ in seen} == {1, 2}
    assert {entry["guest"] for entry in run.timeline} == {1, 2}
    assert run.vmstat_delta.get("numa_hint_faults", 0) > 0


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _until_both_guests_are_up(harness: subprocess.Popen[str]) -> set[int]:
    """Read the harness's progress until both guests said they are up; then its whole tree."""
    assert harness.stderr is not None
    up: set[str] = set()
    lines: list[str] = []
    while len(up) < 2:
        line = harness.stderr.readline()
        assert line, f"the harness ended before both guests were up: {lines}"
        lines.append(line)
        if " up in " in line:
            up.add(line.split(" up in ")[0])
    tree = _descendants(harness.pid)
    qemus = [p for p in tree if "qemu-system" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    assert len(qemus) == 2, (tree, lines)
    return tree


def _foreground_sigint() -> None:
    """SIGINT as a terminal's foreground job has it: a suite started in the background (`cmd &`
    in a script) hands its children SIGINT ignored, and Python then installs no handler, so a
    Ctrl-C would not be what the harness gets (a CI run started that way failed here)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.kernel
@pytest.mark.guest
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_nothing_outlives_a_stopped_harness(built_kernel: KernelArtifact, how: signal.Signals) -> None:
    """Stopped while both guests run their checks: with SIGINT (Ctrl-C) the harness stops its
    children, which power their guests off, and exits 130; SIGTERM and SIGKILL end it at once,
    and the parent-death signal takes its children and their QEMUs down."""
    harness = subprocess.Popen([*CLI, "check", "--guests", "2", "--kernel", str(built_kernel.directory),
                                "--only", "numa-group", "--only", "numa-group-shared"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_foreground_sigint)
    try:
        tree = _until_both_guests_are_up(harness)
        harness.send_signal(how)
        status = harness.wait(timeout=120)
    finally:
        if harness.poll() is None:
            harness.kill()
    if how is signal.SIGINT:
        assert status == ExitCode.INTERRUPTED
    else:
        assert status == -how
    deadline = time.monotonic() + 30  # SIGKILLed QEMUs are reaped by init
    while any(process_running(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in tree if process_running(p)], "a child or QEMU outlived the harness"


@pytest.mark.kernel
@pytest.mark.guest
def test_a_fail_in_one_guest_stops_the_other_with_fail_fast(nh_cache_dir: Path | None) -> None:
    """On the kernel whose should_numa_migrate_memory never refuses, both two-stage-filter and
    numa-group fail, each in its own guest; with --fail-fast the first to fail stops the other,
    which is reported as not run, naming the guest and the check that failed."""
    mutant = build(BuildRequest(extra_patches=(MUTANTS / "0001-two-stage-filter-never-refuses.patch",),
                                cache_dir=nh_cache_dir))
    request = LaunchRequest(build=BuildRequest(cache_dir=nh_cache_dir), kernel_dir=mutant.directory, name="ff")
    names = ["two-stage-filter", "numa-group"]
    guest_of = {share.names[0]: share.index for share in plan_shares(names, 2)}
    assert sorted(guest_of) == sorted(names)
    run = check_kernel_in_guests(request, mutant, names, 2, fail_fast=True)
    verdicts = {r.name: r for r in run.results}
    [failed] = [r for r in run.results if r.verdict is Verdict.FAIL]
    [stopped] = [r for r in run.results if r is not failed]
    assert stopped.verdict is Verdict.NOT_RUN, (stopped.summary, verdicts)
    assert stopped.summary == f"not run: guest {guest_of[failed.name]}: --fail-fast: {failed.name} failed"
