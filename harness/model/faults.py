"""A NUMA hint fault: mm/memory.c:do_numa_page (mm/huge_memory.c:do_huge_pmd_numa_page for a THP),
the migration decision, and kernel/sched/fair.c:task_numa_fault's accounting.

Modelled for the default policy (no mempolicy), NORMAL mode and DRAM-only nodes; a task's
numa_group enters through its books (model/group.py:GroupBooks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .group import ACTIVE_NODE_FRACTION, GroupBooks, counts_local_in_group
from .placement import (
    PlacementClock,
    ScanLimits,
    group_task_numa_placement,
    numa_migrate_preferred_pinned,
    task_numa_placement,
)
from .state import (
    CPUBUF,
    DEFAULT_RULES,
    MEMBUF,
    PAGE_SIZE,
    Counters,
    KernelRules,
    Page,
    Task,
    cpupid,
    cpupid_cpu,
    cpupid_pid,
)
from .state import LAST__PID_MASK as PID_MASK


class Decision(StrEnum):
    """Why a hinted page did or did not move, in the kernel's words (one member per branch)."""

    LOCAL = "local: not misplaced"  # mm/mempolicy.c:mpol_misplaced
    NO_MEMORY = "destination node has no memory"  # fair.c:should_numa_migrate_memory, first test
    EARLY_SCAN = "early scan: first fault or same task"
    TWO_STAGE_REFUSED = "two-stage filter: the previous fault came from another node"
    SAME_TASK_TWICE = "same task faulted from this node twice"
    NO_GROUP = "no numa_group"
    # fair.c:should_numa_migrate_memory's group half, for a shared fault of a group member.
    GROUP_DST_BUSIER = "group: the destination's CPU faults exceed 3x the source's"
    GROUP_RATIO_MIGRATE = "group: CPU over memory faults, 3/4 hysteresis, favours the destination"
    GROUP_RATIO_KEEP = "group: CPU over memory faults, 3/4 hysteresis, keeps the page"
    MIGRATION_FAILED = "migration failed"  # do_numa_page: TNF_MIGRATE_FAIL


@dataclass(frozen=True)
class FaultResult:
    page: Page
    task: Task
    counters: Counters
    migrated: bool
    local: bool
    # Why the page did (not) move, in the kernel's words.
    decision: Decision
    # The entry's write bit once the access completed (None: not known).
    writable: bool | None = None
    # The task's group's books after the fault (a placement it ran changes them); None: no group.
    group: GroupBooks | None = None


def should_numa_migrate_memory(task: Task, page: Page, dst_nid: int, this_cpupid: int, node_of_cpu: dict[int, int],
                               has_memory: bool = True, group: GroupBooks | None = None) -> tuple[bool, Page, Decision]:
    """kernel/sched/fair.c:should_numa_migrate_memory for NORMAL mode; `group` is the task's
    numa_group's books at the fault (None: no group). Returns (migrate?, the page with last_cpupid
    exchanged, reason)."""
    if not has_memory:
        return False, page, Decision.NO_MEMORY
    last = page.last_cpupid
    page = replace(page, last_cpupid=this_cpupid)  # folio_xchg_last_cpupid, before any test below
    # include/linux/mm.h: cpupid_pid_unset and cpupid_match_pid read the pid bits alone, and
    # "unset" is all ones (page_cpupid_reset_last; None here). So a task whose pid ends in
    # LAST__PID_MASK (1279 = 0x4ff) leaves a last_cpupid these tests take for unset: another
    # task's fault on it passes as a first fault, early scan or not, and skips the two-stage
    # filter. task_numa_fault's first-access test compares the whole value and does not.
    last_pid = PID_MASK if last is None else cpupid_pid(last)
    pid_unset = last_pid == PID_MASK
    pid_match = last_pid == task.pid & PID_MASK
    if (task.numa_preferred_nid == -1 or task.numa_scan_seq <= 4) and (pid_unset or pid_match):
        return True, page, Decision.EARLY_SCAN
    if last is not None and not pid_unset and node_of_cpu[cpupid_cpu(last)] != dst_nid:
        return False, page, Decision.TWO_STAGE_REFUSED
    if pid_match:
        return True, page, Decision.SAME_TASK_TWICE
    if group is None:
        return True, page, Decision.NO_GROUP
    src_nid = page.node
    # "Destination node is much more heavily used than the source node? Allow migration."
    if group.faults_cpu(dst_nid) > group.faults_cpu(src_nid) * ACTIVE_NODE_FRACTION:
        return True, page, Decision.GROUP_DST_BUSIER
    if group_ratio_favours_destination(group, src_nid, dst_nid):
        return True, page, Decision.GROUP_RATIO_MIGRATE
    return False, page, Decision.GROUP_RATIO_KEEP


