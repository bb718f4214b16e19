"""Placement checks: task_numa_placement (fold and decay of the fault books, the preferred node),
update_task_scan_period and numa_migrate_preferred, predicted by a model that runs free from
one observation with the scanner it carries (checks/scanreplay.py).

Why a pending placement can be predicted: fair.c:task_numa_fault calls task_numa_placement
before it adds its own fault to the books, and only when time_after(jiffies,
p->numa_migrate_retry); task_numa_placement acts only when p->numa_scan_seq !=
mm->numa_scan_seq. With both true in the model's state, the next access's first hint fault runs
the placement on the books the model carries; the faults after it add to NUMA_MEMBUF,
NUMA_CPUBUF and numa_faults_locality, which the model counts too. A second placement can run
only after the mm starts another sequence, which needs a pass: an access the model cannot keep
free of passes restarts the free run, counted and reported (PlacementRun.access).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from harness.checks.adapters import model_task
from harness.checks.observe import (
    Context,
    GuestFacts,
    Inconclusive,
    KernelNeverReached,
    Observation,
    observe,
    region_hinted,
    spin_until,
)
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scanreplay import ScanReplay
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import HeldRegion, Region
from harness.model import (
    MEM,
    MEMBUF,
    Decision,
    Page,
    Task,
    Vma,
    hint_fault,
    numa_migrate_interval,
    placement_restarts_scan_clock,
    task_numa_fault,
    task_numa_placement,
    task_scan_max,
    task_scan_min,
    time_after,
)
from harness.model.timing import NSEC_PER_MSEC

# After this many restarts of the free run without enough judged rounds the check is
# inconclusive and fails, saying why (a kernel whose sequences run away from its faults is
# itself suspect).
MAX_RESTARTS = 8


def compare_placed(label: str, model: Task, kernel: Observation, *, period: bool) -> list[str]:
    """What task_numa_placement (and, with `period`, update_task_scan_period) decided, model vs the
    kernel right after it: preferred node, NUMA_MEM per node and kind, total_numa_faults."""
    pairs: list[tuple[str, int, int]] = [
        ("numa_preferred_nid", model.numa_preferred_nid, kernel.task.numa_preferred_nid),
        ("total_numa_faults", model.total_numa_faults, kernel.task.total_numa_faults),
    ]
    if period:
        pairs += [("numa_scan_period", model.numa_scan_period, kernel.task.numa_scan_period),
                  ("numa_scan_period_max", model.numa_scan_period_max, kernel.task.numa_scan_period_max)]
    for nid in range(model.nr_nodes):
        for priv, kind in ((1, "private"), (0, "shared")):
            pairs.append((f"NUMA_MEM node {nid} {kind}", model.faults[MEM][nid][priv], kernel.task.faults["mem"][nid][priv]))
    return [f"{label}: {name} kernel {got}, model {want}" for name, want, got in pairs if want != got]


def compare_books(label: str, model: Task, kernel: Observation) -> list[str]:
    """The books the model carried since its last placement against the kernel's: NUMA_MEMBUF per
    node and kind, numa_faults_locality, and what placement left (NUMA_MEM, total, period)."""
    diffs = compare_placed(label, model, kernel, period=True)
    for nid in range(model.nr_nodes):
        for priv, kind in ((1, "private"), (0, "shared")):
            want, got = model.faults[MEMBUF][nid][priv], kernel.task.faults["membuf"][nid][priv]
            if want != got:
                diffs.append(f"{label}: NUMA_MEMBUF node {nid} {kind} kernel {got}, model {want} (task_numa_fault)")
    if model.numa_pages_migrated != kernel.task.numa_pages_migrated:
        diffs.append(f"{label}: numa_pages_migrated kernel {kernel.task.numa_pages_migrated}, model "
                     f"{model.numa_pages_migrated} (task_numa_fault: TNF_MIGRATED)")
    if tuple(model.locality) != tuple(kernel.task.locality):
        diffs.append(f"{label}: numa_faults_locality (remote, local, migrate-failed) kernel {kernel.task.locality}, "
                     f"model {model.locality} (task_numa_fault: TNF_FAULT_LOCAL, TNF_MIGRATE_FAIL)")
    return diffs


@dataclass
class _Rounds:
    """Judged rounds of a placement scenario, the restarts of its free run, and the diffs."""

    judged: list[dict[str, Any]] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)

    def inconclusive(self, needed: int, what: str) -> list[str]:
        if len(self.judged) >= needed:
            return []
        return [f"inconclusive: {len(self.judged)} of the {needed} {what} needed could be judged; restarts: "
                f"{'; '.join(self.unjudged) or 'none'}"]


# `placement` writes this many more pages of the region from the far node each round (512
# KiB); four rounds: the first placement has no fault history, the next three fold and decay
# the moved pages'.
PLACEMENT_STEP_PAGES = 128
PLACEMENT_ROUNDS = 4
# The period is fixed at 800 ms (placement-exact is the check of update_task_scan_period), so
# that a write, which migrates every page it faults on, fits between two passes: a write of 256
# migrating pages took 78-128 jiffies (312-512 ms at HZ 250; four measured on 2-core TCG: one
# SSH command, each migration's TLB-flush IPIs), half that is at most 64 jiffies plus the SSH
# command's share, so a round waits for numa_next_scan to be WRITE_MARGIN_MS (100 jiffies)
# away, which leaves half of every period to start in. A write that still reaches
# numa_next_scan restarts the free run (PlacementRun.access), counted and reported.
PLACEMENT_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 800, "scan_period_max_ms": 800}
WRITE_MARGIN_MS = 400


@check("placement", seconds=9.8, releases=EVERY_MODELLED_RELEASE)
def check_placement(ctx: Context) -> Finding:
    """The preferred node follows the memory, free-running from one observation. A 16 MiB
    region is first touched on node 0 by a task exec'd on the last node; the task spins there
    (mm_users 1: change_pte_range never hints the pages already on its node, and its other
    memory is bound without MPOL_F_NUMA_BALANCING, so it has no hint faults but the ones its
    writes make). Once the scanner has met the mm, the model takes ONE
    observation and carries everything from there (PlacementRun, as placement-exact). Round by
    round, once the model says a placement is pending with the first page not written yet
    hinted, the task writes 512 KiB more of the region from the last node: the first fault runs
    the placement on the books the model carries (task_numa_placement: mem - mem/2 + membuf per
    node and kind, the node with most memory faults, ties to the lower id as the kernel's strict
    '>'); every later fault on a page the model's passes hinted migrates it (first faults:
    last_cpupid unset, the early-scan rule, or the two-stage filter's private fault), and
    task_numa_fault books it. After every step the kernel's whole state must be the model's:
    preferred node, NUMA_MEM, NUMA_MEMBUF, total_numa_faults, locality, numa_pages_migrated, the
    period (fixed: PLACEMENT_KNOBS), numa_migrate_retry, and the scanner's state with every
    page's hint, node, last_cpupid and write bit. As the memory moves the model, and the kernel, must come to
    prefer the last node.

    A migration the rules allow can still be refused for reasons outside them
    (migrate_misplaced_folio_prepare cannot isolate a folio held by compaction or sitting in a
    per-CPU LRU batch): a write whose only difference is such pages, counted by the kernel as
    migrate-failed (numa_faults_locality[2]), makes the scenario inconclusive, and it is retried."""
    remote = ctx.nodes_with_cpus()[-1]
    remote_cpu = min(c for c, n in ctx.node_of_cpu.items() if n == remote)
    # quiet: the task's other memory is never hinted, so the writes make its only hint faults
    # (its program's data, first read wherever the page cache put it, could be on node 0).
    with scenario(ctx, Region(16, node=0, exec_on=remote, quiet=True), knobs=PLACEMENT_KNOBS) as region:
        drain_lru_batches(ctx.guest)
        # Past the first trigger, which only arms numa_next_scan (a fresh mm burns it), and one
        # whole sequence: the scanner's state is then what ScanReplay carries.
        spin_until(region, ctx, remote, lambda o: o.mm.numa_scan_seq >= 1, step=SPIN_STEP_S)
        run = PlacementRun(ctx.facts, (region.addr, region.end), region.pid, remote_cpu, write=True,
                           margin_ms=WRITE_MARGIN_MS)
        previous = observe(ctx, region.pid)
        run.keep(ctx, "start", previous)
        run.begin(previous)
        written = 0
        # Until enough rounds are judged, enough of them on books the model carried: a restart
        # (a write that reached numa_next_scan) begins a new free run whose first round is not.
        while (not run.broken and written < region.length // 4096 and len(run.rounds.unjudged) <= MAX_RESTARTS
               and (len(run.rounds.judged) < PLACEMENT_ROUNDS or run.carried_rounds < PLACEMENT_ROUNDS - 1)):
            previous = spin_to_placement(ctx, region, remote, run, previous, range(written, written + 1))
            if run.broken:
                break
            written += PLACEMENT_STEP_PAGES
            region.touch(node=remote, pages=written)
            current = observe(ctx, region.pid)
            run.keep(ctx, "access", current, pages=written)
            run.access(written, previous, current)
            previous = current
    return run.finding(PLACEMENT_ROUNDS, carried_needed=PLACEMENT_ROUNDS - 1, subject=_prefers(remote))


def _prefers(node: int) -> Callable[[list[dict[str, Any]]], list[str]]:
    """check_placement's subject: the last placement, the model's and the kernel's, prefers `node`."""
    def lost(judged: list[dict[str, Any]]) -> list[str]:
        last = judged[-1] if judged else None
        if last is None or last["preferred_model"] == node:
            return []
        return [f"with its memory moved to node {node} the model itself prefers node {last['preferred_model']} "
                f"(from mem {last['mem_before']}, membuf {last['membuf']}): the scenario lost its subject"]
    return lost


