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

from dataclasses import dataclass, field, replace
from typing import Any

from harness import inspect as nh
from harness.checks.accounting import compare_last_cpupid, compare_writable
from harness.checks.adapters import model_pages, model_task, model_tunables
from harness.checks.observe import Context, GuestFacts, Inconclusive, Observation, observe, spin_until
from harness.checks.placement import placement_pending
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scenario import scenario
from harness.checks.workload import Region, filled
from harness.model import Decision, Task, Tunables, hint_fault, task_scan_max, update_task_scan_period

# A maximum well above the period the task reads at, so that the doubling after the refused
# migrations shows instead of being capped (the check requires it to show).
REFUSAL_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 400, "scan_period_max_ms": 3200}
# A read must not contain a pass (it could re-hint a page between its fault and the retry):
# numa_next_scan must be this far away when it starts (a 1024-page read of refused faults and its
# SSH command take well under 100 ms; see largefolio.READ_MARGIN_MS for the measurement).
READ_MARGIN_MS = 250


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


@dataclass(frozen=True)
class RefusedRead:
    """check_migration_refused's observations: before and after the read, and at the first
    placement after it; each with the far node's zones."""

    node: int
    cpu: int
    pid: int
    region: tuple[int, int]
    before: Observation
    after: Observation
    zones: tuple[tuple[nh.ZoneState, ...], ...]  # at before, after
    # A placement pending, before the one-page read that runs it, and right after it (None:
    # the read alone is judged, as the check does before it waits for the placement).
    pending: Observation | None = None
    placed: Observation | None = None


@dataclass
class _Judged:
    diffs: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def judge_refused(facts: GuestFacts, r: RefusedRead) -> _Judged:
    """The model's side of check_migration_refused (no guest: golden observations replay through it)."""
    judged = _Judged()
    for label, zones in zip(("before", "after"), r.zones, strict=True):
        if not refuses(list(zones), 1):
            raise Inconclusive(f"the far node's zones {[(z.name, z.free, z.low, z.high) for z in zones]} {label} the "
                               f"read would take a page (free above high + 1): the fill did not hold")
    if r.after.mm.numa_next_scan != r.before.mm.numa_next_scan:
        raise Inconclusive(f"a scanner pass ran during the read (numa_next_scan {r.before.mm.numa_next_scan} -> "
                           f"{r.after.mm.numa_next_scan})")
    start, end = r.region
    nr_nodes = len(set(facts.node_of_cpu.values()))
    task = model_task(r.before, nr_nodes)
    opening = task
    pages = {va: p for va, p in model_pages(facts, r.before).items() if start <= va < end}
    kernel = {e.vaddr: e for e in r.after.table.within(start, end)}
    diffs: list[str] = []
    decisions: dict[str, int] = {}
    for va in sorted(pages):
        if not pages[va].hint:
            continue
        # No placement during the read: check_migration_refused waits for task sequence == mm's.
        result = hint_fault(task, pages[va], cpu=r.cpu, node_of_cpu=facts.node_of_cpu, migration_succeeds=False,
                            rules=facts.rules)
        task, pages[va] = result.task, result.page
        decisions[result.decision.value] = decisions.get(result.decision.value, 0) + 1
        e = kernel.get(va)
        if e is None:
            diffs.append(f"{va:#x}: no longer mapped")
            continue
        if (e.node, e.hint) != (result.page.node, False):
            diffs.append(f"{va:#x}: node {e.node} hint={e.hint} after the read, model node {result.page.node} "
                         f"({result.decision}: the target node is below its high watermark)")
        diffs.extend(compare_writable(va, result, e))
        diffs.extend(compare_last_cpupid(facts, va, result.page.last_cpupid, e.last_cpupid, r.node, r.pid))
    judged.diffs.extend(diffs[:8] + ([f"... and {len(diffs) - 8} more"] if len(diffs) > 8 else []))
    outside = _outside(r.before, r.after, r.region, r.node)
    locality = tuple(r.after.task.locality[i] - r.before.task.locality[i] for i in range(3))
    model = tuple(task.locality[i] - opening.locality[i] for i in range(3))
    expected = (model[0] + outside[0], model[1] + outside[1], model[2] + outside[2])
    if locality != expected:
        judged.diffs.append(f"numa_faults_locality (remote, local, failed) grew by {locality}, model {model} + "
                            f"{outside} for the task's faults outside the region (TNF_MIGRATE_FAIL books the "
                            f"refused page in [2])")
    migrated = r.after.task.numa_pages_migrated - r.before.task.numa_pages_migrated
    if migrated != outside[3]:
        judged.diffs.append(f"the task's numa_pages_migrated grew by {migrated}; nothing in the region may move, "
                            f"{outside[3]} pages outside it were seen to")
    judged.figures = {"decisions": decisions, "locality_delta": list(locality), "outside": list(outside),
                      "zones": [[z.as_json() for z in zones] for zones in r.zones]}
    if decisions.get(Decision.MIGRATION_FAILED.value, 0) == 0:
        judged.diffs.append(f"the model refused no migration ({decisions}): the check lost its subject")
    if r.placed is None:
        return judged
    judged.diffs.extend(_period_response(facts, r, replace(task, locality=(
        task.locality[0] + outside[0], task.locality[1] + outside[1], task.locality[2] + outside[2]))))
    judged.figures["period"] = [r.after.task.numa_scan_period, r.placed.task.numa_scan_period]
    if r.before.task.numa_scan_period * 2 > r.placed.task.numa_scan_period_max:
        judged.diffs.append(f"the period before the read ({r.before.task.numa_scan_period} ms) doubled reaches the "
                            f"cap ({r.placed.task.numa_scan_period_max} ms): the doubling cannot show, the check lost "
                            f"its subject")
    return judged