def group_ratio_favours_destination(group: GroupBooks, src_nid: int, dst_nid: int) -> bool:
    """The last test of fair.c:should_numa_migrate_memory, "Distribute memory according to CPU &
    memory use on each node, with 3/4 hysteresis": faults_cpu(dst) / faults_mem(dst) * 3/4 >
    faults_cpu(src) / faults_mem(src), cross-multiplied."""
    return group.faults_cpu(dst_nid) * group.faults_mem(src_nid) * 3 > \
        group.faults_cpu(src_nid) * group.faults_mem(dst_nid) * 4


def hint_fault(
    task: Task,
    page: Page,
    *,
    cpu: int,
    node_of_cpu: dict[int, int],
    jiffies_after_retry: bool = True,
    migration_succeeds: bool = True,
    mm_seq: int | None = None,
    write: bool = False,
    vma_writable: bool = True,
    priv: int | None = None,
    vma_shared: bool = False,
    group: GroupBooks | None = None,
    clock: PlacementClock | None = None,
    pinned: bool = False,
    limits: ScanLimits | None = None,
    rules: KernelRules = DEFAULT_RULES,
) -> FaultResult:
    """A task on `cpu` reads (or with write=True writes) a hinted page (or THP).

    A migrated base page comes back read-only: the migration entry is made from the protnone
    PTE, which has no write bit (mm/rmap.c:try_to_migrate_one), so a write then faults again and
    mm/memory.c:wp_page_reuse resets last_cpupid to "pid unset". The THP write-fault path
    (do_huge_pmd_wp_page) has no such reset. A page restored in place gets its write bit back
    (numa_rebuild_single_mapping: can_change_pte_writable holds for an exclusive anonymous page of
    a writable private VMA) and keeps the exchanged last_cpupid; a migrated one stays read-only
    until a write faults it writable. `priv` is task_numa_group's verdict on the fault
    (model/group.py) where the task's numa_group decides it; by default the pid test alone.
    `group` is the task's group's books before the fault (after any join it made): they take
    part in the migration decision and the locality count, and a placement the fault runs
    (with `clock`, needed then) updates them (FaultResult.group). `pinned`: the task may run on
    `cpu` only, so the numa_migrate_preferred after a placement cannot move it. `limits`: the
    scan period's bounds for a placement (task_numa_fault). `rules`: the
    release's (KernelRules); under 6.1's a hint entry keeps the write bit (`page.writable`).
    In a writable VM_SHARED mapping (`vma_shared`) both ways give a writable entry: its
    vm_page_prot has the write bit (shmem wants no write notification), which
    numa_rebuild_single_mapping's pte_modify and remove_migration_pte's mk_pte start from."""
    if not page.hint:
        raise ValueError(f"page {page.vaddr:#x} is not a hint entry: no NUMA fault happens")
    cpu_node = node_of_cpu[cpu]
    nr = page.folio_nr_pages  # do_numa_page: nr_pages = folio_nr_pages(folio)
    counters = Counters(numa_hint_faults=1)  # once per fault, THP included (numa_migrate_check)
    local = page.node == cpu_node
    if local:
        counters += Counters(numa_hint_faults_local=1)
    last_before = page.last_cpupid  # numa_migrate_check reads it before any exchange
    restored = replace(page, hint=False)
    migrated = False
    if local:
        # mm/mempolicy.c:mpol_misplaced: a task without a policy runs under
        # preferred_node_policy[numa_node_id()] (get_task_policy: MPOL_PREFERRED of its own node),
        # whose "node_isset(curnid, pol->nodes)" ends the call before should_numa_migrate_memory:
        # last_cpupid is not exchanged.
        decision = Decision.LOCAL
    else:
        wanted, restored, decision = should_numa_migrate_memory(task, restored, cpu_node, cpupid(cpu, task.pid),
                                                                node_of_cpu, group=group)
        if wanted and migration_succeeds:
            restored = replace(restored, node=cpu_node)
            # A write to a page that came back read-only takes a wp fault: wp_page_reuse resets
            # last_cpupid. Under 6.1 a page whose hint kept the write bit comes back writable.
            if write and not restored.huge and not (rules.savedwrite and page.writable):
                restored = replace(restored, last_cpupid=None)
            migrated = True
            counters += Counters(numa_pages_migrated=nr)
        elif wanted:
            decision = Decision.MIGRATION_FAILED
    task, group = task_numa_fault(task, last_before, restored.node, nr, local=local, migrated=migrated,
                                  migrate_failed=not migrated and decision == Decision.MIGRATION_FAILED,
                                  cpu_node=cpu_node, run_placement=jiffies_after_retry, mm_seq=mm_seq, priv=priv,
                                  group=group, clock=clock, pinned=pinned, limits=limits, rules=rules)
    # A THP's PMD takes the same write bit as a base page's PTE: mm/huge_memory.c:
    # do_huge_pmd_numa_page restores it in place writable when can_change_pmd_writable says so,
    # and a migrated one comes back read-only (set_pmd_migration_entry from a PROT_NONE PMD).
    if rules.savedwrite:
        # 6.1: the saved write bit, in place or through a writable migration entry; a write to a
        # read-only result takes a wp fault that makes it writable (and, in place, resets
        # last_cpupid there too: wp_page_reuse).
        writable = page.writable or write
        if write and not page.writable and not migrated:
            restored = replace(restored, last_cpupid=None)
    elif vma_shared:
        writable = vma_writable
    else:
        writable = write if migrated else vma_writable and not page.likely_shared
    if writable is not None:
        restored = replace(restored, writable=writable)
    return FaultResult(restored, task, counters, migrated, local, decision, writable, group)


