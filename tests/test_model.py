"""The reference model, rule by rule (each test names the kernel function it pins down), plus
hypothesis properties for invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.model import (
    HPAGE_SIZE,
    PAGE_SIZE,
    RULES,
    Counters,
    CpuOccupant,
    Decision,
    GroupBooks,
    GroupOutcome,
    Mm,
    NumabState,
    NumaGroup,
    Page,
    PlacementClock,
    ScanLimits,
    Task,
    Tunables,
    Vma,
    counts_local_in_group,
    cpupid,
    group_books,
    group_task_numa_placement,
    hint_fault,
    numa_group_count_active_nodes,
    numa_migrate_preferred_pinned,
    scan_pass,
    should_numa_migrate_memory,
    task_numa_group,
    task_numa_placement,
    task_scan_max,
    task_scan_min,
    update_scan_period,
    update_task_scan_period,
)

MiB = 1 << 20
NODE_OF_CPU = {0: 0, 1: 0, 2: 1, 3: 1}
BASE = 0x7F0000000000


def region(mib: int, node: int = 0, start: int = BASE) -> dict[int, Page]:
    return {start + i * PAGE_SIZE: Page(start + i * PAGE_SIZE, node) for i in range(mib * MiB // PAGE_SIZE)}


def test_pass_windows_advance_by_the_budget_in_2mib_chunks() -> None:
    """fair.c:task_numa_work: end = ALIGN(start + pages, HPAGE_SIZE), budget in pages."""
    tun = Tunables(scan_size_mb=16)
    vma = Vma(BASE, BASE + 64 * MiB)
    pages = region(64)
    result = scan_pass(Mm(), [vma], pages, tun, scanning_node=1, jiffies=1000, pid=100)
    assert result.windows == ((BASE, BASE + 16 * MiB),)
    assert result.mm == Mm(numa_scan_offset=BASE + 16 * MiB, numa_scan_seq=0)
    assert sum(p.hint for p in result.pages.values()) == 16 * MiB // PAGE_SIZE
    assert result.counters == Counters(numa_pte_updates=4096)
    again = scan_pass(result.mm, result.vmas, result.pages, tun, scanning_node=1, jiffies=1001, pid=100)
    assert again.windows == ((BASE + 16 * MiB, BASE + 32 * MiB),)


def test_6_1_scans_every_vma_without_per_vma_state() -> None:
    """6.1's fair.c:task_numa_work has no numab_state: a VMA the skip rules let through is
    scanned on the pass that meets it, and stays without state. 6.12 allocates the state on that
    pass and waits out the scan delay (next_scan = now + delay) before the VMA is scanned;
    in a later sequence the 6.1 pass scans a VMA whatever pid faulted in it, where 6.12's
    vma_is_accessed may skip it."""
    tun = Tunables(scan_size_mb=256, scan_delay_ms=100)
    vmas = [Vma(BASE, BASE + 4 * MiB), Vma(BASE + 8 * MiB, BASE + 12 * MiB)]
    pages = {**region(4), **region(4, start=BASE + 8 * MiB)}
    old = scan_pass(Mm(numa_scan_seq=3), vmas, pages, tun, scanning_node=1, jiffies=1000, pid=1, rules=RULES["6.1"])
    assert all(v.numab is None for v in old.vmas) and not old.skipped
    assert sum(p.hint for p in old.pages.values()) == len(pages)
    assert old.mm == Mm(numa_scan_offset=0, numa_scan_seq=4)
    new = scan_pass(Mm(numa_scan_seq=3), vmas, pages, tun, scanning_node=1, jiffies=1000, pid=1, rules=RULES["6.12"])
    assert all(v.numab is not None for v in new.vmas)
    assert {reason for _, reason in new.skipped} == {"scan_delay"}
    assert not any(p.hint for p in new.pages.values())
    # Past the delay, in the VMAs' third sequence, scanned in the last one and with no pid of
    # the task in pids_active: 6.12 skips them (pid_inactive), then forces one.
    recent = [replace(v, numab=replace(v.numab, prev_scan_seq=4)) for v in new.vmas if v.numab is not None]
    later = scan_pass(Mm(numa_scan_seq=5), recent, pages, tun, scanning_node=1, jiffies=2000, pid=1)
    assert "pid_inactive" in {reason for _, reason in later.skipped}
    old_later = scan_pass(Mm(numa_scan_seq=5), old.vmas, old.pages, tun, scanning_node=1, jiffies=2000, pid=1,
                          rules=RULES["6.1"])
    assert not old_later.skipped and old_later.mm.numa_scan_seq == 6


def test_offset_wraps_and_seq_increments_when_the_vmas_run_out() -> None:
    """reset_ptenuma_scan: seq + 1, offset 0."""
    tun = Tunables(scan_size_mb=256)
    result = scan_pass(Mm(), [Vma(BASE, BASE + 8 * MiB)], region(8), tun, scanning_node=1, jiffies=1000, pid=1)
    assert result.mm == Mm(numa_scan_offset=0, numa_scan_seq=1)
    assert all(p.hint for p in result.pages.values())


def test_unpopulated_chunks_cost_only_virtual_budget() -> None:
    """Only chunks where change_prot_numa updated something consume `pages`; virtpages = 8x."""
    tun = Tunables(scan_size_mb=2)  # 512 pages, 4096 virtual pages (16 MiB)
    vma = Vma(BASE, BASE + 64 * MiB)
    pages = {va: p for va, p in region(64).items() if va >= BASE + 10 * MiB}  # first 10 MiB empty
    result = scan_pass(Mm(), [vma], pages, tun, scanning_node=1, jiffies=1000, pid=1)
    # Empty chunks (2 MiB each) are free of `pages`; 10 MiB empty, then one 2 MiB chunk with pages.
    assert result.windows[-1] == (BASE + 10 * MiB, BASE + 12 * MiB)
    assert result.mm.numa_scan_offset == BASE + 12 * MiB


def test_pages_on_the_scanning_node_are_skipped_for_a_private_single_user_mm() -> None:
    """mm/mprotect.c:change_pte_range target_node."""
    tun = Tunables()
    vma = Vma(BASE, BASE + 4 * MiB)
    pages = region(2, node=0) | region(2, node=1, start=BASE + 2 * MiB)
    result = scan_pass(Mm(), [vma], pages, tun, scanning_node=0, jiffies=1000, pid=1)
    hinted = {va for va, p in result.pages.items() if p.hint}
    assert hinted == set(region(2, start=BASE + 2 * MiB))
    shared_mm = scan_pass(Mm(mm_users=2), [vma], pages, tun, scanning_node=0, jiffies=1000, pid=1)
    assert all(p.hint for p in shared_mm.pages.values())  # /proc readers bump mm_users: no skip


def test_thp_is_hinted_whatever_its_node() -> None:
    """mm/huge_memory.c:change_huge_pmd has no target-node test; 512 pages and one huge update."""
    thp = {BASE: Page(BASE, node=0, size=HPAGE_SIZE)}
    result = scan_pass(Mm(), [Vma(BASE, BASE + 2 * MiB)], thp, Tunables(), scanning_node=0, jiffies=1000, pid=1)
    assert result.pages[BASE].hint
    assert result.counters == Counters(numa_pte_updates=512, numa_huge_pte_updates=1)


@pytest.mark.parametrize(("vma", "reason"), [
    (Vma(BASE, BASE + 2 * MiB, readable=False, writable=False), "inaccessible"),
    (Vma(BASE, BASE + 2 * MiB, writable=False, file_backed=True), "shared_ro"),
    (Vma(BASE, BASE + 2 * MiB, policy_mof=False), "unsuitable"),
    (Vma(BASE, BASE + 2 * MiB, migratable=False), "unsuitable"),
])
def test_vma_skip_rules(vma: Vma, reason: str) -> None:
    result = scan_pass(Mm(), [vma], region(2), Tunables(), scanning_node=1, jiffies=1000, pid=1)
    assert (BASE, reason) in result.skipped
    assert not any(p.hint for p in result.pages.values())
    assert result.counters == Counters()


def test_zero_page_and_cow_shared_pages_are_not_hinted() -> None:
    pages = {BASE: Page(BASE, 0, zero_page=True), BASE + PAGE_SIZE: Page(BASE + PAGE_SIZE, 0, likely_shared=True)}
    result = scan_pass(Mm(), [Vma(BASE, BASE + 2 * MiB)], pages, Tunables(), scanning_node=1, jiffies=1000, pid=1)
    assert not any(p.hint for p in result.pages.values())


def test_a_scanned_vma_waits_for_its_scan_delay_and_skips_completed_sequences() -> None:
    tun = Tunables(scan_delay_ms=1000, hz=250)
    first = scan_pass(Mm(), [Vma(BASE, BASE + 2 * MiB)], region(2), tun, scanning_node=1, jiffies=1000, pid=1)
    numab = first.vmas[0].numab
    assert numab is not None and numab.next_scan == 1250 and numab.start_scan_seq == 0 and numab.prev_scan_seq == 0
    # seq is now 1: before next_scan the VMA is skipped for its scan delay.
    early = scan_pass(first.mm, first.vmas, first.pages, tun, scanning_node=1, jiffies=1100, pid=1)
    assert (BASE, "scan_delay") in early.skipped


def test_fault_early_scan_migrates_and_records_last_cpupid() -> None:
    """should_numa_migrate_memory: early-scan exception when last_cpupid is unset."""
    task = Task(pid=300, nr_nodes=2)
    page = Page(BASE, node=0, hint=True)
    result = hint_fault(task, page, cpu=2, node_of_cpu=NODE_OF_CPU, mm_seq=0)
    assert result.migrated and result.page.node == 1 and not result.page.hint
    assert result.page.last_cpupid == cpupid(2, 300)
    assert result.counters == Counters(numa_hint_faults=1, numa_pages_migrated=1)
    assert result.task.locality == (1, 0, 0) and result.task.numa_pages_migrated == 1
    assert result.task.faults[2][1] == (0, 1)  # MEMBUF on the page's new node, private


def test_a_write_after_migration_resets_last_cpupid_of_base_pages_only() -> None:
    """The migrated PTE is read-only, so a write faults into wp_page_reuse, which resets it."""
    task = Task(pid=300, nr_nodes=2)
    base = hint_fault(task, Page(BASE, node=0, hint=True), cpu=2, node_of_cpu=NODE_OF_CPU, mm_seq=0, write=True)
    assert base.migrated and base.page.last_cpupid is None
    thp = hint_fault(task, Page(BASE, node=0, size=HPAGE_SIZE, hint=True), cpu=2, node_of_cpu=NODE_OF_CPU, mm_seq=0,
                     write=True)
    assert thp.migrated and thp.page.last_cpupid == cpupid(2, 300)


def test_local_fault_neither_migrates_nor_touches_last_cpupid() -> None:
    """mpol_misplaced returns NUMA_NO_NODE before should_numa_migrate_memory for a local folio."""
    page = Page(BASE, node=1, hint=True, last_cpupid=cpupid(0, 300))
    result = hint_fault(Task(pid=300, nr_nodes=2), page, cpu=3, node_of_cpu=NODE_OF_CPU, mm_seq=0)
    assert not result.migrated and result.local and result.page.last_cpupid == cpupid(0, 300)
    assert result.counters == Counters(numa_hint_faults=1, numa_hint_faults_local=1)


def test_two_stage_filter_refuses_then_allows() -> None:
    """After the early phase (seq > 4, preferred node set): a fault from node 1 on a page last
    faulted from node 0 does not migrate; the next fault from node 1 does."""
    task = Task(pid=300, nr_nodes=2, numa_scan_seq=5, numa_preferred_nid=0)
    page = Page(BASE, node=0, hint=True, last_cpupid=cpupid(1, 300))
    first = hint_fault(task, page, cpu=2, node_of_cpu=NODE_OF_CPU, mm_seq=5)
    assert not first.migrated and "two-stage" in first.decision and first.page.last_cpupid == cpupid(2, 300)
    second = hint_fault(first.task, replace(first.page, hint=True), cpu=3, node_of_cpu=NODE_OF_CPU, mm_seq=5)
    assert second.migrated and second.page.node == 1


def test_other_tasks_last_cpupid_is_shared_and_still_filtered() -> None:
    ok, page, _ = should_numa_migrate_memory(Task(pid=7, nr_nodes=2), Page(BASE, 0, last_cpupid=cpupid(0, 8)),
                                             1, cpupid(2, 7), NODE_OF_CPU)
    assert ok is False and page.last_cpupid == cpupid(2, 7)


def test_a_pid_ending_in_0xff_leaves_a_last_cpupid_the_filter_takes_for_unset() -> None:
    """include/linux/mm.h: cpupid_pid_unset and cpupid_match_pid read only the pid bits, and unset
    is all ones. Task 1279 (0x4ff) on CPU 3 leaves cpupid 0x3ff. Another task's fault on the page
    from node 0 is then a "first fault": early in its life it migrates (EARLY_SCAN), and later it
    skips the two-stage filter that refuses the same fault from task 1278 (0x4fe)."""
    reader = Task(pid=1280, nr_nodes=2)
    aliased, plain = Page(BASE, 1, last_cpupid=cpupid(3, 1279)), Page(BASE, 1, last_cpupid=cpupid(3, 1278))
    assert should_numa_migrate_memory(reader, aliased, 0, cpupid(1, 1280), NODE_OF_CPU)[::2] == (
        True, Decision.EARLY_SCAN)
    assert should_numa_migrate_memory(reader, plain, 0, cpupid(1, 1280), NODE_OF_CPU)[::2] == (
        False, Decision.TWO_STAGE_REFUSED)
    late = Task(pid=1280, nr_nodes=2, numa_scan_seq=9, numa_preferred_nid=1)
    assert should_numa_migrate_memory(late, aliased, 0, cpupid(1, 1280), NODE_OF_CPU)[::2] == (
        True, Decision.NO_GROUP)
    assert should_numa_migrate_memory(late, plain, 0, cpupid(1, 1280), NODE_OF_CPU)[::2] == (
        False, Decision.TWO_STAGE_REFUSED)
    # And a truly unset last_cpupid matches task 1279's pid bits: past the early phase its fault
    # is "private" (SAME_TASK_TWICE) where another task's goes on to the group half.
    owner = Task(pid=1279, nr_nodes=2, numa_scan_seq=9, numa_preferred_nid=1)
    assert should_numa_migrate_memory(owner, Page(BASE, 1), 0, cpupid(1, 1279), NODE_OF_CPU, group=_books(
        (10, 10), (100, 100)))[::2] == (True, Decision.SAME_TASK_TWICE)
    assert should_numa_migrate_memory(late, Page(BASE, 1), 0, cpupid(1, 1280), NODE_OF_CPU, group=_books(
        (10, 10), (100, 100)))[::2] == (False, Decision.GROUP_RATIO_KEEP)


def test_thp_fault_migrates_whole_folio() -> None:
    thp = Page(BASE, node=0, size=HPAGE_SIZE, hint=True)
    result = hint_fault(Task(pid=9, nr_nodes=2), thp, cpu=2, node_of_cpu=NODE_OF_CPU, mm_seq=0)
    assert result.migrated and result.counters == Counters(numa_hint_faults=1, numa_pages_migrated=512)


def test_placement_decays_and_picks_the_node_with_most_memory_faults() -> None:
    """task_numa_placement: mem += membuf - mem/2; preferred = argmax; only on a new mm seq."""
    task = Task(pid=1, nr_nodes=2, faults=(((0, 5), (0, 2)), ((0, 0), (0, 0)), ((0, 1), (0, 10)), ((0, 0), (0, 0))))
    unchanged = task_numa_placement(task, mm_seq=0)
    assert unchanged is task
    placed = task_numa_placement(task, mm_seq=1)
    assert placed.faults[0] == ((0, 5 - 2 + 1), (0, 2 - 1 + 10))
    assert placed.numa_preferred_nid == 1 and placed.numa_scan_seq == 1
    assert placed.faults[2] == ((0, 0), (0, 0))


def test_scan_period_doubles_without_local_or_shared_faults_and_shrinks_when_remote() -> None:
    """update_task_scan_period."""
    task = Task(pid=1, nr_nodes=2, numa_scan_period=1000, numa_scan_period_max=60000, locality=(10, 0, 0))
    assert update_task_scan_period(task, shared=0, private=10).numa_scan_period == 2000
    remote_shared = replace(task, locality=(10, 0, 0))
    # ps_ratio = 10*5/10 = 5, lr_ratio = 0: period -= (7 - 5) * 100.
    assert update_task_scan_period(remote_shared, shared=5, private=5, scan_min=100).numa_scan_period == 800
    local_private = replace(task, locality=(0, 10, 0))
    assert update_task_scan_period(local_private, shared=0, private=10).numa_scan_period == 1300


def test_torn_snapshot_does_not_crash_the_model() -> None:
    """Shared faults but no locality counted yet (a vCPU paused inside task_numa_fault)."""
    task = Task(pid=1, nr_nodes=2, numa_scan_period=400, numa_scan_period_max=400, locality=(0, 0, 0))
    assert update_task_scan_period(task, shared=3, private=0).numa_scan_period == 400


def test_scan_period_bounds() -> None:
    """task_scan_min: floor 1000 / (2560 / scan_size_mb); task_scan_max = max_ms / windows."""
    assert task_scan_min(0, Tunables()) == 1000 and task_scan_min(0, Tunables(scan_period_min_ms=100)) == 100
    assert task_scan_min(0, Tunables(scan_period_min_ms=10)) == 100  # floor at the default 256 MB
    assert task_scan_max(300_000, Tunables()) == 60000 // 5


@settings(max_examples=60, deadline=None)
@given(
    scan_size=st.sampled_from([2, 4, 16, 256]),
    populated=st.lists(st.booleans(), min_size=8, max_size=32),
    node=st.integers(0, 1),
    passes=st.integers(1, 6),
)
def test_passes_never_unhint_and_counters_only_grow(scan_size: int, populated: list[bool], node: int, passes: int) -> None:
    """Invariants: a pass never clears a hint, counts exactly the entries it hinted, and the offset
    stays chunk-aligned inside the VMA (or wraps to 0)."""
    vma = Vma(BASE, BASE + len(populated) * 2 * MiB)
    pages: dict[int, Page] = {}
    for chunk, full in enumerate(populated):
        if full:
            pages |= region(2, node=chunk % 2, start=BASE + chunk * 2 * MiB)
    mm, vmas, total = Mm(), [vma], Counters()
    for step in range(passes):
        result = scan_pass(mm, vmas, pages, Tunables(scan_size_mb=scan_size), scanning_node=node, jiffies=10_000 + step,
                           pid=5)
        before = {va for va, p in pages.items() if p.hint}
        after = {va for va, p in result.pages.items() if p.hint}
        assert before <= after
        assert result.counters.numa_pte_updates == len(after - before)
        assert result.mm.numa_scan_offset == 0 or (result.mm.numa_scan_offset - BASE) % (2 * MiB) == 0
        total += result.counters
        assert all(v >= 0 for v in total.as_tuple())
        mm, vmas, pages = result.mm, list(result.vmas), dict(result.pages)
    # Pages on the scanning node are never hinted (private, single user).
    assert not any(p.hint and p.node == node for p in pages.values())


@settings(max_examples=40, deadline=None)
@given(faults=st.lists(st.sampled_from([0, 1, 2, 3]), min_size=1, max_size=12))
def test_a_page_only_moves_towards_the_faulting_node(faults: list[int]) -> None:
    """Whatever the fault sequence, a migration always lands on the faulting CPU's node, and a
    page touched only from one node ends there within two faults."""
    task = Task(pid=42, nr_nodes=2, numa_scan_seq=6, numa_preferred_nid=0)
    page = Page(BASE, node=0, hint=True)
    for cpu in faults:
        result = hint_fault(task, page, cpu=cpu, node_of_cpu=NODE_OF_CPU, mm_seq=6)
        if result.migrated:
            assert result.page.node == NODE_OF_CPU[cpu]
        task, page = result.task, replace(result.page, hint=True)
    only_node_1 = Page(BASE, node=0, hint=True)
    for _ in range(2):
        moved = hint_fault(task, only_node_1, cpu=2, node_of_cpu=NODE_OF_CPU, mm_seq=6)
        only_node_1 = replace(moved.page, hint=True)
    assert only_node_1.node == 1


def test_write_bit_after_a_fault() -> None:
    """Restored in place: writable again (numa_rebuild_single_mapping); migrated by a read:
    read-only (the migration entry came from the protnone PTE); by a write: writable. A THP's
    PMD the same (do_huge_pmd_numa_page: can_change_pmd_writable; set_pmd_migration_entry)."""
    task = Task(pid=5, nr_nodes=2, numa_scan_seq=1)
    page = Page(BASE, node=0, hint=True)
    assert hint_fault(task, page, cpu=0, node_of_cpu=NODE_OF_CPU).writable is True  # local
    assert hint_fault(task, page, cpu=2, node_of_cpu=NODE_OF_CPU).writable is False  # migrated, read
    assert hint_fault(task, page, cpu=2, node_of_cpu=NODE_OF_CPU, write=True).writable is True
    assert hint_fault(task, page, cpu=0, node_of_cpu=NODE_OF_CPU, vma_writable=False).writable is False
    huge = Page(BASE, node=0, size=HPAGE_SIZE, hint=True)
    assert hint_fault(task, huge, cpu=2, node_of_cpu=NODE_OF_CPU).writable is False
    assert hint_fault(task, huge, cpu=0, node_of_cpu=NODE_OF_CPU).writable is True
    assert hint_fault(task, huge, cpu=2, node_of_cpu=NODE_OF_CPU, write=True).writable is True


def test_a_slow_down_placement_restarts_the_scan_clock() -> None:
    """fair.c:update_task_scan_period's first branch (no local or shared faults, or failed
    migrations) sets mm->numa_next_scan; the others leave it alone."""
    from harness.model import placement_restarts_scan_clock
    from harness.model.state import MEMBUF

    remote_private = Task(pid=1, nr_nodes=2, numa_scan_seq=1, locality=(8, 0, 0),
                          faults=tuple(((0, 0), (0, 8)) if stat == MEMBUF else ((0, 0), (0, 0)) for stat in range(4)))
    assert placement_restarts_scan_clock(remote_private, mm_seq=2)
    assert not placement_restarts_scan_clock(remote_private, mm_seq=1)  # no placement pending
    some_local = replace(remote_private, locality=(8, 1, 0))
    assert not placement_restarts_scan_clock(some_local, mm_seq=2)
    assert placement_restarts_scan_clock(replace(some_local, locality=(8, 1, 3)), mm_seq=2)  # failed migrations


def test_a_pass_waits_for_numa_next_scan_and_moves_it_by_the_period() -> None:
    """fair.c:task_numa_work: no pass before numa_next_scan; the pass installs now + period."""
    from harness.model.timing import next_scan_after_pass, pass_allowed

    assert not pass_allowed(999, 1000) and pass_allowed(1000, 1000) and pass_allowed(1001, 1000)
    assert pass_allowed(5, (1 << 64) - 5) is True  # jiffies wrapped past numa_next_scan: time_after is wrap-safe
    assert next_scan_after_pass(1000, 200, Tunables(hz=250)) == 1050
    assert next_scan_after_pass(1000, 201, Tunables(hz=250)) == 1051  # msecs_to_jiffies rounds up


def test_node_stamp_moves_a_period_per_trigger_and_two_ticks_per_pass() -> None:
    from harness.model.timing import node_stamp_after, tick_nsec

    assert tick_nsec(250) == 4_000_000 and tick_nsec(1000) == 1_000_000
    assert node_stamp_after(0, triggers=3, passes=2, period_ms=200, hz=250) == 600_000_000 + 16_000_000


def test_a_hint_fault_sets_the_task_pid_bit_in_pids_active_1_only_once_scanned() -> None:
    """include/linux/mm.h:vma_set_access_pid_bit: bit hash_32(pid, 6) of pids_active[1], and
    nothing on a VMA whose numab_state the scanner has not allocated."""
    from harness.model.timing import pid_bit, vma_set_access_pid_bit

    fresh = Vma(0, 1 << 21)
    assert vma_set_access_pid_bit(fresh, 1234) is fresh
    scanned = replace(fresh, numab=NumabState(1, 0, 0, 0, (0x10, 0)))
    after = vma_set_access_pid_bit(scanned, 1234)
    assert after.numab is not None and after.numab.pids_active == (0x10, pid_bit(1234))
    assert pid_bit(1234) == 1 << ((1234 * 0x61C88647 & 0xFFFFFFFF) >> 26)


# -- numa_group: kernel/sched/fair.c:task_numa_group ----------------------------------------------

def _occupant(pid: int, group: NumaGroup | None, same_mm: bool = True) -> CpuOccupant:
    return CpuOccupant(pid, group, same_mm)


@pytest.mark.parametrize(("last", "mine", "occupant", "flags", "outcome", "priv", "gid", "size"), [
    (None, None, None, {}, GroupOutcome.PRIVATE, 1, None, None),
    (cpupid(1, 10), None, None, {}, GroupOutcome.PRIVATE, 1, None, None),
    (cpupid(1, 20), None, None, {"no_group": True}, GroupOutcome.NO_GROUP_FLAG, 0, None, None),
    (cpupid(1, 20), None, None, {}, GroupOutcome.NOT_RUNNING, 0, 10, 1),
    (cpupid(1, 20), None, _occupant(20, None), {}, GroupOutcome.OCCUPANT_WITHOUT_GROUP, 0, 10, 1),
    (cpupid(1, 20), NumaGroup(20, 2, 0x200), _occupant(20, NumaGroup(20, 2, 0x200)), {}, GroupOutcome.SAME_GROUP,
     0, 20, 2),
    (cpupid(1, 20), NumaGroup(10, 2, 0x100), _occupant(20, NumaGroup(20, 1, 0x200)), {},
     GroupOutcome.OWN_GROUP_BIGGER, 0, 10, 2),
    (cpupid(1, 20), NumaGroup(10, 1, 0x300), _occupant(20, NumaGroup(20, 1, 0x200)), {}, GroupOutcome.TIE_KEPT,
     0, 10, 1),
    (cpupid(1, 20), NumaGroup(10, 1, 0x100), _occupant(20, NumaGroup(20, 1, 0x200)), {}, GroupOutcome.JOINED,
     0, 20, 2),
    (cpupid(1, 20), None, _occupant(20, NumaGroup(20, 3, 0x200)), {}, GroupOutcome.JOINED, 0, 20, 4),
    (cpupid(1, 20), NumaGroup(10, 1, 0x100), _occupant(20, NumaGroup(20, 1, 0x200), same_mm=False), {},
     GroupOutcome.FALSE_SHARING, 1, 10, 1),
    (cpupid(1, 20), NumaGroup(10, 1, 0x100), _occupant(20, NumaGroup(20, 1, 0x200), same_mm=False),
     {"shared_mapping": True}, GroupOutcome.JOINED, 0, 20, 2),
    # Only the low 8 bits of a pid are kept in last_cpupid (cpupid_match_pid compares those).
    (cpupid(1, 20), NumaGroup(10, 1, 0x100), _occupant(20 + 256, NumaGroup(20, 1, 0x200)), {},
     GroupOutcome.JOINED, 0, 20, 2),
])
def test_task_numa_group_exits(last: int | None, mine: NumaGroup | None, occupant: CpuOccupant | None,
                               flags: dict[str, bool], outcome: GroupOutcome, priv: int, gid: int | None,
                               size: int | None) -> None:
    decided = task_numa_group(10, last, mine, occupant, **flags)
    assert (decided.outcome, decided.priv) == (outcome, priv)
    assert (decided.group.gid, decided.group.nr_tasks) == (gid, size) if decided.group else gid is None


def test_a_tie_without_both_addresses_is_not_guessed() -> None:
    with pytest.raises(ValueError, match="addresses"):
        task_numa_group(10, cpupid(1, 20), None, _occupant(20, NumaGroup(20, 1, 0x200)))


def test_a_group_books_are_its_members_summed() -> None:
    a = {"mem": [(1, 2), (3, 4)], "cpu": [(0, 1), (0, 0)]}
    b = {"mem": [(10, 0), (0, 5)], "cpu": [(2, 2), (1, 1)]}
    books, total = group_books([a, b], [7, 9])
    assert books == {"mem": [(11, 2), (3, 9)], "cpu": [(2, 3), (1, 1)]} and total == 16


@pytest.mark.parametrize(("cpu_faults", "expected"), [
    ([0, 0], (0, 0)),  # no CPU faults yet: no node is "more than a third of the maximum"
    ([90, 30], (1, 90)),  # exactly a third is not more than a third
    ([90, 31], (2, 90)),
    ([5, 100], (1, 100)),
])
def test_active_nodes_are_those_above_a_third_of_the_busiest(cpu_faults: list[int], expected: tuple[int, int]) -> None:
    assert numa_group_count_active_nodes(cpu_faults) == expected


@pytest.mark.parametrize("migrates", [True, False])
def test_a_shared_mapping_comes_back_writable_either_way(migrates: bool) -> None:
    """VM_SHARED: vm_page_prot has the write bit, and both numa_rebuild_single_mapping and
    remove_migration_pte start from it; a private page that migrated comes back read-only."""
    page = Page(BASE, 0, hint=True, last_cpupid=None if migrates else cpupid(0, 20))
    task = Task(pid=10, nr_nodes=2)
    shared = hint_fault(task, page, cpu=2, node_of_cpu=NODE_OF_CPU, vma_shared=True)
    private = hint_fault(task, page, cpu=2, node_of_cpu=NODE_OF_CPU)
    assert shared.migrated is migrates and shared.writable is True
    assert private.writable is (not migrates)


# -- a group member: should_numa_migrate_memory's group half, placement and locality --------------


def _books(cpu: tuple[int, int], mem: tuple[int, int], active: int = 2) -> GroupBooks:
    """Group books with the given group_faults_cpu and group_faults per node (all shared)."""
    return GroupBooks(mem=((mem[0], 0), (mem[1], 0)), cpu=((cpu[0], 0), (cpu[1], 0)), total_faults=sum(mem),
                      active_nodes=active, max_faults_cpu=max(cpu))


@pytest.mark.parametrize(("cpu", "mem", "migrates", "branch"), [
    # faults_cpu(dst=1) 31 > 3 * faults_cpu(src=0) 10: much more used destination.
    ((10, 31), (1, 100), True, "exceed 3x"),
    # 30 is not > 30: the ratio decides: 30 * 100 * 3 = 9000 > 10 * 100 * 4 = 4000.
    ((10, 30), (100, 100), True, "favours the destination"),
    # 13 * 100 * 3 = 3900 > 10 * 100 * 4 = 4000? No: the 3/4 hysteresis keeps the page.
    ((10, 13), (100, 100), False, "keeps the page"),
    # 14 * 100 * 3 = 4200 > 4000: moves; memory already on the destination weighs against it.
    ((10, 14), (100, 100), True, "favours the destination"),
    ((10, 14), (100, 200), False, "keeps the page"),
])
def test_a_group_members_shared_fault_is_decided_by_the_group(cpu: tuple[int, int], mem: tuple[int, int],
                                                               migrates: bool, branch: str) -> None:
    """fair.c:should_numa_migrate_memory past the two-stage filter, for a shared fault (another
    pid, same node) of a task in a numa_group: the page on node 0, the fault from node 1."""
    task = Task(pid=7, nr_nodes=2, numa_scan_seq=9, numa_preferred_nid=1)
    page = Page(BASE, 0, last_cpupid=cpupid(3, 8))
    ok, _, decision = should_numa_migrate_memory(task, page, 1, cpupid(2, 7), NODE_OF_CPU, group=_books(cpu, mem))
    assert ok is migrates and branch in decision
    # Without a group the same fault migrates ("A shared fault, but p->numa_group has not been set up yet").
    assert should_numa_migrate_memory(task, page, 1, cpupid(2, 7), NODE_OF_CPU)[0] is True


def test_a_remote_shared_fault_inside_the_active_nodes_counts_local() -> None:
    """fair.c:task_numa_fault: only for a shared fault, only with two or more active nodes, and
    only when both the CPU's and the page's node are active (faults_cpu * 3 > max_faults_cpu)."""
    assert counts_local_in_group(_books((10, 12), (1, 1)), 1, 0)
    assert not counts_local_in_group(_books((10, 12), (1, 1), active=1), 1, 0)
    assert not counts_local_in_group(_books((3, 12), (1, 1)), 1, 0)  # 3 * 3 = 9 is not > 12
    task = Task(pid=7, nr_nodes=2, numa_scan_seq=9, numa_preferred_nid=1)
    shared = Page(BASE, 0, hint=True, last_cpupid=cpupid(3, 8))
    counted = hint_fault(task, shared, cpu=2, node_of_cpu=NODE_OF_CPU, jiffies_after_retry=False,
                         group=_books((10, 12), (100, 100)))
    assert not counted.local and counted.task.locality == (0, 1, 0)
    mine = hint_fault(task, replace(shared, last_cpupid=cpupid(3, 7)), cpu=2, node_of_cpu=NODE_OF_CPU,
                      jiffies_after_retry=False, group=_books((10, 12), (100, 100)))
    assert mine.task.locality == (1, 0, 0)  # private: remote stays remote


def test_a_group_members_placement_weighs_cpu_faults_by_runtime_and_shares_its_diffs() -> None:
    """fair.c:task_numa_placement with a group: f_weight = (runtime << 16) / (period + 1) *
    cpubuf / (local + remote + 1); the group gets the task's diff and f_diff, recounts its active
    nodes, and the preferred node is the group's busiest memory node."""
    task = Task(pid=7, nr_nodes=2, numa_scan_seq=3, numa_preferred_nid=0, locality=(30, 10, 0),
                faults=(((8, 0), (0, 0)),          # mem
                        ((1000, 0), (0, 0)),       # cpu
                        ((0, 0), (40, 0)),         # membuf
                        ((0, 0), (40, 0))))        # cpubuf
    group = GroupBooks(mem=((8, 0), (100, 0)), cpu=((5000, 0), (900, 0)), total_faults=108, active_nodes=1,
                       max_faults_cpu=5000)
    clock = PlacementClock(runtime=500_000_000, period=999_999_999)
    placed, books = group_task_numa_placement(task, group, 4, clock)
    weight = (500_000_000 << 16) // 1_000_000_000 * 40 // 41  # 32768 * 40 // 41
    assert weight == 31968
    assert placed.faults[1] == ((1000 - 500, 0), (weight, 0))
    assert placed.faults[0] == ((8 - 4, 0), (40, 0)) and placed.total_numa_faults == 36
    assert books.cpu == ((5000 - 500, 0), (900 + weight, 0)) and books.mem == ((4, 0), (140, 0))
    assert books.total_faults == 108 + 36
    assert (books.active_nodes, books.max_faults_cpu) == (1, 900 + weight)  # 4500 * 3 is not > 32868
    assert placed.numa_preferred_nid == 1 and placed.numa_scan_seq == 4
    # A pinned group member away from the group's node takes its own node (task_numa_migrate).
    assert numa_migrate_preferred_pinned(placed, 0, in_group=True).numa_preferred_nid == 0
    assert numa_migrate_preferred_pinned(placed, 0, in_group=False).numa_preferred_nid == 1


