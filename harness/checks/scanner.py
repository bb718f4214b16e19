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


@check("skip-rules", seconds=2.8, needs=[Mechanism.VMA_NUMAB])
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


@check("scanner-window", seconds=10.3, releases=EVERY_MODELLED_RELEASE)
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
    late VMA on the first pass that reaches it. The pages the workload maps (the late VMA, its
    heap and stack) are drained from the LRU add batches after the observation that shows them,
    and all of them before the start (KernelRules.cow_page_count), and the region's write bits are not predicted
    (KernelRules.savedwrite: a hint keeps the bit it had)."""
    return _replay_window(ctx, Region(64, node=0, split=ctx.nodes_with_cpus()[-1]))


@check("scanner-threads", seconds=12.8, needs=[Mechanism.VMA_NUMAB])
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


@check("scanner-pids", seconds=11.8, needs=[Mechanism.VMA_NUMAB], alone=True)
def check_scanner_pids(ctx: Context) -> Finding:
    """scanner-window's free-running replay with the PID filter deciding between two threads on
    different nodes. A worker thread makes every fault in the region (pinned to a CPU of node 0
    for the first half, of the spinning node for the second: local faults), while the main
    thread spins on the other node and runs the passes (the worker's own trigger may run one:
    below); so the region's pids_active holds only
    the worker's bit (mm/memory.c:numa_migrate_check -> vma_set_access_pid_bit records the
    faulting thread) and never the scanning thread's (fair.c:vma_is_accessed). Quiet: every
    other mapping (program, stacks) is bound without MPOL_F_NUMA_BALANCING and never scanned,
    so no thread faults anywhere else and the region's VMA is the PID filter's only subject
    besides the VMA mapped mid-run. Past the VMA's
    first two sequences the region is then scanned only while a scan of it is already in
    progress (numa_scan_offset past its start), through the idle-VMA fallback (numa_scan_seq >
    prev_scan_seq + get_nr_threads, 2), or by a pass that PID-skipped every VMA (the forced
    retry); and each VMA_PID_RESET_PERIOD rotation moves the worker's bit from pids_active[1]
    to [0] and then out. The model carries the worker's bit in the region and the main thread's
    elsewhere; a fault's bit that is not the faulting thread's, or a region scanned as if the
    scanning thread had faulted there, is a diff. Compared as scanner-window.

    The worker may run a pass itself. Its trigger comes when its CPU time passes node_stamp
    plus its period (fair.c:task_tick_numa): node_stamp starts about 8 ms in
    (fair.c:init_numa_balancing: two ticks plus a min() that compares task_scan_max's
    milliseconds with nanoseconds), and its period is 1000 ms / task_nr_scan_windows, about
    200 ms for this mm (its placement, update_task_scan_period, or its move between nodes,
    update_scan_period: task_scan_start). Its first two touches took 48 ms of CPU time on an
    idle host and 112-153 ms with the host's cores loaded: a guest charges its task for host
    time its vCPU did not get, so on a slow or loaded host (or beside a second guest) the
    worker's touches pass 208 ms. That pass runs as the worker
    (task_numa_work: `current`), so vma_is_accessed finds the worker's own bit in the region.
    Which thread ran a pass is in node_stamp: the thread that wins numa_next_scan adds
    2 * TICK_NSEC, a trigger alone adds its period (recorded: 8060000 -> 208060000 a trigger,
    -> 216060000 a trigger and a pass). The replay predicts each pass as its runner's
    (ScanReplay._runners) and counts the worker's in `faulter_passes`.

    `alone`: kept from when a worker's pass made the run inconclusive; it has not yet been
    measured beside a second guest with the worker's passes replayed."""
    return _replay_window(ctx, Region(64, node=0, split=ctx.nodes_with_cpus()[-1], workers=1, quiet=True),
                          worker_faults=True)


