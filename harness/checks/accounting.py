"""Accounting comparisons: what a run of hint faults added to a task's books and to the global
counters, model against kernel, and the per-entry comparisons of last_cpupid and the write bit.

Each bound is derived in its docstring from what else may add to the same books.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import inspect as nh
from harness.checks.observe import GuestFacts, Inconclusive, Observation, outside_region
from harness.checks.workload import HeldRegion
from harness.model import LAST__PID_MASK, MEMBUF, Decision, FaultResult, Page, Task, cpupid_cpu, cpupid_pid, task_numa_fault


@dataclass(frozen=True)
class Accounting:
    """What a run of hint faults added to a task's books: memory faults per node and
    private/shared (what task_numa_fault adds to NUMA_MEMBUF), and numa_faults_locality."""

    mem: tuple[tuple[int, int], ...]  # [nid] = (shared, private), in pages
    locality: tuple[int, int, int] | None  # None when a placement reset it in between

    @property
    def total(self) -> int:
        return sum(a + b for a, b in self.mem)


def model_accounting(before: Task, after: Task) -> Accounting:
    """The model's additions, from a run replayed with placement off (jiffies_after_retry=False)."""
    mem = tuple((after.faults[MEMBUF][n][0] - before.faults[MEMBUF][n][0],
                 after.faults[MEMBUF][n][1] - before.faults[MEMBUF][n][1]) for n in range(before.nr_nodes))
    locality = (after.locality[0] - before.locality[0], after.locality[1] - before.locality[1],
                after.locality[2] - before.locality[2])
    return Accounting(mem, locality)


@dataclass
class FaultBooks:
    """The model's side of a run of hint faults, kept next to the replay: a placement-free copy of
    the task's books (model_accounting's input) and the fault counts the global counters cover."""

    start: Task
    books: Task
    faults: int = 0
    local: int = 0

    @classmethod
    def opening(cls, task: Task) -> FaultBooks:
        return cls(task, task)

    def add(self, before: Page, result: FaultResult, cpu_node: int, priv: int | None = None) -> None:
        """One fault's additions; `priv` is task_numa_group's verdict where a group decided it."""
        self.books = task_numa_fault(self.books, before.last_cpupid, result.page.node, result.page.nr_pages,
                                     local=result.local, migrated=result.migrated,
                                     migrate_failed=result.decision is Decision.MIGRATION_FAILED, cpu_node=cpu_node,
                                     run_placement=False, mm_seq=None, priv=priv)[0]
        self.faults += 1
        self.local += result.local

    def compare(self, before: Observation, after: Observation, region: HeldRegion,
                refault_pages: int = 0) -> tuple[list[str], dict[str, Any]]:
        """numa_hint_faults(_local) bounds, and the task's books (compare_accounting). Besides
        the region's faults the task may add its present or hinted pages outside the region, and
        `refault_pages`: the pages a scanner pass during the access re-hinted under the access
        (the caller derives them from the passes that can have run), each faulting again."""
        diffs = compare_local_counter(self.local, self.faults, before, after)
        rest = outside_region(before.table, region)
        outside = int(rest.pages[rest.present | rest.hint].sum())
        accounting_diffs, figures = compare_accounting(model_accounting(self.start, self.books),
                                                       kernel_accounting(before, after), outside + refault_pages)
        figures["accounting_bound"] = {"outside_pages": outside, "refault_pages": refault_pages}
        return diffs + accounting_diffs, figures


def kernel_accounting(before: Observation, after: Observation) -> Accounting | None:
    return recover_accounting(before.task, after.task, before.mm.numa_scan_seq, after.mm.numa_scan_seq)


