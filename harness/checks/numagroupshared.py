"""numa_group across processes: two processes sharing a MAP_SHARED buffer (numa01's pattern).

Tasks of different processes join one group only when the fault is TNF_SHARED
(mm/memory.c:numa_migrate_check: the folio is likely mapped by several processes and the VMA is
VM_SHARED); past task_numa_group's size tests a fault without it counts private (`*priv =
!join`: false sharing). The model carries the shared pages (node, last_cpupid), which process
maps each and which of its entries are hints, and each process's group, from one observation.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from harness.checks.accounting import compare_local_counter
from harness.checks.adapters import model_pages
from harness.checks.groupcarry import GroupMembers, steady_limits
from harness.checks.numagroup import PACE_CAP_S, PASS_SLACK_S, SPIN_S
from harness.checks.observe import (
    Context,
    GuestFacts,
    Inconclusive,
    KernelNeverReached,
    Observation,
    next_pass_pace,
    observe_processes,
)
from harness.checks.registry import Finding, Judgement, Mechanism, check
from harness.checks.scenario import drain_lru_adds, drain_lru_batches, scenario
from harness.checks.workload import STEP_TIMEOUT, Region
from harness.model import (
    LAST__PID_MASK,
    CpuOccupant,
    GroupOutcome,
    NumaGroup,
    Page,
    ScanLimits,
    cpupid_cpu,
    group_books,
)

# As numa-group: two slices of 256 pages (A first touched on the near node, B on the far one),
# the same 3 s scanner clock for every pass (each process has its own: both spin to hint).
SHARED_REGION_MIB = 2
SLICE_PAGES = 256
SHARED_KNOBS = {"scan_delay_ms": 3000, "scan_period_min_ms": 3000, "scan_period_max_ms": 3000}
# Pages of the join step's slice the spinning process unmaps first: the reader then faults on
# them mapped once (no TNF_SHARED: false sharing), and on the rest mapped twice (it joins).
UNMAPPED_PAGES = 32
WORKERS = (1, 2)
# Spinning before a hint phase gives up (a pass comes every 3 s of each process's clock).
HINT_LIMIT_S = 60.0


@dataclass(frozen=True)
class SharedStep:
    """One step: `unmap` (worker, slice, pages) done first, then the reads, made while `spinner`
    spins; the workers' observations before the reads (after both mms were hinted) and after."""

    label: str
    reads: tuple[tuple[int, str], ...]
    spinner: int | None
    unmap: tuple[int, str, int] | None
    hinted: tuple[Observation, ...]
    done: tuple[Observation, ...]


@dataclass(frozen=True)
class SharedRun:
    region: tuple[int, int]
    slices: dict[str, tuple[int, int]]
    pids: dict[int, int]
    cpus: dict[int, int]
    mapped: tuple[Observation, ...]  # both workers mapped the whole region (minor faults), no hint yet
    steps: tuple[SharedStep, ...]


@dataclass
class _Shared:
    """The model's pages: the folios (node, last_cpupid) and, per worker, which pages it maps
    and which of its entries are hints (the workers' books and groups: GroupMembers)."""

    pages: dict[int, Page]
    mapped: dict[int, set[int]]
    hinted: dict[int, set[int]]

    def mapcount(self, va: int) -> int:
        return sum(va in m for m in self.mapped.values())