# -- a group member's scan period: task_scan_max, task_scan_start, update_scan_period ------------


def _mem_books(mem: tuple[tuple[int, int], ...], nr_tasks: int) -> GroupBooks:
    return GroupBooks(mem=mem, cpu=((0, 0),) * len(mem), total_faults=sum(a + b for a, b in mem), active_nodes=1,
                      max_faults_cpu=0, nr_tasks=nr_tasks)


def test_a_groups_shared_faults_stretch_the_scan_period_bounds() -> None:
    """fair.c:task_scan_max and task_scan_start: smax (or smin) * refcount * (shared + 1) /
    (private + shared + 1), never below the lone task's value. Figures from a real numa-group
    run (knobs 3000/3000 ms, one scan window)."""
    limits = ScanLimits(smin=3000, smax=3000)
    assert limits.task_scan_max() == limits.task_scan_start() == 3000
    two = _mem_books(((256, 128), (512, 128)), nr_tasks=2)  # shared 768, private 256
    assert limits.task_scan_max(two) == 3000 * 2 * 769 // 1025 == 4501
    assert limits.task_scan_start(two) == 4501
    assert limits.task_scan_max(_mem_books(((512, 64), (384, 128)), 2)) == 3000 * 2 * 897 // 1089 == 4942
    # Mostly private: the product falls below smax, which stays the floor.
    assert limits.task_scan_max(_mem_books(((0, 128), (256, 256)), 2)) == 3000  # 3000 * 2 * 257 / 641 = 2405
    # smax below smin (floor calculations): task_scan_max is at least smin; the group scales smax.
    assert ScanLimits(smin=1000, smax=600).task_scan_max(_mem_books(((100, 0),), 2)) == 1200


