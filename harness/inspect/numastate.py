"""NUMA-balancing state read from the live kernel: per task, per mm, per VMA, global.

Field meanings follow include/linux/sched.h (task), include/linux/mm_types.h (mm, struct
vma_numab_state) and kernel/sched/fair.c (tunables, task_faults_idx).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from drgn import Object, Program, TypeKind, container_of, offsetof
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.rbtree import rbtree_inorder_for_each_entry
from drgn.helpers.linux.sched import cpu_curr

from .attach import InspectError, NoSuchTask, find_task
from .pagetable import PageTableWalk

__all__ = (
    "BalancingState",
    "MmNumaState",
    "NumaGroupState",
    "TaskNumaState",
    "VmaNumaState",
    "nr_node_ids",
    "read_balancing",
    "read_mm",
    "read_numa_group",
    "read_task",
    "read_vmas",
    "read_vmstat",
    "running_pids",
    "scan_stamps",
    "summarize_by_vma",
)

# kernel/sched/fair.c: enum numa_faults_stats; index 2 * (stat * nr_node_ids + nid) + priv.
FAULT_STATS = ("mem", "cpu", "membuf", "cpubuf")
# include/linux/vm_event_item.h (CONFIG_NUMA_BALANCING / CONFIG_MIGRATION), as /proc/vmstat names them.
VM_EVENTS = {
    "NUMA_PTE_UPDATES": "numa_pte_updates",
    "NUMA_HUGE_PTE_UPDATES": "numa_huge_pte_updates",
    "NUMA_HINT_FAULTS": "numa_hint_faults",
    "NUMA_HINT_FAULTS_LOCAL": "numa_hint_faults_local",
    "NUMA_PAGE_MIGRATE": "numa_pages_migrated",
    "PGMIGRATE_SUCCESS": "pgmigrate_success",
    "PGMIGRATE_FAIL": "pgmigrate_fail",
    "THP_MIGRATION_SUCCESS": "thp_migration_success",
    "THP_MIGRATION_FAIL": "thp_migration_fail",
    "THP_MIGRATION_SPLIT": "thp_migration_split",
}
MPOL_F_MOF = 1 << 3  # include/uapi/linux/mempolicy.h
TUNABLES = {
    "scan_delay_ms": "sysctl_numa_balancing_scan_delay",
    "scan_period_min_ms": "sysctl_numa_balancing_scan_period_min",
    "scan_period_max_ms": "sysctl_numa_balancing_scan_period_max",
    "scan_size_mb": "sysctl_numa_balancing_scan_size",
    "hot_threshold_ms": "sysctl_numa_balancing_hot_threshold",
}


@dataclass(frozen=True)
class TaskNumaState:
    pid: int
    comm: str
    cpu: int
    numa_scan_seq: int
    numa_scan_period: int
    numa_scan_period_max: int
    numa_preferred_nid: int
    numa_migrate_retry: int
    node_stamp: int
    sum_exec_runtime: int
    total_numa_faults: int
    # faults[stat][nid] = (shared, private): priv index 1 is private, 0 shared (task_numa_fault).
    faults: dict[str, list[tuple[int, int]]]
    # numa_faults_locality: [remote, local, migrate-failed]
    locality: tuple[int, int, int]
    numa_pages_migrated: int
    numa_group_id: int | None
    # task_numa_work queued and not yet run (numa_work.next != &numa_work: fair.c:task_tick_numa
    # queues it, task_numa_work resets it first thing).
    numa_work_pending: bool = False
    # get_nr_threads: signal->nr_threads, the thread count vma_is_accessed's idle-VMA test uses.
    nr_threads: int = 1
    # The scheduler's clock at the task's last placement (fair.c:numa_get_avg_runtime stores
    # se.sum_exec_runtime and se.exec_start there): two readings around one placement give the
    # CPU time and the wall time it weighted the NUMA_CPU books by. 0: no placement yet.
    last_sum_exec_runtime: int = 0
    last_task_numa_placement: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MmNumaState:
    numa_next_scan: int
    numa_scan_offset: int
    numa_scan_seq: int
    mm_users: int
    # get_mm_rss(): file + anon + shmem pages as percpu_counter_read_positive sees them (the
    # counters' central count, which is what task_nr_scan_windows uses).
    rss_pages: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VmaNumaState:
    start: int
    end: int
    flags: int
    file_backed: bool
    # struct vma_numab_state, None until the scanner first meets the VMA (task_numa_work).
    numab: dict[str, Any] | None
    # mm/mempolicy.c:vma_policy_mof for a VMA with its own policy (None: the task's policy applies).
    policy_mof: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BalancingState:
    mode: int  # kernel.numa_balancing: bit 0 NORMAL, bit 1 MEMORY_TIERING
    jiffies: int
    hz: int
    tunables: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def nr_node_ids(prog: Program) -> int:
    """Return the number of possible node ids (``nr_node_ids``): the stride of ``numa_faults``."""
    return int(prog["nr_node_ids"].value_())


def read_task(prog: Program, pid: int) -> TaskNumaState:
    """
    Read a task's NUMA balancing state: scan sequence and period, preferred node, the
    ``numa_faults`` buckets (``kernel/sched/fair.c:task_faults_idx`` order: mem, cpu, membuf,
    cpubuf, each per node as (shared, private)), ``numa_faults_locality`` and its group.

    :param pid: PID of the task.
    """
    task = find_task(prog, pid)
    nodes = nr_node_ids(prog)
    faults: dict[str, list[tuple[int, int]]] = {name: [(0, 0)] * nodes for name in FAULT_STATS}
    if task.numa_faults:
        raw = prog.read(task.numa_faults.value_(), 8 * 2 * len(FAULT_STATS) * nodes)
        values = np.frombuffer(raw, dtype="<u8")
        for stat, name in enumerate(FAULT_STATS):
            faults[name] = [
                (int(values[2 * (stat * nodes + nid)]), int(values[2 * (stat * nodes + nid) + 1])) for nid in range(nodes)
            ]
    group = task.numa_group
    return TaskNumaState(
        pid=pid,
        comm=task.comm.string_().decode(errors="replace"),
        cpu=int(task.thread_info.cpu.value_()) if hasattr(task.thread_info, "cpu") else int(task.cpu.value_()),
        numa_scan_seq=int(task.numa_scan_seq.value_()),
        numa_scan_period=int(task.numa_scan_period.value_()),
        numa_scan_period_max=int(task.numa_scan_period_max.value_()),
        numa_preferred_nid=int(task.numa_preferred_nid.value_()),
        numa_migrate_retry=int(task.numa_migrate_retry.value_()),
        node_stamp=int(task.node_stamp.value_()),
        sum_exec_runtime=int(task.se.sum_exec_runtime.value_()),
        total_numa_faults=int(task.total_numa_faults.value_()),
        faults=faults,
        locality=tuple(int(task.numa_faults_locality[i].value_()) for i in range(3)),  # type: ignore[arg-type]
        numa_pages_migrated=int(task.numa_pages_migrated.value_()),
        numa_group_id=int(group.gid.value_()) if group else None,
        numa_work_pending=task.numa_work.next.value_() != task.numa_work.address_of_().value_(),
        nr_threads=int(task.signal.nr_threads.value_()),
        last_sum_exec_runtime=int(task.last_sum_exec_runtime.value_()),
        last_task_numa_placement=int(task.last_task_numa_placement.value_()),
    )


@dataclass(frozen=True)
class NumaGroupState:
    """A ``struct numa_group`` (kernel/sched/fair.c): the tasks NUMA balancing treats as one
    workload, and their summed fault books."""

    # Its address: task_numa_group breaks a tie between two groups of one task each by it.
    address: int
    gid: int
    nr_tasks: int
    active_nodes: int
    total_faults: int
    max_faults_cpu: int
    # faults[stat][nid] = (shared, private) for "mem" and "cpu": the first NR_NUMA_HINT_FAULT_STATS
    # * nr_node_ids entries of the task books' layout (task_faults_idx), the buffers excluded.
    faults: dict[str, list[tuple[int, int]]]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def read_numa_group(prog: Program, pid: int) -> NumaGroupState | None:
    """
    Read the numa_group a task belongs to (``kernel/sched/fair.c:struct numa_group``, which only
    that file defines: drgn finds it in fair.o's debug info), or ``None`` if it has none yet.

    :param pid: PID (or thread id) of the task.
    """
    group = find_task(prog, pid).numa_group
    if not group:
        return None
    nodes = nr_node_ids(prog)
    # faults[] is a flexible array member: read it from its offset, as task books are read.
    at = group.value_() + offsetof(group.type_.type, "faults")
    values = np.frombuffer(prog.read(at, 8 * 2 * 2 * nodes), dtype="<u8")
    faults = {name: [(int(values[2 * (stat * nodes + nid)]), int(values[2 * (stat * nodes + nid) + 1]))
                     for nid in range(nodes)] for stat, name in enumerate(FAULT_STATS[:2])}
    return NumaGroupState(
        address=int(group.value_()),
        gid=int(group.gid.value_()),
        nr_tasks=int(group.nr_tasks.value_()),
        active_nodes=int(group.active_nodes.value_()),
        total_faults=int(group.total_faults.value_()),
        max_faults_cpu=int(group.max_faults_cpu.value_()),
        faults=faults,
    )


def running_pids(prog: Program) -> dict[int, int]:
    """
    Return the pid of the task each possible CPU runs (``cpu_rq(cpu)->curr``; 0 is the idle task),
    the task ``task_numa_group`` finds behind a ``last_cpupid``'s CPU.
    """
    return {cpu: int(cpu_curr(prog, cpu).pid.value_()) for cpu in for_each_possible_cpu(prog)}


def read_mm(prog: Program, pid: int) -> MmNumaState:
    """
    Read the scanner's per-mm state of a task: ``numa_next_scan``, ``numa_scan_offset``,
    ``numa_scan_seq``, ``mm_users`` and the RSS the scan periods are sized by.

    :param pid: PID of a user task.
    """
    task = find_task(prog, pid)
    mm = task.mm
    if not mm:
        raise NoSuchTask(f"Task {pid} is a kernel thread: it has no mm.")
    return MmNumaState(
        numa_next_scan=int(mm.numa_next_scan.value_()),
        numa_scan_offset=int(mm.numa_scan_offset.value_()),
        numa_scan_seq=int(mm.numa_scan_seq.value_()),
        mm_users=int(mm.mm_users.counter.value_()),
        rss_pages=_mm_rss(prog, mm),
    )


def _mm_rss(prog: Program, mm: Object) -> int:
    """include/linux/mm.h:get_mm_rss with get_mm_counter's percpu_counter_read_positive."""
    total = 0
    # mm->rss_stat became an array of percpu_counters in Linux 6.2 (commit f1a7941243c1 "mm:
    # convert mm's rss stats into percpu_counter"); before, a struct mm_rss_stat of atomics.
    counters = mm.rss_stat if mm.rss_stat.type_.kind == TypeKind.ARRAY else mm.rss_stat.count
    for member in ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"):
        counter = counters[int(prog.constant(member).value_())]
        count = int((counter.count if hasattr(counter, "count") else counter.counter).value_())
        total += max(count, 0)
    return total


def scan_stamps(prog: Program) -> dict[tuple[int, int], tuple[int, int]]:
    """(numa_next_scan, numa_scan_seq) of every user mm, keyed by (tgid, mm address): an exited
    process's mm_struct is soon reused by the next short-lived one, so the address alone does
    not name an mm across two observations. Any scanner pass moves its mm's numa_next_scan
    (task_numa_work's cmpxchg), so comparing two of these tells whether any task ran a pass in
    between, and whose. Tasks whose passes cannot update any entry are left out."""
    from drgn.helpers.linux.pid import for_each_task

    stamps = {}
    for task in for_each_task(prog):
        mm = task.mm
        policy = task.mempolicy
        if policy and not int(policy.flags.value_()) & MPOL_F_MOF:
            # A task policy without MPOL_F_MOF makes every VMA without its own policy unsuitable
            # (mm/mempolicy.c:vma_policy_mof): its passes update nothing (the guest's dropbear).
            continue
        if mm:
            key = (int(task.tgid.value_()), int(mm.value_()))
            stamps[key] = (int(mm.numa_next_scan.value_()), int(mm.numa_scan_seq.value_()))
    return stamps


def read_vmas(prog: Program, pid: int) -> list[VmaNumaState]:
    """
    Read every VMA of a task with its flags, whether it is file-backed, its ``numab_state`` (None
    until the scanner first meets the VMA) and whether its own policy allows balancing.

    :param pid: PID of a user task.
    """
    from drgn.helpers.linux.mm import for_each_vma

    mm = find_task(prog, pid).mm
    if not mm:
        raise NoSuchTask(f"Task {pid} is a kernel thread: it has no VMAs.")
    result = []
    # struct vma_numab_state came with Linux 6.4 (commit ef6a22b70f6d "sched/numa: apply the
    # scan delay to every new vma"); before it the scanner keeps no per-VMA state.
    has_numab = any(member.name == "numab_state" for member in prog.type("struct vm_area_struct").members)
    for vma in for_each_vma(mm):
        numab = None
        if has_numab and vma.numab_state:
            state = vma.numab_state
            numab = {
                "next_scan": int(state.next_scan.value_()),
                "pids_active_reset": int(state.pids_active_reset.value_()),
                "pids_active": [int(state.pids_active[0].value_()), int(state.pids_active[1].value_())],
                "start_scan_seq": int(state.start_scan_seq.value_()),
                "prev_scan_seq": int(state.prev_scan_seq.value_()),
            }
        result.append(VmaNumaState(
            int(vma.vm_start.value_()), int(vma.vm_end.value_()), int(vma.vm_flags.value_()),
            bool(vma.vm_file), numab, vma_policy_mof(prog, vma),
        ))
    return result


def vma_policy_mof(prog: Program, vma: Object) -> bool | None:
    """
    Whether a VMA's own memory policy lets task_numa_work scan it (mm/mempolicy.c:vma_policy_mof:
    the policy has MPOL_F_MOF), or None when the task's policy decides.

    A VMA whose ``vm_ops`` has ``get_policy`` takes the policy it returns: shmem's
    (``shmem_get_policy``) looks the VMA's first page up in the inode's shared policy
    (``mpol_shared_policy_lookup``), which ``mbind`` on any mapping of the file sets, a private
    one included, and which outlives the process. When none is found, 6.1 answers false, 6.7+
    falls back to the task's policy (``__get_vma_policy``; the same rework gave ``get_policy``
    its third parameter, ``pgoff_t *ilx``, which tells the two apart). Any other VMA takes its
    ``vm_policy``.

    :param vma: ``struct vm_area_struct *``
    :raises InspectError: for a ``get_policy`` other than shmem's, whose answer this does not know.
    """
    ops = vma.vm_ops
    if not ops or not ops.get_policy:
        policy = vma.vm_policy
        return bool(policy.flags.value_() & MPOL_F_MOF) if policy else None
    if ops.get_policy.value_() != prog.function("shmem_get_policy").address_:
        raise InspectError(f"VMA {vma.vm_start.value_():#x}: vm_ops->get_policy is not shmem_get_policy; "
                           f"the harness cannot tell whether vma_policy_mof lets it be scanned")
    inode = vma.vm_file.f_inode
    index = int(vma.vm_pgoff.value_())
    info = container_of(inode, "struct shmem_inode_info", "vfs_inode")
    for node in rbtree_inorder_for_each_entry("struct sp_node", info.policy.root.address_of_(), "nd"):
        if int(node.start.value_()) <= index < int(node.end.value_()):
            return bool(node.policy.flags.value_() & MPOL_F_MOF)
    task_fallback = len(prog.type("struct vm_operations_struct").member("get_policy").type.type.parameters) >= 3
    return None if task_fallback else False


def read_balancing(prog: Program) -> BalancingState:
    """
    Read ``sysctl_numa_balancing_mode``, ``jiffies`` and the debugfs scan tunables
    (``sysctl_numa_balancing_scan_*``).
    """
    tunables = {name: int(prog[symbol].value_()) for name, symbol in TUNABLES.items()}
    hz = 0  # HZ is a macro: callers that need it read CONFIG_HZ from the guest
    return BalancingState(int(prog["sysctl_numa_balancing_mode"].value_()), int(prog["jiffies"].value_()), hz, tunables)


def read_vmstat(prog: Program) -> dict[str, int]:
    """The NUMA and migration event counters as /proc/vmstat shows them: per-CPU
    vm_event_states summed over online CPUs (mm/vmstat.c:sum_vm_events)."""
    from drgn.helpers.linux.cpumask import for_each_online_cpu
    from drgn.helpers.linux.percpu import per_cpu

    try:
        states = prog["vm_event_states"]
    except KeyError as err:
        raise InspectError("This kernel has no vm event counters (CONFIG_VM_EVENT_COUNTERS=n).") from err
    indexes = {}
    for symbol, name in VM_EVENTS.items():
        with_value = _enum_value(prog, symbol)
        if with_value is not None:
            indexes[name] = with_value
    totals = dict.fromkeys(indexes, 0)
    size = states.type_.size
    for cpu in for_each_online_cpu(prog):
        address = per_cpu(states, cpu).address_
        events = np.frombuffer(prog.read(address, size), dtype="<u8")
        for name, index in indexes.items():
            totals[name] += int(events[index])
    return totals


@dataclass(frozen=True)
class ZoneState:
    """One zone's free pages and watermarks, as mm/page_alloc.c:zone_watermark_ok reads them."""

    node: int
    name: str
    managed: int  # zone_managed_pages
    free: int  # zone_page_state(NR_FREE_PAGES): the global counter, not the per-CPU deltas
    min: int  # wmark_pages(zone, WMARK_*): _watermark[] + watermark_boost
    low: int
    high: int
    highatomic: int  # nr_reserved_highatomic: subtracted as unusable (__zone_watermark_unusable_free)
    lowmem_reserve_movable: int  # lowmem_reserve[ZONE_MOVABLE]: added to the mark for a movable request

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def read_zones(prog: Program, nid: int) -> list[ZoneState]:
    """
    Read the managed zones of a node: free pages, watermarks, reserves.

    :param nid: Node id.
    """
    pgdat = prog["node_data"][nid]
    free_item = int(prog.constant("NR_FREE_PAGES").value_())
    marks = [int(prog.constant(name).value_()) for name in ("WMARK_MIN", "WMARK_LOW", "WMARK_HIGH")]
    movable = int(prog.constant("ZONE_MOVABLE").value_())
    zones = []
    for index in range(int(pgdat.nr_zones.value_())):
        zone = pgdat.node_zones[index]
        managed = int(zone.managed_pages.counter.value_())
        if not managed:
            continue
        boost = int(zone.watermark_boost.value_())
        low_min, low, high = (int(zone._watermark[m].value_()) + boost for m in marks)
        zones.append(ZoneState(nid, zone.name.string_().decode(), managed, int(zone.vm_stat[free_item].counter.value_()),
                               low_min, low, high, int(zone.nr_reserved_highatomic.value_()),
                               int(zone.lowmem_reserve[movable].value_())))
    return zones


def _enum_value(prog: Program, name: str) -> int | None:
    try:
        return int(prog.constant(name).value_())
    except (KeyError, LookupError):
        return None


def summarize_by_vma(table: PageTableWalk, vmas: list[VmaNumaState]) -> list[dict[str, Any]]:
    """Per VMA: base pages present, hinted, and per node (from one page-table walk)."""
    rows = []
    for vma in vmas:
        part = table.within(vma.start, vma.end)
        pages = part.pages
        rows.append({
            "start": vma.start, "end": vma.end, "file_backed": vma.file_backed,
            "scanned": vma.numab is not None,
            "present": int(pages[part.present].sum()), "hint": int(pages[part.hint].sum()),
            "pages_by_node": {str(int(n)): int(pages[part.node == n].sum()) for n in np.unique(part.node)},
        })
    return rows
