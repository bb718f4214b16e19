"""Hint-fault checks: migration and accounting of base pages, the two-stage filter, and THPs."""

from __future__ import annotations

from typing import Any

from harness.checks.accounting import FaultBooks, compare_last_cpupid, compare_writable
from harness.checks.adapters import model_pages, model_task
from harness.checks.observe import Context, Observation, observe, outside_region, region_hinted, spin_until
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import HeldRegion, Region
from harness.model import (
    HPAGE_PMD_NR,
    Tunables,
    cpupid_cpu,
    cpupid_pid,
    hint_fault,
)


@check("fault-migration", seconds=4, releases=EVERY_MODELLED_RELEASE)
def check_fault_migration(ctx: Context) -> Finding:
    """Hint faults and migration. A 16 MiB region first touched on node 0 is fully hinted by
    its task spinning on another node; LRU batches are drained; then the task touches it from
    that node. The model replays one fault per page in address order (the touch loop's order)
    from the observed task state and each page's last_cpupid: which pages migrate, where they
    end, their new last_cpupid, and the task's numa_pages_migrated. Exact for the region; the
    task's migrated count may exceed the model's by the task's own hinted pages outside the
    region at the start (its stack and data, counted from the walk), never by more."""
    remote = ctx.nodes_with_cpus()[-1]
    remote_cpus = sorted(c for c, n in ctx.node_of_cpu.items() if n == remote)
    with scenario(ctx, Region(16, node=0)) as region:
        all_hinted = region_hinted(region)
        drain_lru_batches(ctx.guest)
        before = spin_until(region, ctx, remote, all_hinted, step=0.5)
        region.touch(node=remote)
        after = observe(ctx, region.pid)
    task = model_task(before, len(ctx.nodes_with_cpus()))
    books = FaultBooks.opening(task)
    pages = model_pages(ctx.facts, before)
    diffs: list[str] = []
    migrated_model = 0
    kernel_region = {e.vaddr: e for e in after.table.within(region.addr, region.end)}
    for va in sorted(p for p in pages if region.addr <= p < region.end):
        result = hint_fault(task, pages[va], cpu=remote_cpus[0], node_of_cpu=ctx.node_of_cpu, rules=ctx.facts.rules,
                            mm_seq=before.mm.numa_scan_seq, write=True)
        task = result.task
        books.add(pages[va], result, remote)
        migrated_model += result.page.nr_pages if result.migrated else 0
        kernel = kernel_region.get(va)
        if kernel is None:
            diffs.append(f"{va:#x}: no entry after the touch")
            continue
        if kernel.node != result.page.node:
            diffs.append(f"{va:#x}: model puts the page on node {result.page.node} ({result.decision}), kernel on "
                         f"node {kernel.node}")
        if kernel.hint:
            diffs.append(f"{va:#x}: still a hint entry after being touched")
        diffs.extend(compare_writable(va, result, kernel))
        diffs.extend(compare_last_cpupid(ctx.facts, va, result.page.last_cpupid, kernel.last_cpupid, remote, region.pid))
    kernel_delta = after.task.numa_pages_migrated - before.task.numa_pages_migrated
    outside = outside_region(before.table, region)
    slack = int(outside.pages[outside.hint].sum())
    if not migrated_model <= kernel_delta <= migrated_model + slack:
        diffs.append(f"task numa_pages_migrated grew by {kernel_delta}; the model migrates {migrated_model} region "
                     f"pages (bound {migrated_model}..{migrated_model + slack} with {slack} hinted pages outside)")
    hint_faults = after.vmstat["numa_hint_faults"] - before.vmstat["numa_hint_faults"]
    region_pages = region.length // 4096
    global_migrated = after.vmstat["numa_pages_migrated"] - before.vmstat["numa_pages_migrated"]
    if global_migrated < kernel_delta:
        diffs.append(f"numa_pages_migrated grew by {global_migrated}, fewer than the {kernel_delta} pages this task "
                     f"migrated (migrate_misplaced_folio counts every one)")
    # A pass during the touch re-hints the restored pages of its window; the touch goes on to
    # later pages, so only the page under access at that moment faults twice: one per pass.
    accounting_diffs, accounting = books.compare(before, after, region, refault_pages=passes_at_most(before, after))
    diffs.extend(accounting_diffs)
    figures = {**accounting, "region_pages": region_pages, "migrated_model": migrated_model, "migrated_kernel_task": kernel_delta,
               "numa_hint_faults_delta": hint_faults,
               "numa_hint_faults_local_delta": after.vmstat["numa_hint_faults_local"] - before.vmstat["numa_hint_faults_local"],
               "task_scan_seq": before.task.numa_scan_seq, "preferred_nid": before.task.numa_preferred_nid}
    return Finding(f"{region_pages} hinted pages touched from node {remote}: model migrates {migrated_model}, "
                       f"kernel task migrated {kernel_delta}", figures, tuple(diffs))



