"""Scanner checks: which VMAs task_numa_work skips, and which entries each pass hints."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.checks.adapters import model_vmas
from harness.checks.observe import Context, Observation, observe, spin_until
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, Mechanism, check
from harness.checks.scanreplay import ScanReplay
from harness.checks.scenario import drain_lru_adds, drain_lru_batches, scenario
from harness.checks.workload import Region
from harness.model import HPAGE_SIZE, skip_reason


@check("skip-rules", seconds=5, needs=[Mechanism.VMA_NUMAB])
def check_skip_rules(ctx: Context) -> Finding:
    """Skip rules: the scanner never allocates numab_state for (so never scans) a VMA that
    task_numa_work skips as unsuitable (VM_IO/PFNMAP, MPOL_BIND without MPOL_F_NUMA_BALANCING,
    hugetlb, VM_MIXEDMAP), shared_ro (read-only file mapping) or inaccessible (PROT_NONE); every
    other VMA is met within a few passes; and no entry of a skipped VMA, nor a zero-page entry,
    is ever a hint. Exact."""
    remote = ctx.nodes_with_cpus()[-1]
    with scenario(ctx, Region(8, node=0, extras=True)) as region:
        obs = spin_until(region, ctx, remote, lambda o: o.mm.numa_scan_seq >= 3, step=1.0)
    diffs = []
    vmas = model_vmas(obs)
    skipped = {v.start: skip_reason(v) for v in vmas}
    for model_vma, kernel_vma in zip(vmas, obs.vmas, strict=True):
        reason = skipped[model_vma.start]
        met = kernel_vma.numab is not None
        if reason and met:
            diffs.append(f"VMA {kernel_vma.start:#x}-{kernel_vma.end:#x}: model skips it ({reason}) but the kernel "
                         f"scanned it (numab_state allocated)")
        if not reason and not met:
            diffs.append(f"VMA {kernel_vma.start:#x}-{kernel_vma.end:#x}: model scans it but after "
                         f"{obs.mm.numa_scan_seq} sequences the kernel never met it (numab_state NULL)")
    zero_pfn = ctx.facts.zero_pfn
    for entry in obs.table:
        vma = next((v for v in vmas if v.start <= entry.vaddr < v.end), None)
        if entry.hint and (vma is None or skipped[vma.start]):
            diffs.append(f"{entry.vaddr:#x}: hint entry {entry.entry:#x} in a VMA the scanner must skip "
                         f"({skipped.get(vma.start, 'no VMA') if vma else 'no VMA'})")
        if entry.hint and entry.pfn == zero_pfn:
            diffs.append(f"{entry.vaddr:#x}: the zero page was hinted")
    extras = region.extras
    zero_entries = obs.table.within(extras["zero"], extras["zero"] + HPAGE_SIZE)
    bound_entries = obs.table.within(extras["bound"], extras["bound"] + HPAGE_SIZE)
    if not len(zero_entries) or int((zero_entries.pfn == zero_pfn).sum()) != len(zero_entries):
        diffs.append(f"the read-only region {extras['zero']:#x} does not map the zero page everywhere "
                     f"({int((zero_entries.pfn == zero_pfn).sum())} of {len(zero_entries)} entries): the check lost its subject")
    if len(bound_entries) != 512:
        diffs.append(f"the MPOL_BIND region {extras['bound']:#x} has {len(bound_entries)} entries, expected 512")
    if len(obs.table.within(extras["guard"], extras["guard"] + HPAGE_SIZE)):
        diffs.append("the PROT_NONE guard region has page-table entries")
    reasons = sorted({r for r in skipped.values() if r})
    figures = {"vmas": len(vmas), "skipped": sum(1 for r in skipped.values() if r), "reasons": reasons,
               "scan_seq": obs.mm.numa_scan_seq, "hint_entries": int(obs.table.hint.sum())}
    for required in ("inaccessible", "shared_ro", "unsuitable"):
        if required not in reasons:
            diffs.append(f"no VMA of the workload was skipped as {required}: the check lost its subject")
    summary = f"{figures['skipped']} of {len(vmas)} VMAs skipped ({', '.join(reasons)}) after {obs.mm.numa_scan_seq} sequences"
    return Finding(summary, figures, tuple(diffs))



# 16 MiB windows, a 100 ms scan delay and a fixed 1 s period (see check_scanner_window).
WINDOW_KNOBS = {"scan_delay_ms": 100, "scan_size_mb": 16, "scan_period_min_ms": 1000, "scan_period_max_ms": 1000}


@check("scanner-window", seconds=19, releases=EVERY_MODELLED_RELEASE)
def check_scanner_window(ctx: Context) -> Finding:
    """Scanner window, free-running. A 64 MiB region first touched on node 0 (its second half on
    the node the task spins on: change_pte_range must skip those pages, mm_users being 1); its
    task spins on another node without touching it, with scan_size_mb=16 and scan_period_min_ms =
    scan_period_max_ms = 1000, so after a placement the task's period is 1000 / task_nr_scan_windows
    (RSS / 16 MiB, rounded up) = 200 ms. Between two observations at most one pass can run: each
    needs a period of the task's CPU time (task_tick_numa: node_stamp) and the task spins 0.15 s
    per step.

    The model starts from ONE observation, taken once the scanner has settled, and carries the
    scanner's state from there (checks/scanreplay.py: what it takes as input after that, each
    input checked against the state it predicted). After every step the kernel's mm offset and
    sequence, numa_next_scan, the task's sequence and period, every VMA's numab_state, every
    hint bit, and the region's entries (node, last_cpupid, write bit) must equal the prediction,
    and numa_pte_updates must grow by the model's count plus at most one per counted hint fault.
    The first step that does not match ends the check with its diffs. Exact.

    Once a pass has hinted the region, the workload maps a 2 MiB VMA the scanner has never met
    (nhmem `map`, written on node 0): the model must allocate its numab_state when a pass first
    meets it (start_scan_seq, next_scan = now + scan delay, pids_active_reset, prev_scan_seq =
    seq - 1: fair.c:task_numa_work), skip it until the delay is over, then scan it; the check
    needs that VMA hinted before it ends.

    On 6.1 the model follows 6.1's task_numa_work (KernelRules.vma_scan_gate): no VMA keeps
    numab_state, every VMA the skip rules let through is scanned from the offset on, and the
    late VMA on the first pass that reaches it. Its new pages are drained from the LRU add
    batches first (KernelRules.cow_page_count), and the region's write bits are not predicted
    (KernelRules.savedwrite: a hint keeps the bit it had)."""
    return _replay_window(ctx, Region(64, node=0, split=ctx.nodes_with_cpus()[-1]))


@check("scanner-threads", seconds=24, needs=[Mechanism.VMA_NUMAB])
def check_scanner_threads(ctx: Context) -> Finding:
    """scanner-window's free-running replay with a second, sleeping thread in the process. Two
    rules then decide differently: get_nr_threads(current) is 2, so vma_is_accessed's idle-VMA
    test ("numa_scan_seq > prev_scan_seq + get_nr_threads") lets a VMA the spinning thread has
    not faulted in for two PID windows be scanned only every third sequence instead of every
    second; and mm_users is 2, so change_pte_range has no target node and hints the half of the
    region on the spinning thread's own node too. The sleeping thread never runs a pass (only a
    running task's tick queues task_numa_work) and never faults. The VMA mapped mid-run is never
    faulted in: after its first two sequences it is scanned through the idle test alone (or as
    the VMA a pass with every VMA PID-skipped is forced to scan). Compared as scanner-window."""
    return _replay_window(ctx, Region(64, node=0, split=ctx.nodes_with_cpus()[-1], helper=True))


def _replay_window(ctx: Context, request: Region) -> Finding:
    """The scenario of check_scanner_window with the workload `request` holds."""
    remote = ctx.nodes_with_cpus()[-1]
    tally = _WindowTally()
    with scenario(ctx, request, knobs=WINDOW_KNOBS) as region:
        drain_lru_batches(ctx.guest)
        # Settle: past the first trigger, which only arms numa_next_scan (a fresh mm burns it),
        # and one whole sequence.
        spin_until(region, ctx, remote, lambda o: o.mm.numa_scan_seq >= 1, step=0.3)
        # Settling hinted the region; touching each half from its own node restores every entry
        # without moving a page (local faults), so the passes compared below are the ones that
        # hint it again, and no hint the kernel set before the start (the second half is on the
        # spinning node: with mm_users 1 change_pte_range must never hint it) hides in the start.
        half = region.length // 2 // 4096
        region.touch(node=0, pages=half)
        region.touch(node=remote, first=half)
        previous = observe(ctx, region.pid)
        replay = ScanReplay.start(previous, ctx.facts, region.pid, (region.addr, region.end))
        tally.keep(ctx, previous, region.pid, replay.region, touched=False)
        for _ in range(160):
            if tally.hinting_passes and tally.late_vma is None:
                # A VMA the scanner has never met, mapped in the middle of the replay: the model
                # must allocate its numab_state when a pass meets it and wait out its scan delay.
                tally.late_vma = region.map_late(node=0)
                if ctx.facts.rules.cow_page_count:
                    drain_lru_adds(ctx.guest, region.pid)
            else:
                region.spin(0.15, node=remote)
            current = observe(ctx, region.pid)
            if not tally.step(replay, previous, current):
                tally.keep(ctx, current, region.pid, replay.region, touched=False, failed=True)
                break
            tally.keep(ctx, current, region.pid, replay.region, touched=False)
            previous = current
            if tally.hinting_passes >= 4 and tally.passes_in_region >= 5 and tally.late_vma_hinted(replay):
                break
            first_half = current.table.within(region.addr, region.addr + region.length // 2)
            if len(first_half) and first_half.hint.all():
                # Nothing left to hint (the second half is skipped): restore the first half with
                # local faults so that the next passes hint it again.
                region.touch(node=0, pages=region.length // 2 // 4096)
                current = observe(ctx, region.pid)
                if not tally.step(replay, previous, current, region_touched=True):
                    tally.keep(ctx, current, region.pid, replay.region, touched=True, failed=True)
                    break
                tally.keep(ctx, current, region.pid, replay.region, touched=True)
                previous = current
    tally.trim_recording(ctx)
    return tally.finding(replay)




# Enough steps for a few passes, a placement and a pids_active rotation, small enough for the repository.
RECORDED_STEPS = 7


@dataclass
class _WindowTally:
    """check_scanner_window's steps: how many passes the free-running model predicted."""

    steps: int = 0
    passes: int = 0
    passes_in_region: int = 0
    hinting_passes: int = 0
    windows: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    late_vma: int | None = None

    def late_vma_hinted(self, replay: ScanReplay) -> bool:
        """The late VMA's pages were hinted (by a pass after its scan delay, as the model predicted)."""
        late = self.late_vma
        return late is not None and any(p.hint for va, p in replay.pages.items() if late <= va < late + HPAGE_SIZE)

    def keep(self, ctx: Context, obs: Observation, pid: int, region: tuple[int, int], *, touched: bool,
             failed: bool = False) -> None:
        """With --record: every step's observation while the replay holds (a failure then replays
        whole from the recording); a run that passes keeps only the first RECORDED_STEPS (see
        trim_recording), golden data small enough for the repository."""
        del failed  # kept like any other step: the recording of a failure is complete
        if ctx.kept is not None:
            ctx.keep(f"step-{self.steps:03d}", obs, pid=pid, region=list(region), touched=touched)

    def step(self, replay: ScanReplay, before: Observation, after: Observation, *, region_touched: bool = False) -> bool:
        """Predict one step; False once the kernel left the prediction (the diffs are kept)."""
        self.steps += 1
        diffs = replay.step(before, after, region_touched=region_touched)
        if diffs:
            self.diffs = [f"step {self.steps} (jiffies {before.balancing.jiffies}..{after.balancing.jiffies}): {d}"
                          for d in diffs[:12]]
            return False
        if replay.last_pass is not None:
            self.passes += 1
            lo, hi = replay.region
            in_region = [w for w in replay.last_pass_windows if w[0] < hi and w[1] > lo]
            self.passes_in_region += bool(in_region)
            self.hinting_passes += replay.new_region_hints > 0
            self.windows.extend(f"{(a - lo) >> 20}-{(b - lo) >> 20} MiB" for a, b in in_region)
        return True

    def trim_recording(self, ctx: Context) -> None:
        """A replay that held needs no more than RECORDED_STEPS steps recorded."""
        if ctx.kept is not None and not self.diffs:
            for label in [k for k in ctx.kept if k.startswith("step-") and int(k[5:]) > RECORDED_STEPS]:
                del ctx.kept[label]
                ctx.notes.pop(label, None)

    def finding(self, replay: ScanReplay) -> Finding:
        diffs = list(self.diffs)
        if not diffs and self.hinting_passes < 2:
            diffs.append(f"only {self.hinting_passes} of {self.passes} predicted passes hinted new pages of the region: "
                         f"too few to judge")
        if not diffs and not self.late_vma_hinted(replay):
            diffs.append("the VMA mapped during the replay was never hinted: its scan delay was never seen to end")
        if not diffs and not replay.inputs.get("passes whose numa_pte_updates were compared"):
            diffs.append("no pass was the only one in the guest: numa_pte_updates could not be compared once")
        figures = {"steps": self.steps, "passes": self.passes, "passes_in_region": self.passes_in_region,
                   "hinting_passes": self.hinting_passes, "windows": self.windows, "inputs": dict(replay.inputs)}
        return Finding(f"{self.passes} passes over {self.steps} steps predicted from one observation, "
                       f"{self.hinting_passes} of them hinting the region", figures, tuple(diffs))
