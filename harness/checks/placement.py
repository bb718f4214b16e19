"""Placement checks: task_numa_placement (fold and decay of the fault books, the preferred node) and
update_task_scan_period, predicted by the model from the books the kernel will use.

Why a pending placement can be predicted from one observation: fair.c:task_numa_fault calls
task_numa_placement before it adds its own fault to the books, and only when
time_after(jiffies, p->numa_migrate_retry); task_numa_placement acts only when
p->numa_scan_seq != mm->numa_scan_seq. A task observed with both true has its placement pending,
and the first hint fault after the observation runs it; no fault can come between the
observation and that first fault, so the placement folds exactly the books observed. Which fault
comes first does not matter. What the later faults add goes to NUMA_MEMBUF, NUMA_CPUBUF and
numa_faults_locality, which the post-placement comparison leaves out (placement-exact predicts
those too). A second placement can run only after the mm starts another sequence: a round in
which the mm's sequence moved is not judged, and is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from harness.checks.accounting import compare_last_cpupid
from harness.checks.adapters import model_pages, model_task, model_tunables
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
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import HeldRegion, Region
from harness.model import (
    MEM,
    MEMBUF,
    Page,
    Task,
    Tunables,
    hint_fault,
    placement_restarts_scan_clock,
    task_numa_placement,
    task_scan_max,
    task_scan_min,
    time_after,
)

# A round that cannot be judged (the mm started another sequence, a pass ran during the read) is
# retried; after this many such rounds without enough judged ones the check is inconclusive and
# fails, saying why (a kernel whose sequences run away from its faults is itself suspect).
MAX_UNJUDGED_ROUNDS = 8


def placement_pending(o: Observation) -> bool:
    """The next hint fault runs task_numa_placement (see the module docstring)."""
    return (o.task.numa_scan_seq != o.mm.numa_scan_seq and time_after(o.balancing.jiffies, o.task.numa_migrate_retry)
            and o.task.numa_group_id is None)


def predict_placement(facts: GuestFacts, a: Observation, books: Task) -> Task:
    """The model's task_numa_placement + update_task_scan_period on `books` at observation `a`
    (task_scan_min/max from a's RSS and tunables: fair.c:task_scan_min/task_scan_max)."""
    tun = model_tunables(a, facts.hz)
    rss = a.mm.rss_pages
    return task_numa_placement(books, a.mm.numa_scan_seq, scan_min=task_scan_min(rss, tun),
                               scan_max=task_scan_max(rss, tun), rules=facts.rules)


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
    if tuple(model.locality) != tuple(kernel.task.locality):
        diffs.append(f"{label}: numa_faults_locality (remote, local, migrate-failed) kernel {kernel.task.locality}, "
                     f"model {model.locality} (task_numa_fault: TNF_FAULT_LOCAL, TNF_MIGRATE_FAIL)")
    return diffs


@dataclass
class _Rounds:
    """Judged and unjudged rounds of a placement scenario, and the diffs of the judged ones."""

    judged: list[dict[str, Any]] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)

    def inconclusive(self, needed: int, what: str) -> list[str]:
        if len(self.judged) >= needed:
            return []
        return [f"inconclusive: {len(self.judged)} of the {needed} {what} needed could be judged; unjudged rounds: "
                f"{'; '.join(self.unjudged) or 'none'}"]


def judge_placement_round(facts: GuestFacts, label: str, a: Observation, b: Observation, rounds: _Rounds) -> None:
    """The model's side of one check_placement round (no guest: golden observations replay too)."""
    model = predict_placement(facts, a, model_task(a, len(set(facts.node_of_cpu.values()))))
    number = len(rounds.judged) + 1
    rounds.diffs.extend(compare_placed(f"{label} placement {number} (jiffies {a.balancing.jiffies})", model, b,
                                       period=False))
    rounds.judged.append({"phase": label, "mem_before": a.task.faults["mem"], "membuf": a.task.faults["membuf"],
                          "mem_kernel": b.task.faults["mem"], "preferred_model": model.numa_preferred_nid,
                          "preferred_kernel": b.task.numa_preferred_nid})


