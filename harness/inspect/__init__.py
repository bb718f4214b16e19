"""Live inspection of the guest kernel from the host with drgn (the API the CLI, the drgn REPL
and the cross-checks use)."""

from .attach import InspectError, attach, find_mm, find_task, snapshot
from .numastate import (
    BalancingState,
    MmNumaState,
    NumaGroupState,
    TaskNumaState,
    VmaNumaState,
    ZoneState,
    read_balancing,
    read_mm,
    read_numa_group,
    read_task,
    read_vmas,
    read_vmstat,
    read_zones,
    running_pids,
    scan_stamps,
    summarize_by_vma,
)
from .pagetable import (
    Entry,
    NodeRanges,
    PageTableWalk,
    decode,
    five_level,
    folio_heads,
    last_cpupids,
    node_ranges,
    page_flags,
    page_flags_layout,
    summarize,
    vmemmap_base,
    walk,
    with_folios,
    with_last_cpupid,
    with_mapcount,
)

__all__ = [
    "BalancingState", "Entry", "InspectError", "MmNumaState", "NodeRanges", "NumaGroupState", "PageTableWalk", "TaskNumaState",
    "VmaNumaState", "ZoneState", "attach", "decode", "find_mm", "find_task", "five_level", "folio_heads",
    "last_cpupids", "node_ranges", "page_flags", "page_flags_layout", "read_balancing", "read_mm", "read_numa_group", "read_task",
    "read_vmas", "read_vmstat", "read_zones", "running_pids", "scan_stamps", "snapshot", "summarize", "summarize_by_vma",
    "vmemmap_base", "walk", "with_folios", "with_last_cpupid", "with_mapcount",
]
