"""numa_group: the tasks NUMA balancing treats as one workload (kernel/sched/fair.c).

A hint fault on a page whose last_cpupid names another pid is a shared fault; unless it carries
TNF_NO_GROUP (a read-only entry: mm/memory.c:numa_migrate_check), task_numa_fault hands it to
task_numa_group, which gives the task its first group, may move it into the group of the task
now running on the last_cpupid's CPU, and decides whether the fault counts private after all
(false sharing). A group's fault books are its members' books summed (group_books).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from .state import LAST__PID_MASK, cpupid_pid

# kernel/sched/fair.c:task_numa_group copies NR_NUMA_HINT_FAULT_STATS * nr_node_ids entries of
# the task's books into a new group: NUMA_MEM and NUMA_CPU, not the buffers.
GROUP_STATS = ("mem", "cpu")


@dataclass(frozen=True)
class NumaGroup:
    """A struct numa_group as task_numa_group sees it. `address` is kzalloc's choice, which the
    model cannot know: None until the group has been observed (it only matters for the
    tie-break between two groups of equal size)."""

    gid: int
    nr_tasks: int
    address: int | None = None


@dataclass(frozen=True)
class CpuOccupant:
    """The task task_numa_group finds on the last_cpupid's CPU (READ_ONCE(cpu_rq(cpu)->curr))
    when its pid bits match the last_cpupid's. Which task runs on a CPU at the instant of a fault
    is the scheduler's: a scenario arranges it (a thread spinning pinned to that CPU) and its
    observation confirms it; None for any other occupant (idle, or another task)."""

    pid: int
    group: NumaGroup | None
    same_mm: bool


class GroupOutcome(StrEnum):
    """What task_numa_group did with one fault, one member per exit, in the kernel's words."""

    PRIVATE = "private fault (last_cpupid unset or the task's own): task_numa_group not called"
    NO_GROUP_FLAG = "TNF_NO_GROUP (read-only entry): task_numa_group not called"
    NOT_RUNNING = "the last_cpupid's task does not run on its CPU: no join"
    OCCUPANT_WITHOUT_GROUP = "the task on the last_cpupid's CPU has no numa_group: no join"
    SAME_GROUP = "already in the same group: no join"
    OWN_GROUP_BIGGER = "own group bigger: the other task will join it"
    TIE_KEPT = "groups of equal size, own group at the higher address: no join"
    JOINED = "joined the other task's group"
    FALSE_SHARING = "another process's task, no shared mapping: no join, counted private"


@dataclass(frozen=True)
class GroupFault:
    """One fault's group decision: priv as task_numa_fault then counts it, the task's group
    afterwards, whether the group was created at this fault, and the group it left (with one
    task fewer; None when that was its last task and the group was freed, or when it left none)."""

    priv: int
    outcome: GroupOutcome
    group: NumaGroup | None
    created: bool = False
    left: NumaGroup | None = None


def task_numa_group(pid: int, last_cpupid: int | None, group: NumaGroup | None, occupant: CpuOccupant | None, *,
                    no_group: bool = False, shared_mapping: bool = False) -> GroupFault:
    """kernel/sched/fair.c:task_numa_fault's private/shared test, then task_numa_group.

    `group` is the faulting task's numa_group before the fault; `occupant` the task running on the
    last_cpupid's CPU with matching pid bits (cpupid_match_pid), if any; `shared_mapping` is
    TNF_SHARED (numa_migrate_check: the folio is likely mapped by several processes and the VMA is
    VM_SHARED). Raises ValueError when the decision turns on an address the model was not given."""
    if last_cpupid is None or cpupid_pid(last_cpupid) == pid & LAST__PID_MASK:
        return GroupFault(1, GroupOutcome.PRIVATE, group)
    if no_group:
        return GroupFault(0, GroupOutcome.NO_GROUP_FLAG, group)
    created = group is None
    if group is None:
        # The task's first group: gid its pid, its books copied from the task's (group_books).
        group = NumaGroup(gid=pid, nr_tasks=1)
    if occupant is None or cpupid_pid(last_cpupid) != occupant.pid & LAST__PID_MASK:
        return GroupFault(0, GroupOutcome.NOT_RUNNING, group, created)
    theirs = occupant.group
    if theirs is None:
        return GroupFault(0, GroupOutcome.OCCUPANT_WITHOUT_GROUP, group, created)
    if theirs == group or (theirs.address is not None and theirs.address == group.address):
        return GroupFault(0, GroupOutcome.SAME_GROUP, group, created)
    # "Only join the other group if its bigger; if we're the bigger group, the other task will join us."
    if group.nr_tasks > theirs.nr_tasks:
        return GroupFault(0, GroupOutcome.OWN_GROUP_BIGGER, group, created)
    if group.nr_tasks == theirs.nr_tasks:
        if group.address is None or theirs.address is None:
            raise ValueError(f"task {pid}: the tie-break between two groups of {group.nr_tasks} task(s) compares their "
                             f"addresses, and the model was not given both")
        if group.address > theirs.address:
            return GroupFault(0, GroupOutcome.TIE_KEPT, group, created)
    # "Always join threads in the same process"; TNF_SHARED filters out pid collisions otherwise.
    join = occupant.same_mm or shared_mapping
    if not join:
        # *priv = !join: a fault from another process without a shared mapping is false sharing.
        return GroupFault(1, GroupOutcome.FALSE_SHARING, group, created)
    left = replace(group, nr_tasks=group.nr_tasks - 1) if group.nr_tasks > 1 else None
    return GroupFault(0, GroupOutcome.JOINED, replace(theirs, nr_tasks=theirs.nr_tasks + 1), created, left)