def _outside(before: Observation, after: Observation, region: tuple[int, int], node: int) -> tuple[int, int, int, int]:
    """Faults outside the region during the read (no pass ran, so exactly the entries hinted
    before and not after): (remote, local, failed, migrated) base pages. A remote one that
    stayed put was refused too (the same nearly full node) and books a failure."""
    start, end = region
    now = {e.vaddr: e for e in after.table if not start <= e.vaddr < end}
    remote = local = failed = migrated = 0
    for e in before.table:
        if not e.hint or start <= e.vaddr < end or e.vaddr not in now or now[e.vaddr].hint:
            continue
        if e.node == node:
            local += 1
        else:
            remote += 1
            moved = now[e.vaddr].node != e.node
            migrated += moved
            failed += not moved
    return remote, local, failed, migrated


def _period_response(facts: GuestFacts, r: RefusedRead, books: Task) -> list[str]:
    """The first placement after the read: its books hold failed migrations, so
    update_task_scan_period takes its first branch: period doubled (capped at task_scan_max),
    numa_faults_locality cleared, numa_next_scan = jiffies + the new period."""
    a, p, c = r.after, r.pending, r.placed
    assert p is not None and c is not None
    if p.task.numa_scan_seq != a.task.numa_scan_seq or c.mm.numa_scan_seq != p.mm.numa_scan_seq:
        raise Inconclusive(f"another placement could have run (task sequence {a.task.numa_scan_seq} -> "
                           f"{p.task.numa_scan_seq} before the one-page read, mm {p.mm.numa_scan_seq} -> "
                           f"{c.mm.numa_scan_seq} during it)")
    if c.task.numa_scan_seq != c.mm.numa_scan_seq:
        diffs0 = [f"the task faulted on a hint with its placement pending (task sequence {p.task.numa_scan_seq}, mm "
                  f"{p.mm.numa_scan_seq}, numa_migrate_retry passed) but task_numa_placement did not run"]
        return diffs0
    tun = model_tunables(c, facts.hz)
    period_max = task_scan_max(c.mm.rss_pages, tun)
    # The period the model carries from `before`: no placement ran during the read.
    placed = update_task_scan_period(replace(books, numa_scan_period=r.before.task.numa_scan_period),
                                     shared=0, private=1, scan_max=period_max, rules=facts.rules)
    diffs = []
    if a.task.numa_scan_period != r.before.task.numa_scan_period:
        diffs.append(f"the scan period moved from {r.before.task.numa_scan_period} to {a.task.numa_scan_period} ms "
                     f"during a read with no placement (only update_task_scan_period sets it)")
    if c.task.numa_scan_period != placed.numa_scan_period:
        diffs.append(f"after the placement the scan period is {c.task.numa_scan_period} ms, model "
                     f"{placed.numa_scan_period} (update_task_scan_period: failed migrations double it, up to "
                     f"task_scan_max {period_max})")
    period = Tunables(hz=facts.hz).ms_to_jiffies(placed.numa_scan_period)
    low, high = p.balancing.jiffies + period, c.balancing.jiffies + period
    if c.balancing.jiffies < low and not low <= c.mm.numa_next_scan <= high:
        diffs.append(f"numa_next_scan {c.mm.numa_next_scan}, model {low}..{high} (update_task_scan_period restarts "
                     f"the scan clock: jiffies + the new period)")
    return diffs