# Each round writes this many more pages of the region from the last node (2 MiB); four rounds:
# the first placement has no fault history, the next three fold and decay the moved pages'.
PLACEMENT_STEP_PAGES = 512
PLACEMENT_ROUNDS = 4


@check("placement", seconds=11, releases=EVERY_MODELLED_RELEASE)
def check_placement(ctx: Context) -> Finding:
    """The preferred node follows the memory, predicted from the books placement folds. A 16 MiB
    region is first touched on node 0 by a task exec'd on the last node; the task spins there
    (its own pages are local, mm_users is 1: change_pte_range never hints them, so it has no
    hint faults but the ones its writes make). Round by round it waits for a pending placement
    (module docstring) with the first page it has not written yet hinted, then writes 2 MiB more
    of the region from the last node: the first fault runs the placement on the observed books,
    and the pages migrate (first faults: last_cpupid unset, so the early-scan rule moves them).
    The model folds the observed pre-placement books (task_numa_placement: mem - mem/2 + membuf
    per node and kind, the node with most memory faults, ties to the lower id as the kernel's
    strict '>') and must give the kernel's preferred node, NUMA_MEM and total_numa_faults right
    after. As the memory moves, the model, and the kernel, must come to prefer the last node."""
    remote = ctx.nodes_with_cpus()[-1]
    rounds = _Rounds()
    with scenario(ctx, Region(16, node=0, exec_on=remote)) as region:
        drain_lru_batches(ctx.guest)
        written = 0
        while (written < region.length // 4096 and len(rounds.judged) < PLACEMENT_ROUNDS
               and len(rounds.unjudged) <= MAX_UNJUDGED_ROUNDS):
            first_new = region.addr + written * 4096

            def pending(o: Observation, va: int = first_new) -> bool:
                entry = o.table.within(va, va + 4096)
                return placement_pending(o) and bool(len(entry)) and bool(entry.hint.all())

            a = spin_until(region, ctx, remote, pending, step=0.3)
            written += PLACEMENT_STEP_PAGES
            region.touch(node=remote, pages=written)
            b = observe(ctx, region.pid)
            label = f"{written // 256} MiB written from node {remote}"
            if b.mm.numa_scan_seq != a.mm.numa_scan_seq:  # a second placement may have run
                rounds.unjudged.append(f"{label}: the mm started sequence {b.mm.numa_scan_seq} during the write")
                continue
            number = len(rounds.judged) + 1
            ctx.keep(f"placement-{number:02}-a", a, phase=label)
            ctx.keep(f"placement-{number:02}-b", b)
            judge_placement_round(ctx.facts, label, a, b, rounds)
            if b.task.numa_scan_seq != a.mm.numa_scan_seq:
                rounds.diffs.append(f"{label}: the write faulted on hinted pages but task_numa_placement did not run "
                                    f"(task sequence {b.task.numa_scan_seq}, mm {a.mm.numa_scan_seq})")
    diffs = rounds.diffs + rounds.inconclusive(PLACEMENT_ROUNDS, "placements")
    last = rounds.judged[-1] if rounds.judged else None
    if last is not None and last["preferred_model"] != remote:
        diffs.append(f"with its memory moved to node {remote} the model itself prefers node {last['preferred_model']} "
                     f"(from mem {last['mem_before']}, membuf {last['membuf']}): the scenario lost its subject")
    summary = (f"{len(rounds.judged)} placements predicted from their pre-placement books ({len(rounds.unjudged)} not "
               f"judged); preferred " + " -> ".join(str(r["preferred_kernel"]) for r in rounds.judged))
    return Finding(summary, {"rounds": rounds.judged, "unjudged": rounds.unjudged}, tuple(diffs))