# kernel/sched/fair.c: "A node triggering more than 1/3 as many NUMA faults as the maximum is
# considered part of a numa group's pseudo-interleaving set."
ACTIVE_NODE_FRACTION = 3


@dataclass(frozen=True)
class GroupBooks:
    """What a struct numa_group holds that decides: its NUMA_MEM and NUMA_CPU books per node
    (shared, private), total_faults, and the pseudo-interleaving set numa_group_count_active_nodes
    last computed (active_nodes, max_faults_cpu). Changed only by a member's placement
    (task_numa_placement) or a join (task_numa_group); a fault only fills the member's buffers."""

    mem: tuple[tuple[int, int], ...]
    cpu: tuple[tuple[int, int], ...]
    total_faults: int
    active_nodes: int
    max_faults_cpu: int
    nr_tasks: int = 1

    @classmethod
    def created_by(cls, mem: Sequence[tuple[int, int]], cpu: Sequence[tuple[int, int]], total_faults: int) -> GroupBooks:
        """fair.c:task_numa_group's new group: the creating task's NUMA_MEM and NUMA_CPU books
        (the first NR_NUMA_HINT_FAULT_STATS * nr_node_ids entries of p->numa_faults: not the
        buffers) and total_numa_faults copied, active_nodes 1, max_faults_cpu 0, one task."""
        return cls(tuple((s, p) for s, p in mem), tuple((s, p) for s, p in cpu), total_faults, 1, 0, 1)

    def moved(self, mem: Sequence[tuple[int, int]], cpu: Sequence[tuple[int, int]], total_faults: int,
              sign: int) -> GroupBooks:
        """fair.c:task_numa_group's join: the joining task's NUMA_MEM and NUMA_CPU books and
        total_numa_faults subtracted from the group it leaves (`sign` -1, one task fewer) and
        added to the one it joins (+1, one task more). active_nodes is not recounted."""
        return replace(self, mem=tuple((a + sign * s, b + sign * p) for (a, b), (s, p) in zip(self.mem, mem, strict=True)),
                       cpu=tuple((a + sign * s, b + sign * p) for (a, b), (s, p) in zip(self.cpu, cpu, strict=True)),
                       total_faults=self.total_faults + sign * total_faults, nr_tasks=self.nr_tasks + sign)

    def faults_mem(self, nid: int) -> int:
        """fair.c:group_faults: NUMA_MEM shared plus private on `nid`."""
        return self.mem[nid][0] + self.mem[nid][1]

    def faults_cpu(self, nid: int) -> int:
        """fair.c:group_faults_cpu: NUMA_CPU shared plus private on `nid`."""
        return self.cpu[nid][0] + self.cpu[nid][1]

    def is_active(self, nid: int) -> bool:
        """fair.c:numa_is_active_node, against the max_faults_cpu of the last recount."""
        return self.faults_cpu(nid) * ACTIVE_NODE_FRACTION > self.max_faults_cpu


def counts_local_in_group(group: GroupBooks | None, cpu_node: int, mem_node: int) -> bool:
    """fair.c:task_numa_fault: "a shared fault that occurs wholly within the set of nodes that the
    workload is actively using should be counted as local" (for a shared, remote fault): the
    group spans more than one active node and both the CPU's and the page's node are active."""
    return group is not None and group.active_nodes > 1 and group.is_active(cpu_node) and group.is_active(mem_node)


def numa_group_count_active_nodes(cpu_faults: Sequence[int]) -> tuple[int, int]:
    """kernel/sched/fair.c:numa_group_count_active_nodes, run at the end of every member's
    task_numa_placement: `cpu_faults` is group_faults_cpu per node (NUMA_CPU, shared plus
    private); returns (active_nodes, max_faults_cpu)."""
    most = max(cpu_faults, default=0)
    return sum(1 for faults in cpu_faults if faults * ACTIVE_NODE_FRACTION > most), most


def group_books(members: Sequence[dict[str, list[tuple[int, int]]]],
                totals: Sequence[int]) -> tuple[dict[str, list[tuple[int, int]]], int]:
    """A group's NUMA_MEM and NUMA_CPU books and total_faults: its members' summed.

    fair.c keeps that sum at every change: task_numa_group creates a group with a copy of the
    task's books and total_numa_faults, and on a join moves the task's books from the old group
    to the new one; task_numa_placement adds to the group the same diff (and f_diff) it adds to
    the task; task_numa_free subtracts a leaving task's. `members` are the tasks' books by stat
    ("mem", "cpu": per node (shared, private)), `totals` their total_numa_faults."""
    if not members:
        raise ValueError("a numa_group has at least one task")
    nodes = len(members[0]["mem"])
    books = {stat: [(sum(m[stat][nid][0] for m in members), sum(m[stat][nid][1] for m in members))
                    for nid in range(nodes)] for stat in GROUP_STATS}
    return books, sum(totals)
