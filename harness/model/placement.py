"""kernel/sched/fair.c:task_numa_placement and update_task_scan_period, for a task without a
numa_group. The CPU-fault weighting by runtime (numa_get_avg_runtime) is not modelled: the
preferred node is decided by the memory faults alone, which is what the kernel does too."""

from __future__ import annotations

from dataclasses import replace

from .state import CPU, CPUBUF, MEM, MEMBUF, Task

NUMA_PERIOD_SLOTS = 10
NUMA_PERIOD_THRESHOLD = 7


def task_numa_placement(task: Task, mm_seq: int, *, scan_min: int | None = None, scan_max: int | None = None) -> Task:
    """Acts only when the mm has started a new scan sequence since the task last looked."""
    if task.numa_scan_seq == mm_seq:
        return task
    faults = [list(map(list, stat)) for stat in task.faults]
    fault_types = [0, 0]
    total = task.total_numa_faults
    max_faults, max_nid = 0, -1
    for nid in range(task.nr_nodes):
        node_faults = 0
        for priv in (0, 1):
            membuf = faults[MEMBUF][nid][priv]
            # diff = membuf - mem / 2 (integer division), so mem becomes mem - mem/2 + membuf.
            diff = membuf - faults[MEM][nid][priv] // 2
            fault_types[priv] += membuf
            faults[MEMBUF][nid][priv] = 0
            faults[MEM][nid][priv] += diff
            faults[CPU][nid][priv] -= faults[CPU][nid][priv] // 2  # f_weight not modelled: decays only
            faults[CPUBUF][nid][priv] = 0
            node_faults += faults[MEM][nid][priv]
            total += diff
        if node_faults > max_faults:
            max_faults, max_nid = node_faults, nid
    preferred = max_nid if max_faults else task.numa_preferred_nid
    task = replace(
        task,
        numa_scan_seq=mm_seq,
        # task_numa_placement refreshes numa_scan_period_max = task_scan_max(p) before anything else.
        numa_scan_period_max=scan_max if scan_max is not None else task.numa_scan_period_max,
        faults=tuple(tuple((n[0], n[1]) for n in stat) for stat in faults),
        total_numa_faults=total,
        numa_preferred_nid=preferred,
    )
    return update_task_scan_period(task, shared=fault_types[0], private=fault_types[1], scan_min=scan_min,
                                   scan_max=scan_max)


def placement_restarts_scan_clock(task: Task, mm_seq: int) -> bool:
    """Whether the placement the task has pending takes update_task_scan_period's first branch
    ("no recorded local or shared faults, or failed migrations": scan slower), which besides
    doubling the period sets mm->numa_next_scan = jiffies + msecs_to_jiffies(new period)
    (kernel/sched/fair.c:update_task_scan_period), moving the scanner's clock without a pass.
    Decided on the pre-placement books: local and failed from numa_faults_locality, shared from
    the NUMA_MEMBUF shared faults task_numa_placement sums into fault_types[0]."""
    if task.numa_scan_seq == mm_seq:
        return False
    shared = sum(pair[0] for pair in task.faults[MEMBUF])
    _, local, failed = task.locality
    return local + shared == 0 or failed != 0


def update_task_scan_period(task: Task, *, shared: int, private: int, scan_min: int | None = None,
                            scan_max: int | None = None) -> Task:
    """fair.c:update_task_scan_period: slow down when faults are private or local, speed up otherwise.
    The first branch also restarts mm->numa_next_scan (placement_restarts_scan_clock): the model
    has no mm, so the caller that carries one applies it."""
    remote, local, failed = task.locality
    period_max = scan_max if scan_max is not None else task.numa_scan_period_max
    if local + shared == 0 or failed:
        period = min(period_max, task.numa_scan_period << 1)
        return replace(task, numa_scan_period=period, locality=(0, 0, 0))
    if local + remote == 0 or private + shared == 0:
        # Unreachable in the kernel (every fault adds to numa_faults_locality and to the fault
        # buffers together), but a snapshot taken with the vCPU stopped between those two stores
        # in task_numa_fault can look like this: keep the period rather than divide by zero.
        return replace(task, locality=(0, 0, 0))
    period_slot = -(-task.numa_scan_period // NUMA_PERIOD_SLOTS)
    lr_ratio = local * NUMA_PERIOD_SLOTS // (local + remote)
    ps_ratio = private * NUMA_PERIOD_SLOTS // (private + shared)
    if ps_ratio >= NUMA_PERIOD_THRESHOLD:
        diff = max(1, ps_ratio - NUMA_PERIOD_THRESHOLD) * period_slot
    elif lr_ratio >= NUMA_PERIOD_THRESHOLD:
        diff = max(1, lr_ratio - NUMA_PERIOD_THRESHOLD) * period_slot
    else:
        diff = -(NUMA_PERIOD_THRESHOLD - max(lr_ratio, ps_ratio)) * period_slot
    low = scan_min if scan_min is not None else 0
    period = min(max(task.numa_scan_period + diff, low), period_max)
    return replace(task, numa_scan_period=period, locality=(0, 0, 0))


def numa_migrate_interval(scan_period_ms: int, hz: int) -> int:
    """fair.c:numa_migrate_preferred: the task's next attempt to move to its preferred node is
    due min(HZ, msecs_to_jiffies(p->numa_scan_period) / 16) jiffies after this one
    (p->numa_migrate_retry = jiffies + interval)."""
    return min(hz, -(-scan_period_ms * hz // 1000) // 16)
