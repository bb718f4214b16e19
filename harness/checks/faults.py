"""Hint-fault checks: migration and accounting of base pages and of PMD-mapped THPs, each
free-running from one observation (migratefilter.run_accesses)."""

from __future__ import annotations

from harness.checks.migratefilter import Access, judge_filter, run_accesses, takes
from harness.checks.observe import Context, Observation
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.workload import Region

# fault-migration writes this many pages of a 1 MiB region: 128 migrating pages fit the free
# run's WRITE_MARGIN_MS (measured for `placement`'s 128-page writes: 39-77 jiffies at HZ 250).
FAULT_PAGES = range(0, 128)


FAULT_WRITES = (Access("write from the far node", True, FAULT_PAGES, subject=takes(len(FAULT_PAGES), len(FAULT_PAGES))),)


@check("fault-migration", seconds=4.2, releases=EVERY_MODELLED_RELEASE)
def check_fault_migration(ctx: Context) -> Finding:
    """Hint faults and migration, free-running from one observation
    (migratefilter.run_accesses, the machinery of placement-exact): a 1 MiB region first
    touched on node 0 by a quiet task exec'd on the last node (its other memory is never
    hinted, so the write makes its only hint faults) is hinted by the passes that run while the
    task spins there (mm_users 1: change_pte_range hints the pages not on the spinning task's
    node), then the task writes its first 128 pages from there. The model predicts every pass
    and then, at the write, the placement the first fault runs and one fault per page in
    address order (nhmem's loop): each page migrates (last_cpupid unset: a first fault), comes
    back read-only from its migration entry, and the write's wp fault makes it writable and
    resets last_cpupid (wp_page_reuse). After every step the whole state is compared: each
    page's node, hint, last_cpupid and write bit, the task's NUMA_MEMBUF (private, on the new
    node), numa_faults_locality, numa_pages_migrated, the placement, the period, the hint-fault
    count and the scanner's state. Exact: no slack for pages outside the region (there are no
    hinted ones) or for passes (none can run inside the write: the free run waits for
    numa_next_scan to be far enough away, and a write that reaches it is inconclusive)."""
    nodes = ctx.nodes_with_cpus()
    request = Region(1, node=nodes[0], exec_on=nodes[-1], quiet=True)
    return judge_filter(run_accesses(ctx, request, FAULT_WRITES, write=True), FAULT_WRITES)


THP_REGION_MIB = 8  # four PMD-mapped THPs
# A read that migrates the four THPs took either 36-44 jiffies or 126-194 jiffies (up to 776 ms
# at HZ 250), slow in more than half of the tries (8 runs, 2-core TCG): too long for the 400 ms
# that PLACEMENT_KNOBS leave. The period is fixed at 2 s and a read starts with numa_next_scan
# at least 1.2 s away: 1.5 times the slowest read seen.
LARGE_FOLIO_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 2000, "scan_period_max_ms": 2000}
LARGE_FOLIO_MARGIN_MS = 1200
_THP_PAGES = range(THP_REGION_MIB * 256)


THP_READS = (
    # Read from the last node while the THPs are on node 0: each migrates whole.
    Access("read from the far node", True, _THP_PAGES, subject=takes(4, 4)),
    # Hinted again while the task spins on the last node, where they now are (change_huge_pmd
    # has no target-node skip), and read from there: each restored in place.
    Access("local read", True, _THP_PAGES, subject=takes(4, 0)),
)


def _pmd_mapped(obs: Observation, region: tuple[int, int]) -> list[str]:
    """The scenario's subject: the region mapped by four PMD entries (THP available)."""
    part = obs.table.within(*region)
    pmds = int((part.level == 1).sum())
    if pmds != 4 or len(part) != 4:
        return [f"the region is mapped by {len(part)} entries, {pmds} of them PMDs, not four THPs"]
    return []


@check("thp", seconds=7.3, releases=EVERY_MODELLED_RELEASE)
def check_thp(ctx: Context) -> Finding:
    """THP, free-running from one observation (migratefilter.run_accesses): an 8 MiB
    MADV_HUGEPAGE region (four PMD mappings) first touched on node 0 by a quiet task exec'd on
    the last node is hinted at PMD level (the path the seed patch created as do_pmd_numa_page,
    today do_huge_pmd_numa_page; change_huge_pmd hints a THP whatever its node) and read from
    the last node once the model says a placement is pending and every PMD is hinted. Every
    pass is predicted, numa_huge_pte_updates included (one per PMD hinted); the read takes one
    fault per THP (first faults: last_cpupid unset), each migrating it whole: its node, its
    last_cpupid (on the head page, where folio_xchg_last_cpupid keeps it, moved to the new folio
    by folio_migrate_flags: the reader's pid and CPU), its write bit (read-only: the migration
    entry was made from the PROT_NONE PMD), thp_migration_success by one per THP, and the books
    (512 pages per fault). Then the passes hint the THPs again on the node the task spins on
    (change_huge_pmd, unlike change_pte_range, has no target-node skip), and a second read from
    there restores each in place (do_huge_pmd_numa_page: local, writable again by
    can_change_pmd_writable). After every step the whole state is compared (PlacementRun). A
    region not mapped by four THPs is inconclusive."""
    nodes = ctx.nodes_with_cpus()
    request = Region(THP_REGION_MIB, thp=True, node=nodes[0], exec_on=nodes[-1], quiet=True)
    run = run_accesses(ctx, request, THP_READS, intact=_pmd_mapped, knobs=LARGE_FOLIO_KNOBS,
                       margin_ms=LARGE_FOLIO_MARGIN_MS)
    return judge_filter(run, THP_READS)
