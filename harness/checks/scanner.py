"""Scanner checks: which VMAs task_numa_work skips, and which entries each pass hints."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.checks.adapters import model_pages, model_tunables, model_vmas
from harness.checks.observe import Context, Observation, observe, outside_region, spin_until
from harness.checks.registry import Finding, check
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import HeldRegion, Region
from harness.model import (
    HPAGE_SIZE,
    Mm,
    scan_pass,
    skip_reason,
)


@check("skip-rules", seconds=5)
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


@check("scanner-window", seconds=10)
def check_scanner_window(ctx: Context) -> Finding:
    """Scanner window. A 64 MiB region first touched on node 0 (its second half on the node the
    task spins on: change_pte_range must skip those pages, mm_users being 1); its task spins on another node
    without touching it, with scan_size_mb=16 and scan_period_min_ms = scan_period_max_ms = 1000,
    so the task's period is its initial scan_delay (1000 ms at fork) or, after a placement,
    1000 / task_nr_scan_windows (RSS / 16 MiB, rounded up) = 200 ms. Between two observations at
    most one pass can run: each pass needs a period of the task's CPU time (task_tick_numa:
    node_stamp) and the task spins 0.15 s per step. For each step with exactly one pass
    (numa_next_scan moved), the model runs one scan_pass from the previous observation, at the
    jiffies the pass ran (new numa_next_scan minus the period), and the hint entries inside the
    region, and the scan offset when it lies in the region, must equal the model's. The region is
    never touched in between, so its entries depend on the passes alone. Exact.

    numa_next_scan also moves without a pass: a placement that takes update_task_scan_period's
    slow-down branch restarts it at jiffies + the doubled period (the task's remote private
    faults on its own pages make that branch common here). A step in which a placement ran
    (the task's numa_scan_seq moved) therefore has no pass time to derive: it is not replayed,
    and is counted with its reason; as is a step whose derived pass time falls before the step."""
    remote = ctx.nodes_with_cpus()[-1]
    tally = _WindowTally()
    with scenario(ctx, Region(64, node=0, split=remote), knobs=WINDOW_KNOBS) as region:
        drain_lru_batches(ctx.guest)
        # Settle: past the first trigger, which only arms numa_next_scan (a fresh mm burns it),
        # and one whole sequence. The period itself need not settle: each pass's time is
        # derived from the period observed right after it, and it only changes at placement.
        spin_until(region, ctx, remote, lambda o: o.mm.numa_scan_seq >= 1, step=0.3)
        # Settling hinted the region; touching it from node 0 restores every entry without moving
        # a page (local faults), so the passes compared below are the ones that hint it again.
        region.touch(node=0)
        previous = observe(ctx, region.pid)
        for _ in range(160):
            region.spin(0.15, node=remote)
            current = observe(ctx, region.pid)
            tally.step(ctx, region, previous, current, remote)
            previous = current
            if tally.hinting_passes >= 4 and tally.passes_in_region >= 5:
                break
            first_half = current.table.within(region.addr, region.addr + region.length // 2)
            if len(first_half) and first_half.hint.all():
                # Nothing left to hint (the second half is skipped): restore the first half with
                # local faults so that the next passes hint it again.
                region.touch(node=0, pages=region.length // 2 // 4096)
                previous = observe(ctx, region.pid)
    return tally.finding()


@dataclass
class _WindowTally:
    """check_scanner_window's steps: which were replayed, what they found, and why others were not."""

    compared: int = 0
    passes_in_region: int = 0
    hinting_passes: int = 0
    counted: int = 0
    windows: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    not_replayed: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.not_replayed[reason] = self.not_replayed.get(reason, 0) + 1

    def step(self, ctx: Context, region: HeldRegion, previous: Observation, current: Observation, node: int) -> None:
        """Replay the step's pass, if it had exactly one whose time can be derived."""
        if current.mm.numa_next_scan == previous.mm.numa_next_scan:
            return  # no pass in this step
        if current.task.numa_scan_seq != previous.task.numa_scan_seq:
            self.skip("a placement ran in the step (it may have restarted numa_next_scan)")
            return
        period = model_tunables(current, ctx.hz).ms_to_jiffies(current.task.numa_scan_period)
        ran_at = current.mm.numa_next_scan - period
        if ran_at <= previous.balancing.jiffies:
            self.skip("the derived pass time falls before the step")
            return
        self.compared += 1
        diffs, in_region, labels, hinting, counted = _compare_one_pass(ctx, region, previous, current, ran_at, node)
        self.diffs.extend(diffs)
        self.passes_in_region += in_region
        self.windows.extend(labels)
        self.hinting_passes += hinting
        self.counted += counted

    def finding(self) -> Finding:
        diffs = list(self.diffs)
        if self.hinting_passes < 2:
            diffs.append(f"only {self.hinting_passes} of {self.compared} observed single passes hinted new pages of "
                         f"the region: too few to judge")
        if self.counted == 0:
            diffs.append("no observed pass was the only one in the guest: numa_pte_updates could not be compared once")
        figures = {"passes_compared": self.compared, "passes_in_region": self.passes_in_region,
                   "hinting_passes": self.hinting_passes, "pte_updates_compared": self.counted, "windows": self.windows,
                   "steps_not_replayed": self.not_replayed}
        skipped = sum(self.not_replayed.values())
        return Finding(f"{self.compared} single passes replayed in the model, {self.hinting_passes} of them hinting the "
                       f"region{f' ({skipped} steps not replayed)' if skipped else ''}", figures, tuple(diffs))


def _compare_one_pass(ctx: Context, region: HeldRegion, before: Observation, after: Observation, ran_at: int,
                      node: int) -> tuple[list[str], int, list[str], int, int]:
    result = scan_pass(
        Mm(before.mm.numa_scan_offset, before.mm.numa_scan_seq, before.mm.mm_users), model_vmas(before),
        model_pages(ctx.facts, before), model_tunables(before, ctx.hz), scanning_node=node, jiffies=ran_at, pid=region.pid,
    )
    predicted = {va for va, p in result.pages.items() if p.hint and region.addr <= va < region.end}
    already = before.table.within(region.addr, region.end)
    new_hints = bool(predicted - {int(v) for v in already.vaddr[already.hint]})
    kernel_hints = after.table.within(region.addr, region.end)
    observed = {int(v) for v in kernel_hints.vaddr[kernel_hints.hint]}
    diffs = []
    for va in sorted(predicted - observed)[:5]:
        diffs.append(f"pass at jiffies {ran_at}: model hints {va:#x}, the kernel did not")
    for va in sorted(observed - predicted)[:5]:
        diffs.append(f"pass at jiffies {ran_at}: the kernel hinted {va:#x}, the model did not")
    in_region = [w for w in result.windows if w[0] < region.end and w[1] > region.addr]
    model_off, kernel_off = result.mm.numa_scan_offset, after.mm.numa_scan_offset
    offset_in_region = region.addr <= model_off < region.end or region.addr <= kernel_off < region.end
    if offset_in_region and model_off != kernel_off:
        diffs.append(f"pass at jiffies {ran_at}: scan offset model {model_off:#x}, kernel {kernel_off:#x} "
                     f"(windows {[(hex(a), hex(b)) for a, b in in_region]})")
    labels = [f"{(a - region.addr) >> 20}-{(b - region.addr) >> 20} MiB" for a, b in in_region]
    # numa_pte_updates is global; compared when no other mm had a pass in between. The task's own
    # hinted pages outside the region may have faulted (and been restored) before the pass, which
    # then hints them again: the kernel may count up to that many more, never fewer.
    counted = 0
    if not after.other_passes_since(before):
        counted = 1
        kernel_updates = after.vmstat["numa_pte_updates"] - before.vmstat["numa_pte_updates"]
        model_updates = result.counters.numa_pte_updates
        outside = outside_region(before.table, region)
        slack = int(outside.pages[outside.hint].sum())
        if not model_updates <= kernel_updates <= model_updates + slack:
            model_new = {va for va, p in result.pages.items() if p.hint}
            kernel_new = {int(v) for v in after.table.vaddr[after.table.hint]}
            was = {e.vaddr: e for e in before.table}
            odd = [f"{va:#x} (node {was[va].node}, {'hint' if was[va].hint else 'present'} before; "
                   f"{'model' if va in model_new else 'kernel'} hinted it)"
                   for va in sorted(model_new ^ kernel_new) if va in was][:3]
            diffs.append(f"pass at jiffies {ran_at}: numa_pte_updates grew by {kernel_updates}, model {model_updates} "
                         f"(+ up to {slack} re-hints of the task's pages outside the region); entries hinted by only "
                         f"one of them: {', '.join(odd) or 'none'}")
    return diffs, int(bool(in_region)), labels, int(new_hints), counted

