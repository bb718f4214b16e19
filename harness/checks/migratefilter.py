"""The migration filter of kernel/sched/fair.c:should_numa_migrate_memory, both of its branches
for a task without a numa_group, predicted by a model that runs free from one observation.

    if ((p->numa_preferred_nid == NUMA_NO_NODE || p->numa_scan_seq <= 4) &&
        (cpupid_pid_unset(last_cpupid) || cpupid_match_pid(p, last_cpupid)))
            return true;
    ...
    if (!cpupid_pid_unset(last_cpupid) && cpupid_to_nid(last_cpupid) != dst_nid)
            return false;
    /* Always allow migrate on private faults */
    if (cpupid_match_pid(p, last_cpupid))
            return true;

Early in a task's life (the early-scan exception: "two full passes of the multi-stage node
selection", the comment says) its own page moves on the first fault from a new node; afterwards
the two-stage filter applies: a page whose previous fault came from another node stays, and
moves on the second fault from the same node.

Both checks run on PlacementRun (checks/placement.py), which carries the scanner (ScanReplay),
the task's books and numa_migrate_retry from ONE observation and predicts every step: each
spin's pass, and each read's placement and faults. The task holds a 1 MiB region quietly (its
other memory is never hinted, so the reads make its only hint faults) with the period fixed at
800 ms (PLACEMENT_KNOBS). Each read waits until the model says a placement is pending (so the
sequences the rule tests are the model's own), every page it reads is hinted, and
numa_next_scan is WRITE_MARGIN_MS away, so no pass can come between a fault and its retry.

Why a warm-up read: do_numa_page decides a fault (numa_migrate_check ->
should_numa_migrate_memory) before task_numa_fault runs the placement, so a read's first fault
is judged on the task as the previous placement left it, its others on the new one. A read of
page 0 alone makes the books the next placement needs for a preferred node, so that a read's
every fault is judged in the same state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.checks.observe import Context, GuestFacts, Inconclusive, Observation, observe, spin_until
from harness.checks.placement import (
    PLACEMENT_KNOBS,
    SPIN_STEP_S,
    WRITE_MARGIN_MS,
    PlacementRun,
    replay_placement_run,
    spin_to_placement,
)
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scenario import drain_lru_adds, scenario
from harness.checks.workload import Region
from harness.model import Decision

EARLY_SEQ_LIMIT = 4  # fair.c:should_numa_migrate_memory's "p->numa_scan_seq <= 4"
FILTER_REGION_MIB = 1  # 256 pages
# Each read covers pages 1..128: 128 migrating pages fit WRITE_MARGIN_MS (100 jiffies at HZ
# 250): such reads took 29-76 jiffies (32 reads in 8 runs, 2-core TCG), `placement`'s 128-page writes
# 39-77.
READ_PAGES = range(1, 129)
WARM_UP = range(0, 1)


def _mm_seq(run: PlacementRun) -> int:
    assert run.free is not None
    return run.free.replay.mm.numa_scan_seq


def _past_early(run: PlacementRun) -> bool:
    return _mm_seq(run) > EARLY_SEQ_LIMIT


def _early_over(run: PlacementRun) -> str | None:
    if _mm_seq(run) > EARLY_SEQ_LIMIT:
        return (f"the mm reached sequence {_mm_seq(run)} before this read, which needs the task's sequence to stay "
                f"<= {EARLY_SEQ_LIMIT}")
    return None


@dataclass(frozen=True)
class Access:
    """One access of a run_accesses scenario: its phase, whether it runs on the far node (else
    the near), which pages, and what the model's state must be before it starts (`also`) or
    must not have become (`lost`: inconclusive); `subject` names what its judged round must
    show for the scenario to have tested its rule (None: a preparation)."""

    phase: str
    far: bool
    pages: range
    also: Callable[[PlacementRun], bool] | None = None
    lost: Callable[[PlacementRun], str | None] | None = None
    subject: Callable[[dict[str, Any]], str | None] | None = None
    # Where the task spins while the scanner hints the pages (None: where it reads). With
    # mm_users 1 a pass skips the pages on the spinning task's node (change_pte_range:
    # target_node), so a local read needs the task to spin on the other node first.
    spin_far: bool | None = None
    # The scenario holds the node it runs on too full to take a page: every migration is
    # refused (run_accesses' `refusing` confirms it before and after the access).
    refused: bool = False


def _only(decision: Decision, *, late: bool) -> Callable[[dict[str, Any]], str | None]:
    """A round's subject: every fault of it decided by `decision`, with the task past (late) or
    inside (not late) its early sequences and a preferred node, when its first fault came."""
    def lost(r: dict[str, Any]) -> str | None:
        seq, preferred = r["seq_at_first_fault"], r["preferred_at_first_fault"]
        if r["decisions"] != {decision.value: len(READ_PAGES)}:
            return f"the model decided {r['decisions']}, not {len(READ_PAGES)} x {decision.value!r}"
        if preferred < 0 or (seq > EARLY_SEQ_LIMIT) != late:
            return f"the first fault came with task sequence {seq} and preferred node {preferred}"
        return None
    return lost


def takes(faults: int, moved: int, decision: Decision | None = None) -> Callable[[dict[str, Any]], str | None]:
    """An access's subject: the model took `faults` hint faults moving `moved` entries (and,
    with `decision`, every page's fault decided by it)."""
    def lost(r: dict[str, Any]) -> str | None:
        decided = decision is None or set(r["decisions"]) == {decision.value}
        if (r["faults_replayed"], r["moved_model"]) != (faults, moved) or not decided:
            return (f"the model took {r['faults_replayed']} faults moving {r['moved_model']} entries ({r['decisions']}), "
                    f"not {faults} moving {moved}" + (f", all {decision.value!r}" if decision else ""))
        return None
    return lost


