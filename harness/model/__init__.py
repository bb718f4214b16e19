"""A deterministic, pure-Python reference model of Linux 6.12 NUMA balancing (scanner, hint faults,
migration filter, placement), each rule citing the kernel function it mirrors."""

from .faults import Decision, FaultResult, hint_fault, should_numa_migrate_memory, task_numa_fault
from .placement import task_numa_placement, update_task_scan_period
from .scanner import (
    PassResult,
    change_prot_numa,
    scan_pass,
    skip_reason,
    task_nr_scan_windows,
    task_scan_max,
    task_scan_min,
)
from .state import (
    HPAGE_SIZE,
    LAST__PID_MASK,
    MEM,
    MEMBUF,
    PAGE_SIZE,
    Counters,
    Mm,
    NumabState,
    Page,
    Task,
    Tunables,
    Vma,
    cpupid,
    cpupid_cpu,
    cpupid_pid,
    time_after,
)

__all__ = [
    "HPAGE_SIZE", "LAST__PID_MASK", "MEM", "MEMBUF", "PAGE_SIZE", "Counters", "Decision", "FaultResult", "Mm", "NumabState",
    "Page", "PassResult", "Task", "Tunables", "Vma", "change_prot_numa", "cpupid", "cpupid_cpu", "cpupid_pid",
    "hint_fault", "scan_pass", "should_numa_migrate_memory", "skip_reason", "task_nr_scan_windows", "task_numa_fault",
    "task_numa_placement", "task_scan_max", "task_scan_min", "time_after", "update_task_scan_period",
]
