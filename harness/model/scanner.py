"""The NUMA scanner: one pass of kernel/sched/fair.c:task_numa_work and what
mm/mempolicy.c:change_prot_numa does to the entries it covers.

The timing that decides *when* a pass runs (task_tick_numa, numa_next_scan, node_stamp) is not
modelled here: a cross-check observes when passes happened. This module says what one pass,
starting from an observed state, must do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .placement import ScanLimits
from .state import (
    DEFAULT_RULES,
    HPAGE_SIZE,
    NUMA_BALANCING_NORMAL,
    PAGE_SIZE,
    Counters,
    KernelRules,
    Mm,
    NumabState,
    Page,
    Tunables,
    Vma,
)


@dataclass(frozen=True)
class PassResult:
    mm: Mm
    vmas: tuple[Vma, ...]
    pages: Mapping[int, Page]
    counters: Counters  # the deltas this pass causes
    windows: tuple[tuple[int, int], ...]  # [start, end) ranges handed to change_prot_numa, in order
    skipped: tuple[tuple[int, str], ...]  # (vma start, reason) as trace_sched_skip_vma_numa names them
    # (vma start, which test let it through: vma_access_reason's, or "forced") for every VMA the
    # pass scanned past vma_is_accessed (6.4+: VMAs with numab_state).
    admitted: tuple[tuple[int, str], ...] = ()


def change_prot_numa(
    vma: Vma, pages: dict[int, Page], start: int, end: int, *, scanning_node: int, mm_users: int, tunables: Tunables
) -> tuple[int, int]:
    """Mark [start, end) of `vma` as NUMA hints. Returns (base pages updated, huge PMDs updated)
    and updates `pages` in place.

    mm/mprotect.c:change_pte_range leaves an entry alone when it is already protnone, maps no
    normal folio (the zero page), maps a likely-shared folio of a COW mapping, or maps a folio
    on the scanning CPU's node in a private VMA of a single-user mm (`target_node`), or when
    NORMAL mode is off (every DRAM node is top tier). mm/huge_memory.c:change_huge_pmd has no
    target-node test: a THP is hinted whatever node it is on; it skips the huge zero page and
    protnone PMDs, and counts HPAGE_PMD_NR pages plus one huge update (change_pmd_range).
    """
    target_node = scanning_node if not vma.shared and mm_users == 1 else None
    updated = huge = 0
    normal_mode = bool(tunables.mode & NUMA_BALANCING_NORMAL)
    for vaddr in [va for va in pages if start <= va < end]:
        page = pages[vaddr]
        if page.huge:
            if vaddr + HPAGE_SIZE > end:
                raise ValueError(f"THP at {vaddr:#x} only partly inside [{start:#x}, {end:#x}): the kernel splits it; "
                                 f"the model does not model splits")
            if page.zero_page or page.hint or not normal_mode:
                continue
            pages[vaddr] = replace(page, hint=True)
            updated += page.nr_pages
            huge += 1
            continue
        if page.hint or page.zero_page:
            continue
        if not vma.shared and page.likely_shared:  # is_cow_mapping && folio_likely_mapped_shared
            continue
        if target_node is not None and page.node == target_node:
            continue
        if not normal_mode:
            continue
        pages[vaddr] = replace(page, hint=True)
        updated += 1
    return updated, huge


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def vma_is_accessed(mm: Mm, vma: Vma, numab: NumabState, pid: int, nr_threads: int) -> bool:
    """kernel/sched/fair.c:vma_is_accessed."""
    return bool(vma_access_reason(mm, vma, numab, pid, nr_threads))


def vma_access_reason(mm: Mm, vma: Vma, numab: NumabState, pid: int, nr_threads: int) -> str:
    """Which of fair.c:vma_is_accessed's tests, in its order, lets the VMA be scanned by task
    `pid`: "new" (the VMA's first two sequences), "pid" (the task's bit in pids_active: it
    faulted there lately), "in progress" (the scan offset is past the VMA's start: a scan of it
    already began), "idle" (more sequences since its last scan than the process has threads);
    "" when none does (skipped as pid_inactive)."""
    if mm.numa_scan_seq - numab.start_scan_seq < 2:
        return "new"
    pids = numab.pids_active[0] | numab.pids_active[1]
    if pids >> _hash_32(pid, 6) & 1:
        return "pid"
    if mm.numa_scan_offset > vma.start:
        return "in progress"
    if mm.numa_scan_seq > numab.prev_scan_seq + nr_threads:
        return "idle"
    return ""


def _hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h:hash_32 (GOLDEN_RATIO_32 multiply, top bits)."""
    return ((value * 0x61C88647) & 0xFFFFFFFF) >> (32 - bits)


