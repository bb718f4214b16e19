"""The scheduler's load tracking as NUMA balancing's task placement reads it
(kernel/sched/fair.c:update_numa_stats, task_numa_compare): per CPU the CFS runqueue's task count
and PELT sums, the CPU's capacity and current task; per task its load; per CPU the lowest NUMA
scheduling domain's margins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from drgn import Object, Program
from drgn.helpers.linux.cpumask import for_each_online_cpu
from drgn.helpers.linux.percpu import per_cpu
from drgn.helpers.linux.sched import cpu_curr

from .attach import InspectError, find_task

__all__ = ("NumaDomain", "RunqueueLoad", "read_numa_domain", "read_runqueues", "task_h_load")


@dataclass(frozen=True)
class RunqueueLoad:
    """One CPU's runqueue as update_numa_stats sums it."""

    cpu: int
    # The CFS tasks queued on the CPU, its own and its groups' (rq->cfs.h_nr_queued, before
    # 6.13's rename of "sched/fair: Rename h_nr_running into h_nr_queued" h_nr_running).
    nr_running: int
    load: int  # fair.c:cpu_load: the CFS runqueue's PELT load_avg
    runnable: int  # fair.c:cpu_runnable: its runnable_avg
    util: int  # fair.c:cpu_util_cfs: util_avg, or util_est when larger, at most the CPU's original capacity
    capacity: int  # fair.c:capacity_of: rq->cpu_capacity
    curr_pid: int  # rq->curr's pid: 0 for the idle task

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NumaDomain:
    """The lowest SD_NUMA scheduling domain above a CPU (per_cpu(sd_numa, cpu)): the margins
    task_numa_migrate takes from it."""

    imbalance_pct: int
    imb_numa_nr: int


def _queued(cfs_rq: Object) -> int:
    try:
        return int(cfs_rq.h_nr_queued.value_())
    except AttributeError:
        # Before 6.13 (and in Debian's 6.1): h_nr_running counted the same tasks.
        return int(cfs_rq.h_nr_running.value_())


def _util_est(prog: Program, cfs_rq: Object) -> int:
    """The runqueue's util_est when sched_feat(UTIL_EST) is on, else 0 (fair.c:cpu_util)."""
    features = int(prog["sysctl_sched_features"].value_())
    if not features & (1 << int(prog["__SCHED_FEAT_UTIL_EST"].value_())):
        return 0
    estimate = cfs_rq.avg.util_est
    # 6.9 ("sched/fair: Remove SCHED_FEAT(UTIL_EST_FASTUP, ...)" and the util_est rework) made
    # it one unsigned int; 6.1 has struct util_est { enqueued, ewma } and reads .enqueued.
    return int(estimate.value_()) if not hasattr(estimate, "enqueued") else int(estimate.enqueued.value_())


def read_runqueues(prog: Program) -> dict[int, RunqueueLoad]:
    """
    Read every online CPU's runqueue load as ``kernel/sched/fair.c:update_numa_stats`` sums it.
    Read with the guest paused (:func:`snapshot`): the PELT sums change at every tick.
    """
    found = {}
    for cpu in for_each_online_cpu(prog):
        rq = per_cpu(prog["runqueues"], cpu)
        cfs = rq.cfs
        # 6.1's capacity_orig_of reads rq->cpu_capacity_orig; 6.12's arch_scale_cpu_capacity is
        # SCHED_CAPACITY_SCALE (1024) on x86, which has no per-CPU capacities.
        original = int(rq.cpu_capacity_orig.value_()) if hasattr(rq, "cpu_capacity_orig") else 1024
        util = min(max(int(cfs.avg.util_avg.value_()), _util_est(prog, cfs)), original)
        found[cpu] = RunqueueLoad(cpu, _queued(cfs), int(cfs.avg.load_avg.value_()), int(cfs.avg.runnable_avg.value_()),
                                  util, int(rq.cpu_capacity.value_()), int(cpu_curr(prog, cpu).pid.value_()))
    return found


def task_h_load(prog: Program, pid: int) -> int:
    """
    Return ``kernel/sched/fair.c:task_h_load``: without CONFIG_FAIR_GROUP_SCHED, the task's own
    PELT ``se.avg.load_avg``.

    :param pid: PID of the task.
    :raises InspectError: on a kernel with group scheduling, whose hierarchical load this
        helper does not compute.
    """
    task = find_task(prog, pid)
    if hasattr(task.se, "cfs_rq"):
        raise InspectError("task_h_load on a kernel with CONFIG_FAIR_GROUP_SCHED needs the cfs_rq hierarchy's h_load, "
                           "which this helper does not compute")
    return int(task.se.avg.load_avg.value_())


def read_numa_domain(prog: Program, cpu: int) -> NumaDomain | None:
    """
    Read the lowest NUMA scheduling domain above ``cpu`` (``per_cpu(sd_numa, cpu)``), or None when
    the CPU has none (one node, or cpusets that split the domains).

    :param cpu: CPU number.
    """
    sd = per_cpu(prog["sd_numa"], cpu)
    if not sd:
        return None
    return NumaDomain(int(sd.imbalance_pct.value_()), int(sd.imb_numa_nr.value_()))
