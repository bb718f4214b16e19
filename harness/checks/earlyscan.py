"""The early-scan exception of kernel/sched/fair.c:should_numa_migrate_memory.

    if ((p->numa_preferred_nid == NUMA_NO_NODE || p->numa_scan_seq <= 4) &&
        (cpupid_pid_unset(last_cpupid) || cpupid_match_pid(p, last_cpupid)))
            return true;

Early in a task's life ("two full passes of the multi-stage node selection", the comment says)
its own page moves on the first fault from a new node; afterwards the two-stage filter applies:
a page whose previous fault came from another node stays. The check puts the same kind of page
(the task's own, last faulted from the other node) in front of both branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from harness.checks.accounting import compare_carried_pages, compare_writable
from harness.checks.adapters import model_pages, model_task
from harness.checks.observe import Context, GuestFacts, Inconclusive, KernelNeverReached, Observation, observe
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import HeldRegion, Region
from harness.model import Decision, Page, Tunables, hint_fault

# One scanner pass per second of the task's CPU time (task_scan_min = task_scan_max = 1000 ms
# for a task this small: one scan window), so the first four sequences last seconds, not
# fractions of one (FAST_SCAN's 100 ms would run them out before the task had a preferred node).
EARLY_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 1000, "scan_period_max_ms": 1000}
# A read must not contain a pass: it starts only when numa_next_scan is at least this far away
# (task_numa_work does nothing before it). A 256-page read with migrations takes well under
# 100 ms under TCG, an SSH command 30-70 ms; 300 ms covers both three times over.
READ_MARGIN_MS = 300
EARLY_REGION_MIB = 1  # 256 pages
EARLY_SEQ_LIMIT = 4  # fair.c:should_numa_migrate_memory's "p->numa_scan_seq <= 4"


@dataclass(frozen=True)
class EarlyRead:
    """One read of check_early_scan: its phase, the node and CPU it reads from, and the
    observations just before and after it."""

    phase: str
    node: int
    cpu: int
    before: Observation
    after: Observation


@dataclass
class _Judged:
    diffs: list[str] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)


def judge_early_reads(facts: GuestFacts, region: tuple[int, int], pid: int, reads: list[EarlyRead]) -> _Judged:
    """The model's side of check_early_scan (no guest: golden observations replay through it).

    The region's pages (node, last_cpupid) are taken from the first read's `before` only and
    carried through every read by the model. At each read the kernel supplies what the model
    does not predict here: which pages the scanner hinted (scanner-window's subject) and the
    task's sequence and preferred node (placement's subject), with no placement possible during
    the read (check_early_scan waits for task sequence == mm sequence, and a read during which
    numa_next_scan moved, i.e. a pass ran, is inconclusive)."""
    judged = _Judged()
    start, end = region
    nr_nodes = len(set(facts.node_of_cpu.values()))
    pages: dict[int, Page] = {}
    for number, read in enumerate(reads, 1):
        label = f"read {number} ({read.phase}, from node {read.node})"
        before, after = read.before, read.after
        if after.mm.numa_next_scan != before.mm.numa_next_scan:
            raise Inconclusive(f"{label}: a scanner pass ran during the read (numa_next_scan "
                               f"{before.mm.numa_next_scan} -> {after.mm.numa_next_scan}): a page restored by a "
                               f"fault may have been hinted again before the load retried")
        kernel_before = {va: p for va, p in model_pages(facts, before).items() if start <= va < end}
        if not pages:
            pages = kernel_before
        else:
            judged.diffs.extend(f"{label}, before: {d}" for d in compare_carried_pages(facts, pages, before, region, pid,
                                                                                 hints=False))
        # The scanner's hint bits are its input; node and last_cpupid stay the model's.
        pages = {va: replace(p, hint=kernel_before[va].hint) if va in kernel_before else p for va, p in pages.items()}
        task = model_task(before, nr_nodes)
        decisions: dict[str, int] = {}
        migrated = 0
        results = {}
        for va in sorted(pages):
            if not pages[va].hint:
                continue
            # No placement can run: the task's sequence already equals the mm's (mm_seq=None).
            result = hint_fault(task, pages[va], cpu=read.cpu, node_of_cpu=facts.node_of_cpu, mm_seq=None,
                                rules=facts.rules)
            task, pages[va], results[va] = result.task, result.page, result
            decisions[result.decision.value] = decisions.get(result.decision.value, 0) + 1
            migrated += result.migrated
        kernel_after = {e.vaddr: e for e in after.table.within(start, end)}
        found = compare_carried_pages(facts, pages, after, region, pid, hints=True)
        for va, result in results.items():
            if va in kernel_after and not kernel_after[va].hint:
                found.extend(compare_writable(va, result, kernel_after[va]))
        judged.diffs.extend(f"{label}: {d}" for d in found[:8])
        if len(found) > 8:
            judged.diffs.append(f"{label}: ... and {len(found) - 8} more")
        kernel_migrated = after.task.numa_pages_migrated - before.task.numa_pages_migrated
        # The task's own pages outside the region (stack, data: hinted too, mm_users being 2)
        # fault during the read as well; with no pass during it, only entries hinted before
        # it can, and each that migrated shows on its new node after it: the workload's own
        # accesses, taken as input.
        outside = _moved_outside(before, after, region)
        if kernel_migrated != migrated + outside:
            judged.diffs.append(f"{label}: the task's numa_pages_migrated grew by {kernel_migrated}, model {migrated} "
                                f"in the region + {outside} pages seen to move outside it")
        node_before = {e.vaddr: e.node for e in before.table.within(start, end)}
        moved_region = sum(1 for va, e in kernel_after.items() if va in node_before and e.node != node_before[va])
        judged.reads.append({"moved_kernel_region": moved_region, "phase": read.phase, "node": read.node,
                             "task_seq": before.task.numa_scan_seq,
                             "preferred": before.task.numa_preferred_nid, "faults": len(results),
                             "moved_outside": outside,
                             "migrated_model": migrated, "migrated_kernel": kernel_migrated, "decisions": decisions})
    return judged


def _moved_outside(before: Observation, after: Observation, region: tuple[int, int]) -> int:
    """Base pages outside `region` that were hint entries at `before` and are on another node at
    `after` (same virtual address)."""
    start, end = region
    now = {e.vaddr: e for e in after.table if not start <= e.vaddr < end}
    moved = 0
    for e in before.table:
        if e.hint and not start <= e.vaddr < end and e.vaddr in now and now[e.vaddr].node != e.node:
            moved += 512 if e.level == "pmd" else 1
    return moved


def _wait_before_read(ctx: Context, region: HeldRegion, node: int, ready: Callable[[Observation], bool],
                      lost: Callable[[Observation], str | None], what: str, limit: float = 60.0) -> Observation:
    """Spin on `node` until `ready`; `lost` names a state from which `ready` can no longer come
    in this run (the scenario lost a race: inconclusive, not a kernel failure)."""
    spent = 0.0
    while True:
        obs = observe(ctx, region.pid)
        if ready(obs):
            return obs
        reason = lost(obs)
        if reason:
            raise Inconclusive(f"waiting for {what}: {reason}")
        if spent >= limit:
            raise KernelNeverReached(f"waiting for {what}: not reached after {limit:.0f} s of spinning on node {node} "
                                     f"(task sequence {obs.task.numa_scan_seq}, mm {obs.mm.numa_scan_seq}, preferred "
                                     f"node {obs.task.numa_preferred_nid})")
        region.spin(0.3, node=node)
        spent += 0.3


@check("early-scan", seconds=18, releases=EVERY_MODELLED_RELEASE)
def check_early_scan(ctx: Context) -> Finding:
    """The early-scan exception (module docstring), both sides. A 1 MiB region first touched on
    the far node by a task exec'd on the near node, with a sleeping helper thread (mm_users 2:
    the scanner hints pages on every node, and the task's own stack faults keep its placement
    running); one pass per second of CPU time (EARLY_KNOBS).

    1. Hinted while the task spins on the near node, read from the near node: last_cpupid is
       unset, so the pages move to the near node and record the task from there.
    2. Hinted again while it spins on the far node, read from the far node once the task has a
       preferred node but its numa_scan_seq is still <= 4: its own pages, last faulted from the
       other node, must move on this first fault (the "p->numa_scan_seq <= 4" half of the rule;
       with no preferred node the other half would decide, so the check waits for one).
    3. Hinted again while it spins on the near node, read from there once numa_scan_seq > 4 (and
       it has a preferred node): the same kind of fault must be refused by the two-stage filter,
       and the page restored in place, writable.

    Each read waits for the task's sequence to equal the mm's (no placement pending, so none runs
    during the read) and for numa_next_scan to be READ_MARGIN_MS away; a read during which a pass
    ran anyway is inconclusive (retried with a fresh scenario). Step 2 needs the preferred node
    to come before the fifth sequence; a run whose task passes sequence 4 without one is
    inconclusive too. Compared per page: node, hint, last_cpupid (node and pid), write bit, and
    the task's numa_pages_migrated, all predicted from the first read's observation. Exact."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    cpu_of = {n: min(c for c, m in ctx.node_of_cpu.items() if m == n) for n in (near, far)}
    margin = Tunables(hz=ctx.hz).ms_to_jiffies(READ_MARGIN_MS)
    reads: list[EarlyRead] = []
    with scenario(ctx, Region(EARLY_REGION_MIB, node=far, helper=True, exec_on=near), knobs=EARLY_KNOBS) as region:
        span = (region.addr, region.end)

        def quiet(o: Observation) -> bool:
            part = o.table.within(*span)
            return (bool(len(part)) and bool(part.hint.all()) and o.task.numa_scan_seq == o.mm.numa_scan_seq
                    and o.mm.numa_next_scan - o.balancing.jiffies >= margin)

        def early(o: Observation) -> bool:
            return quiet(o) and o.task.numa_scan_seq <= EARLY_SEQ_LIMIT

        def early_with_preferred(o: Observation) -> bool:
            return early(o) and o.task.numa_preferred_nid >= 0

        def late(o: Observation) -> bool:
            return quiet(o) and o.task.numa_scan_seq > EARLY_SEQ_LIMIT and o.task.numa_preferred_nid >= 0

        def past_early(o: Observation) -> str | None:
            if o.task.numa_scan_seq > EARLY_SEQ_LIMIT:
                return (f"the task reached numa_scan_seq {o.task.numa_scan_seq} (preferred node "
                        f"{o.task.numa_preferred_nid}) before the state this read needs")
            return None

        steps = (("first fault", near, early, past_early, "the region hinted, task sequence <= 4"),
                 ("early exception", far, early_with_preferred, past_early,
                  "the region hinted, a preferred node, task sequence <= 4"),
                 ("two-stage filter", near, late, lambda o: None,
                  "the region hinted, a preferred node, task sequence > 4"))
        drain_lru_batches(ctx.guest)
        for phase, node, ready, lost, what in steps:
            before = _wait_before_read(ctx, region, node, ready, lost, what, limit=90.0)
            region.read(node=node)
            after = observe(ctx, region.pid)
            reads.append(EarlyRead(phase, node, cpu_of[node], before, after))
            ctx.keep(f"read-{len(reads)}-before", before, phase=phase, node=node, cpu=cpu_of[node],
                     region=list(span), pid=region.pid)
            ctx.keep(f"read-{len(reads)}-after", after)
        pid = region.pid
    judged = judge_early_reads(ctx.facts, span, pid, reads)
    diffs = judged.diffs + _subject(judged)
    summary = "; ".join(f"{r['phase']} (seq {r['task_seq']}, preferred {r['preferred']}): {r['moved_kernel_region']} of "
                        f"{r['faults']} moved (model {r['migrated_model']})" for r in judged.reads)
    return Finding(summary, {"reads": judged.reads}, tuple(diffs))


def _subject(judged: _Judged) -> list[str]:
    """The decisions the scenario exists for must have been the model's."""
    wanted = (None, Decision.EARLY_SCAN.value, Decision.TWO_STAGE_REFUSED.value)
    diffs = []
    for read, decision in zip(judged.reads, wanted, strict=False):
        if decision is not None and set(read["decisions"]) != {decision}:
            diffs.append(f"{read['phase']}: the model decided {read['decisions']}, not only {decision!r}: the check "
                         f"lost its subject")
    return diffs


def replay_early_reads(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any]) -> _Judged:
    """check_early_scan's judgement over a recording (labels read-N-before/-after)."""
    reads = []
    for label in sorted(k for k in observations if k.endswith("-before")):
        n = notes[label]
        reads.append(EarlyRead(str(n["phase"]), int(n["node"]), int(n["cpu"]), observations[label],
                               observations[label.replace("-before", "-after")]))
    first = notes[sorted(k for k in notes if k.endswith("-before"))[0]]
    return judge_early_reads(facts, (int(first["region"][0]), int(first["region"][1])), int(first["pid"]), reads)
