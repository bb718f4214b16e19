"""Memory shared between processes: copy-on-write after fork.

A private anonymous page that fork left mapped in both processes is not the scanner's to hint:
mm/mprotect.c:change_pte_range skips a folio of a COW mapping that is DMA-pinned or
folio_likely_mapped_shared ("Also skip shared copy-on-write pages"); once one side writes it,
mm/memory.c:wp_page_copy gives the writer a copy and drops its mapping of the original, which is
then mapped once and is hinted like any other page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from harness.checks.accounting import compare_last_cpupid
from harness.checks.adapters import model_pages, model_task, model_tunables, model_vmas
from harness.checks.observe import Context, GuestFacts, Observation, observe, spin_until
from harness.checks.registry import Finding, Judgement, Mechanism, check
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import Region
from harness.model import Page, change_prot_numa, hint_fault

# An 8 MiB region (2048 pages); the child writes the first half. 1024 pages on each side make a
# skip rule that fails on even a fraction of the pages show.
COW_REGION_MIB = 8
COW_COPIED_PAGES = 1024


@dataclass(frozen=True)
class CowRun:
    """What one cow-sharing scenario saw: the region, how many of its first pages the child
    wrote, the nodes, the holder's pid, and its three observations."""

    region: tuple[int, int]
    copied: int
    near: int
    far: int
    pid: int
    forked: Observation  # right after the child's writes: the model's one observation
    scanned: Observation  # once a scan of the region's VMA begun after the fork has completed
    read: Observation  # after the holder read the whole region from the far node


def region_vma_completed_after(region: tuple[int, int], seq: int) -> Callable[[Observation], bool]:
    """The wait condition "the scanner completed the region's VMA in a sequence after `seq`":
    task_numa_work sets numab_state->prev_scan_seq = mm->numa_scan_seq when it has scanned a VMA
    to its end, and a sequence starts its scan of a VMA at the VMA's start (numa_scan_offset is
    reset to 0 when the sequence begins). So prev_scan_seq > seq means the whole VMA was scanned
    after the observation that showed sequence `seq`."""
    def the_region_scanned_after_the_fork(o: Observation) -> bool:
        vma = next((v for v in o.vmas if v.start <= region[0] < v.end), None)
        return vma is not None and vma.numab is not None and vma.numab["prev_scan_seq"] > seq
    return the_region_scanned_after_the_fork


def expected_mapcount(va: int, run: CowRun) -> int:
    """The holder's page at `va` after the fork and the child's writes: fork maps every page in
    both (mm/memory.c:copy_present_ptes -> folio_try_dup_anon_rmap_ptes); the child's write
    copies it for the child and drops the child's mapping of the original (wp_page_copy ->
    folio_remove_rmap_pte)."""
    return 1 if va < run.region[0] + run.copied * 4096 else 2