def task_numa_fault(
    task: Task,
    last_cpupid: int | None,
    mem_node: int,
    pages: int,
    *,
    local: bool,
    migrated: bool,
    migrate_failed: bool,
    cpu_node: int,
    run_placement: bool,
    mm_seq: int | None,
    priv: int | None = None,
    group: GroupBooks | None = None,
    clock: PlacementClock | None = None,
    pinned: bool = False,
    limits: ScanLimits | None = None,
    rules: KernelRules = DEFAULT_RULES,
) -> tuple[Task, GroupBooks | None]:
    """kernel/sched/fair.c:task_numa_fault (balancing enabled). The fault is private when
    last_cpupid is unset or the task's own; `priv` overrides that with task_numa_group's verdict
    (model/group.py: a non-joining fault from another process counts private). For a member of a
    numa_group (`group`, its books before the fault) a shared remote fault wholly inside the group's active nodes counts local,
    judged on the books before this fault's placement; the placement (with `clock`) updates the
    group's books with the task's, and for a `pinned` task the numa_migrate_preferred after it is
    modelled (numa_migrate_preferred_pinned). `limits` bound the scan period the placement sets
    (task_scan_min/max; without them it keeps numa_scan_period_max and has no floor). Returns the
    task and its group's books afterwards."""
    if priv is None:
        priv = 1 if last_cpupid is None or cpupid_pid(last_cpupid) == task.pid & PID_MASK else 0
    # "A shared fault that occurs wholly within the set of nodes that the workload is actively
    # using should be counted as local."
    if not priv and not local and counts_local_in_group(group, cpu_node, mem_node):
        local = True
    if run_placement and mm_seq is not None:
        if group is None:
            task = task_numa_placement(task, mm_seq, clock=clock, rules=rules,
                                       scan_min=None if limits is None else limits.smin,
                                       scan_max=None if limits is None else limits.task_scan_max())
        elif task.numa_scan_seq != mm_seq:
            if clock is None:
                raise ValueError(f"task {task.pid}: a group member's placement weighs its NUMA_CPU books by its "
                                 f"runtime, and no PlacementClock was given")
            task, group = group_task_numa_placement(task, group, mm_seq, clock, limits=limits, rules=rules)
        if pinned:
            task = numa_migrate_preferred_pinned(task, cpu_node, in_group=group is not None)
    faults = [list(map(list, stat)) for stat in task.faults]
    faults[MEMBUF][mem_node][priv] += pages
    faults[CPUBUF][cpu_node][priv] += pages
    locality = list(task.locality)
    locality[1 if local else 0] += pages
    if migrate_failed:
        locality[2] += pages
    return replace(
        task,
        faults=tuple(tuple((nid[0], nid[1]) for nid in stat) for stat in faults),
        locality=(locality[0], locality[1], locality[2]),
        numa_pages_migrated=task.numa_pages_migrated + (pages if migrated else 0),
    ), group


def large_folio_fault(task: Task, pages: dict[int, Page], vaddr: int, *, cpu: int, node_of_cpu: dict[int, int],
                      mm_seq: int | None = None) -> FaultResult:
    """A hint fault on one PTE of a PTE-mapped large folio (an mTHP), `pages` updated in place.

    mm/memory.c:do_numa_page decides for the folio as a whole (numa_migrate_check,
    should_numa_migrate_memory with the folio's last_cpupid; nr_pages = folio_nr_pages for
    task_numa_fault and numa_pages_migrated). Then either migrate_misplaced_folio moves the whole
    folio and remove_migration_ptes maps every PTE of it again, present (read-only: the
    migration entries were made from PROT_NONE entries), or numa_rebuild_large_mapping restores
    every PROT_NONE PTE of the folio within the VMA and the page table, each writable when
    can_change_pte_writable says so. Either way the folio takes one fault and none of its PTEs
    is a hint afterwards. Anonymous mTHPs are naturally aligned where alloc_anon_folio maps them
    (ALIGN_DOWN(address, folio size)), which is how the folio's PTEs are found here."""
    page = pages[vaddr]
    result = hint_fault(task, page, cpu=cpu, node_of_cpu=node_of_cpu, mm_seq=mm_seq)
    size = page.folio_nr_pages * PAGE_SIZE
    start = vaddr - vaddr % size
    for va in range(start, start + size, PAGE_SIZE):
        if va in pages:
            pages[va] = replace(pages[va], hint=False, node=result.page.node, last_cpupid=result.page.last_cpupid)
    return result