@check("migration-refused", seconds=12, releases=EVERY_MODELLED_RELEASE)
def check_migration_refused(ctx: Context) -> Finding:
    """A 4 MiB region on the near node, its single-threaded task exec'd on the far node. The far
    node is filled (nhmem fill, MPOL_BIND) until each of its zones sits halfway between its low
    and high watermarks (fill_target). The task spins on the far node until the region is hinted,
    its sequence equals the mm's (no placement during the read) and numa_next_scan is
    READ_MARGIN_MS away; then reads the region from the far node. Every fault wants to migrate
    (last_cpupid unset) and migrate_misplaced_folio_prepare must refuse each (refuses(): checked
    on the zones read before and after the read; a fill that did not hold is inconclusive): every
    page stays on the near node, restored writable, with last_cpupid from the far node; the
    task's numa_faults_locality grows by one remote and one failed per page (plus the faults the
    task took outside the region, seen in its entries); numa_pages_migrated does not grow for
    the region. The task then spins until its next placement is pending (placement_pending)
    and faults on one page: the placement runs on books holding the failures, and
    update_task_scan_period must double the period (capped at task_scan_max, which the check
    needs above twice the period) and restart numa_next_scan. Exact."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    far_cpu = min(c for c, n in ctx.node_of_cpu.items() if n == far)
    margin = Tunables(hz=ctx.hz).ms_to_jiffies(READ_MARGIN_MS)
    with scenario(ctx, Region(4, node=near, exec_on=far), knobs=REFUSAL_KNOBS) as region:
        span = (region.addr, region.end)
        with nh.snapshot(ctx.guest):
            zones = nh.read_zones(ctx.prog, far)
        with filled(ctx.guest, far, fill_target(zones)):
            def ready(o: Observation) -> bool:
                part = o.table.within(*span)
                return (bool(len(part)) and bool(part.hint.all()) and o.task.numa_scan_seq == o.mm.numa_scan_seq
                        and o.mm.numa_next_scan - o.balancing.jiffies >= margin)

            held = _zones(ctx, far)
            if not refuses(list(held), 1):
                raise Inconclusive(f"after the fill the far node's zones {[(z.name, z.free, z.low, z.high) for z in held]}"
                                   f" still take a page: the fill did not hold")
            before = spin_until(region, ctx, far, ready, step=0.3)
            zones_before = _zones(ctx, far)
            region.read(node=far)
            after = observe(ctx, region.pid)
            zones_after = _zones(ctx, far)
            read = RefusedRead(far, far_cpu, region.pid, span, before, after, (zones_before, zones_after))
            early = judge_refused(ctx.facts, read)
            if early.diffs:  # the read went wrong: waiting for the placement would only hide it
                return Finding(f"the read: {early.figures['decisions']}", early.figures, tuple(early.diffs))

            # The placement after the read runs at the task's next hint fault once the mm has
            # started another sequence (and numa_migrate_retry has passed): wait for that, then
            # fault on one page of the region (refused again: it books a second failure, after
            # the placement has run on the books of the read).
            def pending(o: Observation) -> bool:
                first = o.table.within(span[0], span[0] + 4096)
                return (placement_pending(o) and bool(len(first)) and bool(first.hint.all()))

            waiting = spin_until(region, ctx, far, pending, step=0.2)
            region.read(node=far, pages=1)
            placed = observe(ctx, region.pid)
        run = replace(read, pending=waiting, placed=placed)
        for label, obs in (("before", before), ("after", after), ("pending", waiting), ("placed", placed)):
            ctx.keep(label, obs, node=far, cpu=far_cpu, pid=region.pid, region=list(span),
                     zones=[[z.as_json() for z in zs] for zs in run.zones])
    judged = judge_refused(ctx.facts, run)
    f = judged.figures
    period = f.get("period", ["?", "?"])
    summary = (f"{f['decisions']} on a node at {[z.free for z in zones_before]} free pages (high "
               f"{[z.high for z in zones_before]}); period {period[0]} -> {period[1]} ms at the next placement")
    return Finding(summary, f, tuple(judged.diffs))


def _zones(ctx: Context, node: int) -> tuple[nh.ZoneState, ...]:
    with nh.snapshot(ctx.guest):
        return tuple(nh.read_zones(ctx.prog, node))


def replay_refused(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any]) -> _Judged:
    """check_migration_refused's judgement over a recording (labels before/after/pending/placed)."""
    n = notes["before"]
    zones = tuple(tuple(nh.ZoneState(**z) for z in zs) for zs in n["zones"])
    run = RefusedRead(int(n["node"]), int(n["cpu"]), int(n["pid"]), (int(n["region"][0]), int(n["region"][1])),
                      observations["before"], observations["after"], zones, observations["pending"],
                      observations["placed"])
    return judge_refused(facts, run)
