"""Observation -> model: the kernel's state as observed, in the model's types.

Only a scenario's starting state goes through here; which fields, and why, is each check's
business. VM_* flags are include/linux/mm.h's.
"""

from __future__ import annotations

from harness.checks.observe import GuestFacts, Observation
from harness.inspect.pagetable import LEVELS
from harness.model import HPAGE_SIZE, PAGE_SIZE, NumabState, Page, Task, Tunables, Vma

VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 0x1, 0x2, 0x4, 0x8
VM_PFNMAP, VM_IO, VM_HUGETLB, VM_MIXEDMAP = 0x400, 0x4000, 0x400000, 0x10000000
PTE_LEVEL, PMD_LEVEL = LEVELS.index("pte"), LEVELS.index("pmd")



def model_tunables(obs: Observation, hz: int) -> Tunables:
    t = obs.balancing.tunables
    return Tunables(t["scan_delay_ms"], t["scan_period_min_ms"], t["scan_period_max_ms"], t["scan_size_mb"],
                    obs.balancing.mode, hz)



def model_vmas(obs: Observation) -> list[Vma]:
    result = []
    for v in obs.vmas:
        numab = None
        if v.numab:
            n = v.numab
            numab = NumabState(n["start_scan_seq"], n["prev_scan_seq"], n["next_scan"], n["pids_active_reset"],
                               (n["pids_active"][0], n["pids_active"][1]))
        result.append(Vma(
            v.start, v.end, readable=bool(v.flags & VM_READ), writable=bool(v.flags & VM_WRITE),
            executable=bool(v.flags & VM_EXEC), file_backed=v.file_backed, shared=bool(v.flags & VM_SHARED),
            migratable=not v.flags & (VM_IO | VM_PFNMAP), policy_mof=v.policy_mof if v.policy_mof is not None else True,
            hugetlb=bool(v.flags & VM_HUGETLB), mixedmap=bool(v.flags & VM_MIXEDMAP), numab=numab,
        ))
    return result



def model_pages(facts: GuestFacts, obs: Observation) -> dict[int, Page]:
    """Present and hinted leaf entries as model pages; last_cpupid all-ones is "pid unset"."""
    zero_pfn, unset = facts.zero_pfn, facts.cpupid_unset
    pages = {}
    c = obs.table.columns()  # a loop over every entry: lists, not Entry objects (columns())
    for va, level, present, hint, pfn, node, writable, cpupid, mapcount, folio in zip(
            c.vaddr, c.level, c.present, c.hint, c.pfn, c.node, c.writable, c.last_cpupid, c.mapcount, c.folio_pages,
            strict=True):
        if not (present or hint):
            continue
        pages[va] = Page(va, node, HPAGE_SIZE if level == PMD_LEVEL else PAGE_SIZE, hint=hint,
                         zero_page=pfn == zero_pfn, last_cpupid=None if cpupid is None or cpupid == unset else cpupid,
                         likely_shared=mapcount is not None and mapcount > 1,
                         folio_pages=folio if level == PTE_LEVEL and folio and folio > 1 else 0, writable=writable)
    return pages



def model_task(obs: Observation, nr_nodes: int) -> Task:
    t = obs.task
    faults = tuple(tuple(tuple(pair) for pair in t.faults[name]) for name in ("mem", "cpu", "membuf", "cpubuf"))
    return Task(pid=t.pid, nr_nodes=nr_nodes, numa_scan_seq=t.numa_scan_seq, numa_scan_period=t.numa_scan_period,
                numa_scan_period_max=t.numa_scan_period_max, numa_preferred_nid=t.numa_preferred_nid,
                faults=faults, locality=t.locality, total_numa_faults=t.total_numa_faults,  # type: ignore[arg-type]
                numa_pages_migrated=t.numa_pages_migrated)