def _compare_tables(facts: GuestFacts, run: SharedRun, state: _Shared, obs: tuple[Observation, ...],
                    faulted: set[tuple[int, int]], *, hints_exact: bool) -> list[str]:
    """Each worker's entries against the model: mapped or not, node, hint (exact unless a pass
    may have run: then a hinted page must still be), the exact last_cpupid, the mapcount (the
    workers that map the page), and the write bit of an entry its worker faulted on (writable:
    VM_SHARED)."""
    found = []
    for index, worker in enumerate(WORKERS):
        kernel = {e.vaddr: e for e in obs[index].table.within(*run.region)}
        for va, page in sorted(state.pages.items()):
            e = kernel.get(va)
            if va not in state.mapped[worker]:
                if e is not None and (e.present or e.hint):
                    found.append(f"worker {worker} {va:#x}: mapped, model: not mapped (unmapped by MADV_DONTNEED)")
                continue
            if e is None:
                found.append(f"worker {worker} {va:#x}: not mapped, model: mapped")
                continue
            hint = va in state.hinted[worker]
            if e.node != page.node or (e.hint != hint and (hints_exact or hint)):
                found.append(f"worker {worker} {va:#x}: node {e.node} hint={e.hint}, model node {page.node} hint={hint}")
            unset = e.last_cpupid is None or e.last_cpupid == facts.cpupid_unset
            if (page.last_cpupid is None) != unset or (page.last_cpupid is not None and e.last_cpupid != page.last_cpupid):
                k = "unset" if unset else f"cpu {cpupid_cpu(e.last_cpupid or 0)} pid bits {(e.last_cpupid or 0) & LAST__PID_MASK}"
                m = "unset" if page.last_cpupid is None else (f"cpu {cpupid_cpu(page.last_cpupid)} pid bits "
                                                              f"{page.last_cpupid & LAST__PID_MASK}")
                found.append(f"worker {worker} {va:#x}: last_cpupid {k}, model {m}")
            if e.mapcount is not None and e.mapcount != state.mapcount(va):
                found.append(f"worker {worker} {va:#x}: mapcount {e.mapcount}, model {state.mapcount(va)}")
            if (worker, va) in faulted and not e.writable:
                found.append(f"worker {worker} {va:#x}: read-only after a hint fault, model writable (VM_SHARED: "
                             f"vm_page_prot has the write bit)")
    return found


def _compare_groups(obs: tuple[Observation, ...], model: dict[int, NumaGroup | None]) -> list[str]:
    """Each worker's group against the model (gid, size, address once known), and every group's
    books against its members' summed (group_books)."""
    diffs = []
    by_address: dict[int, list[int]] = {}
    for index, worker in enumerate(WORKERS):
        kernel, expected = obs[index].groups[0], model[worker]
        if kernel is not None:
            by_address.setdefault(kernel.address, []).append(index)
        if expected is None or kernel is None:
            if (expected is None) != (kernel is None):
                diffs.append(f"worker {worker}: {'no group' if kernel is None else f'group {kernel.gid}'}, model: "
                             f"{'no group' if expected is None else f'group {expected.gid}'}")
            continue
        if (kernel.gid, kernel.nr_tasks) != (expected.gid, expected.nr_tasks) or \
                (expected.address is not None and expected.address != kernel.address):
            diffs.append(f"worker {worker}: group {kernel.gid} of {kernel.nr_tasks} at {kernel.address:#x}, model: "
                         f"group {expected.gid} of {expected.nr_tasks}")
    for address, members in sorted(by_address.items()):
        group = obs[members[0]].groups[0]
        assert group is not None
        books, total = group_books([obs[i].task.faults for i in members], [obs[i].task.total_numa_faults for i in members])
        if {s: books[s] for s in books} != {s: group.faults[s] for s in books} or total != group.total_faults:
            diffs.append(f"group {group.gid} at {address:#x}: books {group.faults}, total {group.total_faults}; its "
                         f"members' summed {books}, {total}")
    return diffs


@dataclass
class _Reads:
    """The model's side of one step's reads."""

    outcomes: Counter[str] = field(default_factory=Counter)
    faulted: set[tuple[int, int]] = field(default_factory=set)  # (worker, vaddr)
    faults: int = 0
    local: int = 0
    stopped: bool = False


def _replay_reads(facts: GuestFacts, run: SharedRun, step: SharedStep, state: _Shared, members: GroupMembers,
                  limits: dict[int, ScanLimits]) -> tuple[_Reads, list[str]]:
    """Each read in address order, through `members`: task_numa_group on the fault (TNF_SHARED
    when more than one worker maps the page: folio_likely_mapped_shared and VM_SHARED; the
    occupant of the last_cpupid's CPU is the spinner when it is the one recorded there), the
    placement the reader's first fault runs when due (its own mm's sequence), then the fault. A
    migration rebuilds every mapping of the folio from vm_page_prot (remove_migration_pte): no
    worker's entry of it is a hint any more. Returns the step's model and the findings of the
    reads' premises (GroupMembers.begin_read)."""
    reads = _Reads()
    found: list[str] = []
    for worker, sl in step.reads:
        pid, cpu = run.pids[worker], run.cpus[worker]
        index = WORKERS.index(worker)
        hinted, done = step.hinted[index], step.done[index]
        premise, premise_found = members.begin_read(worker, hinted.task, done.task, hinted.mm.numa_scan_seq,
                                                    (hinted.balancing.jiffies, done.balancing.jiffies), limits[worker])
        found.extend(premise_found)
        if premise is None:
            reads.stopped = True
            return reads, found
        for va in range(*run.slices[sl], 4096):
            if va not in state.hinted[worker]:
                continue
            page = replace(state.pages[va], hint=True)
            occupant = None
            if page.last_cpupid is not None and step.spinner is not None and \
                    cpupid_cpu(page.last_cpupid) == run.cpus[step.spinner]:
                occupant = CpuOccupant(run.pids[step.spinner], members.groups[step.spinner], same_mm=False)
            decided, result = members.fault(worker, pid, page, cpu, occupant, premise,
                                            shared_mapping=state.mapcount(va) > 1, vma_shared=True)
            reads.outcomes[f"worker {worker}: {decided.outcome.value}"] += 1
            state.pages[va] = replace(result.page, hint=False)
            state.hinted[worker].discard(va)
            if result.migrated:
                for other in WORKERS:
                    state.hinted[other].discard(va)
            reads.faulted.add((worker, va))
            reads.faults += 1
            reads.local += result.local
    return reads, found