def recover_accounting(t0: nh.TaskNumaState, t1: nh.TaskNumaState, mm_seq0: int, mm_seq1: int) -> Accounting | None:
    """Recover what the faults between two observations added, also across one placement.

    fair.c:task_numa_placement folds NUMA_MEMBUF into NUMA_MEM as mem - mem/2 + membuf, zeroes
    membuf, and (update_task_scan_period) zeroes numa_faults_locality. With no placement in between,
    the additions are membuf1 - membuf0; with exactly one, they are (mem1 - (mem0 - mem0/2) -
    membuf0) + membuf1, and the locality added before it is lost. A placement runs at most once per
    new mm sequence (it sets the task's numa_scan_seq to the mm's), which bounds the count. With
    possibly more than one, the additions cannot be recovered: None."""
    if t1.numa_scan_seq == t0.numa_scan_seq:
        placements = 0
    else:
        most = (mm_seq1 - mm_seq0) + (t0.numa_scan_seq != mm_seq0)
        if most != 1:
            return None
        placements = 1
    mem = []
    for n, ((m0s, m0p), (b0s, b0p), (m1s, m1p), (b1s, b1p)) in enumerate(zip(
            t0.faults["mem"], t0.faults["membuf"], t1.faults["mem"], t1.faults["membuf"], strict=True)):
        del n
        if placements == 0:
            mem.append((b1s - b0s, b1p - b0p))
        else:
            mem.append((m1s - (m0s - m0s // 2) - b0s + b1s, m1p - (m0p - m0p // 2) - b0p + b1p))
    locality = None if placements else (t1.locality[0] - t0.locality[0], t1.locality[1] - t0.locality[1],
                                        t1.locality[2] - t0.locality[2])
    return Accounting(tuple(mem), locality)


def compare_accounting(model: Accounting, kernel: Accounting | None, outside_bound: int) -> tuple[list[str], dict[str, Any]]:
    """Model vs kernel additions. The task may also fault on its own pages outside the region
    (stack, data): those add to the kernel's books, never subtract, and are at most
    kernel.total - model.total pages, which must itself stay within outside_bound (the task's
    pages outside the region that could fault). Each bucket may differ by at most that."""
    if kernel is None:
        raise Inconclusive("more than one placement may have run between the two observations: what the faults "
                           "added to the task's books cannot be recovered (recover_accounting)")
    outside = kernel.total - model.total
    figures: dict[str, Any] = {"accounting_model_mem": [list(p) for p in model.mem],
                               "accounting_kernel_mem": [list(p) for p in kernel.mem], "accounting_outside": outside,
                               "accounting_locality": {"model": model.locality, "kernel": kernel.locality}}
    diffs = []
    if not 0 <= outside <= outside_bound:
        diffs.append(f"the task's hint faults added {kernel.total} pages to its NUMA_MEMBUF books, the model "
                     f"{model.total} for the region (allowed extra from its other pages: 0..{outside_bound})")
    for nid, (m, k) in enumerate(zip(model.mem, kernel.mem, strict=True)):
        for priv, label in ((1, "private"), (0, "shared")):
            if not 0 <= k[priv] - m[priv] <= max(outside, 0):
                diffs.append(f"task memory faults on node {nid} ({label}): kernel added {k[priv]} pages, model "
                             f"{m[priv]} (task_numa_fault: mem_node, priv)")
    if kernel.locality is not None and model.locality is not None:
        names = ("remote", "local", "migrate-failed")
        for i, name in enumerate(names):
            if not 0 <= kernel.locality[i] - model.locality[i] <= max(outside, 0):
                diffs.append(f"task numa_faults_locality[{name}]: kernel added {kernel.locality[i]}, model "
                             f"{model.locality[i]} (numa_migrate_check: TNF_FAULT_LOCAL)")
    return diffs, figures


def compare_local_counter(model_local: int, model_faults: int, before: Observation, after: Observation) -> list[str]:
    """numa_hint_faults_local is global: other tasks' faults add to it. Every such extra local
    fault is also an extra fault, so kernel_local - model_local <= kernel_faults - model_faults."""
    faults = after.vmstat["numa_hint_faults"] - before.vmstat["numa_hint_faults"]
    local = after.vmstat["numa_hint_faults_local"] - before.vmstat["numa_hint_faults_local"]
    if faults < model_faults or not 0 <= local - model_local <= faults - model_faults:
        return [f"numa_hint_faults grew by {faults} and numa_hint_faults_local by {local}; the model has {model_faults} "
                f"faults of which {model_local} local (extra local faults must be extra faults by other tasks)"]
    return []


def compare_last_cpupid(facts: GuestFacts, va: int, model: int | None, kernel: int | None, node: int, pid: int) -> list[str]:
    """The model's last_cpupid against page->flags: "unset" must match exactly; otherwise the node
    of the CPU (which CPU inside the node is the scheduler's choice) and the pid bits."""
    if kernel is None:
        return []
    unset = kernel == facts.cpupid_unset
    if model is None:
        return [] if unset else [f"{va:#x}: last_cpupid {kernel:#x}, model: unset (reset by wp_page_reuse)"]
    k_cpu, k_pid = cpupid_cpu(kernel), cpupid_pid(kernel)
    if unset or facts.node_of_cpu.get(k_cpu) != node or k_pid != pid & LAST__PID_MASK:
        return [f"{va:#x}: last_cpupid {'unset' if unset else f'cpu {k_cpu} pid {k_pid}'}, model: a node-{node} "
                f"cpu and pid {pid & LAST__PID_MASK}"]
    return []


def compare_writable(va: int, result: FaultResult, kernel: nh.Entry) -> list[str]:
    """The entry's write bit after the access (model: hint_fault's `writable`)."""
    if result.writable is None or kernel.writable == result.writable:
        return []
    def word(writable: bool) -> str:
        return "writable" if writable else "read-only"
    return [f"{va:#x}: entry {word(kernel.writable)} after the access, model {word(result.writable)} "
            f"({result.decision}; do_numa_page restores the write bit of a page it leaves in place)"]


def compare_carried_pages(facts: GuestFacts, pages: dict[int, Page], obs: Observation, region: tuple[int, int],
                          pid: int, *, hints: bool) -> list[str]:
    """Pages the model carried against the kernel's entries in `region`: node, last_cpupid (its
    CPU's node and pid; which CPU of the node is the scheduler's) and, with `hints`, the hint bit
    (not before a read: the scanner hinted the pages since, as it should)."""
    kernel = {e.vaddr: e for e in obs.table.within(*region)}
    diffs = []
    for va, page in sorted(pages.items()):
        e = kernel.get(va)
        if e is None:
            diffs.append(f"{va:#x}: no longer mapped")
            continue
        if e.node != page.node or (hints and e.hint != page.hint):
            diffs.append(f"{va:#x}: node {e.node} hint={e.hint}, model node {page.node} hint={page.hint}")
        if page.last_cpupid is None:
            if e.last_cpupid not in (None, facts.cpupid_unset):
                diffs.append(f"{va:#x}: last_cpupid {e.last_cpupid:#x}, model: unset (never hint-faulted)")
        else:
            node = facts.node_of_cpu[cpupid_cpu(page.last_cpupid)]
            diffs.extend(compare_last_cpupid(facts, va, page.last_cpupid, e.last_cpupid, node, pid))
    return diffs