def test_a_groups_placement_bounds_its_period_before_and_after_its_fold() -> None:
    """fair.c:task_numa_placement sets numa_scan_period_max = task_scan_max(p) from the group's
    books before the fold; update_task_scan_period then clamps with task_scan_max(p) anew, after
    the fold changed the group's books: the period may pass numa_scan_period_max."""
    task = Task(pid=105, nr_nodes=2, numa_scan_seq=3, numa_scan_period=4501, numa_scan_period_max=3000,
                numa_preferred_nid=0, locality=(0, 256, 0),
                faults=(((0, 128), (256, 0)), ((0, 0), (0, 0)), ((256, 0), (0, 0)), ((0, 0), (0, 0))))
    group = _mem_books(((256, 128), (512, 128)), nr_tasks=2)
    placed, books = group_task_numa_placement(task, group, 4, PlacementClock(0, 1), limits=ScanLimits(3000, 3000))
    assert books.mem == ((512, 64), (384, 128))
    assert placed.numa_scan_period_max == 4501
    # All local: lr_ratio 10, diff = 3 * ceil(4501 / 10) = 1353; 5854 clamped to 4942.
    assert placed.numa_scan_period == 4942


def test_a_move_to_another_node_restarts_the_scan_period() -> None:
    """fair.c:update_scan_period: off the preferred node to another, the period restarts at
    task_scan_start; not onto the preferred node, not from a node that was not the preferred
    one (once a sequence is done), not within a node."""
    limits = ScanLimits(3000, 3000)
    group = _mem_books(((256, 128), (512, 128)), nr_tasks=2)
    task = Task(pid=1, nr_nodes=2, numa_scan_seq=3, numa_scan_period=3000, numa_preferred_nid=0)
    assert update_scan_period(task, 0, 1, limits, group).numa_scan_period == 4501
    assert update_scan_period(task, 0, 1, limits, None).numa_scan_period == 3000
    assert update_scan_period(replace(task, numa_scan_period=1000), 0, 0, limits, group).numa_scan_period == 1000
    assert update_scan_period(replace(task, numa_preferred_nid=1), 0, 1, limits, group).numa_scan_period == 3000
    assert update_scan_period(replace(task, numa_preferred_nid=1), 1, 0, limits, group).numa_scan_period == 4501
    elsewhere = replace(task, numa_preferred_nid=2, nr_nodes=3)
    assert update_scan_period(elsewhere, 0, 1, limits, group).numa_scan_period == 3000
    # Before its first completed sequence a task restarts whatever its preference.
    assert update_scan_period(replace(task, numa_scan_seq=0, numa_preferred_nid=1), 0, 1, limits,
                              group).numa_scan_period == 4501