def _step_premises(run: SharedRun, step: SharedStep) -> None:
    """No scanner began a sequence during the reads (whether a reader's first fault saw the old
    sequence or the new one, its placement, would be timing's) and the spinner ran on its CPU
    after them; inconclusive if not."""
    for index, worker in enumerate(WORKERS):
        if step.done[index].mm.numa_scan_seq != step.hinted[index].mm.numa_scan_seq:
            raise Inconclusive(f"{step.label}: worker {worker}'s scanner began a sequence during the reads: its "
                               f"placement is timing's")
    if step.spinner is not None:
        cpu = run.cpus[step.spinner]
        if step.done[0].running.get(cpu) != run.pids[step.spinner]:
            raise Inconclusive(f"{step.label}: worker {step.spinner} was not running on cpu {cpu} after the reads")


def judge_shared(facts: GuestFacts, run: SharedRun, *, complete: bool = True) -> Judgement:
    """The model's side of check_numa_group_shared (golden observations replay through it).
    With `complete` False the run's steps are judged as far as they go, without the tests that
    the whole scenario kept its subject (a run cut short after a step the model disagrees with).

    Carried from the observation after both workers mapped the region: the folios, who maps
    them, each worker's hints, and each worker's and group's books (GroupMembers: every fault,
    join and placement). Taken from the kernel afterwards, as inputs the model cannot know: a
    group's address once shown, the CPU's occupant (confirmed by the observation after the
    reads), each mm's scan sequence before a step and a placement's clock (groupcarry's
    docstring), and the fact that a hint phase hinted both workers' whole mapping (checked)."""
    judge = SharedJudge.opening(facts, run)
    for step in run.steps:
        judge.add(step)
    return judge.finish(complete=complete)


