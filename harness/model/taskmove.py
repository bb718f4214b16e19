"""kernel/sched/fair.c:task_numa_migrate, the scheduler half of NUMA balancing: where a task that
runs off its preferred node goes. An idle CPU on that node (a move, migrate_task_to), a swap with
the task a CPU there runs (migrate_swap), or nowhere.

The rules mirrored here (task_numa_migrate, task_numa_find_cpu, task_numa_compare, numa_classify,
adjust_numa_imbalance, load_too_imbalanced, task_weight, group_weight) read the same in 6.1 and
6.12. What the model cannot know is the scheduler's load tracking (PELT load, runnable and
utilisation sums, task_h_load): the caller supplies it, read from the kernel or stated by the
scenario.

Left out, as no scenario reaches them: the rq->numa_migrate_on claims of concurrent searches
(task_numa_assign's hunt for another idle CPU), SMT idle cores (numa_idle_core), and the
distance scores of machines that are not NUMA_DIRECT (score_nearby_nodes adds nothing there).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from .group import GroupBooks
from .state import MEM, Task

# fair.c: a swap must gain at least this much (thousandths of the faults), else tasks ping-pong.
SMALLIMP = 30
# fair.c:adjust_numa_imbalance: a pair of communicating tasks may stay on one lightly loaded node.
NUMA_IMBALANCE_MIN = 2
# kernel/sched/topology.c:sd_init: a domain that shares neither CPU capacity nor an LLC (an
# SD_NUMA one) keeps the default imbalance_pct of 117.
SD_NUMA_IMBALANCE_PCT = 117


def numa_imbalance_pct(sd_imbalance_pct: int = SD_NUMA_IMBALANCE_PCT) -> int:
    """fair.c:task_numa_migrate's env.imbalance_pct: half the lowest SD_NUMA domain's margin."""
    return 100 + (sd_imbalance_pct - 100) // 2


class NodeType(enum.Enum):
    """fair.c:enum numa_type, as numa_classify decides it."""

    HAS_SPARE = "has spare"
    FULLY_BUSY = "fully busy"
    OVERLOADED = "overloaded"


@dataclass(frozen=True)
class NodeStats:
    """fair.c:struct numa_stats of one node, the sums update_numa_stats takes over its CPUs:
    cpu_load, cpu_runnable, cpu_util_cfs, the cfs runqueue's h_nr_running (6.12: h_nr_queued)
    and capacity_of; `weight` is the node's CPU count."""

    load: int
    runnable: int
    util: int
    nr_running: int
    compute_capacity: int
    weight: int

    def classify(self, imbalance_pct: int) -> NodeType:
        """fair.c:numa_classify."""
        if self.nr_running > self.weight and (self.compute_capacity * 100 < self.util * imbalance_pct or
                                              self.compute_capacity * imbalance_pct < self.runnable * 100):
            return NodeType.OVERLOADED
        if self.nr_running < self.weight or (self.compute_capacity * 100 > self.util * imbalance_pct and
                                             self.compute_capacity * imbalance_pct > self.runnable * 100):
            return NodeType.HAS_SPARE
        return NodeType.FULLY_BUSY


def load_too_imbalanced(src_load: int, dst_load: int, src: NodeStats, dst: NodeStats) -> bool:
    """fair.c:load_too_imbalanced: would the loads, each over the other node's capacity, be further
    apart after the change than before?"""
    imb = abs(dst_load * src.compute_capacity - src_load * dst.compute_capacity)
    old_imb = abs(dst.load * src.compute_capacity - src.load * dst.compute_capacity)
    return imb > old_imb


def adjust_numa_imbalance(imbalance: int, dst_running: int, imb_numa_nr: int) -> int:
    """fair.c:adjust_numa_imbalance."""
    if dst_running > imb_numa_nr:
        return imbalance
    return 0 if imbalance <= NUMA_IMBALANCE_MIN else imbalance


def task_weight(task: Task, nid: int) -> int:
    """fair.c:task_weight on a NUMA_DIRECT machine (score_nearby_nodes adds nothing): the share,
    in thousandths, of the task's memory faults (task_faults: NUMA_MEM shared plus private) on
    `nid`; 0 for a task without faults."""
    if not task.total_numa_faults:
        return 0
    return 1000 * sum(task.faults[MEM][nid]) // task.total_numa_faults


def group_weight(group: GroupBooks | None, nid: int) -> int:
    """fair.c:group_weight on a NUMA_DIRECT machine: the group's share of its memory faults on `nid`."""
    if group is None or not group.total_faults:
        return 0
    return 1000 * group.faults_mem(nid) // group.total_faults


@dataclass(frozen=True)
class Candidate:
    """A task as task_numa_migrate weighs it: its books (task_weight, numa_preferred_nid), its
    numa_group (identity and books), the CPUs it may run on, and task_h_load."""

    task: Task
    group_id: int | None = None
    group: GroupBooks | None = None
    allowed: frozenset[int] | None = None  # None: every CPU
    h_load: int = 0

    def may_run_on(self, cpu: int) -> bool:
        return self.allowed is None or cpu in self.allowed


