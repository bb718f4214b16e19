"""Linux 6.1 LTS for real: Debian's linux-source-6.1 built with its own series
(kernel-config/patches-6.1), booted, and every check judged under 6.1's rules; a 6.1 mutant built
on top of it and killed. The cold build of a second kernel is the price: measured in the README."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.checks.catalog import CHECKS
from harness.cli.main import main


def _cache_args(cache: Path | None) -> list[str]:
    return ["--cache-dir", str(cache)] if cache else []


@pytest.fixture(scope="module")
def check_61(nh_cache_dir: Path | None, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any]]:
    out = tmp_path_factory.mktemp("release-61") / "check.json"
    status = main(["check", "--source", "6.1", "--json", str(out), *_cache_args(nh_cache_dir)])
    return int(status), json.loads(out.read_text())


@pytest.mark.kernel
@pytest.mark.guest
def test_every_check_passes_or_is_not_applicable_on_6_1(check_61: tuple[int, dict[str, Any]]) -> None:
    """`numa-harness check --source 6.1`: the kernel is 6.1, every registered check gives a
    verdict, each a pass or `not applicable` naming what 6.1 lacks, and the run exits 0."""
    status, report = check_61
    assert report["kernel"]["kernel_release"].startswith("6.1."), report["kernel"]
    verdicts = {c["name"]: c for c in report["checks"]}
    assert set(verdicts) == set(CHECKS)
    wrong = {n: (c["verdict"], c["summary"], c["diffs"][:3]) for n, c in verdicts.items()
             if c["verdict"] not in ("pass", "not-applicable")}
    assert not wrong, wrong
    for name, c in verdicts.items():
        if c["verdict"] == "not-applicable":
            assert "6.1" in c["summary"] and "Linux 6." in c["summary"], (name, c["summary"])
    assert sum(c["verdict"] == "pass" for c in verdicts.values()) >= 10, verdicts.keys()
    assert status == 0


@pytest.mark.kernel
@pytest.mark.guest
def test_a_6_1_group_mutant_is_killed(check_61: tuple[int, dict[str, Any]], nh_cache_dir: Path | None,
                                      tmp_path: Path) -> None:
    """The 6.1 port of 0028 (task_scan_max forgets the group's size), built incrementally on
    the 6.1 tree: numa-group's free-running group books catch it."""
    out = tmp_path / "mutants.json"
    status = main(["mutants", "--source", "6.1", "--only", "0028", "--json", str(out), *_cache_args(nh_cache_dir)])
    report = json.loads(out.read_text())
    assert status == 0 and report["killed"] == report["total"] == 1, report
    [mutant] = report["mutants"]
    assert "numa-group" in mutant["failed_checks"], mutant
