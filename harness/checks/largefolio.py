"""PTE-mapped large folios (mTHP): one hint fault per folio, whatever it decides.

With 64 KiB anonymous folios (sysfs hugepages-64kB/enabled) a region is mapped by PTEs, sixteen
per folio. change_pte_range hints each PTE; mm/memory.c:do_numa_page then handles the folio as a
whole: a migration moves all sixteen pages and remove_migration_ptes maps every PTE again; a
fault that leaves the folio in place restores every PTE of it (numa_rebuild_large_mapping).
Either way the folio takes one fault and task_numa_fault books folio_nr_pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from harness.checks.accounting import compare_carried_pages
from harness.checks.adapters import model_pages, model_task
from harness.checks.observe import Context, GuestFacts, Inconclusive, Observation, observe, spin_until
from harness.checks.registry import Finding, Mechanism, check
from harness.checks.scenario import scenario, sysfs
from harness.checks.workload import Region
from harness.model import Page, Tunables, large_folio_fault

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
# 64 KiB folios for MADV_HUGEPAGE regions, and no PMD THP to take their place.
MTHP_SETTINGS = {f"{THP_SYSFS}/hugepages-64kB/enabled": "madvise", f"{THP_SYSFS}/hugepages-2048kB/enabled": "never"}
MTHP_PAGES = 16
MTHP_REGION_MIB = 4  # 64 folios
# A read must not contain a scanner pass (a pass could hint a restored folio again before the
# read reaches its next page, a fault the model would not see): it starts only when
# numa_next_scan is READ_MARGIN_MS away. Measured on a loaded 2-core host, a 1024-page read with
# 64 folio migrations plus its SSH round trip took more than 80 ms twice in four runs; 250 ms is
# three times that, and the scan period of 400-800 ms leaves room for it after every pass.
MTHP_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 400, "scan_period_max_ms": 800}
READ_MARGIN_MS = 250


@dataclass(frozen=True)
class FolioRead:
    """One read of check_mthp: the node and CPU it reads from, and the observations around it."""

    phase: str
    node: int
    cpu: int
    before: Observation
    after: Observation


@dataclass
class _Judged:
    diffs: list[str] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)


def folio_layout(obs: Observation, region: tuple[int, int]) -> list[str]:
    """What the scenario needs to be about mTHPs: every page of the region mapped by a PTE of a
    16-page folio, naturally aligned (alloc_anon_folio maps a folio at ALIGN_DOWN(address, size),
    from a physically aligned allocation)."""
    part = obs.table.within(*region)
    pages = (region[1] - region[0]) // 4096
    if len(part) != pages or bool((part.level != 0).any()):
        return [f"the region is mapped by {len(part)} entries ({int((part.level != 0).sum())} PMD), not {pages} PTEs"]
    sizes = part.folio_pages
    if sizes is None or bool((sizes != MTHP_PAGES).any()):
        found = {} if sizes is None else {int(s): int((sizes == s).sum()) for s in np.unique(sizes)}
        return [f"the region's PTEs map folios of {found} pages, not all of {MTHP_PAGES} (hugepages-64kB)"]
    if bool(((part.vaddr >> np.uint64(12)) % MTHP_PAGES != part.pfn % MTHP_PAGES).any()):
        return ["the region's 64 KiB folios are not mapped at their natural alignment"]
    return []


def judge_mthp(facts: GuestFacts, region: tuple[int, int], pid: int, reads: list[FolioRead]) -> _Judged:
    """The model's side of check_mthp (no guest: golden observations replay through it). Pages
    (node, last_cpupid) are the model's from the first read's `before` on; the hint bits before
    each read are the scanner's (its own check's subject) and taken as input."""
    judged = _Judged()
    start, end = region
    nr_nodes = len(set(facts.node_of_cpu.values()))
    pages: dict[int, Page] = {}
    for number, read in enumerate(reads, 1):
        label = f"read {number} ({read.phase}, from node {read.node})"
        before, after = read.before, read.after
        if after.mm.numa_next_scan != before.mm.numa_next_scan:
            raise Inconclusive(f"{label}: a scanner pass ran during the read (numa_next_scan "
                               f"{before.mm.numa_next_scan} -> {after.mm.numa_next_scan})")
        layout = folio_layout(before, region)
        if layout:
            # Compaction (kcompactd) may split an mTHP it cannot move whole: the kernel's right,
            # and the next scenario will have its folios again.
            raise Inconclusive(f"{label}, before: {'; '.join(layout)}")
        kernel_before = {va: p for va, p in model_pages(facts, before).items() if start <= va < end}
        if pages:
            judged.diffs.extend(f"{label}, before: {d}" for d in compare_carried_pages(facts, pages, before, region, pid,
                                                                          hints=False))
            pages = {va: replace(p, hint=kernel_before[va].hint) for va, p in pages.items()}
        else:
            pages = kernel_before
        task = model_task(before, nr_nodes)
        faults = migrated = 0
        writable: dict[int, bool | None] = {}
        for va in sorted(pages):  # nhmem reads page by page, in address order
            if not pages[va].hint:
                continue
            first = va - va % (MTHP_PAGES * 4096)
            was_hinted = [v for v in range(first, first + MTHP_PAGES * 4096, 4096) if pages[v].hint]
            # No placement during the read: its task sequence equals the mm's (check_mthp waits).
            result = large_folio_fault(task, pages, va, cpu=read.cpu, node_of_cpu=facts.node_of_cpu)
            task = result.task
            faults += 1
            migrated += result.page.folio_nr_pages if result.migrated else 0
            writable.update({v: result.writable for v in was_hinted})
        found = compare_carried_pages(facts, pages, after, region, pid, hints=True)
        kernel_after = {e.vaddr: e for e in after.table.within(start, end)}
        wrong = [va for va, w in writable.items() if w is not None and va in kernel_after
                 and kernel_after[va].writable != w]
        if wrong:
            found.append(f"{len(wrong)} restored PTEs have the wrong write bit (first {wrong[0]:#x}: kernel "
                         f"{'writable' if kernel_after[wrong[0]].writable else 'read-only'}; do_numa_page: a migrated "
                         f"folio comes back read-only, one left in place writable)")
        judged.diffs.extend(f"{label}: {d}" for d in found[:8])
        if len(found) > 8:
            judged.diffs.append(f"{label}: ... and {len(found) - 8} more")
        # The task's own small pages outside the region fault too (hinted: mm_users 2); with no
        # pass during the read, exactly the entries hinted before and not after it did, each
        # local or remote by its node before the read, migrated when its node changed.
        outside = _outside_faults(before, after, region, read.node)
        locality = [after.task.locality[i] - before.task.locality[i] for i in range(3)]
        model_locality = [task.locality[i] - model_task(before, nr_nodes).locality[i] for i in range(3)]
        expected = [model_locality[0] + outside["remote"], model_locality[1] + outside["local"], model_locality[2]]
        if locality != expected:
            judged.diffs.append(f"{label}: numa_faults_locality (remote, local, failed) grew by {locality}, model "
                                f"{model_locality} for {faults} folio faults of {MTHP_PAGES} pages + {outside} for "
                                f"faults outside the region (task_numa_fault books folio_nr_pages per fault)")
        kernel_migrated = after.task.numa_pages_migrated - before.task.numa_pages_migrated
        if kernel_migrated != migrated + outside["migrated"]:
            judged.diffs.append(f"{label}: the task's numa_pages_migrated grew by {kernel_migrated}, model {migrated} "
                                f"+ {outside['migrated']} outside the region")
        judged.reads.append({"phase": read.phase, "node": read.node, "folio_faults": faults,
                             "migrated_model": migrated, "migrated_kernel": kernel_migrated,
                             "locality_delta": locality, "outside": outside})
    return judged


def _outside_faults(before: Observation, after: Observation, region: tuple[int, int], node: int) -> dict[str, int]:
    start, end = region
    now = {e.vaddr: e for e in after.table if not start <= e.vaddr < end}
    counts = {"local": 0, "remote": 0, "migrated": 0}
    for e in before.table:
        if not e.hint or start <= e.vaddr < end or e.vaddr not in now or now[e.vaddr].hint:
            continue
        pages = e.folio_pages if e.folio_pages and e.folio_pages > 0 else (512 if e.level == "pmd" else 1)
        counts["local" if e.node == node else "remote"] += pages
        counts["migrated"] += pages if now[e.vaddr].node != e.node else 0
    return counts


@check("mthp", seconds=7, needs=[Mechanism.MTHP])
def check_mthp(ctx: Context) -> Finding:
    """mTHP: a 4 MiB MADV_HUGEPAGE region mapped by 64 KiB folios (hugepages-64kB enabled for
    madvise, PMD THPs off) on the near node, with a sleeping helper thread (mm_users 2: local
    pages are hinted too). Two reads, each once the whole region is hinted, the task's sequence
    equals the mm's (no placement can run during the read) and numa_next_scan is READ_MARGIN_MS
    away: first from the near node (every folio local: do_numa_page leaves it in place and
    numa_rebuild_large_mapping restores all sixteen PTEs, writable), then from the far node
    (every folio migrates whole; its PTEs come back read-only). The model replays one fault per
    folio (large_folio_fault) and must match every PTE's node, hint bit, write bit and its
    folio's last_cpupid, the task's numa_faults_locality (16 pages per folio fault) and
    numa_pages_migrated (16 per migrated folio). A read during which a pass ran anyway is
    inconclusive. Exact."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    cpu_of = {n: min(c for c, m in ctx.node_of_cpu.items() if m == n) for n in (near, far)}
    margin = Tunables(hz=ctx.hz).ms_to_jiffies(READ_MARGIN_MS)
    reads: list[FolioRead] = []
    with sysfs(ctx.guest, MTHP_SETTINGS), \
            scenario(ctx, Region(MTHP_REGION_MIB, thp=True, node=near, helper=True, exec_on=near),
                     knobs=MTHP_KNOBS) as region:
        span = (region.addr, region.end)
        layout = folio_layout(observe(ctx, region.pid), span)
        if layout:
            return Finding("the region is not mapped by 64 KiB folios", {}, tuple(f"{d}: the check lost its subject"
                                                                                 for d in layout))
        # No drain_lru_batches here: a large folio never waits in a per-CPU LRU batch
        # (mm/swap.c:__folio_batch_add_and_move moves it to the LRU at once: folio_may_be_lru_cached
        # is false for a large folio), and the compaction that drains the batches splits some of
        # the region's mTHPs.

        def ready(o: Observation) -> bool:
            part = o.table.within(*span)
            return (bool(len(part)) and bool(part.hint.all()) and o.task.numa_scan_seq == o.mm.numa_scan_seq
                    and o.mm.numa_next_scan - o.balancing.jiffies >= margin)

        for phase, node in (("local", near), ("remote", far)):
            before = spin_until(region, ctx, node, ready, step=0.3)
            region.read(node=node)
            after = observe(ctx, region.pid)
            reads.append(FolioRead(phase, node, cpu_of[node], before, after))
            ctx.keep(f"read-{len(reads)}-before", before, phase=phase, node=node, cpu=cpu_of[node],
                     region=list(span), pid=region.pid)
            ctx.keep(f"read-{len(reads)}-after", after)
        pid = region.pid
    judged = judge_mthp(ctx.facts, span, pid, reads)
    summary = "; ".join(f"{r['phase']} read: {r['folio_faults']} folio faults, {r['migrated_kernel']} pages migrated "
                        f"(model {r['migrated_model']} + {r['outside']['migrated']} outside the region)"
                        for r in judged.reads)
    return Finding(summary, {"reads": judged.reads}, tuple(judged.diffs))


def replay_mthp(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any]) -> _Judged:
    """check_mthp's judgement over a recording (labels read-N-before/-after)."""
    reads = []
    for label in sorted(k for k in observations if k.endswith("-before")):
        n = notes[label]
        reads.append(FolioRead(str(n["phase"]), int(n["node"]), int(n["cpu"]), observations[label],
                               observations[label.replace("-before", "-after")]))
    first = notes[sorted(k for k in notes if k.endswith("-before"))[0]]
    return judge_mthp(facts, (int(first["region"][0]), int(first["region"][1])), int(first["pid"]), reads)