# placement-exact scans every 400-800 ms (not FAST_SCAN's 100-400): a round's read must not
# contain a scanner pass, and the round waits for a moment whose numa_next_scan (the model's)
# is at least READ_MARGIN_MS away (task_numa_work does nothing before it). The read is one SSH
# command, 30-70 ms measured; 200 ms is three times that. A read that reaches the model's
# numa_next_scan anyway restarts the free run (ExactRun.read).
EXACT_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 400, "scan_period_max_ms": 800}
READ_MARGIN_MS = 200
# The task spins this long between observations before the free run starts: less than the
# shortest period (400 ms), so a step holds at most one trigger of task_tick_numa (node_stamp).
SPIN_STEP_S = 0.3
# In the free run a spin step ends just past the task's next trigger as the model counts it
# (PlacementRun.spin_length), so that the observation after it comes right after the pass,
# inside the margin an access needs, instead of wherever a fixed step happens to end.
SPIN_MIN_S = 0.05
# Past the trigger: the tick that sees the threshold crossed (4 ms at HZ 250) and the pass.
SPIN_PAST_TRIGGER_S = 0.03
# Spinning this long without a placement falling due means the scanner stopped (the model says
# when it should have run; a kernel that never gets there fails the check).
SPIN_LIMIT_S = 60.0


