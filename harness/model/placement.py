"""kernel/sched/fair.c:task_numa_placement and update_task_scan_period, for a task on its own or
a member of a numa_group. The NUMA_CPU books are weighted by the runtime the scheduler measured
(numa_get_avg_runtime), which the caller supplies as a PlacementClock; the preferred node is
decided by the memory faults alone (the task's, or its group's), as in the kernel."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .group import GroupBooks, numa_group_count_active_nodes
from .state import CPU, CPUBUF, DEFAULT_RULES, MEM, MEMBUF, KernelRules, Task

NUMA_PERIOD_SLOTS = 10
NUMA_PERIOD_THRESHOLD = 7


@dataclass(frozen=True)
class PlacementClock:
    """What fair.c:numa_get_avg_runtime returns at one placement: `runtime`, the CPU time (ns) the
    task ran since its previous placement (se.sum_exec_runtime now minus p->last_sum_exec_runtime),
    and `period`, the time (ns) since then (se.exec_start now minus p->last_task_numa_placement).
    The scheduler's clock, which the model cannot know: read from the kernel around the placement,
    which stores both readings in those two fields. (A task's first placement weighs by
    se.avg.load_sum over LOAD_AVG_MAX instead: not readable afterwards, so not modelled.)"""

    runtime: int
    period: int

    def weight(self, cpubuf: int, total_faults: int) -> int:
        """task_numa_placement's f_weight: the CPU time share (<< 16) times this bucket's share of
        the faults since the last placement (numa_faults_locality local plus remote)."""
        return ((self.runtime << 16) // (self.period + 1)) * cpubuf // (total_faults + 1)


@dataclass(frozen=True)
class ScanLimits:
    """The bounds of a task's scan period, from its mm's RSS and the knobs: `smin`, what
    fair.c:task_scan_min returns, and `smax`, task_scan_max's starting point
    (sysctl_numa_balancing_scan_period_max / task_nr_scan_windows), which a numa_group scales."""

    smin: int
    smax: int

    def task_scan_max(self, group: GroupBooks | None = None) -> int:
        """fair.c:task_scan_max. For a member of a numa_group the maximum grows with the group's
        references and its share of shared memory faults: smax * refcount * (shared + 1) /
        (private + shared + 1), never below smax. Each member holds one reference
        (task_numa_group: refcount 1 at creation, get_numa_group on a join, put_numa_group of
        the group left), so refcount is nr_tasks between faults."""
        return max(self.smin, self.smax, _group_scaled(self.smax, group))

    def task_scan_start(self, group: GroupBooks | None = None) -> int:
        """fair.c:task_scan_start: task_scan_min, scaled for a group member as task_scan_max
        scales its maximum."""
        return max(self.smin, _group_scaled(self.smin, group))


def _group_scaled(period: int, group: GroupBooks | None) -> int:
    """period * refcount * (shared + 1) / (private + shared + 1) over the group's NUMA_MEM books
    (fair.c:task_scan_start and task_scan_max); 0 without a group."""
    if group is None:
        return 0
    shared = sum(pair[0] for pair in group.mem)
    private = sum(pair[1] for pair in group.mem)
    return period * group.nr_tasks * (shared + 1) // (private + shared + 1)


@dataclass(frozen=True)
class _Fold:
    """One placement's arithmetic over the task's books: the new books, the NUMA_MEM diff and
    NUMA_CPU f_diff per (node, priv), the total_numa_faults diff and the faults per type."""

    faults: tuple[tuple[tuple[int, int], ...], ...]
    mem_diff: tuple[tuple[int, int], ...]
    cpu_diff: tuple[tuple[int, int], ...]
    total_diff: int
    fault_types: tuple[int, int]


def _fold(task: Task, clock: PlacementClock | None) -> _Fold:
    """fair.c:task_numa_placement's loop over nodes and fault types, the task's side: decay the
    window and copy in the buffers. Without a clock the NUMA_CPU books only decay (f_weight 0):
    what a caller that never compares NUMA_CPU may use."""
    faults = [list(map(list, stat)) for stat in task.faults]
    total_faults = task.locality[0] + task.locality[1]
    mem_diff, cpu_diff = [], []
    fault_types = [0, 0]
    for nid in range(task.nr_nodes):
        node_mem, node_cpu = [0, 0], [0, 0]
        for priv in (0, 1):
            membuf = faults[MEMBUF][nid][priv]
            # diff = membuf - mem / 2 (integer division), so mem becomes mem - mem/2 + membuf.
            node_mem[priv] = membuf - faults[MEM][nid][priv] // 2
            fault_types[priv] += membuf
            faults[MEMBUF][nid][priv] = 0
            weight = clock.weight(faults[CPUBUF][nid][priv], total_faults) if clock is not None else 0
            node_cpu[priv] = weight - faults[CPU][nid][priv] // 2
            faults[CPUBUF][nid][priv] = 0
            faults[MEM][nid][priv] += node_mem[priv]
            faults[CPU][nid][priv] += node_cpu[priv]
        mem_diff.append((node_mem[0], node_mem[1]))
        cpu_diff.append((node_cpu[0], node_cpu[1]))
    return _Fold(tuple(tuple((n[0], n[1]) for n in stat) for stat in faults), tuple(mem_diff), tuple(cpu_diff),
                 sum(a + b for a, b in mem_diff), (fault_types[0], fault_types[1]))


def _argmax_node(per_node: list[int], default: int) -> int:
    """The first node with the most faults (strictly more than any before it), or `default` when
    every count is 0 (task_numa_placement leaves the preferred node alone without faults)."""
    max_faults, max_nid = 0, -1
    for nid, faults in enumerate(per_node):
        if faults > max_faults:
            max_faults, max_nid = faults, nid
    return max_nid if max_faults else default


def task_numa_placement(task: Task, mm_seq: int, *, scan_min: int | None = None, scan_max: int | None = None,
                        clock: PlacementClock | None = None, rules: KernelRules = DEFAULT_RULES) -> Task:
    """fair.c:task_numa_placement for a task without a numa_group. Acts only when the mm has
    started a new scan sequence since the task last looked. `clock` weighs the NUMA_CPU books
    (without it they only decay: see _fold)."""
    if task.numa_scan_seq == mm_seq:
        return task
    fold = _fold(task, clock)
    preferred = _argmax_node([sum(fold.faults[MEM][nid]) for nid in range(task.nr_nodes)], task.numa_preferred_nid)
    return _placed(task, fold, mm_seq, preferred, scan_min, scan_max, scan_max, rules)


def group_task_numa_placement(task: Task, group: GroupBooks, mm_seq: int, clock: PlacementClock, *,
                              limits: ScanLimits | None = None,
                              rules: KernelRules = DEFAULT_RULES) -> tuple[Task, GroupBooks]:
    """fair.c:task_numa_placement for a member of a numa_group: the group gets the same diff and
    f_diff as the task (and the diff in total_faults), the preferred node is the one with the
    most GROUP memory faults, and numa_group_count_active_nodes recounts the group's
    pseudo-interleaving set. preferred_group_nid returns that node unchanged on a NUMA_DIRECT
    machine (every node pair at one distance), the only kind modelled: callers check the guest's
    sched_numa_topology_type. With `limits` the scan period's bounds follow the group
    (ScanLimits.task_scan_max): numa_scan_period_max is refreshed from the group's books before
    the fold, and update_task_scan_period clamps with task_scan_max(p) again, after it."""
    if task.numa_scan_seq == mm_seq:
        return task, group
    fold = _fold(task, clock)
    mem = tuple((m[0] + d[0], m[1] + d[1]) for m, d in zip(group.mem, fold.mem_diff, strict=True))
    cpu = tuple((c[0] + d[0], c[1] + d[1]) for c, d in zip(group.cpu, fold.cpu_diff, strict=True))
    active, most = numa_group_count_active_nodes([a + b for a, b in cpu])
    placed_group = GroupBooks(mem, cpu, group.total_faults + fold.total_diff, active, most, group.nr_tasks)
    preferred = _argmax_node([a + b for a, b in mem], task.numa_preferred_nid)
    if limits is None:
        return _placed(task, fold, mm_seq, preferred, None, None, None, rules), placed_group
    return _placed(task, fold, mm_seq, preferred, limits.smin, limits.task_scan_max(group),
                   limits.task_scan_max(placed_group), rules), placed_group


def _placed(task: Task, fold: _Fold, mm_seq: int, preferred: int, scan_min: int | None,
            scan_max: int | None, clamp_max: int | None, rules: KernelRules) -> Task:
    task = replace(
        task,
        numa_scan_seq=mm_seq,
        # task_numa_placement refreshes numa_scan_period_max = task_scan_max(p) before anything else.
        numa_scan_period_max=scan_max if scan_max is not None else task.numa_scan_period_max,
        faults=fold.faults,
        total_numa_faults=task.total_numa_faults + fold.total_diff,
        numa_preferred_nid=preferred,
    )
    return update_task_scan_period(task, shared=fold.fault_types[0], private=fold.fault_types[1], scan_min=scan_min,
                                   scan_max=scan_max, clamp_max=clamp_max, rules=rules)


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
                            scan_max: int | None = None, clamp_max: int | None = None,
                            rules: KernelRules = DEFAULT_RULES) -> Task:
    """fair.c:update_task_scan_period: slow down when faults are private or local, speed up otherwise.
    The first branch also restarts mm->numa_next_scan (placement_restarts_scan_clock): the model
    has no mm, so the caller that carries one applies it. The first branch caps the doubled
    period at p->numa_scan_period_max (`scan_max`), the second clamps into [task_scan_min,
    task_scan_max(p)] computed anew (`clamp_max`; it differs from `scan_max` only for a group
    member, whose placement changed the group's books in between)."""
    remote, local, failed = task.locality
    period_max = scan_max if scan_max is not None else task.numa_scan_period_max
    if local + shared == 0 or failed:
        period = min(period_max, task.numa_scan_period << 1)
        # 6.1 returns before clearing numa_faults_locality (KernelRules.slow_down_keeps_locality).
        return replace(task, numa_scan_period=period,
                       locality=task.locality if rules.slow_down_keeps_locality else (0, 0, 0))
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
    high = clamp_max if clamp_max is not None else period_max
    period = min(max(task.numa_scan_period + diff, low), high)
    return replace(task, numa_scan_period=period, locality=(0, 0, 0))


def update_scan_period(task: Task, src_nid: int, dst_nid: int, limits: ScanLimits, group: GroupBooks | None) -> Task:
    """fair.c:update_scan_period, which migrate_task_rq_fair runs whenever the task changes CPU,
    for a task that has taken a hint fault (p->numa_faults allocated): a move to another node
    restarts the scan period at task_scan_start, unless the task has completed a scan
    sequence and either moves to its preferred node or did not run on it before."""
    if src_nid == dst_nid:
        return task
    if task.numa_scan_seq and (dst_nid == task.numa_preferred_nid or
                               (task.numa_preferred_nid != -1 and src_nid != task.numa_preferred_nid)):
        return task
    return replace(task, numa_scan_period=limits.task_scan_start(group))


def numa_migrate_preferred_pinned(task: Task, task_node: int, *, in_group: bool) -> Task:
    """fair.c:numa_migrate_preferred for a task allowed on one CPU only, on node `task_node`.
    Away from its preferred node it calls task_numa_migrate, whose task_numa_find_cpu considers
    only CPUs in the task's cpus_ptr on the candidate nodes: none, so best_cpu stays -1. A member
    of a numa_group then takes the node it runs on as its preferred node ("remember this node as
    the task's preferred numa node, so the workload can settle down": nid = env.src_nid); a task
    without a group keeps its preference and tries again at numa_migrate_retry."""
    if task.numa_preferred_nid in (-1, task_node) or not in_group:
        return task
    return replace(task, numa_preferred_nid=task_node)


def numa_migrate_interval(scan_period_ms: int, hz: int) -> int:
    """fair.c:numa_migrate_preferred: the task's next attempt to move to its preferred node is
    due min(HZ, msecs_to_jiffies(p->numa_scan_period) / 16) jiffies after this one
    (p->numa_migrate_retry = jiffies + interval)."""
    return min(hz, -(-scan_period_ms * hz // 1000) // 16)