def _replay_window(ctx: Context, request: Region, *, worker_faults: bool = False) -> Finding:
    """The scenario of check_scanner_window with the workload `request` holds; with
    `worker_faults`, its worker thread 1 makes the region's faults (check_scanner_pids)."""
    remote = ctx.nodes_with_cpus()[-1]
    tally = _WindowTally()
    with scenario(ctx, request, knobs=WINDOW_KNOBS) as region:
        drain_lru_batches(ctx.guest)
        worker = tally.faulter = region.worker_tid(1) if worker_faults else None
        threads = () if worker is None else (worker,)
        cpu_of = {node: min(c for c, n in ctx.node_of_cpu.items() if n == node) for node in ctx.nodes_with_cpus()}

        def touch(node: int, *, pages: int | None = None, first: int | None = None) -> None:
            if worker is None:
                region.touch(node=node, pages=pages, first=first)
            else:
                region.on(1, "touch", cpu=cpu_of[node], first=first, pages=pages)

        def drain_new_pages() -> None:
            # 6.1's change_pte_range skips a COW page whose page_count is not 1, as is one a
            # per-CPU LRU add batch still holds (KernelRules.cow_page_count). Pages the workload
            # mapped (its heap and stack, the late VMA) are drained out of the batches after the
            # observation that first shows them, before the next step's pass, which the model
            # expects to hint them; in the step that maps it the model takes a page as unhinted
            # (ScanReplay._follow_layout).
            if ctx.facts.rules.cow_page_count:
                drain_lru_adds(ctx.guest, region.pid)

        def look() -> Observation:
            # With the worker's state: its node_stamp shows whether it ran a pass (ScanReplay._runners).
            return observe(ctx, region.pid, threads)

        # Settle: past the first trigger, which only arms numa_next_scan (a fresh mm burns it),
        # and one whole sequence.
        spin_until(region, ctx, remote, lambda o: o.mm.numa_scan_seq >= 1, step=0.3)
        # Settling hinted the region; touching each half from its own node restores every entry
        # without moving a page (local faults), so the passes compared below are the ones that
        # hint it again, and no hint the kernel set before the start (the second half is on the
        # spinning node: with mm_users 1 change_pte_range must never hint it) hides in the start.
        half = region.length // 2 // 4096
        touch(0, pages=half)
        touch(remote, first=half)
        drain_new_pages()
        previous = look()
        replay = ScanReplay.start(previous, ctx.facts, region.pid, (region.addr, region.end), region_faulter=worker)
        tally.keep(ctx, previous, region.pid, replay.region, touched=False)
        for _ in range(160):
            if tally.hinting_passes and tally.late_vma is None:
                # A VMA the scanner has never met, mapped in the middle of the replay: the model
                # must allocate its numab_state when a pass meets it and wait out its scan delay.
                tally.late_vma = region.map_late(node=0)
            else:
                region.spin(0.15, node=remote)
            current = look()
            if not tally.step(replay, previous, current):
                tally.keep(ctx, current, region.pid, replay.region, touched=False, failed=True)
                break
            tally.keep(ctx, current, region.pid, replay.region, touched=False)
            previous = current
            if replay.pages_mapped:
                drain_new_pages()
            if (tally.hinting_passes >= 4 and tally.passes_in_region >= 5 and tally.late_vma_hinted(replay) and
                    (worker is None or tally.pid_filter_decided())):
                break
            first_half = current.table.within(region.addr, region.addr + region.length // 2)
            if len(first_half) and first_half.hint.all():
                # Nothing left to hint (the second half is skipped): restore the first half with
                # local faults so that the next passes hint it again.
                touch(0, pages=half)
                current = look()
                if not tally.step(replay, previous, current, region_touched=True):
                    tally.keep(ctx, current, region.pid, replay.region, touched=True, failed=True)
                    break
                tally.keep(ctx, current, region.pid, replay.region, touched=True)
                previous = current
                if replay.pages_mapped:
                    drain_new_pages()
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
    # check_scanner_pids: the worker thread that makes the region's faults (ScanReplay.region_faulter).
    faulter: int | None = None
    # How the predicted passes decided the region's VMA: vma_access_reason's test that let it
    # through, or the skip reason (pid_inactive, scan_delay, ...), by count.
    region_gate: dict[str, int] = field(default_factory=dict)
    # check_scanner_pids: passes the worker ran itself (its own trigger while it touched the
    # region), and the step of the first.
    faulter_passes: int = 0
    first_faulter_pass: int | None = None

    def pid_filter_decided(self) -> bool:
        """check_scanner_pids saw the PID filter skip the region (pid_inactive) and let it through
        without the scanning thread's bit (a scan in progress, or the idle-VMA test)."""
        gate = self.region_gate
        return bool(gate.get("pid_inactive")) and bool(gate.get("in progress") or gate.get("idle"))

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
            faulter = {} if self.faulter is None else {"faulter": self.faulter}
            ctx.keep(f"step-{self.steps:03d}", obs, pid=pid, region=list(region), touched=touched, **faulter)

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
            if replay.runner is not None and not replay.runner.is_task:
                self.faulter_passes += 1
                self.first_faulter_pass = self.first_faulter_pass or self.steps
            lo, hi = replay.region
            in_region = [w for w in replay.last_pass_windows if w[0] < hi and w[1] > lo]
            self.passes_in_region += bool(in_region)
            self.hinting_passes += replay.new_region_hints > 0
            for start, why in (*replay.last_pass.admitted, *replay.last_pass.skipped):
                if start <= lo < next((v.end for v in replay.vmas if v.start == start), start):
                    self.region_gate[why] = self.region_gate.get(why, 0) + 1
            self.windows.extend(f"{(a - lo) >> 20}-{(b - lo) >> 20} MiB" for a, b in in_region)
        return True

    def trim_recording(self, ctx: Context) -> None:
        """A replay that held needs no more than RECORDED_STEPS steps recorded, or up to the
        first pass the worker ran (the rarer kind of step, worth its golden data)."""
        if ctx.kept is not None and not self.diffs:
            keep = max(RECORDED_STEPS, self.first_faulter_pass or 0)
            for label in [k for k in ctx.kept if k.startswith("step-") and int(k[5:]) > keep]:
                del ctx.kept[label]
                ctx.notes.pop(label, None)

    def finding(self, replay: ScanReplay) -> Finding:
        diffs = list(self.diffs)
        if not diffs and self.hinting_passes < 2:
            diffs.append(f"only {self.hinting_passes} of {self.passes} predicted passes hinted new pages of the region: "
                         f"too few to judge")
        if not diffs and not self.late_vma_hinted(replay):
            diffs.append("the VMA mapped during the replay was never hinted: its scan delay was never seen to end")
        if not diffs and self.faulter is not None and not self.pid_filter_decided():
            diffs.append(f"the PID filter never decided the region's VMA both ways without the scanning thread's bit "
                         f"(its decisions: {self.region_gate}): too few passes to judge")
        if not diffs and not replay.inputs.get("passes whose numa_pte_updates were compared"):
            diffs.append("no pass was the only one in the guest: numa_pte_updates could not be compared once")
        faulter = {} if self.faulter is None else {"faulter_passes": self.faulter_passes}
        figures = {"steps": self.steps, "passes": self.passes, "passes_in_region": self.passes_in_region, **faulter,
                   "hinting_passes": self.hinting_passes, "windows": self.windows, "region_gate": self.region_gate,
                   "inputs": dict(replay.inputs)}
        return Finding(f"{self.passes} passes over {self.steps} steps predicted from one observation, "
                       f"{self.hinting_passes} of them hinting the region", figures, tuple(diffs))
