"""A migration refused: the target node nearly full.

mm/migrate.c:migrate_misplaced_folio_prepare refuses a NUMA migration (-EAGAIN) when no zone of
the target node would keep its high watermark after taking the folio
(migrate_balanced_pgdat: zone_watermark_ok(zone, 0, high_wmark_pages(zone) + nr_pages,
ZONE_MOVABLE, ALLOC_CMA)). do_numa_page then restores the entry in place (writable, for an
exclusive anonymous page), books the fault with TNF_MIGRATE_FAIL (task_numa_fault:
numa_faults_locality[2]), and the task's next placement slows its scanner down
(update_task_scan_period's first branch: failed migrations).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from harness import inspect as nh
from harness.checks.migratefilter import Access, judge_filter, run_accesses
from harness.checks.observe import Context, Inconclusive
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.workload import FillKilled, Region, filled
from harness.model import Decision

# A maximum well above the period the task reads at, so that the doubling after the refused
# migrations shows instead of being capped (the check requires it to show): the first placement
# (no books yet: update_task_scan_period's first branch) doubles 800 to 1600 ms, the one after
# the refusals 1600 to 3200.
REFUSAL_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 800, "scan_period_max_ms": 6400}
# A read must not contain a pass (it could re-hint a page between its fault and the retry):
# numa_next_scan must be this far away when it starts. From the observation before a read to the
# one after it, 1024 refused faults took 56-62 jiffies and a one-page read 58-63 (2-core TCG,
# HZ 250: up to 252 ms, SSH and the observation included); 400 ms is 1.6 times that.
READ_MARGIN_MS = 400


def refuses(zones: list[nh.ZoneState], nr_pages: int) -> bool:
    """mm/migrate.c:migrate_balanced_pgdat is false: no managed zone passes
    zone_watermark_ok(zone, 0, high + nr_pages, ZONE_MOVABLE, ALLOC_CMA), whose order-0 test is
    free - unusable > mark + lowmem_reserve[ZONE_MOVABLE] (unusable: the highatomic reserve;
    ALLOC_CMA keeps CMA pages usable)."""
    return not any(z.free - z.highatomic > z.high + nr_pages + z.lowmem_reserve_movable for z in zones)


def fill_target(zones: list[nh.ZoneState]) -> int:
    """The free pages to leave the node with: halfway between its low and high watermarks (summed
    over its zones; the far node of the topologies used has one, DMA32). Below high + 1 every
    migration is refused (refuses()). nhmem fill reads the node's free pages between chunks and
    stops at the target, but the count goes on falling as the per-CPU counter deltas and page
    lists settle: measured 1,100 to 1,500 pages lower when the read starts (between the min and
    low marks of a 1 GiB node, 5,652 and 7,065; high is 8,478). Below low kswapd wakes; with only
    anonymous memory and no swap it finds little to reclaim, and it stops at the high mark
    anyway (pgdat_balanced). What decides is refuses() on the zones read before and after the
    read; a node back above high + 1 makes the run inconclusive."""
    return sum((z.low + z.high) // 2 for z in zones)


REFUSED_PAGES = range(1024)  # the whole 4 MiB region


def _all_refused(r: dict[str, Any]) -> str | None:
    if r["decisions"] != {Decision.MIGRATION_FAILED.value: len(REFUSED_PAGES)}:
        return f"the model decided {r['decisions']}, not {len(REFUSED_PAGES)} refused migrations"
    return None


def _slowed_down(r: dict[str, Any]) -> str | None:
    """The placement after the refusals ran on books holding them and took
    update_task_scan_period's first branch with room to double (the cap above twice the
    period: REFUSAL_KNOBS)."""
    if not r["locality"][2]:
        return f"the books the placement ran on hold no failed migration ({r['locality']})"
    if r["period_model"] != 2 * r["period_before"]:
        return (f"the model's period went {r['period_before']} -> {r['period_model']} ms, not doubled (the cap "
                f"reached?)")
    return None


REFUSED_READS = (
    # Read from the far node, held too full: every fault wants the page moved (a first fault)
    # and is refused.
    Access("every migration refused", True, REFUSED_PAGES, refused=True, subject=_all_refused),
    # One page at the next placement: it runs on the books of the refusals.
    Access("the placement after the refusals", True, range(0, 1), refused=True, subject=_slowed_down),
)


@check("migration-refused", seconds=12.4, releases=EVERY_MODELLED_RELEASE)
def check_migration_refused(ctx: Context) -> Finding:
    """A migration refused, free-running from one observation (migratefilter.run_accesses): a
    4 MiB region first touched on the near node by a quiet task exec'd on the far node (its
    other memory is never hinted). The far node is filled (nhmem fill, MPOL_BIND) until each of
    its zones sits halfway between its low and high watermarks (fill_target). Once the model
    says a placement is pending and the whole region is hinted (the task spinning on the far
    node), the task reads the region from there: every fault wants the page moved (last_cpupid
    unset) and migrate_misplaced_folio_prepare must refuse each (refuses(), checked on the
    zones read before and after the read; a fill that did not hold is inconclusive). At the
    next placement it reads one page: the placement runs on books holding the failures and
    update_task_scan_period must double the period (REFUSAL_KNOBS keep the cap above twice it),
    clear the locality books and restart numa_next_scan. After every step the whole state is
    compared (PlacementRun): every page stays on the near node, restored in place writable
    with last_cpupid from the far node; the books count one remote fault and one failure per
    page (TNF_MIGRATE_FAIL); numa_pages_migrated does not grow; the period, the clock and the
    scanner's state are the model's."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    zones = _zones(ctx, far)

    def refusing(node: int) -> list[str]:
        held = _zones(ctx, node)
        if refuses(list(held), 1):
            return []
        return [f"node {node}'s zones {[(z.name, z.free, z.low, z.high) for z in held]} would take a page (free above "
                f"high + 1): the fill did not hold"]

    try:
        run = run_accesses(ctx, Region(4, node=near, exec_on=far, quiet=True), REFUSED_READS, knobs=REFUSAL_KNOBS,
                           margin_ms=READ_MARGIN_MS, refusing=refusing,
                           held=filled(ctx.guest, far, fill_target(list(zones))))
    except FillKilled as err:
        # The fill overshot (FillKilled says why): the premise was never set up, so the
        # scenario is retried; a kernel that kills every fill fails after the runner's tries.
        raise Inconclusive(str(err)) from err
    finding = judge_filter(run, REFUSED_READS)
    summary = (f"{finding.summary}; the far node filled to {fill_target(list(zones))} free pages (low "
               f"{sum(z.low for z in zones)}, high {sum(z.high for z in zones)})")
    return replace(finding, summary=summary)


def _zones(ctx: Context, node: int) -> tuple[nh.ZoneState, ...]:
    with nh.snapshot(ctx.guest):
        return tuple(nh.read_zones(ctx.prog, node))