@dataclass
class _FreeRun:
    """The model's own state, carried from the free run's one observation through every pass,
    placement and fault it predicts: the task's fault books, its numa_migrate_retry, and the
    scanner's state with every page of the process (ScanReplay: hint bit, node, last_cpupid)."""

    task: Task
    replay: ScanReplay
    migrate_retry: int
    reads: int = 0  # rounds judged on this free run


def _moved_to(ctx: Context, region: HeldRegion, far: int) -> None:
    """The helper's first faults (last_cpupid unset: the early-scan rule) must have moved every
    page of the region to the far node: the premise of the rounds. A migration can fail for
    reasons outside NUMA balancing's rules (migrate_misplaced_folio_prepare cannot isolate a folio
    that sits in a per-CPU LRU batch or that compaction holds; seen for 10 of 1024 pages once in
    about 40 runs): such a page, left on the near node, can never be hinted again while the
    main thread spins there alone (change_pte_range skips pages on the scanning task's node when
    mm_users is 1), so the scenario is inconclusive and is retried, never waited out."""
    part = observe(ctx, region.pid).table.within(region.addr, region.end)
    stayed = int((part.node != far).sum())
    if stayed:
        raise Inconclusive(f"{stayed} of {len(part)} pages did not move to node {far} on the helper thread's first "
                           f"faults (a refused migration): the rounds need the whole region there")


def _still_on(obs: Observation, region: tuple[int, int], far: int) -> None:
    """The main thread's read before the free run must have left the region on the far node
    (the two-stage filter refuses a shared fault), or the main thread, spinning on the near
    node alone, never gets a hint there again (change_pte_range's target-node skip) and no round
    can start. A helper whose tid's low 8 bits (LAST__PID_MASK) read as "unset" (0xff) or as the
    main thread's pid makes the fault a first or private one, which migrates: seen once in 10
    runs on 6.1. Inconclusive: retried with new threads."""
    part = obs.table.within(*region)
    moved = int((part.node != far).sum())
    if moved:
        first = next(e for e in part if e.node != far)
        raise Inconclusive(f"{moved} of {len(part)} pages moved off node {far} on the main thread's setup read (first "
                           f"{first.vaddr:#x}, last_cpupid {first.last_cpupid}): the helper's tid read as unset or "
                           f"as the main thread's own in last_cpupid, so the rounds cannot start")