# placement-exact scans every 400-800 ms (not FAST_SCAN's 100-400): a round's read must not
# contain a scanner pass, and the round waits for a moment whose numa_next_scan is at least
# READ_MARGIN_MS away (task_numa_work does nothing before it). The read is one SSH command,
# 30-70 ms measured; 200 ms is three times that. A pass that still comes restarts the free run.
EXACT_KNOBS = {"scan_delay_ms": 100, "scan_period_min_ms": 400, "scan_period_max_ms": 800}
READ_MARGIN_MS = 200


@dataclass
class _FreeRun:
    """The model's own copy of the task's books and of the region's pages, carried from the
    scenario's first observation through every placement and fault the model replays."""

    task: Task
    pages: dict[int, Page]


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


@check("placement-exact", seconds=14, releases=EVERY_MODELLED_RELEASE)
def check_placement_exact(ctx: Context) -> Finding:
    """Placement, scan period and the fault books, free-running. The scenario makes the period
    take the "speed up" branch: a 4 MiB read-only region (no numa_group: TNF_NO_GROUP) is moved
    to the far node by a short-lived thread, so the main thread's faults on it are remote and
    shared (another tid in last_cpupid) and are refused by the two-stage filter. Then, round by
    round, the task spins on the near node (its own pages are local there and mm_users is 1, so
    change_pte_range never hints them: it has no faults but the ones its reads make) until a
    placement is pending, and reads the region's first pages one more each round.

    The model takes the task's books and the region's pages (node, last_cpupid) from the first
    round's observation only. From then on it carries them: it runs the placement (fold, decay,
    preferred node, update_task_scan_period with task_scan_min/max from the RSS), then replays
    each fault of the read on the pages the scanner had hinted (hint_fault: the two-stage filter,
    the early-scan rule, the exchanged last_cpupid; task_numa_fault: NUMA_MEMBUF, NUMA_CPUBUF and
    numa_faults_locality, counted by the model, never read back). Compared right after each
    placement: preferred node, NUMA_MEM, total_numa_faults, numa_scan_period and its max; and at
    the next round's start, before its placement: the carried NUMA_MEMBUF and locality as well.
    Inputs from the kernel after the start: which pages the scanner hinted (the scanner's own
    prediction is scanner-window's), the mm's sequence and the RSS. A round during which a
    scanner pass ran (numa_next_scan moved: it may have hinted a page between a fault and its
    retry, a second fault the model cannot see) or the mm started another sequence (a second
    placement) ends the free run; the next round starts a new one from its observation, and the
    restart is counted and reported. Too few judged rounds is a failure."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    near_cpu = min(c for c, n in ctx.node_of_cpu.items() if n == near)
    rounds = _Rounds()
    # quiet: the main thread's own memory (stack, data) is never hinted. Otherwise the helper
    # threads below, which read their command from the main thread's stack and scan with
    # mm_users 2, can leave a stack page with a helper's last_cpupid, and the main thread's next
    # fault there gives it a numa_group (task_numa_group), whose placement the model does not
    # follow (placement_pending then never holds: seen once in 30+ full runs).
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
        free: _FreeRun | None = None
        for page in range(1, 16):
            if len([r for r in rounds.judged if r["carried"]]) >= 2:
                break
            free = _exact_round(ctx, region, page, near, near_cpu, free, rounds)
    diffs = rounds.diffs + rounds.inconclusive(3, "placements")
    carried = [r for r in rounds.judged if r["carried"]]
    if len(carried) < 2:
        diffs.append(f"only {len(carried)} rounds compared books the model carried itself (restarts: "
                     f"{'; '.join(rounds.unjudged) or 'none'}): the free run never got going")
    if not any(r["mem_history"] for r in rounds.judged):
        diffs.append("no judged round had fault history to decay: the check lost its subject")
    if not any(r["branch"] == "speed up" for r in rounds.judged):
        diffs.append("no round took update_task_scan_period's speed-up branch: the check lost its subject")
    summary = (f"{len(rounds.judged)} placements predicted, {len(carried)} on books the model carried "
               f"({len(rounds.unjudged)} restarts); " + ", ".join(
                   f"period {r['period_before']}->{r['period_kernel']} ms (model {r['period_model']})"
                   for r in rounds.judged))
    return Finding(summary, {"rounds": rounds.judged, "restarts": rounds.unjudged}, tuple(diffs))


@dataclass(frozen=True)
class ExactRound:
    """What one round of check_placement_exact saw: the region's span, the page the round reads
    up to, the node and CPU it reads from, the task's pid, and its two observations."""

    region: tuple[int, int]
    page: int
    node: int
    cpu: int
    pid: int
    a: Observation  # a placement pending, before the read
    b: Observation  # right after the read