@dataclass
class _PassBudget:
    """What one task_numa_work call spends and collects as it walks the VMAs."""

    pages: int  # scan_size_mb in pages: spent per chunk that updated anything
    virtpages: int  # 8 x pages: spent per chunk, updated or not
    updated: int = 0
    huge: int = 0
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def spent(self) -> bool:
        return self.pages <= 0 or self.virtpages <= 0


def _vma_gate(vma: Vma, mm: Mm, jiffies: int, delay: int, pid: int, nr_threads: int,
              forced: bool) -> tuple[NumabState | None, str]:
    """task_numa_work's per-VMA tests, in the kernel's order (fair.c:task_numa_work): the VMA's
    numab_state as the tests leave it (None when never allocated) and the skip reason, or ''."""
    reason = skip_reason(vma)
    if reason:
        return vma.numab, reason
    seq = mm.numa_scan_seq
    numab = vma.numab or NumabState(start_scan_seq=seq, prev_scan_seq=seq - 1, next_scan=jiffies + delay,
                                    pids_active_reset=jiffies + delay + 4 * delay)
    if seq and jiffies < numab.next_scan:
        return numab, "scan_delay"
    if seq and jiffies > numab.pids_active_reset:  # rotate pids_active every VMA_PID_RESET_PERIOD
        numab = replace(numab, pids_active_reset=numab.pids_active_reset + 4 * delay,
                        pids_active=(numab.pids_active[1], 0))
    if numab.prev_scan_seq == seq:
        return numab, "seq_completed"
    if not forced and not vma_is_accessed(mm, vma, numab, pid, nr_threads):
        return numab, "pid_inactive"
    return numab, ""


def _scan_vma(vma: Vma, start: int, pages: dict[int, Page], budget: _PassBudget, *, scanning_node: int, mm_users: int,
              tunables: Tunables) -> int:
    """The chunk loop over one VMA from `start`: change_prot_numa per chunk of at most the
    remaining budget, ending on a 2 MiB boundary. Returns where it stopped."""
    while True:
        start = max(start, vma.start)
        end = min(_align_up(start + budget.pages * PAGE_SIZE, HPAGE_SIZE), vma.end)
        updated, huge = change_prot_numa(vma, pages, start, end, scanning_node=scanning_node, mm_users=mm_users,
                                         tunables=tunables)
        budget.windows.append((start, end))
        budget.updated += updated
        budget.huge += huge
        if updated:  # the chunk, not the count, is charged
            budget.pages -= (end - start) // PAGE_SIZE
        budget.virtpages -= (end - start) // PAGE_SIZE
        start = end
        if budget.spent or end == vma.end:
            return start


