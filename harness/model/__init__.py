"""A deterministic, pure-Python reference model of Linux 6.12 NUMA balancing (scanner, hint faults,
migration filter, placement), each rule citing the kernel function it mirrors."""

from .faults import FaultResult, hint_fault, should_numa_migrate_memory, task_numa_fault
from .placement import task_numa_placement, update_task_scan_period
from .scanner import PassResult, change_prot_numa, scan_pass, task_nr_scan_windows, task_scan_max, task_scan_min
from .state import (
    HPAGE_SIZE,
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
)

__all__ = [
    "HPAGE_SIZE", "PAGE_SIZE", "Counters", "FaultResult", "Mm", "NumabState", "Page", "PassResult", "Task", "Tunables",
    "Vma", "change_prot_numa", "cpupid", "cpupid_cpu", "cpupid_pid", "hint_fault", "scan_pass",
    "should_numa_migrate_memory", "task_nr_scan_windows", "task_numa_fault", "task_numa_placement", "task_scan_max",
    "task_scan_min", "update_task_scan_period",
]
