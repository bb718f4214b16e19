"""`numa-harness bisect`: the search over a series' prefixes, and for real a series of five
patches whose third is a mutant."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.checks.bisect import BisectStep, BisectVerdict, StepOutcome, bisect
from harness.kernel.pipeline import KernelArtifact

HARNESS = [sys.executable, "-m", "harness.cli"]
MUTANTS = Path(__file__).resolve().parent.parent / "kernel-config" / "patches" / "mutants"


class _Series:
    """A series whose patch `culprit` (1-based) breaks `check`; patches in `untestable` do not
    build. Records every step it was asked for."""

    def __init__(self, n: int, culprit: int | None, untestable: Sequence[int] = (), base_fails: bool = False) -> None:
        self.n, self.culprit, self.untestable, self.base_fails = n, culprit, set(untestable), base_fails
        self.asked: list[tuple[int, tuple[str, ...] | None, bool]] = []

    def __call__(self, applied: int, checks: Sequence[str] | None, fail_fast: bool) -> BisectStep:
        self.asked.append((applied, tuple(checks) if checks is not None else None, fail_fast))
        if applied in self.untestable:
            return BisectStep(applied, StepOutcome.SKIP, (), "build failed", 1.0)
        broken = self.base_fails or (self.culprit is not None and applied >= self.culprit)
        if broken:
            return BisectStep(applied, StepOutcome.BAD, ("cow-sharing",), "cow-sharing: 1024 hinted", 1.0)
        return BisectStep(applied, StepOutcome.GOOD, (), "", 1.0)


@pytest.mark.parametrize(("n", "culprit"), [(1, 1), (2, 1), (2, 2), (5, 3), (5, 1), (5, 5), (8, 6), (13, 7)])
def test_the_first_bad_patch_is_named_in_two_plus_log2_runs(n: int, culprit: int) -> None:
    series = _Series(n, culprit)
    result = bisect([f"p{i}" for i in range(1, n + 1)], series)
    assert result.verdict is BisectVerdict.FOUND and result.culprits == (f"p{culprit}",)
    assert len(result.steps) <= 2 + (n - 1).bit_length()
    # BAD with every check, then only the checks that failed there, stopping at the first failure.
    assert series.asked[0] == (n, None, False)
    assert all(checks == ("cow-sharing",) and fail_fast for _, checks, fail_fast in series.asked[1:])


def test_nothing_to_bisect_when_every_patch_passes() -> None:
    result = bisect(["a", "b"], _Series(2, None))
    assert result.verdict is BisectVerdict.NOTHING_FAILS and len(result.steps) == 1


def test_a_base_that_already_fails_is_not_blamed_on_the_series() -> None:
    result = bisect(["a", "b", "c"], _Series(3, 2, base_fails=True))
    assert result.verdict is BisectVerdict.BASE_FAILS and result.culprits == ()


def test_a_prefix_that_cannot_be_tested_is_skipped_for_its_neighbour() -> None:
    series = _Series(6, 5, untestable=[3])
    result = bisect([f"p{i}" for i in range(1, 7)], series)
    assert result.verdict is BisectVerdict.FOUND and result.culprits == ("p5",)
    assert 3 in [applied for applied, _, _ in series.asked]


def test_a_skipped_prefix_next_to_the_first_bad_one_leaves_both_patches() -> None:
    """Prefix 3 untestable, 4 bad, 2 good: p3 or p4 broke it, and no run can tell which."""
    result = bisect([f"p{i}" for i in range(1, 7)], _Series(6, 4, untestable=[3]))
    assert result.verdict is BisectVerdict.AMBIGUOUS and result.culprits == ("p3", "p4")


def test_only_skipped_prefixes_leave_the_whole_range() -> None:
    result = bisect([f"p{i}" for i in range(1, 5)], _Series(4, 3, untestable=[1, 2, 3]))
    assert result.verdict is BisectVerdict.AMBIGUOUS and result.culprits == ("p1", "p2", "p3", "p4")


def _comment_patch(pristine: Path, path: str, where: Path, tag: str) -> Path:
    """A patch adding a comment line after a file's first line: harmless, and it changes the
    kernel's build (a recompile) without changing its behaviour."""
    first, second = (pristine / path).read_text().splitlines(keepends=True)[:2]
    patch = where / f"{tag}.patch"
    # As much context after the new line as before it: GNU patch anchors a hunk with less
    # trailing context to the end of the file.
    patch.write_text(f"--- a/{path}\n+++ b/{path}\n@@ -1,2 +1,3 @@\n {first}+/* numa-harness bisect test: {tag} */\n"
                     f" {second}")
    return patch


@pytest.mark.kernel
def test_a_mutant_third_in_five_patches_is_named(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    cache = built_kernel.directory.parent.parent
    pristine = built_kernel.pristine_source
    assert pristine is not None
    before = {p.name for p in (cache / "kernels").iterdir()}
    harmless = [_comment_patch(pristine, path, tmp_path, f"{n}-comment") for n, path in
                enumerate(["kernel/sched/fair.c", "mm/mempolicy.c", "mm/migrate.c", "mm/huge_memory.c"], start=1)]
    mutant = MUTANTS / "0016-cow-shared-pages-hinted.patch"
    series = [harmless[0], harmless[1], mutant, harmless[2], harmless[3]]
    log = tmp_path / "bisect.json"
    args = [arg for patch in series for arg in ("--patch", str(patch))]
    result = subprocess.run([*HARNESS, "bisect", *args, "--checks", "cow-sharing", "--json", str(log)],
                            capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "NUMA_HARNESS_CACHE": str(cache)})
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "culprit  0016-cow-shared-pages-hinted.patch (patch 3 of 5)" in result.stdout
        assert "fails    cow-sharing" in result.stdout
        data = json.loads(log.read_text())
        assert data["culprits"] == ["0016-cow-shared-pages-hinted.patch"] and data["check_runs"] <= 5
        assert data["steps"][0]["applied"] == 5 and data["steps"][1]["applied"] == 0
    finally:
        for entry in (cache / "kernels").iterdir():  # the prefixes' kernels are this test's to remove
            if entry.name not in before:
                shutil.rmtree(entry)