@check("placement-exact", seconds=10.5, releases=EVERY_MODELLED_RELEASE)
def check_placement_exact(ctx: Context) -> Finding:
    """Placement, scan period, scanner and fault books, free-running from one observation. The
    scenario makes the period take the "speed up" branch: a 4 MiB read-only region (no
    numa_group: TNF_NO_GROUP) is moved to the far node by a short-lived thread, so the main
    thread's faults on it are remote and shared (another tid in last_cpupid) and are refused by
    the two-stage filter. Then the task spins on the near node (its own pages are bound, so
    never hinted: it has no faults but the ones its reads make), and round by round, once the
    model says a placement is pending, reads the region's first pages, one more each round.

    The model takes everything from ONE observation, after the setup: the task's books and the
    scanner's state (checks/scanreplay.py). From then on it predicts every step: each spin's
    pass (which pages it hints, the VMA's numab_state, offset, sequence, numa_next_scan,
    node_stamp), and each read: the placement (fold, decay, preferred node,
    update_task_scan_period with task_scan_min/max from the RSS the model counts, the scan clock
    restart of its first branch), then each fault on the pages the model's passes hinted
    (hint_fault: the two-stage filter, the early-scan rule, the exchanged last_cpupid;
    task_numa_fault: NUMA_MEMBUF and numa_faults_locality, counted by the model), and
    numa_migrate_retry (numa_migrate_preferred). After every step the whole observable state is
    compared: the scanner's (ScanReplay), the books (preferred node, NUMA_MEM, NUMA_MEMBUF,
    total_numa_faults, locality, period and its max) and numa_migrate_retry. The first step that
    does not match ends the check with its diffs.

    Inputs after the start, each held to the predicted state: what ScanReplay takes (a pass's
    jiffies, the node it ran on), the jiffies of the placing fault (through the clock restart
    and numa_migrate_retry, each within the read's jiffies), and the CPU inside the near node
    the read ran on. A read that reaches the model's numa_next_scan (a pass could then come
    between a fault and its retry: a second fault the model cannot see) cannot be judged: the
    free run restarts from the observation after it, and the restart is counted and reported.
    Too few judged rounds is a failure."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    near_cpu = min(c for c, n in ctx.node_of_cpu.items() if n == near)
    # quiet: the main thread's own memory (stack, data) is never hinted. Otherwise the helper
    # threads below, which read their command from the main thread's stack and scan with
    # mm_users 2, can leave a stack page with a helper's last_cpupid, and the main thread's next
    # fault there gives it a numa_group (task_numa_group), whose placement the model does not
    # follow (seen once in 30+ full runs).
    request = Region(4, node=near, readonly=True, exec_on=near, quiet=True)
    with scenario(ctx, request, knobs=EXACT_KNOBS) as region:
        all_hinted = region_hinted(region)
        drain_lru_batches(ctx.guest)
        # A short-lived thread spins on the far node so that passes hint the region without the
        # main thread leaving the near node.
        for _ in range(120):
            if all_hinted(observe(ctx, region.pid)):
                break
            region.spin(0.5, node=far, thread=True)
        else:
            raise KernelNeverReached("the region was not hinted after 60 s of a thread spinning on the far node")
        region.read(node=far, thread=True)
        _moved_to(ctx, region, far)
        spin_until(region, ctx, near, all_hinted, step=0.5)
        region.read(node=near)
        run = PlacementRun(ctx.facts, (region.addr, region.end), region.pid, near_cpu, write=False,
                           margin_ms=READ_MARGIN_MS)
        previous = observe(ctx, region.pid)
        _still_on(previous, (region.addr, region.end), far)
        run.keep(ctx, "start", previous)
        run.begin(previous)
        for page in range(1, 16):
            if run.broken or run.carried_rounds >= 2 or len(run.rounds.unjudged) > MAX_RESTARTS:
                break
            previous = spin_to_placement(ctx, region, near, run, previous, range(page, page + 1))
            if run.broken:
                break
            region.read(node=near, pages=page + 1)
            current = observe(ctx, region.pid)
            run.keep(ctx, "access", current, pages=page + 1)
            run.access(page + 1, previous, current)
            previous = current
    return run.finding(3, carried_needed=2, subject=_speeds_up)


def _speeds_up(judged: list[dict[str, Any]]) -> list[str]:
    """check_placement_exact's subject: fault history to decay, and the speed-up branch."""
    diffs = []
    if not any(r["mem_history"] for r in judged):
        diffs.append("no judged round had fault history to decay: the check lost its subject")
    if not any(r["branch"] == "speed up" for r in judged):
        diffs.append("no round took update_task_scan_period's speed-up branch: the check lost its subject")
    return diffs


def spin_to_placement(ctx: Context, region: HeldRegion, node: int, run: PlacementRun, previous: Observation,
                      pages: range, *, also: Callable[[PlacementRun], bool] | None = None,
                      lost: Callable[[PlacementRun], str | None] | None = None) -> Observation:
    """Spin on `node`, every step predicted, until the model has a placement pending and the
    region's pages `pages` hinted (PlacementRun.pending), and `also` holds for the model's
    state; the last observation. `lost` names a model state from which the scenario cannot
    reach what it waits for in this run (inconclusive: the scenario is retried)."""
    spent = 0.0
    while not (run.pending(previous, pages) and (also is None or also(run))):
        reason = lost(run) if lost is not None else None
        if reason:
            raise Inconclusive(f"waiting to access pages {pages.start}..{pages.stop - 1} from node {node}: {reason}")
        if spent >= SPIN_LIMIT_S:
            raise KernelNeverReached(f"after {spent:.0f} s of spinning no placement fell due with pages "
                                     f"{pages.start}..{pages.stop - 1} of the region hinted: "
                                     f"{run.waiting_for(previous, pages)}")
        step = run.spin_length(previous)
        region.spin(step, node=node)
        spent += step
        current = observe(ctx, region.pid)
        run.keep(ctx, "spin", current)
        run.spin(previous, current)
        previous = current
        if run.broken:
            break
    return previous