def test_a_new_group_copies_and_a_join_moves_the_books_but_not_the_buffers() -> None:
    """fair.c:task_numa_group: a new group takes the task's NUMA_MEM and NUMA_CPU books and
    total_numa_faults (active_nodes 1, max_faults_cpu 0); a join moves them from one to the other."""
    mem, cpu = ((0, 256), (0, 0)), ((0, 51178), (0, 0))
    created = GroupBooks.created_by(mem, cpu, 256)
    assert created == GroupBooks(mem, cpu, 256, 1, 0, 1)
    other = GroupBooks(((10, 0), (0, 20)), ((5, 0), (0, 7)), 30, 2, 7, 1)
    joined = other.moved(mem, cpu, 256, sign=+1)
    assert joined.mem == ((10, 256), (0, 20)) and joined.cpu == ((5, 51178), (0, 7))
    assert (joined.total_faults, joined.nr_tasks, joined.active_nodes, joined.max_faults_cpu) == (286, 2, 2, 7)
    left = created.moved(mem, cpu, 256, sign=-1)
    assert left.mem == ((0, 0), (0, 0)) and left.total_faults == 0 and left.nr_tasks == 0


def test_vma_access_reason_follows_vma_is_accessed_tests_in_order() -> None:
    """fair.c:vma_is_accessed: the first two sequences, then the scanning thread's bit, then a
    scan in progress, then the idle-VMA test against get_nr_threads."""
    from harness.model.scanner import vma_access_reason
    from harness.model.timing import pid_bit

    vma = Vma(0x10000, 0x20000)
    worker, main = 105, 101
    assert pid_bit(worker) != pid_bit(main)
    numab = NumabState(start_scan_seq=4, prev_scan_seq=8, next_scan=0, pids_active_reset=0,
                       pids_active=(0, pid_bit(worker)))
    def reason(seq: int, offset: int, pid: int, threads: int = 2, state: NumabState = numab) -> str:
        return vma_access_reason(Mm(offset, seq, 1), vma, state, pid, threads)
    assert reason(5, 0, main) == "new"
    assert reason(9, 0, worker) == "pid"
    assert reason(9, 0x18000, main) == "in progress"
    assert reason(9, 0x10000, main) == ""  # an offset at the VMA's start is no scan in progress
    assert reason(11, 0, main) == "idle"  # 11 > 8 + 2 threads
    assert reason(10, 0, main) == ""
    assert reason(10, 0, main, threads=1) == "idle"
