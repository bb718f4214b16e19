"""Kernel-bug titles from golden console logs (one captured from the real 6.12 guest)."""

from __future__ import annotations

import pytest
from conftest import DATA

from harness.guest.crash import find_bugs


@pytest.mark.parametrize(
    ("log", "titles"),
    [
        ("sysrq-panic-6.12.log", ["Kernel panic - not syncing: sysrq triggered crash"]),
        ("warning-change-pte-range.log", ["WARNING in change_pte_range"]),
        ("bug-bad-page-map.log", ["BUG: Bad page map in do_numa_page"]),
        ("oops-null-deref-then-panic.log", [
            "BUG: kernel NULL pointer dereference in do_huge_pmd_numa_page",
            "Kernel panic - not syncing: Fatal exception",
        ]),
        ("soft-lockup-and-rcu-stall.log", [
            "BUG: soft lockup in migrate_misplaced_folio",
            "INFO: rcu_preempt self-detected stall in migrate_misplaced_folio",
            "INFO: task hung in khugepaged",
        ]),
        ("clean-boot.log", []),
    ],
)
def test_titles(log: str, titles: list[str]) -> None:
    assert [bug.title for bug in find_bugs((DATA / "console" / log).read_text())] == titles


def test_report_is_the_whole_report_without_timestamps() -> None:
    bug = find_bugs((DATA / "console/warning-change-pte-range.log").read_text())[0]
    assert bug.line == 2
    assert bug.report.splitlines()[0] == "WARNING: CPU: 2 PID: 97 at mm/mprotect.c:142 change_pte_range+0x4f1/0x6a0"
    assert bug.report.splitlines()[-1] == "---[ end trace 0000000000000000 ]---"
    assert "task_numa_work+0x2a4/0x3e0" in bug.report


def test_real_sysrq_report_names_the_trigger() -> None:
    bug = find_bugs((DATA / "console/sysrq-panic-6.12.log").read_text())[0]
    assert "sysrq_handle_crash" in bug.report and "Kernel Offset: disabled" in bug.report