@dataclass
class PlacementRun:
    """The model side of check_placement and check_placement_exact (no guest: golden
    observations replay through it too): the free run and the rounds it judged. `cpu` is the CPU
    the model's faults run on (its node decides; the CPU inside the node is an input,
    ScanReplay.step_faulted); `write`: the accesses write (else read) the region; `margin_ms`:
    how far numa_next_scan must be for an access to start (READ_MARGIN_MS, WRITE_MARGIN_MS)."""

    facts: GuestFacts
    region: tuple[int, int]
    pid: int
    cpu: int
    write: bool
    margin_ms: int
    rounds: _Rounds = field(default_factory=_Rounds)
    free: _FreeRun | None = None
    steps: int = 0
    broken: bool = False  # the kernel left the prediction: the diffs say where

    @property
    def carried_rounds(self) -> int:
        return sum(1 for r in self.rounds.judged if r["carried"])

    def keep(self, ctx: Context, kind: str, obs: Observation, **notes: Any) -> None:
        """With --record: every observation, with what a replay needs (replay_placement_run)."""
        ctx.keep(f"step-{len(ctx.kept or ()):03d}", obs, kind=kind, region=list(self.region), pid=self.pid,
                 cpu=self.cpu, write=self.write, margin_ms=self.margin_ms, **notes)

    def begin(self, obs: Observation) -> None:
        """The free run's one observation."""
        nr_nodes = len(set(self.facts.node_of_cpu.values()))
        self.free = _FreeRun(model_task(obs, nr_nodes),
                             ScanReplay.start(obs, self.facts, self.pid, self.region, caller_places=True),
                             obs.task.numa_migrate_retry)

    def _fail(self, label: str, diffs: list[str]) -> None:
        if diffs:
            self.rounds.diffs.extend(f"{label}: {d}" for d in diffs[:12])
            self.broken = True

    def _hinted(self, pages: range) -> tuple[int, int]:
        """Of the model's entries mapping the region's pages `pages` (indices; a PMD entry maps
        512), how many are hints, and how many there are."""
        assert self.free is not None
        start, end = self.region[0] + pages.start * 4096, self.region[0] + pages.stop * 4096
        entries = [e for va, e in self.free.replay.pages.items() if start <= va < end]
        return sum(e.hint for e in entries), len(entries)

    def pending(self, obs: Observation, pages: range) -> bool:
        """The model's state at `obs` says the next access's first fault runs task_numa_placement
        (the module docstring: the task's sequence behind the mm's, numa_migrate_retry past),
        every entry mapping `pages` (indices into the region) is hinted, and numa_next_scan is at
        least margin_ms away."""
        free = self.free
        assert free is not None
        replay = free.replay
        margin = replay.tunables.ms_to_jiffies(self.margin_ms)
        hinted, entries = self._hinted(pages)
        return (free.task.numa_scan_seq != replay.mm.numa_scan_seq
                and time_after(obs.balancing.jiffies, free.migrate_retry)
                and 0 < hinted == entries and replay.next_scan - obs.balancing.jiffies >= margin)

    def waiting_for(self, obs: Observation, pages: range) -> str:
        free = self.free
        assert free is not None
        replay = free.replay
        hinted, entries = self._hinted(pages)
        return (f"model task sequence {free.task.numa_scan_seq}, mm {replay.mm.numa_scan_seq} (kernel "
                f"{obs.task.numa_scan_seq}, {obs.mm.numa_scan_seq}); numa_migrate_retry in "
                f"{free.migrate_retry - obs.balancing.jiffies} jiffies; numa_next_scan in "
                f"{replay.next_scan - obs.balancing.jiffies} jiffies; {hinted} of the {entries} entries mapping "
                f"pages {pages.start}..{pages.stop - 1} hinted")

    def spin_length(self, obs: Observation) -> float:
        """Seconds to spin from `obs` so that the step ends just past the next trigger of
        fair.c:task_tick_numa (sum_exec_runtime > node_stamp + period, both as the model carries
        them; the runtime so far is the observed one), but never a whole period: a step then
        holds at most one trigger, and ScanReplay one pass. Only the harness's pacing depends
        on it, never a prediction."""
        assert self.free is not None
        replay = self.free.replay
        due_s = (replay.node_stamp + replay.period_ms * NSEC_PER_MSEC - obs.task.sum_exec_runtime) / 1e9
        cap = max(SPIN_MIN_S, (replay.period_ms - 100) / 1000)
        return round(min(cap, max(SPIN_MIN_S, due_s + SPIN_PAST_TRIGGER_S)), 3)

    def spin(self, before: Observation, after: Observation) -> None:
        """A step in which the task only spun: ScanReplay predicts the scanner; the books and
        numa_migrate_retry cannot move (no fault of the task, so no task_numa_fault)."""
        self.steps += 1
        free = self.free
        assert free is not None
        label = f"step {self.steps} (spin, jiffies {before.balancing.jiffies}..{after.balancing.jiffies})"
        diffs = free.replay.step(before, after)
        if not diffs:
            diffs = compare_books("the books", free.task, after)
            if after.task.numa_migrate_retry != free.migrate_retry:
                diffs.append(f"numa_migrate_retry {after.task.numa_migrate_retry}, model {free.migrate_retry} "
                             f"(set only by numa_migrate_preferred, after a fault)")
        self._fail(label, diffs)

    def access(self, pages: int, a: Observation, b: Observation, *, first: int = 0, cpu: int | None = None,
               refused: bool = False) -> None:
        """A round: the task reads (writes) the region's pages `first`..`pages` - 1 from `a` (a
        placement pending) to `b`, on `cpu` (its node decides; default the run's). The
        placement the first fault runs, then every fault on a page the model's passes hinted,
        in address order (nhmem's loop). `refused`: the target node is held too full to take a
        page (mm/migrate.c:migrate_balanced_pgdat, as the caller confirmed from its zones
        before and after the access), so every migration the rules want fails."""
        self.steps += 1
        free = self.free
        assert free is not None
        replay = free.replay
        cpu = self.cpu if cpu is None else cpu
        number = len(self.rounds.judged) + 1
        verb = "write" if self.write else "read"
        span = f"{pages} pages" if first == 0 else f"pages {first}..{pages - 1}"
        label = (f"step {self.steps} (round {number}: {verb} of {span} on node {self.facts.node_of_cpu[cpu]}, "
                 f"jiffies {a.balancing.jiffies}..{b.balancing.jiffies})")
        mm_seq, tun = replay.mm.numa_scan_seq, replay.tunables
        # task_scan_min/max from the RSS (task_nr_scan_windows): one value unless the percpu lag
        # straddles a scan-size boundary, which a workload of a few MiB never does.
        bounds = {(task_scan_min(r, tun), task_scan_max(r, tun)) for r in replay.rss_pages}
        if len(bounds) != 1:
            self._restart(b, f"round {number}: the RSS the model counts ({replay.rss_pages}) straddles a scan window, "
                             f"so task_scan_min/max are not one value")
            return
        ((scan_min, scan_max),) = bounds
        placed = task_numa_placement(free.task, mm_seq, scan_min=scan_min, scan_max=scan_max, rules=self.facts.rules)
        restarts = placement_restarts_scan_clock(free.task, mm_seq)
        period = tun.ms_to_jiffies(placed.numa_scan_period)
        if b.balancing.jiffies >= replay.next_scan or (restarts and b.balancing.jiffies >= a.balancing.jiffies + period):
            self._restart(b, f"round {number}: the {verb} reached jiffies {b.balancing.jiffies}, at or past the model's "
                             f"numa_next_scan ({replay.next_scan}, or the restarted clock): a pass may have run "
                             f"between a fault and its retry")
            return
        # The first fault is decided on the task as it was (should_numa_migrate_memory runs in
        # do_numa_page before task_numa_fault places), every later one on the placed task.
        task, start, end = free.task, self.region[0] + first * 4096, self.region[0] + pages * 4096
        vma = next(v for v in replay.vmas if v.start <= self.region[0] < v.end)
        faulted: dict[int, Page] = {}
        decisions: dict[int, Decision] = {}
        faults = 0
        for va in sorted(v for v, p in replay.pages.items() if start <= v < end and p.hint):
            if va in faulted:
                continue  # restored with its large folio by an earlier fault of the access
            result = hint_fault(task, replay.pages[va], cpu=cpu, node_of_cpu=self.facts.node_of_cpu,
                                jiffies_after_retry=False, write=self.write, vma_writable=vma.writable,
                                migration_succeeds=not refused,
                                rules=self.facts.rules)
            if not faults:
                # fair.c:task_numa_fault places before it books the fault: the first fault's
                # books go onto the placed task.
                task, _ = task_numa_fault(placed, replay.pages[va].last_cpupid, result.page.node,
                                          replay.pages[va].folio_nr_pages, local=result.local,
                                          migrated=result.migrated,
                                          migrate_failed=result.decision == Decision.MIGRATION_FAILED,
                                          cpu_node=self.facts.node_of_cpu[cpu], run_placement=False, mm_seq=None,
                                          rules=self.facts.rules)
            else:
                task = result.task
            faults += 1
            for pte, page in _folio_after_fault(replay.pages, va, result.page, vma).items():
                faulted[pte], decisions[pte] = page, result.decision
        self._refused_elsewhere(faulted, replay.pages, task, b)
        diffs = []
        if b.task.numa_group_id is not None:
            diffs.append(f"the task joined numa_group {b.task.numa_group_id}, but its faults were private or on a "
                         f"read-only VMA (TNF_NO_GROUP): task_numa_group never runs for them")
        if b.task.numa_scan_seq != mm_seq:
            diffs.append(f"the {verb} faulted on {len(faulted)} hinted pages but task_numa_placement did not run (task "
                         f"sequence {b.task.numa_scan_seq}, model mm {mm_seq})")
        before_pages = dict(replay.pages)
        # First what the rules decided for the pages the kernel put elsewhere: the rule a diff is about.
        diffs += _decided_elsewhere(faulted, decisions, before_pages, b)
        diffs += compare_books(f"after the placement and the {verb}'s faults", task, b)
        diffs += _thp_migrations(faulted, before_pages, a, b)
        diffs += replay.step_faulted(a, b, faulted, period_ms=placed.numa_scan_period, clock_restarted=restarts,
                                     faults=faults)
        retry, retry_diffs = self._migrate_retry(free, placed, a, b)
        self._fail(label, diffs + retry_diffs)
        figures = _round_figures(free.task, placed, b, free.reads > 0, faults)
        figures.update(node=self.facts.node_of_cpu[cpu], first=first, pages=pages,
                       moved_model=sum(1 for va, p in faulted.items() if p.node != before_pages[va].node),
                       moved_kernel=sum(1 for e in b.table.within(start, end)
                                        if e.vaddr in before_pages and e.node != before_pages[e.vaddr].node),
                       decisions={d.value: sum(1 for x in decisions.values() if x == d) for d in set(decisions.values())},
                       seq_at_first_fault=free.task.numa_scan_seq, preferred_at_first_fault=free.task.numa_preferred_nid,
                       seq_placed=placed.numa_scan_seq)
        self.rounds.judged.append(figures)
        self.free = _FreeRun(task, replay, retry, free.reads + 1)

    def _refused_elsewhere(self, faulted: dict[int, Page], before: dict[int, Page], task: Task,
                           b: Observation) -> None:
        """Inconclusive when the kernel refused migrations the rules allow and nothing else
        differs in the books: pages the model moved stayed where they were, and the kernel
        counted exactly that many migrate failures (task_numa_fault: TNF_MIGRATE_FAIL, set when
        migrate_misplaced_folio_prepare cannot isolate the folio, e.g. one compaction holds or
        a per-CPU LRU batch keeps off the LRU: nothing the model can know). A kernel that
        refuses every migration stays inconclusive try after try, which fails the check."""
        kernel_node = {e.vaddr: e.node for e in b.table.within(*self.region)}
        stayed = [va for va, page in faulted.items()
                  if page.node != before[va].node and kernel_node.get(va) == before[va].node]
        if not stayed or b.task.locality[2] != len(stayed) or task.locality[2] != 0:
            return
        if (b.task.locality[0], b.task.locality[1]) != (task.locality[0], task.locality[1]):
            return
        raise Inconclusive(f"{len(stayed)} of the {len(faulted)} pages the rules migrate were refused (numa_faults_"
                           f"locality[2] = {b.task.locality[2]}; first {stayed[0]:#x}): a folio that could not be "
                           f"isolated, which the model cannot know")

    def _migrate_retry(self, free: _FreeRun, placed: Task, a: Observation, b: Observation) -> tuple[int, list[str]]:
        """fair.c:numa_migrate_preferred, called after the placement by each fault whose jiffies
        are past numa_migrate_retry, sets it to jiffies + interval once the task has a preferred
        node; the last such fault's jiffies is an input inside the read's."""
        if placed.numa_preferred_nid == -1:
            return free.migrate_retry, ([] if b.task.numa_migrate_retry == free.migrate_retry else [
                f"numa_migrate_retry {b.task.numa_migrate_retry}, model {free.migrate_retry} (no preferred node: "
                f"numa_migrate_preferred returns first)"])
        interval = numa_migrate_interval(placed.numa_scan_period, self.facts.hz)
        low, high = a.balancing.jiffies + interval, b.balancing.jiffies + interval
        if low <= b.task.numa_migrate_retry <= high:
            return b.task.numa_migrate_retry, []
        return free.migrate_retry, [f"numa_migrate_retry {b.task.numa_migrate_retry}, model {low}..{high} (the "
                                    f"placing fault's jiffies + min(HZ, period / 16): numa_migrate_preferred)"]

    def _restart(self, after: Observation, why: str) -> None:
        self.rounds.unjudged.append(f"{why}; the free run restarts from the observation after it")
        self.begin(after)

    def finding(self, needed: int, *, carried_needed: int,
                subject: Callable[[list[dict[str, Any]]], list[str]]) -> Finding:
        """The verdict: the diffs of the step that broke the free run; else too few judged
        rounds (or rounds on books the model carried), or the scenario's `subject` lost."""
        rounds = self.rounds
        diffs = list(rounds.diffs)
        carried = [r for r in rounds.judged if r["carried"]]
        if not self.broken:
            diffs += rounds.inconclusive(needed, "placements")
            if len(carried) < carried_needed:
                diffs.append(f"only {len(carried)} rounds compared books the model carried itself (restarts: "
                             f"{'; '.join(rounds.unjudged) or 'none'}): the free run never got going")
            diffs += subject(rounds.judged)
        inputs = dict(self.free.replay.inputs) if self.free is not None else {}
        summary = (f"{len(rounds.judged)} placements predicted over {self.steps} steps, {len(carried)} on books the "
                   f"model carried ({len(rounds.unjudged)} restarts); preferred "
                   + " -> ".join(str(r["preferred_kernel"]) for r in rounds.judged) + "; " + ", ".join(
                       f"period {r['period_before']}->{r['period_kernel']} ms (model {r['period_model']})"
                       for r in rounds.judged))
        return Finding(summary, {"rounds": rounds.judged, "restarts": rounds.unjudged, "steps": self.steps,
                                 "inputs": inputs}, tuple(diffs))


