"""The cross-checks against the booted default kernel (they must pass) and against a mutant
kernel (they must fail, pointing at the broken behaviour); and the report files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.crosscheck import CHECKS, CheckResult, run_checks
from harness.kernel import KCONFIG_DIR, BuildRequest, KernelArtifact, build
from harness.launch import LaunchRequest, make_guest
from harness.report import write_json, write_junit
from harness.vm import GuestView

MUTANTS = KCONFIG_DIR / "patches" / "mutants"


@pytest.mark.kernel
@pytest.mark.guest
@pytest.mark.parametrize("name", list(CHECKS))
def test_default_kernel_passes(guest: GuestView, name: str) -> None:
    [result] = run_checks(guest, [name])
    assert result.passed, f"{result.summary}\n" + "\n".join(result.diffs)


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
    rounds = result.figures["rounds"]
    assert rounds[1]["moved_model"] == 0 < rounds[1]["moved_kernel"]


def test_reports_are_well_formed(tmp_path: Path) -> None:
    results = [CheckResult("a", True, "fine", {"x": 1}, (), 1.5),
               CheckResult("b", False, "broken", {}, ("0x1000: model node 1, kernel node 0",), 2.0)]
    write_json(tmp_path / "r.json", results, {"topology": "2x2"})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False and [c["name"] for c in data["checks"]] == ["a", "b"]
    write_junit(tmp_path / "r.xml", results, "numa-harness.2x2")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = suite.find("testcase[@name='b']/failure")
    assert failure is not None and failure.text == "0x1000: model node 1, kernel node 0"


@pytest.mark.kernel
@pytest.mark.guest
def test_check_command_writes_reports(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "check", "--kernel", str(built_kernel.directory), "--only", "skip-rules",
         "--json", str(tmp_path / "c.json"), "--junit", str(tmp_path / "c.xml")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip-rules" in result.stdout and "pass" in result.stdout
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["passed"] is True and data["kernel"]["build_id"] == built_kernel.manifest["build_id"]
    suite = ET.parse(tmp_path / "c.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--only", "nonsense"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no such check" in bad.stderr  # a user error, like other commands