@check("two-stage-filter", seconds=10, releases=EVERY_MODELLED_RELEASE)
def check_two_stage_filter(ctx: Context) -> Finding:
    """The two-stage filter (fair.c:should_numa_migrate_memory) once the early-scan exception
    is over (task numa_scan_seq > 4 and a preferred node): a page last faulted from node 0 and
    then faulted from node 1 must NOT move; faulted from node 1 again, it moves. The accesses are
    reads: a write after migration would reset last_cpupid (wp_page_reuse). Each round is
    replayed in the model from the observed task state and every page's last_cpupid.

    Tolerance, derived: task_numa_work runs as task_work on the return to user mode, i.e. after a
    hint fault's handler and before the faulting load is retried. A pass that runs at that moment
    re-hints the page just restored (mm_users is 2, so change_pte_range does not skip it), and the
    retried load faults again, now with a last_cpupid from this node: that one page migrates. So a
    round may move up to one page more than the model per scanner pass that ran during the read
    (passes_at_most: counted from the task's CPU time and node_stamp), each such page
    with last_cpupid from the reading node. The same retry on a page the read just migrated is a
    local fault: the page stays, but comes back writable (numa_rebuild_single_mapping) where the
    model, which sees one fault, leaves it read-only; such pages count against the same bound.
    Such a pass also hints every page the read had already restored (mm_users is 2, so none is
    skipped as local): those are hint entries when observed, whose write bit is not there to
    compare; a hint entry after a read during which no pass ran is a diff. Everything else is
    exact."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    cpu_of = {n: min(c for c, m in ctx.node_of_cpu.items() if m == n) for n in (near, far)}
    # A sleeping helper thread makes mm_users 2: the scanner then hints the spinning task's own
    # (local) pages too, its faults keep task_numa_placement running, and numa_scan_seq advances.
    rounds: list[dict[str, Any]] = []
    diffs: list[str] = []
    with scenario(ctx, Region(4, node=far, helper=True)) as region:
        def hinted_and_late(o: Observation) -> bool:
            part = o.table.within(region.addr, region.end)
            return (o.task.numa_scan_seq > 4 and o.task.numa_preferred_nid >= 0 and bool(len(part))
                    and bool(part.hint.all()))
        # Round 1: pages on `far`, hinted while the task runs on `near`; read from `near`.
        # Round 2: pages (now on `near`, last_cpupid from `near`) hinted from `far`; read from `far`.
        # Round 3: the same again from `far`.
        for spin_node, read_node in ((near, near), (far, far), (far, far)):
            drain_lru_batches(ctx.guest)
            before = spin_until(region, ctx, spin_node, hinted_and_late, step=0.5, limit=90)
            region.read(node=read_node)
            after = observe(ctx, region.pid)
            round_diffs, figures = _replay_read(ctx, region, before, after, read_node, cpu_of[read_node])
            diffs.extend(f"round {len(rounds) + 1}: {d}" for d in round_diffs)
            rounds.append(figures)
    if len(rounds) == 3 and not rounds[1]["moved_model"] == 0 < rounds[2]["moved_model"]:
        diffs.append(f"the scenario did not exercise the filter: model moved {rounds[1]['moved_model']} then "
                     f"{rounds[2]['moved_model']} pages")
    summary = ", ".join(f"read from node {r['read_from']}: {r['moved_kernel']} moved (model {r['moved_model']})"
                        for r in rounds)
    return Finding(summary, {"rounds": rounds}, tuple(diffs))


def _replay_read(ctx: Context, region: HeldRegion, before: Observation, after: Observation, read_node: int,
                 cpu: int) -> tuple[list[str], dict[str, Any]]:
    """One round of check_two_stage_filter: the read from `read_node` replayed fault by fault in
    the model from `before`, compared page by page with `after`, within the docstring's bound
    on pages that faulted twice."""
    task, pages = model_task(before, len(ctx.nodes_with_cpus())), model_pages(ctx.facts, before)
    kernel_after = {e.vaddr: e for e in after.table.within(region.addr, region.end)}
    moved_model = moved_kernel = rehinted = 0
    second_faults: list[int] = []
    decisions: dict[str, int] = {}
    diffs: list[str] = []
    passes = passes_at_most(before, after)
    for va in sorted(p for p in pages if region.addr <= p < region.end):
        result = hint_fault(task, pages[va], cpu=cpu, node_of_cpu=ctx.node_of_cpu, mm_seq=before.mm.numa_scan_seq,
                            rules=ctx.facts.rules)
        task = result.task
        decisions[result.decision] = decisions.get(result.decision, 0) + 1
        moved_model += result.migrated
        kernel = kernel_after.get(va)
        if kernel is None:
            diffs.append(f"{va:#x} has no entry after the read")
            continue
        moved_kernel += kernel.node != pages[va].node
        if not result.migrated and kernel.node == read_node != pages[va].node and kernel.last_cpupid is not None \
                and ctx.node_of_cpu.get(cpupid_cpu(kernel.last_cpupid)) == read_node:
            second_faults.append(va)  # see check_two_stage_filter: re-hinted between fault and retry
            continue
        if kernel.node != result.page.node:
            was = pages[va]
            last = "unset" if was.last_cpupid is None else \
                f"cpu {cpupid_cpu(was.last_cpupid)} pid {cpupid_pid(was.last_cpupid)}"
            diffs.append(f"{va:#x} on node {kernel.node}, model node {result.page.node} ({result.decision}; before: "
                         f"node {was.node}, hint {was.hint}, last_cpupid {last}; task seq {before.task.numa_scan_seq} -> "
                         f"{after.task.numa_scan_seq}, preferred {before.task.numa_preferred_nid} -> "
                         f"{after.task.numa_preferred_nid}, mm_users {before.mm.mm_users})")
        writable = compare_writable(va, result, kernel)
        if kernel.hint:
            # A hint entry has no write bit to compare. A pass that ran during the read hints the
            # pages the read had already restored (mm_users 2: none is skipped as local).
            writable = []
            rehinted += 1
            if not passes:
                diffs.append(f"{va:#x} is a NUMA hint again after the read, but no scanner pass ran during it")
        if writable and result.migrated and kernel.writable and kernel.node == read_node:
            # Re-hinted after it moved and faulted again, locally: restored in place, writable.
            second_faults.append(va)
            writable = []
        diffs.extend(compare_last_cpupid(ctx.facts, va, result.page.last_cpupid, kernel.last_cpupid, read_node, region.pid)
                     + writable)
    if len(second_faults) > passes:
        diffs.append(f"{len(second_faults)} pages faulted twice during the read (moved against the two-stage filter, "
                     f"or came back writable after moving; e.g. {second_faults[0]:#x}) but at most {passes} scanner "
                     f"passes ran during the read, each allowing one re-hinted retry")
    return diffs, {"second_fault_pages": len(second_faults), "passes_during_read_max": passes, "read_from": read_node,
                   "seq": before.task.numa_scan_seq, "preferred": before.task.numa_preferred_nid,
                   "moved_model": moved_model, "moved_kernel": moved_kernel, "decisions": decisions,
                   "rehinted_after_read": rehinted}


def passes_at_most(before: Observation, after: Observation) -> int:
    """The most scanner passes the task can have run between two observations, from the kernel's
    own counters. fair.c:task_tick_numa queues task_numa_work only when the task's
    sum_exec_runtime exceeds node_stamp + its period, and then adds the period to node_stamp
    (task_numa_work adds two more ticks); so k triggers after `before` need sum_exec_runtime >
    node_stamp + k periods by `after`. A placement in between may shorten the period: the shorter
    of the two observed periods bounds it (at most one placement per new mm sequence). A trigger
    queued just before `before` whose work had not run yet adds one."""
    if after.mm.numa_next_scan == before.mm.numa_next_scan:
        return 0  # every pass moves numa_next_scan (the cmpxchg that lets it run)
    period_ns = min(before.task.numa_scan_period, after.task.numa_scan_period) * 1_000_000
    triggers = max(0, (after.task.sum_exec_runtime - before.task.node_stamp) // max(1, period_ns))
    return int(triggers) + int(before.task.numa_work_pending)


# A read must not contain a scanner pass: wait for a moment with no pass due for this long (three
# SSH round trips; FAST_SCAN's shortest period is 100 ms).
READ_MARGIN_MS = 80


@check("thp", seconds=6, releases=EVERY_MODELLED_RELEASE)
def check_thp(ctx: Context) -> Finding:
    """THP: an 8 MiB MADV_HUGEPAGE region (four PMD mappings) on node 0 is hinted at PMD level
    (the path the seed patch created as do_pmd_numa_page, today do_huge_pmd_numa_page) and then
    migrated whole when read from another node. Only this task maps THPs, so the global
    numa_huge_pte_updates delta while hinting equals the PMDs hinted (4) plus re-hints of PMDs
    restored by faults (none: the region is not touched), and thp_migration_success grows by 4.
    Each migrated THP's last_cpupid (on its head page, where folio_xchg_last_cpupid keeps it) is
    the reading task's pid and a CPU of the reading node: folio_migrate_flags moves it from the
    old folio to the new one. It is compared whether or not the scanner has hinted the PMD again
    by the time of the observation (a hint keeps the pfn, inverted above bit 21). The task's
    books gain the model's 4 x 512 pages, plus at most its own pages outside the region and 512
    per scanner pass that can have run during the read (passes_at_most): such a pass hints the
    THP under the read again, which faults on it a second time, locally."""
    remote = ctx.nodes_with_cpus()[-1]
    remote_cpus = sorted(c for c, n in ctx.node_of_cpu.items() if n == remote)
    with scenario(ctx, Region(8, thp=True, node=0)) as region:
        start = observe(ctx, region.pid)
        def pmds_hinted(o: Observation) -> bool:
            # And no pass due for READ_MARGIN_MS: the read (one SSH command, 30-70 ms measured)
            # then starts no new sequence, so at most the pending placement runs between the two
            # observations and the books are recoverable (recover_accounting), not skipped.
            part = o.table.within(region.addr, region.end)
            return (bool(len(part)) and bool(part.hint[part.level == 1].sum() == 4)
                    and o.mm.numa_next_scan - o.balancing.jiffies >= Tunables(hz=ctx.hz).ms_to_jiffies(READ_MARGIN_MS))
        drain_lru_batches(ctx.guest)
        hinted = spin_until(region, ctx, remote, pmds_hinted, step=0.5)
        region.read(node=remote)
        after = observe(ctx, region.pid)
    diffs = []
    pmds = [e for e in start.table.within(region.addr, region.end) if e.level == "pmd"]
    if len(pmds) != 4:
        diffs.append(f"the region is mapped by {len(pmds)} PMDs, not 4: THP was not available, the check lost its subject")
    huge_updates = hinted.vmstat["numa_huge_pte_updates"] - start.vmstat["numa_huge_pte_updates"]
    if huge_updates != 4:
        diffs.append(f"numa_huge_pte_updates grew by {huge_updates} while the 4 PMDs were hinted, model: 4")
    task = model_task(hinted, len(ctx.nodes_with_cpus()))
    books = FaultBooks.opening(task)
    pages = model_pages(ctx.facts, hinted)
    kernel_after = {e.vaddr: e for e in after.table.within(region.addr, region.end)}
    migrated = 0
    for va in sorted(p for p in pages if region.addr <= p < region.end):
        result = hint_fault(task, pages[va], cpu=remote_cpus[0], node_of_cpu=ctx.node_of_cpu, rules=ctx.facts.rules,
                            mm_seq=hinted.mm.numa_scan_seq)
        task = result.task
        books.add(pages[va], result, remote)
        migrated += result.migrated
        kernel = kernel_after.get(va)
        if kernel is None or kernel.level != "pmd":
            diffs.append(f"{va:#x}: no longer a PMD mapping after the fault (split instead of migrated whole?)")
        elif kernel.node != result.page.node:
            # Not compared: whether the PMD is a hint again. change_huge_pmd hints a THP whatever its
            # node, and the scanner keeps running while the task touches the region.
            diffs.append(f"{va:#x}: THP on node {kernel.node}, model node {result.page.node}")
        else:
            diffs.extend(compare_last_cpupid(ctx.facts, va, result.page.last_cpupid, kernel.last_cpupid, remote, region.pid))
    thp_migrations = after.vmstat["thp_migration_success"] - hinted.vmstat["thp_migration_success"]
    if thp_migrations != migrated:
        diffs.append(f"thp_migration_success grew by {thp_migrations}, model migrates {migrated} THPs")
    # A pass during the read hints every THP again whatever its node (change_huge_pmd), and the
    # read, going on through the THP under access, faults on it again: 512 pages per pass.
    accounting_diffs, accounting = books.compare(hinted, after, region,
                                                 refault_pages=passes_at_most(hinted, after) * HPAGE_PMD_NR)
    diffs.extend(accounting_diffs)
    figures = {**accounting, "pmds": len(pmds), "numa_huge_pte_updates_delta": huge_updates, "thp_migrated_model": migrated,
               "thp_migration_success_delta": thp_migrations,
               "rehinted_after_read": int(after.table.within(region.addr, region.end).hint.sum())}
    return Finding(f"{len(pmds)} PMD hints, {thp_migrations} whole-THP migrations "
                       f"(model {migrated})", figures, tuple(diffs))

