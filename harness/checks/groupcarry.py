"""The books of a numa_group scenario's workers, carried by the model from one observation.

numa-group (threads of one process) and numa-group-shared (two processes) hand their workers'
hint faults to `GroupMembers`, which carries from the scenario's first observation, through
every fault, join and placement:
- each worker's task: all four fault books, total_numa_faults, numa_faults_locality,
  numa_scan_seq, numa_scan_period and numa_scan_period_max, the preferred node,
  numa_pages_migrated, and numa_migrate_retry (as the bounds the model derives for it);
- each numa_group's books: NUMA_MEM and NUMA_CPU, total_faults, active_nodes, max_faults_cpu
  and nr_tasks.
After every step all of it is compared with the kernel (`compare_task`, `compare_group`).

Taken from the kernel after the start, each an input the model cannot know:
- the mm's numa_scan_seq before a step's reads: the scanner's, which scanner-window and
  scanner-threads judge; here it only says whether a reader's placement is due;
- the scheduler's clock at a placement (PlacementClock): the two readings
  fair.c:numa_get_avg_runtime stores in the task at it;
- the jiffies of the observations around a step's reads, which bound when each fault ran;
- the mm's RSS, which fixes task_scan_min/max (task_nr_scan_windows): checked to give the same
  bounds at every step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness import inspect as nh
from harness.checks.adapters import model_tunables
from harness.checks.observe import GuestFacts, Inconclusive, Observation
from harness.model import (
    CPU,
    CPUBUF,
    MEM,
    CpuOccupant,
    Decision,
    FaultResult,
    GroupBooks,
    GroupFault,
    GroupOutcome,
    NumaGroup,
    Page,
    PlacementClock,
    ScanLimits,
    Task,
    counts_local_in_group,
    group_ratio_favours_destination,
    hint_fault,
    numa_migrate_interval,
    scan_limits,
    task_numa_group,
    time_after,
    update_scan_period,
)

STAT_NAMES = ("mem", "cpu", "membuf", "cpubuf")
# A fault should_numa_migrate_memory let through by "the destination's CPU faults exceed 3x the
# source's" whose page the 3/4 hysteresis after it would have kept: the branch alone decided.
DST_BUSIER_ALONE = "the destination's CPU faults alone moved the page: the 3/4 hysteresis would keep it"


def model_thread_task(state: nh.TaskNumaState, nr_nodes: int) -> Task:
    """A thread's observed books as the model's Task."""
    faults = tuple(tuple(tuple(pair) for pair in state.faults[name]) for name in STAT_NAMES)
    return Task(pid=state.pid, nr_nodes=nr_nodes, numa_scan_seq=state.numa_scan_seq,
                numa_scan_period=state.numa_scan_period, numa_scan_period_max=state.numa_scan_period_max,
                numa_preferred_nid=state.numa_preferred_nid, faults=faults,  # type: ignore[arg-type]
                locality=state.locality, total_numa_faults=state.total_numa_faults,
                numa_pages_migrated=state.numa_pages_migrated)


def observed_group_books(group: nh.NumaGroupState) -> GroupBooks:
    """A numa_group as read from the kernel, as the model's GroupBooks."""
    return GroupBooks(tuple((int(s), int(p)) for s, p in group.faults["mem"]),
                      tuple((int(s), int(p)) for s, p in group.faults["cpu"]), group.total_faults,
                      group.active_nodes, group.max_faults_cpu, group.nr_tasks)


def observed_limits(obs: Observation, hz: int) -> ScanLimits:
    """task_scan_min and task_scan_max's starting point for the observed mm's RSS and knobs."""
    return scan_limits(obs.mm.rss_pages, model_tunables(obs, hz))


@dataclass(frozen=True)
class ReadPremise:
    """What one worker's read stands on: whether numa_migrate_retry had passed when it faulted
    (task_numa_fault then runs task_numa_placement and numa_migrate_preferred), the mm's
    sequence, the clock of the placement the model expects (None: none expected), the jiffies
    of the observations around the read, and the worker's scan bounds."""

    retry_passed: bool
    mm_seq: int
    clock: PlacementClock | None
    window: tuple[int, int]
    limits: ScanLimits


