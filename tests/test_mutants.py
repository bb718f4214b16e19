"""The mutant collection itself: at least six, each saying what it breaks, each a small change to
the NUMA-balancing code of 6.12 (the real build-and-check of mutants runs in test_ci.py and
test_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks.mutants import MUTANTS_DIR, discover, select
from harness.errors import HarnessError, SeriesError

# mm/migrate.c: migrate_misplaced_folio and its nearly-full-node refusal (migrate_balanced_pgdat).
NUMA_FILES = {"mm/memory.c", "mm/huge_memory.c", "mm/mprotect.c", "mm/mempolicy.c", "mm/migrate.c",
              "kernel/sched/fair.c"}


def test_every_mutant_says_what_it_breaks_and_touches_numa_balancing() -> None:
    mutants = discover()
    assert len(mutants) >= 6
    for mutant in mutants:
        text = mutant.path.read_text()
        touched = {line[6:].strip() for line in text.splitlines() if line.startswith("+++ b/")}
        assert touched and touched <= NUMA_FILES, (mutant.name, touched)
        changed = [line for line in text.split("\n---\n", 1)[1].splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        assert 0 < len(changed) <= 8, f"{mutant.name}: a mutant is a small change, this one changes {len(changed)} lines"
        assert "Expected:" in text and mutant.breaks and mutant.subject


def test_every_mutant_names_registered_checks_that_must_catch_it() -> None:
    by_name = {m.name[:4]: m for m in discover()}
    assert by_name["0001"].expected == ("two-stage-filter",)
    assert by_name["0004"].expected == ("scanner-window",)
    assert by_name["0006"].expects_hang
    # "fails placement-exact (... after placement differ ...)": prose in parentheses names no check.
    assert by_name["0009"].expected == ("placement-exact",)
    assert all(m.expected or m.expects_hang for m in by_name.values())


def test_a_mutant_naming_no_check_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001-x.patch").write_text("Subject: [MUTANT] x\n\nWhat it breaks: y.\n\nExpected: something fails.\n"
                                           "---\n--- a/mm/memory.c\n+++ b/mm/memory.c\n")
    with pytest.raises(SeriesError, match="names no check"):
        discover(tmp_path)


def test_mutants_cover_the_functions_the_issue_names() -> None:
    text = " ".join(m.breaks for m in discover())
    for function in ("should_numa_migrate_memory", "numa_migrate_check", "task_numa_work", "change_pte_range",
                     "do_huge_pmd_numa_page", "do_numa_page"):
        assert function in text, function


def test_a_mutant_without_a_header_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001-x.patch").write_text("--- a/mm/memory.c\n+++ b/mm/memory.c\n")
    with pytest.raises(SeriesError, match="What it breaks"):
        discover(tmp_path)
    with pytest.raises(SeriesError, match="does not exist"):
        discover(tmp_path / "missing")


def test_select_by_prefix_and_refuses_unknown_names() -> None:
    mutants = discover(MUTANTS_DIR)
    assert [m.name[:4] for m in select(mutants, ["0003"])] == ["0003"]
    with pytest.raises(HarnessError, match="no mutant matches"):
        select(mutants, ["nope"])


def test_kill_order_puts_the_named_check_first_then_the_cheapest() -> None:
    from harness.checks.catalog import CHECKS
    from harness.checks.registry import kill_order

    order = kill_order(("two-stage-filter",))
    assert order[0] == "two-stage-filter" and sorted(order) == sorted(CHECKS)
    rest = [CHECKS[n].seconds for n in order[1:]]
    assert rest == sorted(rest) and order[-1] == max(CHECKS, key=lambda name: CHECKS[name].seconds)
    assert kill_order(("thp",), ["fault-migration", "thp"]) == ["thp", "fault-migration"]
    assert kill_order(("convergence",), ["thp"]) == ["thp"]  # a subset leaves out what it does not name


def test_every_61_port_names_its_612_mutant_and_a_check_that_follows_61() -> None:
    """kernel-config/patches-6.1/mutants: each port keeps the 6.12 mutant's name and header, says
    what it ports, is a small change too, and expects a check that gives verdicts on 6.1."""
    from harness.checks.catalog import CHECKS
    from harness.checks.mutants import mutants_dir_for

    ports = discover(mutants_dir_for("6.1.192"))
    originals = {m.name: m for m in discover(MUTANTS_DIR)}
    assert len(ports) >= 15
    for port in ports:
        assert port.name in originals, port.name
        assert f"Ported to 6.1 from kernel-config/patches/mutants/{port.name}.patch" in " ".join(
            port.path.read_text().split()), port.name
        assert port.expected == originals[port.name].expected and port.expects_hang == originals[port.name].expects_hang
        assert all("6.1" in CHECKS[name].releases for name in port.expected), port.name
    assert mutants_dir_for("6.12.117") == MUTANTS_DIR


def test_a_mutant_result_says_how_much_of_its_time_was_the_build() -> None:
    from harness.checks.mutants import MutantOutcome, MutantResult

    mutant = select(discover(MUTANTS_DIR), ["0031"])[0]
    built = MutantResult(mutant, MutantOutcome.KILLED, ("numa-group",), 95.0, "", Path("/cache/k"), 40.0)
    cached = MutantResult(mutant, MutantOutcome.KILLED, ("numa-group",), 50.0, "", None, 0.5)
    assert built.seconds_after_build == 55.0 and built.as_json()["built"] is True
    assert cached.as_json()["build_seconds"] == 0.5 and cached.as_json()["built"] is False