def _exact_round(ctx: Context, region: HeldRegion, page: int, near: int, near_cpu: int, free: _FreeRun | None,
                 rounds: _Rounds) -> _FreeRun | None:
    """One round of check_placement_exact on the guest; returns the free run to carry on with."""
    va = region.addr + page * 4096

    margin = Tunables(hz=ctx.hz).ms_to_jiffies(READ_MARGIN_MS)

    def pending(o: Observation) -> bool:
        entry = o.table.within(va, va + 4096)
        return (placement_pending(o) and bool(len(entry)) and bool(entry.hint.all())
                and o.mm.numa_next_scan - o.balancing.jiffies >= margin)

    a = spin_until(region, ctx, near, pending, step=0.3)
    region.read(node=near, pages=page + 1)
    b = observe(ctx, region.pid)
    number = len(rounds.judged) + len(rounds.unjudged) + 1
    ctx.keep(f"round-{number:02}-a", a, region=[region.addr, region.end], page=page, node=near, cpu=near_cpu,
             pid=region.pid)
    ctx.keep(f"round-{number:02}-b", b)
    return judge_exact_round(ctx.facts, ExactRound((region.addr, region.end), page, near, near_cpu, region.pid, a, b),
                             free, rounds)


def judge_exact_round(facts: GuestFacts, r: ExactRound, free: _FreeRun | None, rounds: _Rounds) -> _FreeRun | None:
    """The model's side of one round (no guest: golden observations replay through it too).
    Returns the free run to carry into the next round, None when the next must restart it."""
    a, b = r.a, r.b
    start, end = r.region
    va = start + r.page * 4096
    number = len(rounds.judged) + 1
    carried = free is not None
    if free is None:  # the free run's one observation
        free = _FreeRun(model_task(a, len(set(facts.node_of_cpu.values()))),
                        {v: p for v, p in model_pages(facts, a).items() if start <= v < end})
    else:
        rounds.diffs.extend(compare_books(f"round {number} before its placement", free.task, a))
    part = a.table.within(start, end)
    hinted = {int(v) for v in part.vaddr[part.hint]}
    placed = predict_placement(facts, a, free.task)
    task, pages = placed, {v: replace(p, hint=v in hinted) for v, p in free.pages.items()}
    read = [v for v in sorted(pages) if v < va + 4096 and pages[v].hint]
    for v in read:  # the read's faults, in address order (nhmem's loop)
        result = hint_fault(task, pages[v], cpu=r.cpu, node_of_cpu=facts.node_of_cpu, jiffies_after_retry=False,
                            rules=facts.rules)
        task, pages[v] = result.task, result.page
    label = f"round {number} placement (jiffies {a.balancing.jiffies})"
    clock = _scan_clock(facts, free.task, placed, a, b)
    if clock is None or b.mm.numa_scan_seq != a.mm.numa_scan_seq:
        rounds.unjudged.append(f"round {number}: a scanner pass may have run during the read (numa_next_scan "
                               f"{a.mm.numa_next_scan} -> {b.mm.numa_next_scan}, sequence {a.mm.numa_scan_seq} -> "
                               f"{b.mm.numa_scan_seq}); the next round restarts the free run")
        return None
    rounds.diffs.extend(f"{label}: {d}" for d in clock)
    if b.task.numa_group_id is not None:
        rounds.diffs.append(f"{label}: the task joined numa_group {b.task.numa_group_id}, but every fault on a "
                            f"read-only VMA carries TNF_NO_GROUP (mm/memory.c:numa_migrate_check)")
    if b.task.numa_scan_seq != a.mm.numa_scan_seq:
        rounds.diffs.append(f"{label}: the read faulted on {len(read)} hinted pages but task_numa_placement did not "
                            f"run (task sequence {b.task.numa_scan_seq}, mm {a.mm.numa_scan_seq})")
    rounds.diffs.extend(compare_placed(label, placed, b, period=True))
    kernel_after = {e.vaddr: e for e in b.table.within(start, va + 4096)}
    for v in read:
        kernel = kernel_after.get(v)
        if kernel is not None:
            rounds.diffs.extend(f"round {number}: {d}" for d in compare_last_cpupid(
                facts, v, pages[v].last_cpupid, kernel.last_cpupid, r.node, r.pid))
    rounds.judged.append(_round_figures(free.task, placed, b, carried, len(read)))
    return _FreeRun(task, pages)