def judge_cow(facts: GuestFacts, run: CowRun) -> Judgement:
    """The model's side of check_cow_sharing (no guest: golden observations replay through it)."""
    verdict = Judgement()
    start, end = run.region
    forked = run.forked
    entries = {e.vaddr: e for e in forked.table.within(start, end)}
    if len(entries) != (end - start) // 4096:
        verdict.diffs.append(f"after the fork the holder maps {len(entries)} of the region's {(end - start) // 4096} "
                             f"pages as base pages: the scenario lost its subject")
        return verdict
    # After the fork: what fork and the child's COW copies must have left in the holder.
    verdict.add("after the fork", [
        f"{va:#x}: mapcount {e.mapcount}, expected {expected_mapcount(va, run)}"
        for va, e in sorted(entries.items()) if e.mapcount != expected_mapcount(va, run)])
    # copy_present_pte write-protects both sides of a COW mapping; nothing writes the holder's
    # pages after the fork.
    verdict.add("after the fork", [f"{va:#x}: writable after fork (copy_present_pte write-protects a COW mapping)"
                                   for va, e in sorted(entries.items()) if e.writable])
    if forked.mm.mm_users != 1:
        verdict.diffs.append(f"after the fork the holder's mm_users is {forked.mm.mm_users}, expected 1: the child "
                             f"has its own mm (dup_mm)")
    # The model's one observation: the holder's pages as the fork left them, their sharing as
    # the scenario predicts it (not as the kernel shows it: compared above).
    pages: dict[int, Page] = {va: replace(p, likely_shared=expected_mapcount(va, run) > 1)
                              for va, p in model_pages(facts, forked).items() if start <= va < end}
    vma = next(v for v in model_vmas(forked) if v.start <= start < v.end)
    shared_hinted_before = sum(1 for p in pages.values() if p.hint and p.likely_shared)
    # The scan: the holder is single-threaded (mm_users 1) and spins on the far node, so
    # change_pte_range's target node is the far node; the region is on the near one.
    change_prot_numa(vma, pages, start, end, scanning_node=run.far, mm_users=1,
                     tunables=model_tunables(forked, facts.hz))
    scanned = {e.vaddr: e for e in run.scanned.table.within(start, end)}
    verdict.add("after a whole scan of the region", [
        f"{va:#x}: hint={scanned[va].hint}, model hint={p.hint} ("
        f"{'COW-shared: change_pte_range skips it' if p.likely_shared else 'mapped once: change_pte_range hints it'})"
        for va, p in sorted(pages.items()) if va in scanned and scanned[va].hint != p.hint])
    verdict.add("after a whole scan of the region", [
        f"{va:#x}: node {e.node}, mapcount {e.mapcount}; expected node {pages[va].node}, mapcount "
        f"{expected_mapcount(va, run)} (nothing faulted)"
        for va, e in sorted(scanned.items()) if va in pages and (e.node != pages[va].node or
                                                               e.mapcount != expected_mapcount(va, run))])
    # The read from the far node: each hinted page faults once, in address order (nhmem's loop).
    # The holder has had no hint fault since its one observation, so its books there decide.
    task = model_task(forked, len(set(facts.node_of_cpu.values())))
    far_cpu = min(c for c, n in facts.node_of_cpu.items() if n == run.far)
    migrated = 0
    for va in sorted(pages):
        if not pages[va].hint:
            continue
        result = hint_fault(task, pages[va], cpu=far_cpu, node_of_cpu=facts.node_of_cpu, jiffies_after_retry=False,
                            rules=facts.rules)
        task, pages[va] = result.task, result.page
        migrated += result.migrated
    read = {e.vaddr: e for e in run.read.table.within(start, end)}
    unset = facts.cpupid_unset
    found: list[str] = []
    for va, p in sorted(pages.items()):
        e = read.get(va)
        if e is None:
            found.append(f"{va:#x}: no longer mapped")
            continue
        if (e.hint, e.node) != (p.hint, p.node):
            found.append(f"{va:#x}: hint={e.hint} node {e.node}, model hint={p.hint} node {p.node}")
        if e.mapcount != expected_mapcount(va, run):
            found.append(f"{va:#x}: mapcount {e.mapcount}, expected {expected_mapcount(va, run)} (a read breaks "
                         f"no COW sharing; migration keeps a folio's mappings)")
        if e.writable:
            found.append(f"{va:#x}: writable after a read (a migrated page comes back read-only; a COW-shared "
                         f"one stays write-protected)")
        if p.last_cpupid is not None:
            found.extend(compare_last_cpupid(facts, va, p.last_cpupid, e.last_cpupid, run.far, run.pid))
        elif e.last_cpupid not in (None, unset):
            found.append(f"{va:#x}: last_cpupid {e.last_cpupid:#x}, model: unset (never hint-faulted)")
    verdict.add("after the read from the far node", found)
    kernel_migrated = run.read.task.numa_pages_migrated - run.scanned.task.numa_pages_migrated
    if kernel_migrated != migrated:
        verdict.diffs.append(f"the read migrated {kernel_migrated} pages (task numa_pages_migrated), model {migrated}")
    shared = sum(1 for p in pages.values() if p.likely_shared)
    copied_end = start + run.copied * 4096
    verdict.figures = {"copied_pages": run.copied, "shared_pages": shared, "migrated": migrated,
                       "kernel_hinted_copied": sum(1 for va, e in scanned.items() if e.hint and va < copied_end),
                       "kernel_hinted_shared": sum(1 for va, e in scanned.items() if e.hint and va >= copied_end),
                       "kernel_migrated": kernel_migrated,
                       "shared_hinted_before_the_scan": shared_hinted_before,
                       "scan_seq": [run.forked.mm.numa_scan_seq, run.scanned.mm.numa_scan_seq]}
    if not migrated:
        verdict.diffs.append("no page the child copied was migrated: the check lost its subject")
    return verdict