def _folio_after_fault(pages: dict[int, Page], va: int, restored: Page, vma: Vma) -> dict[int, Page]:
    """Every entry one hint fault at `va` changed, as it left them (`restored`: the faulting
    entry, from hint_fault). A base page is its own folio. A PTE-mapped large folio (an mTHP)
    is decided as a whole (mm/memory.c:do_numa_page: one numa_migrate_check, folio_nr_pages
    booked): migrate_misplaced_folio moves it whole and remove_migration_ptes maps each of its
    PTEs again (a hint's migration entry read-only, as the faulting one; a present PTE's with
    the write bit it had); left in place, numa_rebuild_large_mapping restores each of its
    PROT_NONE PTEs within the VMA (writable as the faulting one: can_change_pte_writable) and
    leaves the others alone. The folio is naturally aligned where alloc_anon_folio maps it
    (ALIGN_DOWN(address, folio size))."""
    size = pages[va].folio_pages * 4096
    if not size:
        return {va: restored}
    changed = {}
    for pte in range(max(va - va % size, vma.start), min(va - va % size + size, vma.end), 4096):
        page = pages.get(pte)
        if page is None:
            continue
        changed[pte] = replace(page, node=restored.node, last_cpupid=restored.last_cpupid, hint=False,
                               writable=restored.writable if page.hint else page.writable)
    return changed