def _scan_clock(facts: GuestFacts, books: Task, placed: Task, a: Observation, b: Observation) -> list[str] | None:
    """mm->numa_next_scan across a round: the diffs, or None when a scanner pass may have run.

    When the placement takes update_task_scan_period's first branch it sets numa_next_scan to
    jiffies + the new period, at the moment of the first fault: between a's and b's jiffies.
    No pass can follow it within the round unless b's jiffies reach that. Otherwise only a pass
    moves numa_next_scan (to at least its old value plus a period)."""
    if placement_restarts_scan_clock(books, a.mm.numa_scan_seq):
        period = Tunables(hz=facts.hz).ms_to_jiffies(placed.numa_scan_period)
        low, high = a.balancing.jiffies + period, b.balancing.jiffies + period
        if b.balancing.jiffies >= low:
            return None
        if not low <= b.mm.numa_next_scan <= high:
            return [f"numa_next_scan {b.mm.numa_next_scan}, model {low}..{high} (update_task_scan_period slows the "
                    f"scan to {placed.numa_scan_period} ms and restarts its clock: jiffies + period)"]
        return []
    return [] if b.mm.numa_next_scan == a.mm.numa_next_scan else None


def _round_figures(before: Task, placed: Task, b: Observation, carried: bool, faults: int) -> dict[str, Any]:
    remote, local, failed = before.locality
    shared = sum(p[0] for p in before.faults[MEMBUF])
    private = sum(p[1] for p in before.faults[MEMBUF])
    fraction: Callable[[int, int], int | None] = lambda part, whole: part * 10 // whole if whole else None  # noqa: E731
    ratio_lr, ratio_ps = fraction(local, local + remote), fraction(private, private + shared)
    branch = ("slow down (no local or shared faults, or failed migrations)" if local + shared == 0 or failed
              else "slow down" if (ratio_ps or 0) >= 7 or (ratio_lr or 0) >= 7 else "speed up")
    return {"carried": carried, "faults_replayed": faults, "period_before": before.numa_scan_period,
            "period_model": placed.numa_scan_period, "period_kernel": b.task.numa_scan_period, "branch": branch,
            "locality": list(before.locality), "membuf": [list(p) for p in before.faults[MEMBUF]],
            "mem_before": [list(p) for p in before.faults[MEM]], "mem_kernel": b.task.faults["mem"],
            "mem_history": any(sum(p) for p in before.faults[MEM])}


def replay_exact_rounds(facts: GuestFacts, observations: dict[str, Observation], notes: dict[str, Any]) -> _Rounds:
    """check_placement_exact's judgement over recorded rounds (labels round-NN-a/-b, with the
    scenario facts noted on each -a): golden observations from real guests through the model."""
    rounds = _Rounds()
    free: _FreeRun | None = None
    for label in sorted(k for k in observations if k.endswith("-a")):
        n = notes[label]
        r = ExactRound((int(n["region"][0]), int(n["region"][1])), int(n["page"]), int(n["node"]), int(n["cpu"]),
                       int(n["pid"]), observations[label], observations[label[:-2] + "-b"])
        free = judge_exact_round(facts, r, free, rounds)
    return rounds