@check("cow-sharing", seconds=2.9, needs=[Mechanism.VMA_NUMAB])
def check_cow_sharing(ctx: Context) -> Finding:
    """COW after fork. An 8 MiB region written on the near node by a holder exec'd there; it
    forks a child that writes the first half (so the child gets copies, and the holder's
    originals of that half are mapped once) and then sleeps. The holder then spins on the far
    node until its scanner has completed the region's VMA in a sequence begun after the fork
    (region_vma_completed_after), and reads the whole region from the far node. Every other
    mapping of the holder is bound without MPOL_F_NUMA_BALANCING (quiet), so the region is the
    only memory the scanner hints.

    Predicted from the one observation after the fork: the holder's mapcounts (1 for the copied
    half, 2 for the rest) and read-only entries (fork write-protects a COW mapping); the scan
    hints exactly the copied half (change_pte_range: a COW-shared folio is skipped; the holder is
    single-threaded on the far node, so target_node is the far node and the near pages are not
    target-skipped); the read faults exactly on those, each migrating to the far node
    (should_numa_migrate_memory: last_cpupid unset, no preferred node yet: the early-scan rule)
    with last_cpupid from the far node and read-only entries, while the shared half stays on the
    near node, shared, unhinted and write-protected; the task's numa_pages_migrated grows by the
    migrated pages. Exact."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    # quiet: the holder's other memory (stack, data) is never hinted. Otherwise the scan that
    # hints the region may also hint the holder's stack pages on the near node, and the read's own
    # stack accesses then fault and migrate them: 6 such pages once in 12 full runs, counted in
    # the task's numa_pages_migrated, which must equal the region's migrations.
    with scenario(ctx, Region(COW_REGION_MIB, node=near, exec_on=near, quiet=True)) as region:
        drain_lru_batches(ctx.guest)
        region.fork(node=near, pages=COW_COPIED_PAGES)
        forked = observe(ctx, region.pid)
        span = (region.addr, region.end)
        scanned = spin_until(region, ctx, far, region_vma_completed_after(span, forked.mm.numa_scan_seq), step=0.3)
        region.read(node=far)
        read = observe(ctx, region.pid)
    run = CowRun(span, COW_COPIED_PAGES, near, far, region.pid, forked, scanned, read)
    for label, obs in (("forked", forked), ("scanned", scanned), ("read", read)):
        ctx.keep(label, obs, region=list(span), copied=run.copied, near=near, far=far, pid=run.pid)
    verdict = judge_cow(ctx.facts, run)
    f = verdict.figures
    summary = (f"of {f.get('copied_pages', 0)} pages the child copied, {f.get('kernel_hinted_copied', 0)} hinted and "
               f"{f.get('kernel_migrated', 0)} migrated in all (model {f.get('migrated', 0)}); of "
               f"{f.get('shared_pages', 0)} COW-shared pages, {f.get('kernel_hinted_shared', 0)} hinted (model 0)")
    return Finding(summary, verdict.figures, tuple(verdict.diffs))


def replay_cow(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any]) -> Judgement:
    """check_cow_sharing's judgement over a recording (labels forked/scanned/read)."""
    n = notes["forked"]
    run = CowRun((int(n["region"][0]), int(n["region"][1])), int(n["copied"]), int(n["near"]), int(n["far"]),
                 int(n["pid"]), observations["forked"], observations["scanned"], observations["read"])
    return judge_cow(facts, run)