def _thp_migrations(faulted: dict[int, Page], before: dict[int, Page], a: Observation, b: Observation) -> list[str]:
    """thp_migration_success (global) grew by the PMD-mapped THPs the model migrated, when the
    access faulted on any (migrate_misplaced_folio -> migrate_pages counts each THP moved)."""
    huge = [va for va, page in faulted.items() if page.huge]
    if not huge:
        return []
    moved = sum(1 for va in huge if faulted[va].node != before[va].node)
    delta = b.vmstat["thp_migration_success"] - a.vmstat["thp_migration_success"]
    if delta != moved:
        return [f"thp_migration_success grew by {delta}, the model migrated {moved} of the {len(huge)} THPs it faulted on"]
    return []


def _decided_elsewhere(faulted: dict[int, Page], decisions: dict[int, Decision], before: dict[int, Page],
                       b: Observation) -> list[str]:
    """For the first faulted pages the kernel left on another node than the model: what the
    model's rules decided for them (the branch of should_numa_migrate_memory), so that a diff
    names the rule the kernel did not follow."""
    kernel_node = {e.vaddr: e.node for e in b.table}
    wrong = [va for va, page in faulted.items() if va in kernel_node and kernel_node[va] != page.node]
    return [f"{va:#x}: kernel node {kernel_node[va]}, model node {faulted[va].node} from node {before[va].node} "
            f"({decisions[va].value})" for va in wrong[:3]]