def _all_moved(r: dict[str, Any]) -> str | None:
    if r["moved_model"] != len(READ_PAGES):
        return f"the model moved {r['moved_model']} of the {len(READ_PAGES)} pages, not all"
    return None


EARLY_READS = (
    Access("warm-up", False, WARM_UP),
    Access("first fault", False, READ_PAGES, lost=_early_over),
    Access("early exception", True, READ_PAGES, lost=_early_over, subject=_only(Decision.EARLY_SCAN, late=False)),
    Access("warm-up past the early sequences", True, WARM_UP, also=_past_early),
    Access("two-stage filter", False, READ_PAGES, subject=_only(Decision.TWO_STAGE_REFUSED, late=True)),
)

TWO_STAGE_READS = (
    Access("warm-up", False, WARM_UP),
    Access("first fault, past the early sequences", False, READ_PAGES, also=_past_early),
    Access("first fault from the far node", True, READ_PAGES, subject=_only(Decision.TWO_STAGE_REFUSED, late=True)),
    Access("second fault from the far node", True, READ_PAGES, subject=_all_moved),
)


def run_accesses(ctx: Context, request: Region, reads: tuple[Access, ...], *, write: bool = False,
                 intact: Callable[[Observation, tuple[int, int]], list[str]] | None = None,
                 knobs: Mapping[str, int] = PLACEMENT_KNOBS, margin_ms: int = WRITE_MARGIN_MS,
                 refusing: Callable[[int], list[str]] | None = None,
                 held: contextlib.AbstractContextManager[Any] | None = None) -> PlacementRun:
    """The scenario of the filter checks (module docstring), and of fault-migration's, thp's
    and mthp's: `request` held quietly with the period fixed (`knobs`), then `reads` (writes
    with `write`), each from its node once the model says it can start, numa_next_scan at
    least `margin_ms` away. `intact` names what the region must still be, before the start and
    after every read (e.g. mapped by large folios; compaction may split one: inconclusive).
    `held` is entered once the region is held, before the free run starts, and left after the
    last access (e.g. a node kept full); `refusing(node)` names why the node would still take a
    page, checked before and after every `refused` access (a fill that did not hold:
    inconclusive).
    A restart of the free run (a read that reached the model's numa_next_scan) leaves the
    rounds after it unjudgeable: inconclusive, retried with a fresh scenario."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    cpu_of = {n: min(c for c, m in ctx.node_of_cpu.items() if m == n) for n in (near, far)}

    def check_intact(what: str, obs: Observation) -> None:
        problems = intact(obs, (region.addr, region.end)) if intact is not None else []
        if problems:
            raise Inconclusive(f"{what}: {'; '.join(problems)}")

    def check_refusing(what: str, node: int) -> None:
        assert refusing is not None, "a refused access needs run_accesses(refusing=...)"
        problems = refusing(node)
        if problems:
            raise Inconclusive(f"{what}: {'; '.join(problems)}")

    with scenario(ctx, request, knobs=knobs) as region, held or contextlib.nullcontext():
        # Per-CPU LRU add batches hold the first touch's folios (and later each read's migrated
        # ones) off the LRU: migrate_misplaced_folio_prepare cannot isolate them, and 6.1's
        # change_pte_range does not hint them (page_count). Drained after every read.
        drain_lru_adds(ctx.guest, region.pid)
        spin_until(region, ctx, near, lambda o: o.mm.numa_scan_seq >= 1, step=SPIN_STEP_S)
        run = PlacementRun(ctx.facts, (region.addr, region.end), region.pid, cpu_of[near], write=write,
                           margin_ms=margin_ms)
        previous = observe(ctx, region.pid)
        check_intact("at the start", previous)
        run.keep(ctx, "start", previous)
        run.begin(previous)
        for read in reads:
            node = far if read.far else near
            spin_node = node if read.spin_far is None else far if read.spin_far else near
            previous = spin_to_placement(ctx, region, spin_node, run, previous, read.pages, also=read.also,
                                         lost=read.lost)
            if run.broken:
                break
            if read.refused:
                check_refusing(f"before the {read.phase} read", node)
            access = region.touch if write else region.read
            access(node=node, pages=len(read.pages), first=read.pages.start)
            current = observe(ctx, region.pid)
            check_intact(f"after the {read.phase} read", current)
            if read.refused:
                check_refusing(f"after the {read.phase} read", node)
            run.keep(ctx, "access", current, pages=read.pages.stop, first=read.pages.start, access_cpu=cpu_of[node],
                     phase=read.phase, refused=read.refused)
            restarts = len(run.rounds.unjudged)
            run.access(read.pages.stop, previous, current, first=read.pages.start, cpu=cpu_of[node],
                       refused=read.refused)
            if len(run.rounds.unjudged) > restarts:
                raise Inconclusive(f"{read.phase}: {run.rounds.unjudged[-1]}")
            if run.broken:
                break
            drain_lru_adds(ctx.guest, region.pid)
            previous = current
    return run


def _filter_region(ctx: Context) -> Region:
    """The filter checks' region: first touched on the far node by a task exec'd on the near one."""
    nodes = ctx.nodes_with_cpus()
    return Region(FILTER_REGION_MIB, node=nodes[-1], exec_on=nodes[0], quiet=True)


def judge_filter(run: PlacementRun, reads: tuple[Access, ...]) -> Finding:
    """The verdict over a finished run of `reads`: the step that broke the free run, else
    every read's subject (the model's own decisions: the scenario must have put the rule in
    front of the kernel). Shared by the checks (mthp's too) and by golden replays."""
    diffs = list(run.rounds.diffs)
    rounds = run.rounds.judged
    if not run.broken:
        if len(rounds) != len(reads):
            diffs.append(f"{len(rounds)} of the {len(reads)} reads were judged")
        for read, r in zip(reads, rounds, strict=False):
            reason = read.subject(r) if read.subject is not None else None
            if reason:
                diffs.append(f"{read.phase}: {reason}: the check lost its subject")
    summary = "; ".join(
        f"{read.phase} from node {r['node']} (seq {r['seq_at_first_fault']}, preferred {r['preferred_at_first_fault']})"
        f": {r['faults_replayed']} faults, {r['moved_model']} entries moved" for read, r in zip(reads, rounds, strict=False))
    figures = {"rounds": [{"phase": read.phase, **r} for read, r in zip(reads, rounds, strict=False)],
               "steps": run.steps, "inputs": dict(run.free.replay.inputs) if run.free is not None else {}}
    return Finding(summary or "no read judged", figures, tuple(diffs))


@check("early-scan", seconds=14.5, releases=EVERY_MODELLED_RELEASE)
def check_early_scan(ctx: Context) -> Finding:
    """The early-scan exception (module docstring), both sides, free-running from one
    observation. After a warm-up read of page 0 (the books for a preferred node):

    1. Pages 1..128, first touched on the far node, hinted while the task spins on the near
       node, read from the near node: last_cpupid is unset, so they move to the near node and
       record the task from there.
    2. Hinted again while it spins on the far node, read from the far node while its sequence
       is still <= 4 and it has a preferred node: its own pages, last faulted from the other
       node, must move on this first fault (the "p->numa_scan_seq <= 4" half of the rule).
    3. After a second warm-up read past the fourth sequence, hinted again while it spins on the
       near node, read from there: the same kind of fault must be refused by the two-stage
       filter, and the page restored in place.

    Every step is predicted and the whole state compared (PlacementRun: per page node, hint,
    last_cpupid, write bit; the books, numa_pages_migrated, locality, the period, the scanner's
    state). Read 2 needs the mm's sequence to stay <= 4 until it starts; a run past it is
    inconclusive (retried)."""
    return judge_filter(run_accesses(ctx, _filter_region(ctx), EARLY_READS), EARLY_READS)


@check("two-stage-filter", seconds=18.4, releases=EVERY_MODELLED_RELEASE)
def check_two_stage_filter(ctx: Context) -> Finding:
    """The two-stage filter (module docstring) once the early-scan exception is over (task
    numa_scan_seq > 4 and a preferred node), free-running from one observation: pages 1..128,
    moved to the near node by a read from there (last_cpupid: the task on the near node), are
    hinted while the task spins on the far node and read from it: none may move, each records
    the far node; hinted and read from the far node again, every one moves (a private fault
    from the node of the previous one). The reads are reads: a write after migration would
    reset last_cpupid (wp_page_reuse). Every step is predicted and the whole state compared,
    as early-scan's."""
    return judge_filter(run_accesses(ctx, _filter_region(ctx), TWO_STAGE_READS), TWO_STAGE_READS)


def replay_accesses(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any],
                    reads: tuple[Access, ...]) -> Finding:
    """The judgement of a run_accesses scenario (`reads`: its check's) over a recording
    (PlacementRun's labels): golden observations from real guests through the model."""
    return judge_filter(replay_placement_run(facts, observations, notes), reads)