@dataclass
class SharedJudge:
    """judge_shared a step at a time: check_numa_group_shared judges each step as soon as it
    is observed, and stops after one the model disagrees with."""

    facts: GuestFacts
    run: SharedRun  # its region, slices, pids, cpus and first observations; steps come through add()
    state: _Shared
    members: GroupMembers
    verdict: Judgement = field(default_factory=Judgement)
    steps: list[SharedStep] = field(default_factory=list)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    # No later step can be judged: the region was not the scenario's, or a read's premise is lost.
    stopped: bool = False

    @classmethod
    def opening(cls, facts: GuestFacts, run: SharedRun) -> SharedJudge:
        pages = {va: replace(p, hint=False) for va, p in model_pages(facts, run.mapped[0]).items()
                 if run.region[0] <= va < run.region[1]}
        every = set(range(run.region[0], run.region[1], 4096))
        state = _Shared(pages, {w: set(every) for w in WORKERS}, {w: set() for w in WORKERS})
        members = GroupMembers.opening(facts, {w: run.mapped[i].task for i, w in enumerate(WORKERS)})
        judge = cls(facts, replace(run, steps=()), state, members)
        if set(pages) != every or any(p.huge or p.folio_pages for p in pages.values()):
            judge.verdict.diffs.append("the region is not mapped as base pages by the first worker: the check lost "
                                       "its subject")
            judge.stopped = True
            return judge
        judge.verdict.add("mapped", _compare_tables(facts, run, state, run.mapped, set(), hints_exact=True))
        judge.verdict.add("mapped", _compare_groups(run.mapped, members.groups))
        return judge

    def add(self, step: SharedStep) -> list[str]:
        """Judge one more step; returns what it found wrong (also kept in the verdict)."""
        self.steps.append(step)
        if self.stopped:
            return []
        facts, run, state, members, verdict = self.facts, self.run, self.state, self.members, self.verdict
        before = len(verdict.diffs)
        limits = {w: steady_limits(facts, [run.mapped[i], *(o for s in self.steps for o in (s.hinted[i], s.done[i]))])
                  for i, w in enumerate(WORKERS)}
        _step_premises(run, step)
        # The hint phase: every entry of both workers hinted (the wait condition), nothing else moved.
        for worker in WORKERS:
            state.hinted[worker] = set(state.mapped[worker])
        verdict.add(f"{step.label}: before the reads", _compare_tables(facts, run, state, step.hinted, set(),
                                                                      hints_exact=True))
        for index, worker in enumerate(WORKERS):
            members.move(worker, step.hinted[index].task.cpu, limits[worker])
            verdict.add(f"{step.label}: before the reads", members.compare_task(worker, step.hinted[index].task))
            known, seen = members.groups[worker], step.hinted[index].groups[0]
            if known is not None and known.address is None and seen is not None and seen.gid == known.gid:
                members.groups[worker] = replace(known, address=seen.address)
        if step.unmap is not None:
            worker, sl, count = step.unmap
            gone = set(range(run.slices[sl][0], run.slices[sl][0] + count * 4096, 4096))
            state.mapped[worker] -= gone
            state.hinted[worker] -= gone
        reads, found = _replay_reads(facts, run, step, state, members, limits)
        verdict.add(f"{step.label}: placements", found)
        if reads.stopped:
            self.stopped = True
            return verdict.diffs[before:]
        self.outcomes[step.label] = dict(reads.outcomes)
        hints_exact = all(d.mm.numa_next_scan == h.mm.numa_next_scan for d, h in zip(step.done, step.hinted, strict=True))
        verdict.add(f"{step.label}: entries", _compare_tables(facts, run, state, step.done, reads.faulted,
                                                              hints_exact=hints_exact))
        for index, worker in enumerate(WORKERS):
            verdict.add(f"{step.label}: books", members.compare_task(worker, step.done[index].task))
        verdict.add(f"{step.label}: counters", compare_local_counter(reads.local, reads.faults, step.hinted[0],
                                                                     step.done[0]))
        verdict.add(f"{step.label}: groups", _compare_groups(step.done, members.groups))
        for index, worker in enumerate(WORKERS):
            verdict.add(f"{step.label}: group books", members.compare_group(worker, step.done[index].groups[0]))
        return verdict.diffs[before:]

    def finish(self, *, complete: bool = True) -> Judgement:
        """The verdict, with the figures; with `complete`, also whether the scenario kept its
        subject (the tie kept, false sharing and a join decided; a placement as a group member)."""
        verdict, members, outcomes = self.verdict, self.members, self.outcomes
        final = self.steps[-1].done if self.steps else self.run.mapped
        verdict.figures = {"outcomes": outcomes, "placements": dict(members.placements),
                           "groups": [None if o.groups[0] is None else {"gid": o.groups[0].gid,
                                                                        "nr_tasks": o.groups[0].nr_tasks}
                                      for o in final],
                           "pids": {str(w): p for w, p in self.run.pids.items()}}
        if not complete:
            return verdict
        decided = {key.split(": ", 1)[1] for o in outcomes.values() for key in o}
        wanted = {GroupOutcome.JOINED.value, GroupOutcome.FALSE_SHARING.value, GroupOutcome.TIE_KEPT.value}
        if len(self.steps) < 4 or not wanted <= decided:
            verdict.diffs.append(f"the scenario never made {sorted(wanted - decided)} decide: the check lost its "
                                 f"subject")
        if len(self.steps) >= 4 and not members.placements["as a group member"]:
            verdict.diffs.append("no group member took a placement: numa_group_count_active_nodes and the group's "
                                 "share of the placement were never judged")
        return verdict


def _play(step: Callable[..., SharedStep]) -> bool:
    """check_numa_group_shared's steps (its docstring says why each), played through `step`;
    False if they were cut short after a step the model disagrees with."""
    try:
        step("first faults", ((1, "A"), (2, "B")), None)
        created = step("groups created", ((2, "A"), (1, "B")), None)
        groups = [o.groups[0] for o in created.done]
        if all(g is not None for g in groups):
            addresses = {w: g.address for w, g in zip(WORKERS, groups, strict=True) if g is not None}
            low, high = sorted(WORKERS, key=lambda w: addresses[w])
            step("tie kept", ((high, _slice_whose_last_is(low)),), low)
            step("false sharing, then joined", ((low, _slice_whose_last_is(high)),), high,
                 unmap=(high, _slice_whose_last_is(high), UNMAPPED_PAGES))
    except _Disagreed:
        return False
    return True


