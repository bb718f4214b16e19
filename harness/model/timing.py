"""When task_numa_work runs, and what the hint-fault path writes into a VMA's numab_state.

kernel/sched/fair.c:task_tick_numa queues the scan work when the task's own CPU time passes
node_stamp + numa_scan_period; kernel/sched/fair.c:task_numa_work then runs a pass only when
jiffies is not before mm->numa_next_scan, and moves that clock to now + numa_scan_period. Which
jiffies a pass ran at, and how much CPU time the task got, are not the model's to know: a replay
takes them as inputs and checks them against these rules.
"""

from __future__ import annotations

from dataclasses import replace

from .scanner import _hash_32
from .state import Tunables, Vma, time_after

NSEC_PER_MSEC = 1_000_000
# BITS_PER_LONG on x86_64: pids_active are unsigned longs, the bit is hash_32(pid, ilog2(64)).
PID_BITS = 6


def tick_nsec(hz: int) -> int:
    """include/linux/jiffies.h:TICK_NSEC."""
    return (1_000_000_000 + hz // 2) // hz


def pass_allowed(now: int, numa_next_scan: int) -> bool:
    """fair.c:task_numa_work: `if (time_before(now, migrate)) return;`."""
    return not time_after(numa_next_scan, now)


def next_scan_after_pass(now: int, period_ms: int, tunables: Tunables) -> int:
    """fair.c:task_numa_work: next_scan = now + msecs_to_jiffies(p->numa_scan_period), installed
    by the cmpxchg that lets this pass run."""
    return now + tunables.ms_to_jiffies(period_ms)


def node_stamp_after(stamp: int, triggers: int, passes: int, period_ms: int, hz: int) -> int:
    """task->node_stamp after `triggers` scan-work triggers and `passes` passes at one period:
    fair.c:task_tick_numa adds the period (in ns) per trigger, fair.c:task_numa_work adds
    2 * TICK_NSEC per pass that won the numa_next_scan cmpxchg."""
    return stamp + triggers * period_ms * NSEC_PER_MSEC + passes * 2 * tick_nsec(hz)


def pid_bit(pid: int) -> int:
    """The pids_active bit of a task: hash_32(pid, ilog2(BITS_PER_LONG))."""
    return 1 << _hash_32(pid, PID_BITS)


def vma_set_access_pid_bit(vma: Vma, pid: int) -> Vma:
    """include/linux/mm.h:vma_set_access_pid_bit, called by every hint fault
    (mm/memory.c:numa_migrate_check, for PTE and PMD faults): the faulting task's bit in
    pids_active[1], when the scanner has allocated the VMA's numab_state."""
    if vma.numab is None:
        return vma
    low, high = vma.numab.pids_active
    return replace(vma, numab=replace(vma.numab, pids_active=(low, high | pid_bit(pid))))