@dataclass
class GroupMembers:
    """The model's workers and groups (module docstring). `retry` holds, per worker, the bounds
    [low, high] of numa_migrate_retry: fair.c:numa_migrate_preferred sets it to the jiffies of
    the fault plus numa_migrate_interval, and a fault ran between the observations around its
    read. `placements` counts the placements the model ran, by kind."""

    facts: GuestFacts
    tasks: dict[int, Task]
    groups: dict[int, NumaGroup | None]
    books: dict[int, GroupBooks]  # by gid
    retry: dict[int, tuple[int, int]]
    nodes: dict[int, int]  # the node each worker runs on
    faulted: set[int]  # the workers that have taken a hint fault (p->numa_faults allocated)
    placements: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)

    @classmethod
    def opening(cls, facts: GuestFacts, states: Mapping[int, nh.TaskNumaState]) -> GroupMembers:
        """The workers as the scenario's first observation shows them, before any join."""
        nodes = len(set(facts.node_of_cpu.values()))
        faulted = {w for w, s in states.items() if any(s.locality) or
                   any(pair != (0, 0) for name in STAT_NAMES for pair in s.faults[name])}
        return cls(facts, {w: model_thread_task(s, nodes) for w, s in states.items()}, dict.fromkeys(states),
                   {}, {w: (s.numa_migrate_retry, s.numa_migrate_retry) for w, s in states.items()},
                   {w: facts.node_of_cpu[s.cpu] for w, s in states.items()}, faulted)

    def move(self, worker: int, cpu: int, limits: ScanLimits) -> None:
        """The worker now runs on `cpu` (the scenario pinned it there, or an observation shows
        it there): migrate_task_rq_fair's update_scan_period on a change of node."""
        node = self.facts.node_of_cpu[cpu]
        if worker in self.faulted and node != self.nodes[worker]:
            group = self.groups[worker]
            self.tasks[worker] = update_scan_period(self.tasks[worker], self.nodes[worker], node, limits,
                                                    None if group is None else self.books[group.gid])
        self.nodes[worker] = node

    def begin_read(self, worker: int, before: nh.TaskNumaState, after: nh.TaskNumaState, mm_seq: int,
                   window: tuple[int, int], limits: ScanLimits) -> tuple[ReadPremise | None, list[str]]:
        """The premise of `worker`'s read, from the model's state and the kernel's inputs (its
        states `before` and `after` the read supply the placement clock only). fair.c:
        task_numa_fault runs task_numa_placement when jiffies is after numa_migrate_retry, and
        it acts when the task's numa_scan_seq is behind the mm's. Returns (None, findings) when
        the kernel took no placement where the model runs one: the model has no clock for it and
        cannot carry on."""
        low, high = self.retry[worker]
        if time_after(window[0], high):
            passed = True
        elif not time_after(window[1], low):
            passed = False
        else:
            raise Inconclusive(f"worker {worker}'s numa_migrate_retry (between {low} and {high}, model) falls within "
                               f"its read (jiffies {window[0]}..{window[1]}): whether its first fault runs "
                               f"task_numa_placement depends on when it ran")
        task = self.tasks[worker]
        due = passed and task.numa_scan_seq != mm_seq
        placed = after.last_task_numa_placement != before.last_task_numa_placement
        if due and not placed:
            return None, [f"worker {worker} took no placement during its read; model: one at its first fault (mm "
                          f"sequence {mm_seq}, its own {task.numa_scan_seq}, numa_migrate_retry passed): the "
                          f"steps after this one are not judged"]
        found = []
        if placed and not due:
            why = "its numa_scan_seq is the mm's" if passed else "numa_migrate_retry had not passed"
            found.append(f"worker {worker} took a placement during its read; model: none ({why})")
        clock = None
        if due:
            if before.last_task_numa_placement == 0:
                # The task's first placement weighs by se.avg.load_sum over LOAD_AVG_MAX
                # (numa_get_avg_runtime), which no observation holds. f_weight multiplies it by
                # the NUMA_CPUBUF bucket, so with every bucket empty it is 0 whatever the load.
                if any(pair != (0, 0) for pair in task.faults[CPUBUF]):
                    raise Inconclusive(f"worker {worker}'s first placement weighs its CPU-fault buffers "
                                       f"{task.faults[CPUBUF]} by se.avg.load_sum, which the model cannot read")
                clock = PlacementClock(0, 0)
            else:
                # numa_get_avg_runtime: "Avoid time going backwards" clamps the period at 0.
                clock = PlacementClock(after.last_sum_exec_runtime - before.last_sum_exec_runtime,
                                       max(0, after.last_task_numa_placement - before.last_task_numa_placement))
        return ReadPremise(passed, mm_seq, clock, window, limits), found

    def fault(self, worker: int, pid: int, page: Page, cpu: int, occupant: CpuOccupant | None, premise: ReadPremise,
              *, shared_mapping: bool = False, vma_shared: bool = False) -> tuple[GroupFault, FaultResult]:
        """One hint fault of `worker` (pinned to `cpu`): fair.c:task_numa_fault's private/shared
        test and task_numa_group (with the books a new group copies and a join moves), then
        the fault with the group's books taking part, and the placement it runs when due."""
        self.move(worker, cpu, premise.limits)
        self.faulted.add(worker)
        task = self.tasks[worker]
        own = self.groups[worker]
        decided = task_numa_group(pid, page.last_cpupid, own, occupant, shared_mapping=shared_mapping)
        if decided.created:
            own = NumaGroup(gid=pid, nr_tasks=1)
            self.books[own.gid] = GroupBooks.created_by(task.faults[MEM], task.faults[CPU], task.total_numa_faults)
        if decided.outcome is GroupOutcome.JOINED and decided.group is not None and own is not None:
            moved = (task.faults[MEM], task.faults[CPU], task.total_numa_faults)
            self.books[decided.group.gid] = self.books[decided.group.gid].moved(*moved, sign=+1)
            if decided.left is None:
                del self.books[own.gid]
            else:
                self.books[own.gid] = self.books[own.gid].moved(*moved, sign=-1)
            for other, group in self.groups.items():
                if group is not None and other != worker:
                    if group.gid == decided.group.gid:
                        self.groups[other] = decided.group
                    elif group.gid == own.gid and decided.left is not None:
                        self.groups[other] = decided.left
        self.groups[worker] = decided.group
        gid = None if decided.group is None else decided.group.gid
        books = None if gid is None else self.books[gid]
        result = hint_fault(task, page, cpu=cpu, node_of_cpu=self.facts.node_of_cpu, priv=decided.priv,
                            jiffies_after_retry=premise.retry_passed, mm_seq=premise.mm_seq,
                            group=books, clock=premise.clock, pinned=True,
                            limits=premise.limits, vma_shared=vma_shared, rules=self.facts.rules)
        if result.task.numa_scan_seq != task.numa_scan_seq:
            self.placements["as a group member" if gid is not None else "alone"] += 1
        self.tasks[worker] = result.task
        if gid is not None and result.group is not None:
            self.books[gid] = result.group
        if premise.retry_passed and result.task.numa_preferred_nid != -1:
            # fair.c:numa_migrate_preferred (a task with no preferred node returns first).
            interval = numa_migrate_interval(result.task.numa_scan_period, self.facts.hz)
            self.retry[worker] = (premise.window[0] + interval, premise.window[1] + interval)
        self.decisions[f"worker {worker}: {result.decision.value}"] += 1
        if result.decision is Decision.GROUP_DST_BUSIER and books is not None and \
                not group_ratio_favours_destination(books, page.node, self.facts.node_of_cpu[cpu]):
            self.decisions[f"worker {worker}: {DST_BUSIER_ALONE}"] += 1
        if not decided.priv and not result.local and \
                counts_local_in_group(books, self.facts.node_of_cpu[cpu], result.page.node):
            self.decisions[f"worker {worker}: remote shared fault counted local (group's active nodes)"] += 1
        return decided, result

    def compare_task(self, worker: int, kernel: nh.TaskNumaState) -> list[str]:
        """The worker's whole book-keeping, model against kernel."""
        model = self.tasks[worker]
        found = []
        for stat, name in enumerate(STAT_NAMES):
            got = [tuple(pair) for pair in kernel.faults[name]]
            if got != [tuple(pair) for pair in model.faults[stat]]:
                found.append(f"worker {worker}: {name} books (shared, private) per node {got}, model "
                             f"{list(model.faults[stat])}")
        pairs = {"total_numa_faults": (kernel.total_numa_faults, model.total_numa_faults),
                 "numa_faults_locality": (tuple(kernel.locality), model.locality),
                 "numa_scan_seq": (kernel.numa_scan_seq, model.numa_scan_seq),
                 "numa_scan_period": (kernel.numa_scan_period, model.numa_scan_period),
                 "numa_scan_period_max": (kernel.numa_scan_period_max, model.numa_scan_period_max),
                 "numa_pages_migrated": (kernel.numa_pages_migrated, model.numa_pages_migrated)}
        if self.facts.numa_direct:
            pairs["numa_preferred_nid"] = (kernel.numa_preferred_nid, model.numa_preferred_nid)
        found.extend(f"worker {worker}: {name} {k}, model {m}" for name, (k, m) in pairs.items() if k != m)
        low, high = self.retry[worker]
        if not (low == high == kernel.numa_migrate_retry or
                (not time_after(low, kernel.numa_migrate_retry) and not time_after(kernel.numa_migrate_retry, high))):
            found.append(f"worker {worker}: numa_migrate_retry {kernel.numa_migrate_retry}, model {low}..{high} "
                         f"(numa_migrate_preferred: the fault's jiffies plus min(HZ, msecs_to_jiffies(period) / 16))")
        return found

    def compare_group(self, worker: int, kernel: nh.NumaGroupState | None) -> list[str]:
        """The books of the worker's group, model against kernel (the group's identity is
        compared by the check)."""
        group = self.groups[worker]
        if group is None or kernel is None or kernel.gid != group.gid:
            return []
        model, got = self.books[group.gid], observed_group_books(kernel)
        if got == model:
            return []
        fields = ("mem", "cpu", "total_faults", "active_nodes", "max_faults_cpu", "nr_tasks")
        wrong = [f"{name} {getattr(got, name)}, model {getattr(model, name)}" for name in fields
                 if getattr(got, name) != getattr(model, name)]
        return [f"group {group.gid}: {'; '.join(wrong)}"]


def steady_limits(facts: GuestFacts, observations: list[Observation]) -> ScanLimits:
    """The one set of scan bounds a worker's mm had across `observations`: task_nr_scan_windows
    rounds the RSS up to whole scan windows, so a few pages more or less do not change it."""
    found = {observed_limits(o, facts.hz) for o in observations}
    if len(found) != 1:
        bounds = sorted((x.smin, x.smax) for x in found)
        raise Inconclusive(f"the mm's RSS crossed a scan-window boundary during the scenario ({bounds}): "
                           f"task_scan_min/max are not one value")
    return found.pop()