class _Disagreed(Exception):
    """The model disagrees with the step just observed: check_numa_group_shared stops there."""


def _slice_whose_last_is(worker: int) -> str:
    """After step 2 worker 2's read of slice A made it A's last_cpupid, worker 1's read of B B's."""
    return "A" if worker == 2 else "B"


@check("numa-group-shared", seconds=25.0, needs=[Mechanism.SHMEM_TASK_POLICY])
def check_numa_group_shared(ctx: Context) -> Finding:
    """Two worker processes, each pinned to one CPU (worker 1 on the far node, worker 2 on the
    near one), share a 2 MiB MAP_SHARED region the holder wrote (slice A on the near node, B on
    the far one) and then left to them. Both first read all of it (minor faults: every page
    mapped by both). Before each step both spin until their scanners have hinted every entry.

    1. Worker 1 reads A, worker 2 reads B: first faults, private, migrated (early scan); the
       other worker's entries of those pages stop being hints (remove_migration_pte).
    2. Worker 2 reads A, worker 1 reads B: the other's last_cpupid from the other node: kept
       (two-stage filter); shared faults, a first group each, no join (the other is asleep).
    3. The worker whose group is at the higher address reads the slice the other faulted last
       while the other spins: TNF_SHARED (mapped by both), but the tie-break keeps its group.
    4. The higher worker unmaps the first UNMAPPED_PAGES of the slice the lower one will read,
       then spins; the lower reads it: on the pages mapped once there is no TNF_SHARED, so past
       the size tests the fault is false sharing (counted private, no join); on the first page
       mapped twice it joins the higher one's group.

    Compared after every step, from the model carried from the first observation: both
    workers' entries (mapped, node, hint, exact last_cpupid, mapcount, write bit); each worker's
    whole book-keeping and each group's books as groupcarry.GroupMembers carries them through
    every fault, join and placement (each process's placements follow its own mm's sequence);
    the counters; each worker's group and every group's books against its members' summed."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    cpus = {1: max(c for c, n in ctx.node_of_cpu.items() if n == far),
            2: max(c for c, n in ctx.node_of_cpu.items() if n == near)}
    request = Region(SHARED_REGION_MIB, node=near, split=far, exec_on=near, workers=len(WORKERS), quiet=True,
                     shared=True, procs=True)
    with scenario(ctx, request, SHARED_KNOBS, knobs_at_exec=True) as region:
        pids = {w: region.worker_tid(w) for w in WORKERS}
        procs = tuple(pids[w] for w in WORKERS)
        half = region.length // 2
        slices = {"A": (region.addr, region.addr + half), "B": (region.addr + half, region.end)}
        first = {"A": 0, "B": SLICE_PAGES}
        for w in WORKERS:
            region.on(w, "read", cpu=cpus[w])
        drain_lru_batches(ctx.guest)
        mapped = observe_processes(ctx, procs)
        steps: list[SharedStep] = []
        judge = SharedJudge.opening(ctx.facts, SharedRun((region.addr, region.end), slices, pids, cpus, mapped, ()))

        def spin(seconds: float) -> None:
            region.on(1, f"spin {seconds:.2f}", cpu=cpus[1], wait=False)
            region.on(2, f"spin {seconds:.2f}", cpu=cpus[2])
            region.wait_worker(1)

        def hinted() -> tuple[Observation, ...]:
            """Both workers spin, each driving its own mm's scanner, until both have every entry
            of the region hinted; each time idle, then spinning, as the later of their next
            passes needs (next_pass_pace)."""
            spent = 0.0
            while True:
                found = observe_processes(ctx, procs)
                parts = [o.table.within(region.addr, region.end) for o in found]
                if all(bool(len(p)) and bool(p.hint.all()) for p in parts):
                    return found
                if spent >= HINT_LIMIT_S:
                    raise KernelNeverReached(
                        f"after {spent:.0f} s of spinning the workers' entries of the region are not all hints: "
                        f"{[f'{int(p.hint.sum())} of {len(p)}' for p in parts]} (each mm's scanner hints its own "
                        f"entries of a VM_SHARED region, with no target-node skip)")
                pace = next_pass_pace(found, ctx.hz, slack_s=PASS_SLACK_S, cap_s=PACE_CAP_S)
                time.sleep(pace.idle_s)
                spin(pace.spin_s)
                spent += pace.seconds

        def step(label: str, reads: tuple[tuple[int, str], ...], spinner: int | None,
                 unmap: tuple[int, str, int] | None = None) -> SharedStep:
            before = hinted()
            # The previous steps' migrations left their new folios in the CPUs' LRU add batches
            # (migrate_folio_move adds the destination folio with folio_add_lru), where
            # migrate_misplaced_folio_prepare cannot isolate them: a step that moves such a page
            # again would see it refused (TNF_MIGRATE_FAIL), which the rules do not predict.
            # Drained here, after the observation and before any read, without touching an entry.
            drain_lru_adds(ctx.guest, region.pid)
            if unmap is not None:
                region.on(unmap[0], "unmap", cpu=cpus[unmap[0]], first=first[unmap[1]], pages=unmap[2])
            if spinner is not None:
                region.on(spinner, f"spin {SPIN_S}", cpu=cpus[spinner], wait=False)
                region.wait_running(pids[spinner], cpus[spinner])
            for worker, sl in reads:
                region.on(worker, "read", cpu=cpus[worker], first=first[sl], pages=SLICE_PAGES)
            done = observe_processes(ctx, procs)
            if spinner is not None:
                region.wait_worker(spinner, timeout=SPIN_S + STEP_TIMEOUT)
            made = SharedStep(label, reads, spinner, unmap, before, done)
            steps.append(made)
            # Judged at once: after a step the model disagrees with, the rest would only cost time.
            if judge.add(made):
                raise _Disagreed
            return made

        complete = _play(step)
    run = SharedRun((region.addr, region.end), slices, pids, cpus, mapped, tuple(steps))
    _keep(ctx, run)
    verdict = judge.finish(complete=complete)
    if not complete:
        verdict.figures["cut_short_after"] = run.steps[-1].label
    f = verdict.figures
    return Finding(f"{len(run.steps)} steps; groups at the end {f.get('groups')}; outcomes {f.get('outcomes')}",
                   verdict.figures, tuple(verdict.diffs))


def _keep(ctx: Context, run: SharedRun) -> None:
    notes = {"region": list(run.region), "slices": {k: list(v) for k, v in run.slices.items()},
             "pids": {str(w): p for w, p in run.pids.items()}, "cpus": {str(w): c for w, c in run.cpus.items()}}
    for index, obs in enumerate(run.mapped):
        ctx.keep(f"mapped-w{index + 1}", obs, **notes)
    for n, s in enumerate(run.steps):
        step_notes = {"step": s.label, "reads": [list(r) for r in s.reads], "spinner": s.spinner,
                      "unmap": None if s.unmap is None else list(s.unmap)}
        for index in range(len(WORKERS)):
            ctx.keep(f"step{n}-hinted-w{index + 1}", s.hinted[index], **step_notes)
            ctx.keep(f"step{n}-done-w{index + 1}", s.done[index], **step_notes)


def replay_shared(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any], *,
                  complete: bool = True) -> Judgement:
    """check_numa_group_shared's judgement over a recording; `complete` as judge_shared's."""
    n = notes["mapped-w1"]
    mapped = tuple(observations[f"mapped-w{i + 1}"] for i in range(len(WORKERS)))
    steps = []
    index = 0
    while f"step{index}-done-w1" in observations:
        s = notes[f"step{index}-done-w1"]
        steps.append(SharedStep(
            s["step"], tuple((int(w), str(sl)) for w, sl in s["reads"]),
            None if s["spinner"] is None else int(s["spinner"]),
            None if s["unmap"] is None else (int(s["unmap"][0]), str(s["unmap"][1]), int(s["unmap"][2])),
            tuple(observations[f"step{index}-hinted-w{i + 1}"] for i in range(len(WORKERS))),
            tuple(observations[f"step{index}-done-w{i + 1}"] for i in range(len(WORKERS)))))
        index += 1
    run = SharedRun((int(n["region"][0]), int(n["region"][1])),
                    {k: (int(v[0]), int(v[1])) for k, v in n["slices"].items()},
                    {int(w): int(p) for w, p in n["pids"].items()}, {int(w): int(c) for w, c in n["cpus"].items()},
                    mapped, tuple(steps))
    return judge_shared(facts, run, complete=complete)