def _round_figures(before: Task, placed: Task, b: Observation, carried: bool, faults: int) -> dict[str, Any]:
    remote, local, failed = before.locality
    shared = sum(p[0] for p in before.faults[MEMBUF])
    private = sum(p[1] for p in before.faults[MEMBUF])
    fraction: Callable[[int, int], int | None] = lambda part, whole: part * 10 // whole if whole else None  # noqa: E731
    ratio_lr, ratio_ps = fraction(local, local + remote), fraction(private, private + shared)
    branch = ("slow down (no local or shared faults, or failed migrations)" if local + shared == 0 or failed
              else "slow down" if (ratio_ps or 0) >= 7 or (ratio_lr or 0) >= 7 else "speed up")
    return {"carried": carried, "faults_replayed": faults, "period_before": before.numa_scan_period,
            "preferred_model": placed.numa_preferred_nid, "preferred_kernel": b.task.numa_preferred_nid,
            "period_model": placed.numa_scan_period, "period_kernel": b.task.numa_scan_period, "branch": branch,
            "locality": list(before.locality), "membuf": [list(p) for p in before.faults[MEMBUF]],
            "mem_before": [list(p) for p in before.faults[MEM]], "mem_kernel": b.task.faults["mem"],
            "mem_history": any(sum(p) for p in before.faults[MEM])}


def replay_placement_run(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any]) -> PlacementRun:
    """The judgement of check_placement or check_placement_exact over a recording (labels
    step-NNN, each noted with its kind: start, spin or access): golden observations from real
    guests through the model. An Inconclusive the live check would have raised propagates."""
    labels = sorted(k for k in observations if k.startswith("step-"))
    first = notes[labels[0]]
    run = PlacementRun(facts, (int(first["region"][0]), int(first["region"][1])), int(first["pid"]), int(first["cpu"]),
                       write=bool(first["write"]), margin_ms=int(first["margin_ms"]))
    previous: Observation | None = None
    for label in labels:
        note, obs = notes[label], observations[label]
        if note["kind"] == "start":
            run.begin(obs)
        else:
            assert previous is not None
            if note["kind"] == "spin":
                run.spin(previous, obs)
            else:
                cpu = note.get("access_cpu")
                run.access(int(note["pages"]), previous, obs, first=int(note.get("first", 0)),
                           cpu=None if cpu is None else int(cpu), refused=bool(note.get("refused", False)))
        previous = obs
        if run.broken:
            break
    return run