@dataclass(frozen=True)
class NodeView:
    """What task_numa_find_cpu sees of one node: its numa_stats, per CPU the task that CPU runs
    (rq->curr; None: idle, or exiting), and the node's numa_type."""

    stats: NodeStats
    running: Mapping[int, Candidate | None]
    node_type: NodeType

    @classmethod
    def gathered(cls, stats: NodeStats, running: Mapping[int, Candidate | None], imbalance_pct: int) -> NodeView:
        """fair.c:update_numa_stats ends by classifying the node with the search's imbalance_pct."""
        return cls(stats, running, stats.classify(imbalance_pct))


class Choice(enum.Enum):
    """How task_numa_migrate ends: no better CPU (-EAGAIN), migrate_task_to, or migrate_swap."""

    STAY = "stay"
    MOVE = "move"
    SWAP = "swap"


@dataclass(frozen=True)
class Migration:
    """task_numa_migrate's outcome: the best CPU (env.best_cpu), the task swapped with
    (env.best_task's pid), the improvement (env.best_imp), and the preferred node a group member
    is given (sched_setnuma; None: unchanged)."""

    choice: Choice
    cpu: int = -1
    swap_with: int | None = None
    imp: int = 0
    preferred: int | None = None

    def as_json(self) -> dict[str, int | str | None]:
        return {"choice": self.choice.value, "cpu": self.cpu, "swap_with": self.swap_with, "imp": self.imp,
                "preferred": self.preferred}


@dataclass
class _Search:
    """fair.c:struct task_numa_env's best_* fields while the search runs."""

    cpu: int = -1
    task: Candidate | None = None
    imp: int = 0

    def assign(self, cpu: int, cur: Candidate | None, imp: int) -> None:
        """fair.c:task_numa_assign (no concurrent search holds numa_migrate_on here)."""
        self.cpu, self.task, self.imp = cpu, cur, imp


def _compare(p: Candidate, src_cpu: int, src_nid: int, dst_nid: int, dst_cpu: int, src: NodeStats, dst: NodeView,
             taskimp: int, groupimp: int, maymove: bool, best: _Search) -> bool:
    """fair.c:task_numa_compare for `dst_cpu`; True stops the search."""
    imp = groupimp if p.group_id is not None else taskimp
    moveimp = imp
    cur = dst.running.get(dst_cpu)
    if cur is not None and cur.task.pid == p.task.pid:
        return True
    if cur is None:
        if maymove and moveimp >= best.imp:
            return _assign(p, src_nid, dst_cpu, dst, None, imp, maymove, best)
        return False
    if not cur.may_run_on(src_cpu):
        return False
    best_prefers_src = best.task is not None and best.task.task.numa_preferred_nid == src_nid
    if best_prefers_src and cur.task.numa_preferred_nid != src_nid:
        return False
    swap_imp = _swap_imp(p, cur, imp, taskimp, src_nid, dst_nid, dst.node_type)
    if swap_imp is None:
        return False
    imp = swap_imp
    if maymove and moveimp > imp and moveimp > best.imp:
        return _assign(p, src_nid, dst_cpu, dst, None, moveimp, maymove, best)
    if best.task is not None and cur.task.numa_preferred_nid == src_nid and not best_prefers_src:
        return _assign(p, src_nid, dst_cpu, dst, cur, imp, maymove, best)
    if imp < SMALLIMP or imp <= best.imp + SMALLIMP // 2:
        return False
    load = p.h_load - cur.h_load
    if load and load_too_imbalanced(src.load - load, dst.stats.load + load, src, dst.stats):
        return False
    return _assign(p, src_nid, dst_cpu, dst, cur, imp, maymove, best)


def _swap_imp(p: Candidate, cur: Candidate, imp: int, taskimp: int, src_nid: int, dst_nid: int,
              dst_type: NodeType) -> int | None:
    """task_numa_compare's gain from swapping `p` with `cur` (None: no swap considered)."""
    if cur.group_id == p.group_id:
        # No swap within a group, or between two tasks without one, while the node has spare
        # capacity: it would help one task at the other's cost without fixing the load.
        if dst_type is NodeType.HAS_SPARE:
            return None
        imp = taskimp + task_weight(cur.task, src_nid) - task_weight(cur.task, dst_nid)
        if cur.group_id is not None:
            imp -= _c_div(imp, 16)  # hysteresis within a group
    elif cur.group_id is not None and p.group_id is not None:
        imp += group_weight(cur.group, src_nid) - group_weight(cur.group, dst_nid)
    else:
        imp += task_weight(cur.task, src_nid) - task_weight(cur.task, dst_nid)
    if cur.task.numa_preferred_nid == dst_nid:
        imp -= _c_div(imp, 16)  # discourage moving a task off its preferred node
    if cur.task.numa_preferred_nid == src_nid:
        imp += _c_div(imp, 8)  # encourage moving one onto it
    return imp