def scan_pass(
    mm: Mm,
    vmas: Sequence[Vma],
    pages: Mapping[int, Page],
    tunables: Tunables,
    *,
    scanning_node: int,
    jiffies: int,
    pid: int,
    nr_threads: int = 1,
    rules: KernelRules = DEFAULT_RULES,
) -> PassResult:
    """One call of task_numa_work that got past its timing checks (fair.c:task_numa_work).
    Under 6.1's rules (KernelRules.vma_scan_gate) a VMA is skipped only by skip_reason and
    keeps no numab_state: 6.1's loop has no other test."""
    vma_list = sorted(vmas, key=lambda v: v.start)
    new_pages = dict(pages)
    offset, seq = mm.numa_scan_offset, mm.numa_scan_seq
    budget = _PassBudget(pages=tunables.scan_size_mb << (20 - 12), virtpages=(tunables.scan_size_mb << (20 - 12)) * 8)
    skipped: list[tuple[int, str]] = []
    admitted: list[tuple[int, str]] = []
    delay = tunables.ms_to_jiffies(tunables.scan_delay_ms)
    forced = pids_skipped = False
    stopped_in: int | None = None  # index of the VMA the budget ran out in
    start = offset

    while True:
        start = offset
        index = next((i for i, v in enumerate(vma_list) if v.end > start), None)
        if index is None:  # reset_ptenuma_scan
            seq, offset, start = seq + 1, 0, 0
            index = 0 if vma_list else None
        for i in range(index if index is not None else len(vma_list), len(vma_list)):
            vma = vma_list[i]
            if rules.vma_scan_gate:
                numab, reason = _vma_gate(vma, Mm(offset, seq, mm.mm_users), jiffies, delay, pid, nr_threads, forced)
            else:
                numab, reason = vma.numab, skip_reason(vma)
            vma = vma_list[i] = replace(vma, numab=numab)
            if reason:
                skipped.append((vma.start, reason))
                offset = vma.end if reason == "seq_completed" else offset
                pids_skipped |= reason == "pid_inactive"
                continue
            if rules.vma_scan_gate and numab is not None:
                admitted.append((vma.start, vma_access_reason(Mm(offset, seq, mm.mm_users), vma, numab, pid,
                                                              nr_threads) or "forced"))
            start = _scan_vma(vma, start, new_pages, budget, scanning_node=scanning_node, mm_users=mm.mm_users,
                              tunables=tunables)
            if budget.spent:
                stopped_in = i
                break
            if numab is not None:
                vma_list[i] = replace(vma, numab=replace(numab, prev_scan_seq=seq))
            if forced:
                stopped_in = i  # `break` with vma still set: the offset becomes `start`
                break
        if stopped_in is None and not forced and pids_skipped:
            forced = True
            continue
        break

    if stopped_in is not None:
        offset = start
    else:
        seq, offset = seq + 1, 0
    counters = Counters(numa_pte_updates=budget.updated, numa_huge_pte_updates=budget.huge)
    return PassResult(Mm(offset, seq, mm.mm_users), tuple(vma_list), new_pages, counters, tuple(budget.windows),
                      tuple(skipped), tuple(admitted))


def skip_reason(vma: Vma) -> str:
    """The first skip reason task_numa_work applies to a VMA, or ''."""
    if not vma.migratable or not vma.policy_mof or vma.hugetlb or vma.mixedmap:
        return "unsuitable"
    if vma.file_backed and vma.readable and not vma.writable:
        return "shared_ro"
    if not vma.accessible:
        return "inaccessible"
    return ""


def task_nr_scan_windows(rss_pages: int, tunables: Tunables) -> int:
    """fair.c:task_nr_scan_windows."""
    nr_scan_pages = tunables.scan_size_mb << (20 - 12)
    rss = rss_pages or nr_scan_pages
    return _align_up(rss, nr_scan_pages) // nr_scan_pages


def task_scan_min(rss_pages: int, tunables: Tunables) -> int:
    """fair.c:task_scan_min (MAX_SCAN_WINDOW 2560)."""
    windows = 2560 // tunables.scan_size_mb if tunables.scan_size_mb < 2560 else 1
    floor = 1000 // windows
    return max(floor, tunables.scan_period_min_ms // task_nr_scan_windows(rss_pages, tunables))


def scan_limits(rss_pages: int, tunables: Tunables) -> ScanLimits:
    """fair.c:task_scan_min and task_scan_max's starting point for an mm of `rss_pages`."""
    return ScanLimits(task_scan_min(rss_pages, tunables),
                      tunables.scan_period_max_ms // task_nr_scan_windows(rss_pages, tunables))


def task_scan_max(rss_pages: int, tunables: Tunables) -> int:
    """fair.c:task_scan_max, for a task without a numa_group."""
    return scan_limits(rss_pages, tunables).task_scan_max()
