"""Accounting comparisons: what a run of hint faults added to the global counters, model against
kernel, and the per-entry comparisons of last_cpupid and the write bit."""

from __future__ import annotations

from harness import inspect as nh
from harness.checks.observe import GuestFacts, Observation
from harness.model import LAST__PID_MASK, FaultResult, Page, cpupid_cpu, cpupid_pid


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