def _assign(p: Candidate, src_nid: int, dst_cpu: int, dst: NodeView, cur: Candidate | None, imp: int, maymove: bool,
            best: _Search) -> bool:
    """task_numa_compare's `assign:` label: record the choice, then say whether to stop."""
    if cur is None:
        # A move goes to the node's idle CPU found by update_numa_stats, else to dst_cpu.
        idle = _idle_cpu(p, dst)
        cpu = dst_cpu if idle < 0 else idle
        if dst.running.get(cpu) is not None and best.cpu >= 0 and dst.running.get(best.cpu) is None:
            cpu = best.cpu
        dst_cpu = cpu
    best.assign(dst_cpu, cur, imp)
    if maymove and cur is None and best.cpu >= 0 and dst.running.get(best.cpu) is None:
        return True
    return not maymove and best.task is not None and best.task.task.numa_preferred_nid == src_nid


def _c_div(value: int, by: int) -> int:
    """C's signed division, which truncates towards zero (imp may be negative)."""
    quotient = abs(value) // by
    return quotient if value >= 0 else -quotient


def _idle_cpu(p: Candidate, node: NodeView) -> int:
    """update_numa_stats(find_idle): the first idle CPU of the node the task may run on."""
    return next((cpu for cpu in sorted(node.running) if node.running[cpu] is None and p.may_run_on(cpu)), -1)


def task_numa_find_cpu(p: Candidate, src_cpu: int, src_nid: int, dst_nid: int, src: NodeStats, dst: NodeView,
                       taskimp: int, groupimp: int, imb_numa_nr: int, best: _Search) -> None:
    """fair.c:task_numa_find_cpu: on a node with spare capacity a move is allowed when it leaves no
    imbalance the load balancer would undo (straight to an idle CPU); on a busy node when it
    does not make the loads less balanced. Then task_numa_compare for each CPU the task may
    use. The task's own load (task_h_load) is `p.h_load`."""
    maymove = False
    if dst.node_type is NodeType.HAS_SPARE:
        src_running = src.nr_running - 1
        dst_running = dst.stats.nr_running + 1
        imbalance = adjust_numa_imbalance(max(0, dst_running - src_running), dst_running, imb_numa_nr)
        if not imbalance:
            maymove = True
            idle = _idle_cpu(p, dst)
            if idle >= 0:
                best.assign(idle, None, 0)
                return
    else:
        maymove = not load_too_imbalanced(src.load - p.h_load, dst.stats.load + p.h_load, src, dst.stats)
    for cpu in sorted(dst.running):
        if p.may_run_on(cpu) and _compare(p, src_cpu, src_nid, dst_nid, cpu, src, dst, taskimp, groupimp, maymove,
                                          best):
            break


def task_numa_migrate(p: Candidate, src_cpu: int, node_of_cpu: Mapping[int, int], nodes: Mapping[int, NodeView], *,
                      imb_numa_nr: int = 1) -> Migration:
    """fair.c:task_numa_migrate for task `p` running on `src_cpu`: search its preferred node, and
    the other nodes when that finds nothing (or the task's group spans several nodes). `nodes`
    holds every node with CPUs; `imb_numa_nr` is the lowest SD_NUMA domain's (sd->imb_numa_nr).
    A group member is also given the node it lands on (or stays on) as its preferred node."""
    src_nid = node_of_cpu[src_cpu]
    preferred = p.task.numa_preferred_nid
    best = _Search()
    taskweight = task_weight(p.task, src_nid)
    groupweight = group_weight(p.group, src_nid)
    src = nodes[src_nid].stats
    task_numa_find_cpu(p, src_cpu, src_nid, preferred, src, nodes[preferred],
                       task_weight(p.task, preferred) - taskweight, group_weight(p.group, preferred) - groupweight,
                       imb_numa_nr, best)
    if best.cpu == -1 or (p.group is not None and p.group.active_nodes > 1):
        for nid in sorted(nodes):
            if nid in (src_nid, preferred):
                continue
            taskimp = task_weight(p.task, nid) - taskweight
            groupimp = group_weight(p.group, nid) - groupweight
            if taskimp < 0 and groupimp < 0:
                continue
            task_numa_find_cpu(p, src_cpu, src_nid, nid, src, nodes[nid], taskimp, groupimp, imb_numa_nr, best)
    new_preferred = None
    if p.group is not None:
        landed = src_nid if best.cpu == -1 else node_of_cpu[best.cpu]
        new_preferred = landed if landed != preferred else None
    if best.cpu == -1:
        return Migration(Choice.STAY, preferred=new_preferred)
    if best.task is None:
        return Migration(Choice.MOVE, best.cpu, None, best.imp, new_preferred)
    return Migration(Choice.SWAP, best.cpu, best.task.task.pid, best.imp, new_preferred)


