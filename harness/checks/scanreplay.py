"""The scanner's state carried by the model from ONE observation on (scanner-window's replay).

`ScanReplay.start` takes a scenario's first observation; from then on the model keeps its own mm
scan offset and sequence, `numa_next_scan`, the task's scan sequence and period, every VMA's
`numab_state` and every page's hint bit, and predicts each step. After every step the whole
scanner state the kernel shows is compared with it. Nothing the model computes is read back from
the kernel; what it takes after the start are the inputs it cannot know, each checked against the
state it predicted:

- the jiffies a pass ran at: `numa_next_scan - period` (the model's period), which must be
  allowed by the model's `numa_next_scan` (`model.timing.pass_allowed`) and fall inside the step;
- which pages the workload faulted on outside the region (its stack and data: a hint the model
  set that the kernel no longer shows), bounded by the counted `numa_hint_faults`: the kernel may
  not restore more hints than it counted faults;
- whether those faults came before or after the step's pass (a pass re-hints a page restored
  before it, and a fault sets the VMA's pid bit before or after the pass rotates `pids_active`):
  the step is predicted for each order, and the kernel must match one of the predictions;
- the workload's own layout: VMAs that appear or grow (stack, heap) and pages it maps outside the
  region, with their node and `last_cpupid` (what a fault does to a page is fault-migration's
  subject, not this replay's), and its thread count (`get_nr_threads`, signal->nr_threads);
- the node the pass ran on: the task's CPU at the end of the step, or at its start (a tick
  before the step's command moved the task runs the pass where it was: `_scanning_nodes`);
- with a region faulter (a second thread that makes the region's faults), which thread ran the
  pass: the one whose node_stamp shows the pass's two ticks (`_runners`), with its pid for
  vma_is_accessed and its period (an input, the kernel's at either end of the step) for
  numa_next_scan;
- the jiffies of a placement that restarted `numa_next_scan` (update_task_scan_period's first
  branch), which must fall inside the step.

Inside the region, which the workload does not touch while it spins, every entry's hint bit,
node, `last_cpupid` and write bit are predicted and compared exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from harness.checks.adapters import model_pages, model_tunables, model_vmas
from harness.checks.observe import GuestFacts, Observation
from harness.inspect.numastate import TaskNumaState
from harness.model import Mm, Page, Tunables, Vma, cpupid_cpu, cpupid_pid, scan_pass, task_scan_max
from harness.model.timing import (
    NSEC_PER_MSEC,
    next_scan_after_pass,
    pass_allowed,
    pid_bit,
    tick_nsec,
    vma_set_access_pid_bit,
)

# The most task_tick_numa triggers one step is judged with (each adds a period to node_stamp):
# a step is a short spin, or a long one the host stalled; more would need the task to be
# charged over three periods of CPU time in one step.
MAX_TRIGGERS_PER_STEP = 3


@dataclass(frozen=True)
class Prediction:
    """One way the step could have gone: the pass's time, which faults came before it, and the
    scanner state that results."""

    ran_at: int | None
    early: str  # "none", "seen" (the step's visible faults before the pass), "all"
    mm: Mm
    vmas: tuple[Vma, ...]
    pages: dict[int, Page]
    pte_updates: int
    windows: tuple[tuple[int, int], ...]
    skipped: tuple[tuple[int, str], ...]
    huge_updates: int = 0  # PMD entries hinted (numa_huge_pte_updates)
    admitted: tuple[tuple[int, str], ...] = ()  # PassResult.admitted, over the step's passes


@dataclass(frozen=True)
class Runner:
    """A thread whose task_numa_work may have run the step's pass. The pass runs as `current`
    (fair.c:task_numa_work): vma_is_accessed tests current->pid against pids_active,
    numa_next_scan becomes now + current's numa_scan_period, and the thread that wins the
    cmpxchg on numa_next_scan gets node_stamp += 2 * TICK_NSEC ("delay this task enough that
    another task of this mm will likely win the next time around"). `is_task`: the replay's
    task, whose period and placements the model carries; any other runner's period is an input
    (the kernel's value at either end of the step, held to its node_stamp's triggers)."""

    pid: int
    period_ms: int
    nodes: tuple[int, ...]
    is_task: bool = True


@dataclass
class ScanReplay:
    pid: int
    facts: GuestFacts
    tunables: Tunables
    region: tuple[int, int]
    mm: Mm
    vmas: tuple[Vma, ...]
    pages: dict[int, Page]
    next_scan: int
    period_ms: int
    task_seq: int
    # What the replay took as input, and what it could not decide, by kind: the check's figures.
    inputs: dict[str, int] = field(default_factory=dict)
    # task->node_stamp (ns of the task's CPU time) as the model carries it.
    node_stamp: int = 0
    # The node of the CPU the task ran its pass on (an input: the kernel's task->cpu).
    scanning_node: int = -1
    # get_nr_threads(current) for vma_is_accessed's idle-VMA test: the workload's thread count,
    # an input (signal->nr_threads at the step's start).
    nr_threads: int = 1
    # Per step: whether a pass ran, the region entries it hinted anew, the VMAs the task faulted in.
    last_pass: Prediction | None = None
    new_region_hints: int = 0
    faulted_vmas: set[int] = field(default_factory=set)
    # Per step: the VMAs with a fault the observations show (a hint restored), and whether more
    # than one pass ran (each pass may rotate pids_active once).
    seen_fault_vmas: set[int] = field(default_factory=set)
    several_passes: bool = False
    # Per step: pages the workload mapped outside the region (new in the step's `after`).
    pages_mapped: int = 0
    # The step's `after`: the addresses of its entries that are not hints.
    hints_off: set[int] = field(default_factory=set)
    # The caller predicts the task's placements (their period and clock restart) with its own
    # model of the fault books (placement-exact): a placement may then only come in a step the
    # caller replays (step_faulted), never in a step() of the spinning task.
    caller_places: bool = False
    # The thread whose faults restore the region's hints, when it is not the scanning task (a
    # worker that touches the region while the task spins and runs every pass): its pid bit,
    # not the task's, is what those faults set in the region's VMA (vma_set_access_pid_bit).
    region_faulter: int | None = None
    # The region faulter's node_stamp as the model carries it (its triggers and the passes it
    # ran: _runners), and the runner of the step being predicted.
    faulter_stamp: int = 0
    runner: Runner | None = None

    @classmethod
    def start(cls, obs: Observation, facts: GuestFacts, pid: int, region: tuple[int, int], *,
              caller_places: bool = False, region_faulter: int | None = None) -> ScanReplay:
        """The replay from a scenario's first observation. The period after a placement is
        predicted here (ScanReplay._placement) only with scan_period_min_ms ==
        scan_period_max_ms; with other knobs the caller predicts placements itself
        (`caller_places`, step_faulted)."""
        tunables = obs.balancing.tunables
        if not caller_places and tunables["scan_period_min_ms"] != tunables["scan_period_max_ms"]:
            raise ValueError("ScanReplay needs scan_period_min_ms == scan_period_max_ms (scanner-window's knobs) "
                             "unless the caller predicts the placements (caller_places)")
        replay = cls(pid, facts, model_tunables(obs, facts.hz), region, Mm(obs.mm.numa_scan_offset,
                     obs.mm.numa_scan_seq, obs.mm.mm_users), tuple(model_vmas(obs)), model_pages(facts, obs),
                     obs.mm.numa_next_scan, obs.task.numa_scan_period, obs.task.numa_scan_seq,
                     node_stamp=obs.task.node_stamp, nr_threads=obs.task.nr_threads, caller_places=caller_places,
                     region_faulter=region_faulter)
        if region_faulter is not None:
            replay.faulter_stamp = replay._faulter_state(obs).node_stamp
        return replay

    @property
    def rss_pages(self) -> tuple[int, int]:
        """get_mm_rss as the model carries it: the lowest and highest value the kernel may read.
        Every mapped entry but the zero page counts (MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES);
        get_mm_rss reads the percpu counters' central count (percpu_counter_read_positive),
        which lags the mapped pages by less than percpu_counter_batch (32) per CPU."""
        rss = sum(p.nr_pages for p in self.pages.values() if not p.zero_page)
        return max(0, rss - 32 * len(self.facts.node_of_cpu) + 1), rss

    def _count(self, kind: str, n: int = 1) -> None:
        self.inputs[kind] = self.inputs.get(kind, 0) + n

    @property
    def last_pass_windows(self) -> tuple[tuple[int, int], ...]:
        return self.last_pass.windows if self.last_pass is not None else ()

    def in_region(self, va: int) -> bool:
        return self.region[0] <= va < self.region[1]

    # -- inputs: the workload's layout and its faults outside the region ---------------------------

    def _follow_layout(self, obs: Observation) -> list[str]:
        """VMAs as the kernel has them now, each keeping the numab_state the model carries for the
        VMA it overlaps (a stack grows down, a heap up); new VMAs have none."""
        carried = []
        for kernel_vma in model_vmas(obs):
            old = next((v for v in self.vmas if v.start < kernel_vma.end and kernel_vma.start < v.end), None)
            carried.append(replace(kernel_vma, numab=old.numab if old else None))
            if old is None:
                self._count("VMAs mapped by the workload")
        self.vmas = tuple(carried)
        diffs = []
        kernel_pages = model_pages(self.facts, obs)
        for va in sorted(set(self.pages) ^ set(kernel_pages)):
            if self.in_region(va):
                diffs.append(f"{va:#x} in the region is {'mapped' if va in kernel_pages else 'gone'} in the kernel, "
                             f"not in the model")
            elif va in kernel_pages:
                self.pages_mapped += 1
                self._count("pages mapped by the workload")
            else:
                del self.pages[va]
        # What a fault did to a page outside the region is an input; whether it is a hint is the
        # model's (a page the workload mapped anew is none). Most entries agree on it, and then
        # the kernel's Page is already the one to carry: no copy (thousands of pages a step).
        for va, page in kernel_pages.items():
            if not self.in_region(va):
                kept = self.pages.get(va)
                hint = kept.hint if kept is not None else False
                self.pages[va] = page if page.hint == hint else replace(page, hint=hint)
        return diffs

    def _vma_of(self, va: int, vmas: Sequence[Vma]) -> int | None:
        return next((i for i, v in enumerate(vmas) if v.start <= va < v.end), None)

    def faulter(self, vma: Vma) -> int:
        """The thread whose hint faults land in `vma`: the region's faulter in the region's VMA,
        the task everywhere else."""
        lo, hi = self.region
        if self.region_faulter is not None and vma.start < hi and vma.end > lo:
            return self.region_faulter
        return self.pid

    def _fault_bit(self, vma: Vma) -> int:
        return pid_bit(self.faulter(vma))

    def _faulter_state(self, obs: Observation) -> TaskNumaState:
        """The region faulter's NUMA state in `obs` (observed with threads=(region_faulter,))."""
        state = next((t for t in obs.threads if t.pid == self.region_faulter), None)
        if state is None:
            raise ValueError(f"the observation holds no state of the region faulter (tid {self.region_faulter}): "
                             f"observe it with threads=({self.region_faulter},)")
        return state

    @property
    def _scanning_pid(self) -> int:
        return self.pid if self.runner is None else self.runner.pid

    @property
    def _scanning_period_ms(self) -> int:
        return self.period_ms if self.runner is None else self.runner.period_ms

    # -- the step --------------------------------------------------------------------------------

    def step(self, before: Observation, after: Observation, *, region_touched: bool = False) -> list[str]:
        """Predict the step from `before` to `after` (two kernel observations) and compare. Returns
        the diffs; the model's state is the prediction that matched (or the closest one)."""
        self.last_pass, self.new_region_hints, self.faulted_vmas, self.pages_mapped = None, 0, set(), 0
        self.seen_fault_vmas, self.several_passes, self.runner = set(), False, None
        if before.task.nr_threads != self.nr_threads:
            self._count("steps whose workload changed its thread count")
        self.nr_threads = before.task.nr_threads
        self.hints_off = _kernel_hints_off(after)
        diffs = self._follow_layout(after)
        faults = after.vmstat["numa_hint_faults"] - before.vmstat["numa_hint_faults"]
        passed = (after.mm.numa_scan_offset, after.mm.numa_scan_seq) != (before.mm.numa_scan_offset,
                                                                        before.mm.numa_scan_seq)
        placed = after.task.numa_scan_seq != before.task.numa_scan_seq
        old_period = self.period_ms
        if placed:
            diffs += self._placement(after, faults)
        runners, stamp_diffs = self._runners(before, after, passed, old_period)
        diffs += stamp_diffs
        if passed:
            mismatch = self._pass(before, after, faults, old_period, placed, region_touched, runners)
            if mismatch:  # no prediction holds: the rest would only repeat it
                return diffs + mismatch
        elif after.mm.numa_next_scan != self.next_scan:
            diffs += self._restart_only(before, after, placed)
        diffs += self._restore_late(after, faults, region_touched)
        diffs += self._compare(after)
        if self.last_pass is not None and not after.other_passes_since(before):
            diffs += self._pte_updates(before, after, faults)
        return diffs

    def step_faulted(self, before: Observation, after: Observation, faulted: dict[int, Page], *, period_ms: int,
                     clock_restarted: bool, faults: int | None = None) -> list[str]:
        """A step in which the task faulted on hinted pages of the region and no pass ran (the
        caller makes sure), the faults replayed by the caller's model: `faulted` holds the pages
        as hint_fault left them (hint restored, node, last_cpupid), `period_ms` is the period
        the placement the first fault ran set (update_task_scan_period), `clock_restarted`
        whether that placement took its first branch, which sets mm->numa_next_scan = jiffies +
        period at the placing fault: that jiffies is an input, held to the step. Each fault
        sets the task's pid bit in its VMA (mm/memory.c:numa_migrate_check ->
        vma_set_access_pid_bit), and the placement gives the task the mm's sequence
        (fair.c:task_numa_placement). Which CPU of its node the task faulted on is an input too
        (the node decides, the CPU is the scheduler's): where the kernel's last_cpupid of a
        faulted page has the model's pid and a CPU of the model's node, its CPU is taken. Then
        the whole state is compared as after step(). `faults`: how many hint faults made
        `faulted` (default one per entry; one per large folio restores all its PTEs)."""
        self.last_pass, self.new_region_hints, self.faulted_vmas, self.pages_mapped = None, 0, set(), 0
        self.seen_fault_vmas, self.several_passes, self.runner = set(), False, None
        self.nr_threads = before.task.nr_threads
        self.hints_off = _kernel_hints_off(after)
        diffs = self._follow_layout(after)
        counted = after.vmstat["numa_hint_faults"] - before.vmstat["numa_hint_faults"]
        faults = len(faulted) if faults is None else faults
        if faults > counted:
            diffs.append(f"the model's task took {faults} hint faults, the kernel counted {counted} "
                         f"(numa_hint_faults)")
        self._count("hint faults replayed by the caller's model", faults)
        vmas = list(self.vmas)
        kernel = {e.vaddr: e.last_cpupid for e in after.table}
        for va, page in faulted.items():
            self.pages[va] = self._faulting_cpu(page, kernel.get(va))
            index = self._vma_of(va, vmas)
            if index is not None:
                vmas[index] = vma_set_access_pid_bit(vmas[index], self.faulter(vmas[index]))
                self.faulted_vmas.add(vmas[index].start)
                self.seen_fault_vmas.add(vmas[index].start)
        self.vmas = tuple(vmas)
        old_period, self.period_ms = self.period_ms, period_ms
        self.task_seq = self.mm.numa_scan_seq
        diffs += self._runners(before, after, False, old_period)[1]
        if clock_restarted:
            restarted = self._placement_restart(before, after)
            if restarted is None:
                diffs.append(f"numa_next_scan {after.mm.numa_next_scan}, model: a jiffy of the step "
                             f"({before.balancing.jiffies}..{after.balancing.jiffies}) + {period_ms} ms "
                             f"(update_task_scan_period's first branch restarts the scan clock)")
            else:
                self.next_scan = restarted
        return diffs + self._compare(after)

    def _faulting_cpu(self, page: Page, kernel: int | None) -> Page:
        """`page` with the CPU of the kernel's last_cpupid when only the CPU differs, inside the
        node the model's CPU belongs to (step_faulted)."""
        model = page.last_cpupid
        if model is None or kernel is None or kernel == model or kernel == self.facts.cpupid_unset:
            return page
        node_of = self.facts.node_of_cpu
        if cpupid_pid(kernel) == cpupid_pid(model) and node_of.get(cpupid_cpu(kernel)) == node_of.get(cpupid_cpu(model)):
            self._count("CPUs taken from last_cpupid")
            return replace(page, last_cpupid=kernel)
        return page

    def _runners(self, before: Observation, after: Observation, passed: bool,
                 old_period: int) -> tuple[list[Runner], list[str]]:
        """Who may have run the step's pass, by node_stamp; and the node_stamps checked.
        fair.c:task_tick_numa, at a tick where sum_exec_runtime > node_stamp + period, adds the
        period and queues task_numa_work; the pass that wins numa_next_scan adds 2 * TICK_NSEC,
        and at its end 32 times the CPU time it was charged (the 3 % overhead cap). The CPU time
        is an input: the runtime as observed (the last tick saw at most one tick less) and the
        pass's own charge d, which is at most what the thread ran in the step. So node_stamp =
        model + k periods + the pass's 2 ticks + 32 d, with k >= 1 when a pass ran unless its
        work was already queued at the step's start; and after the last tick node_stamp + period
        >= runtime - one tick (else that tick would have triggered). A placement in the step
        changes the period between triggers: then any mix of the two periods is allowed (_stamp_fits).

        With a region faulter (check_scanner_pids) both threads' node_stamps are held so: a
        pass shows its two ticks in exactly one of them, and that thread is the pass's runner
        (its pid decides vma_is_accessed). A trigger that lost the cmpxchg, or found the pass
        not yet due, adds its period alone."""
        tick = tick_nsec(self.facts.hz)
        task = _Stamped(self.node_stamp, old_period, self.period_ms, before.task, after.task)
        main = Runner(self.pid, self.period_ms, tuple(self._scanning_nodes(before, after)))
        if self.region_faulter is None:
            fits = task.fits(int(passed), tick)
            if not fits:
                return [main], [task.mismatch("task", int(passed), tick)]
            self._count("scan-work triggers", min(fits)[0])
            self.node_stamp = after.task.node_stamp
            return [main], []
        was, now = self._faulter_state(before), self._faulter_state(after)
        worker = _Stamped(self.faulter_stamp, was.numa_scan_period, now.numa_scan_period, was, now)
        nodes = tuple(dict.fromkeys(self.facts.node_of_cpu[t.cpu] for t in (now, was)))
        runners: list[Runner] = []
        if passed and task.fits(1, tick) and worker.fits(0, tick):
            runners.append(main)
        if passed and worker.fits(1, tick) and task.fits(0, tick):
            # The worker's period at either end of the step: an input (its placements and its moves
            # between nodes, update_task_scan_period and update_scan_period, are not this replay's).
            runners += [Runner(now.pid, period, nodes, is_task=False)
                        for period in dict.fromkeys((was.numa_scan_period, now.numa_scan_period))]
        if (passed and not runners) or (not passed and not (task.fits(0, tick) and worker.fits(0, tick))):
            why = "a pass shows its two ticks in exactly one thread's node_stamp" if passed else "no pass ran"
            return [main], [f"{why}: {task.mismatch('task', int(passed), tick)}; "
                            f"{worker.mismatch(f'worker (tid {now.pid})', int(passed), tick)}"]
        self._count("scan-work triggers", min(task.fits(0, tick) + task.fits(int(passed), tick))[0]
                    + min(worker.fits(0, tick) + worker.fits(int(passed), tick))[0])
        self.node_stamp, self.faulter_stamp = after.task.node_stamp, now.node_stamp
        return runners, []

    def _pte_updates_fit(self, prediction: Prediction, before: Observation, after: Observation, faults: int) -> bool:
        """Whether `prediction`'s pass count is within _pte_updates' bound (true when the count
        cannot be compared: another mm had a pass in the step)."""
        if after.other_passes_since(before):
            return True
        kernel = after.vmstat["numa_pte_updates"] - before.vmstat["numa_pte_updates"]
        return prediction.pte_updates <= kernel <= prediction.pte_updates + faults

    def _pte_updates(self, before: Observation, after: Observation, faults: int) -> list[str]:
        """numa_pte_updates (global) when no other mm had a pass: the model's count, plus at most
        one re-hint per hint fault counted in the step (a page restored before the pass is hinted
        again and counted again; the model, not seeing the fault, counts it once)."""
        assert self.last_pass is not None
        kernel = after.vmstat["numa_pte_updates"] - before.vmstat["numa_pte_updates"]
        model = self.last_pass.pte_updates
        self._count("passes whose numa_pte_updates were compared")
        diffs = []
        if not model <= kernel <= model + faults:
            diffs.append(f"pass at jiffies {self.last_pass.ran_at}: numa_pte_updates grew by {kernel}, model {model} "
                         f"(+ up to {faults} re-hints: one per hint fault counted in the step)")
        # change_huge_pmd counts each PMD it hints once more here (mm/mprotect.c:change_pmd_range).
        huge = after.vmstat["numa_huge_pte_updates"] - before.vmstat["numa_huge_pte_updates"]
        if not self.last_pass.huge_updates <= huge <= self.last_pass.huge_updates + faults:
            diffs.append(f"pass at jiffies {self.last_pass.ran_at}: numa_huge_pte_updates grew by {huge}, model "
                         f"{self.last_pass.huge_updates} PMDs hinted (+ up to {faults} re-hints)")
        return diffs

    def _placement(self, after: Observation, faults: int) -> list[str]:
        """fair.c:task_numa_placement, run by the first hint fault after the mm's sequence moved:
        the task takes the mm's sequence; numa_scan_period_max becomes task_scan_max and
        update_task_scan_period clamps the period into [task_scan_min, task_scan_max]. With
        scan_period_min_ms == scan_period_max_ms both bounds are 1000 ms / task_nr_scan_windows,
        so either branch lands on that value once the old period is at least half of it (the
        first branch doubles it, capped at the max; the second clamps)."""
        diffs = []
        if faults == 0:
            diffs.append(f"the task's numa_scan_seq moved to {after.task.numa_scan_seq} without a hint fault "
                         f"(numa_hint_faults unchanged): task_numa_placement runs only from task_numa_fault")
        if self.caller_places:
            return [f"the task's numa_scan_seq moved to {after.task.numa_scan_seq} in a step in which the model's task "
                    f"made no hint fault (task_numa_placement runs only from task_numa_fault)"]
        low, rss = self.rss_pages
        targets = {task_scan_max(r, self.tunables) for r in (low, rss)}
        allowed = {t for t in targets if 2 * self.period_ms >= t} | {min(2 * self.period_ms, t) for t in targets}
        if after.task.numa_scan_period not in allowed:
            diffs.append(f"after a placement the task's numa_scan_period is {after.task.numa_scan_period} ms, model "
                         f"{' or '.join(map(str, sorted(allowed)))} (task_scan_max for {low}..{rss} pages of "
                         f"RSS)")
        self.period_ms = after.task.numa_scan_period if after.task.numa_scan_period in allowed else max(targets)
        return diffs

    def _times(self, before: Observation, after: Observation, old_period: int, placed: bool,
               runner: Runner) -> tuple[list[int], list[str]]:
        """The jiffies the step's pass may have run at: numa_next_scan minus the period its
        runner set it with, which must be allowed by the model's numa_next_scan and fall in the
        step. `placed`: the task's placement in the step (its old period, and a restart that
        hides the pass's time, count for the task's own passes)."""
        # Both ends count: the guest resumes at the jiffy it was observed in, and is paused for
        # the next observation within the jiffy it reads.
        lo, hi = before.balancing.jiffies, after.balancing.jiffies
        placed = placed and runner.is_task
        periods = [runner.period_ms] + ([old_period] if placed and old_period != runner.period_ms else [])
        times = []
        for period in periods:
            ran_at = after.mm.numa_next_scan - self.tunables.ms_to_jiffies(period)
            if lo <= ran_at <= hi and pass_allowed(ran_at, self.next_scan):
                times.append(ran_at)
        if placed:  # a restart after the pass hides its time: every jiffy where the gates change
            times += [t for t in _gate_times(self.vmas, lo, hi) if pass_allowed(t, self.next_scan)]
            # A VMA the pass met first got next_scan = the pass's `now` + scan delay
            # (fair.c:task_numa_work): that `now` is a candidate too (still an input, held to the
            # step and to the model's numa_next_scan like every other).
            delay = self.tunables.ms_to_jiffies(self.tunables.scan_delay_ms)
            known = {v.start for v in self.vmas if v.numab is not None}
            times += [int(v.numab["next_scan"]) - delay for v in after.vmas
                      if v.numab is not None and v.start not in known
                      and lo <= int(v.numab["next_scan"]) - delay <= hi
                      and pass_allowed(int(v.numab["next_scan"]) - delay, self.next_scan)]
        if times:
            return list(dict.fromkeys(times)), []
        ran_at = after.mm.numa_next_scan - self.tunables.ms_to_jiffies(runner.period_ms)
        who = "" if runner.is_task else f" by the region's faulter (tid {runner.pid})"
        return [], [f"a pass ran in the step{who} (scan offset {before.mm.numa_scan_offset:#x} -> "
                    f"{after.mm.numa_scan_offset:#x}) at jiffies {ran_at} (numa_next_scan {after.mm.numa_next_scan} - "
                    f"{runner.period_ms} ms), but the step spans jiffies {lo}..{hi} and the model's numa_next_scan is "
                    f"{self.next_scan}: task_numa_work may not run then"]

    def _early_variants(self, after: Observation, faults: int, region_touched: bool) -> Iterator[tuple[str, set[int]]]:
        """Which pages were restored by a fault before the pass: outside the region (and inside it
        when the step touched it) none, the ones seen restored after the step, or all. A touch
        runs through the region in address order, so a pass that came in the middle of it found
        the pages below some address restored (and hinted them again: with mm_users 2 nothing is
        skipped as local) and the rest still hinted (then restored by the touch): the cut is
        where the kernel's hints change along the region, an input like the order above."""
        hinted = {va for va, p in self.pages.items() if p.hint and (region_touched or not self.in_region(va))}
        seen = hinted & self.hints_off
        yield "none", set()
        if seen:
            yield "seen", seen
        if faults > len(seen) and hinted - seen:
            yield "all", hinted
        if region_touched:
            inside = sorted(va for va in hinted if self.in_region(va))
            cuts = [b for a, b in itertools.pairwise(inside) if (a in self.hints_off) != (b in self.hints_off)]
            outside = {va for va in seen if not self.in_region(va)}
            for cut in cuts[:8]:
                prefix = {va for va in inside if va < cut}
                yield f"the touch up to {cut:#x}", prefix | outside
                if outside:
                    yield f"the touch up to {cut:#x}, no other fault", prefix

    def _predict(self, ran_at: int, early: str, restored: set[int], start: Prediction | None = None,
                 node: int | None = None) -> Prediction:
        """One pass at `ran_at` from the model's state (or from `start`, an earlier pass of the step),
        run on a CPU of `node` (default: the scanning node the step is being predicted for)."""
        mm, vmas_now, pages_now = (self.mm, self.vmas, self.pages) if start is None else (start.mm, start.vmas, start.pages)
        pages = dict(pages_now)
        vmas = list(vmas_now)
        for va in restored:
            index = self._vma_of(va, vmas_now)
            pages[va] = _restored_by_input(pages[va], vmas_now[index] if index is not None else None)
            if index is not None:
                vmas[index] = vma_set_access_pid_bit(vmas[index], self.faulter(vmas[index]))
        result = scan_pass(mm, vmas, pages, self.tunables, scanning_node=self.scanning_node if node is None else node,
                           jiffies=ran_at, pid=self._scanning_pid, nr_threads=self.nr_threads, rules=self.facts.rules)
        before = (start.pte_updates, start.windows, start.skipped) if start else (0, (), ())
        return Prediction(ran_at, early, result.mm, result.vmas, dict(result.pages),
                          before[0] + result.counters.numa_pte_updates, before[1] + result.windows,
                          before[2] + result.skipped,
                          (start.huge_updates if start else 0) + result.counters.numa_huge_pte_updates,
                          (start.admitted if start else ()) + result.admitted)

    def _several_passes(self, before: Observation, after: Observation, times: list[int],
                        region_touched: bool, nodes: list[int], pending: bool) -> Prediction | None:
        """A long step can hold several passes: the guest slow to answer, or its host stalled
        (QEMU's vCPU not scheduled while the guest's clock runs on: the clock jumps at resume and
        the task that was running is charged the whole jump as CPU time, so its triggers come one
        after another). Each pass comes at least a period after the one before it (it set
        numa_next_scan so) and needs its own trigger: at most MAX_TRIGGERS_PER_STEP (the bound
        _runners holds the step to) plus one already queued at the step's start (`pending`), and no more
        than the step's span allows. Tried only when no single pass explains the step, with 2,
        3, ... passes: the last at a time numa_next_scan shows (`times`), the earlier ones' times
        inputs, each taken at the first jiffy it may run at or where a VMA gate changes (a pass's
        outcome depends only on which side of each gate its time falls). The node each ran on
        is an input (_scanning_nodes): every pass on one of `nodes`, or the first on the node the
        task left and the rest on the one it ended the step on."""
        period = self.tunables.ms_to_jiffies(self._scanning_period_ms)
        lo = max(before.balancing.jiffies, self.next_scan)
        most = min(MAX_TRIGGERS_PER_STEP + int(pending),
                   max(after.balancing.jiffies - lo, 0) // max(period, 1) + 1)
        patterns = [(n, n) for n in nodes] + ([(nodes[1], nodes[0])] if len(nodes) > 1 else [])
        for count in range(2, most + 1):
            for last_at in times:
                for first_node, later_node in patterns:
                    found = self._chain(None, lo, last_at, count - 1, period, (first_node, later_node), after,
                                        region_touched)
                    if found is not None:
                        self._count(f"long steps that held {count} passes")
                        return found
        return None

    def _chain(self, start: Prediction | None, earliest: int, last_at: int, left: int, period: int,
               nodes: tuple[int, int], after: Observation, region_touched: bool) -> Prediction | None:
        """`left` passes from `start` (None: the model's state), the next no earlier than
        `earliest`, then the step's last pass at `last_at`; the prediction that matches `after`."""
        node = nodes[0] if start is None else nodes[1]
        if left == 0:
            final = self._predict(last_at, "none", set(), start=start, node=node)
            return None if self._mismatch(final, after, region_touched) else final
        vmas = self.vmas if start is None else start.vmas
        for at in _gate_times(vmas, earliest, last_at - left * period):
            if start is None and not pass_allowed(at, self.next_scan):
                continue
            found = self._chain(self._predict(at, "none", set(), start=start, node=node), at + period, last_at,
                                left - 1, period, nodes, after, region_touched)
            if found is not None:
                return found
        return None

    def _scanning_nodes(self, before: Observation, after: Observation) -> list[int]:
        """The nodes the step's pass may have run on: an input (which CPU a task ran on), from
        the task's CPU at both ends of the step. task_numa_work runs as task work on the task's
        return to user mode, on whatever CPU it is on then: usually the node the step's command
        pins it to (after.task.cpu), but a tick that lands between the task waking up on its
        previous CPU and its sched_setaffinity moving it queues the work there and the return
        from that interrupt runs it there (before.task.cpu). The node decides change_pte_range's
        target_node (mm_users 1), so each is predicted; the kernel must match one of them."""
        return list(dict.fromkeys([self.facts.node_of_cpu[after.task.cpu], self.facts.node_of_cpu[before.task.cpu]]))

    def _candidates(self, timed: list[tuple[Runner, list[int]]], after: Observation, faults: int,
                    region_touched: bool) -> Iterator[tuple[Runner, list[int], int, int, tuple[str, set[int]]]]:
        """Every way one pass could have gone: its runner, the node it ran on, its time, which
        faults came before it. Sets the replay's runner and scanning node for _predict."""
        for runner, times in timed:
            self.runner = runner
            for node in runner.nodes:
                self.scanning_node = node
                for ran_at in times:
                    for variant in self._early_variants(after, faults, region_touched):
                        yield runner, times, node, ran_at, variant

    def _pass(self, before: Observation, after: Observation, faults: int, old_period: int, placed: bool,
              region_touched: bool, runners: list[Runner]) -> list[str]:
        """The step's pass, predicted for each thread that may have run it (`runners`, from
        node_stamp), each node it may have run on, each time and each order of the step's faults;
        the first prediction the kernel matches is adopted."""
        timed: list[tuple[Runner, list[int]]] = []
        diffs: list[str] = []
        for runner in runners:
            times, late = self._times(before, after, old_period, placed, runner)
            if times:
                timed.append((runner, times))
            diffs = diffs or late
        if not timed:
            return diffs
        best: tuple[Prediction, list[str]] | None = None
        # A prediction whose state matches but whose numa_pte_updates does not: taken (and the
        # count reported by step()) only when no other prediction matches both.
        counted_wrong: tuple[Prediction, set[int], int, Runner] | None = None
        for runner, times, node, ran_at, (early, restored) in self._candidates(timed, after, faults, region_touched):
            prediction = self._predict(ran_at, early, restored)
            found = self._mismatch(prediction, after, region_touched)
            if not found and not self._pte_updates_fit(prediction, before, after, faults):
                counted_wrong = counted_wrong or (prediction, restored, node, runner)
                continue
            if not found:
                self._adopt(prediction, before, after, faults, restored)
                if len(times) > 1 or early != "none":
                    self._count(f"steps predicted with {len(times)} pass times / faults before the pass: "
                                f"{early.split(' 0x')[0]}")
                if node != runner.nodes[0]:
                    self._count("passes run on the node the task left in the step")
                if not runner.is_task:
                    self._count("passes run by the region's faulter")
                return []
            if best is None or len(found) < len(best[1]):
                best = (prediction, found)
        if counted_wrong is not None:
            prediction, restored, self.scanning_node, self.runner = counted_wrong
            self._adopt(prediction, before, after, faults, restored)
            return []
        assert best is not None
        for runner, times in timed:
            self.runner, self.scanning_node = runner, runner.nodes[0]
            pending = (before.task if runner.is_task else self._faulter_state(before)).numa_work_pending
            several = self._several_passes(before, after, times, region_touched, list(runner.nodes), pending)
            if several is not None:
                self._adopt(several, before, after, faults, set())
                self.several_passes = True
                return []
        self.runner, self.scanning_node = timed[0][0], timed[0][0].nodes[0]
        return [f"pass at jiffies {best[0].ran_at} (faults before it: {best[0].early}; {len(times)} possible times): "
                f"{d}" for d in best[1]]

    def _mismatch(self, prediction: Prediction, after: Observation, region_touched: bool) -> list[str]:
        diffs = []
        if (prediction.mm.numa_scan_offset, prediction.mm.numa_scan_seq) != (after.mm.numa_scan_offset,
                                                                             after.mm.numa_scan_seq):
            diffs.append(f"scan offset/seq model {prediction.mm.numa_scan_offset:#x}/{prediction.mm.numa_scan_seq}, "
                         f"kernel {after.mm.numa_scan_offset:#x}/{after.mm.numa_scan_seq}")
        # The VMA bookkeeping first: it says why the hints below differ.
        diffs += _numab_diffs(prediction.vmas, after, self._fault_bit, tolerate_pids=True)
        off = self.hints_off
        kernel_on = _kernel_hints_on(after)
        model_on = {va for va, p in prediction.pages.items() if p.hint}
        skipped = dict(prediction.skipped)
        for va in sorted(kernel_on - model_on)[:5]:
            index = self._vma_of(va, prediction.vmas)
            why = skipped.get(prediction.vmas[index].start) if index is not None else None
            diffs.append(f"the kernel hinted {va:#x}, the model did not"
                         + (f" (the model's pass skipped its VMA: {why})" if why else ""))
        # A hint the model set and the kernel no longer shows was restored by a fault: outside the
        # region an input (counted against numa_hint_faults in _restore_late), inside only when touched.
        for va in sorted(v for v in model_on - kernel_on if v not in off or (self.in_region(v) and not region_touched))[:5]:
            diffs.append(f"the model hinted {va:#x}, the kernel did not")
        return diffs

    def _adopt(self, prediction: Prediction, before: Observation, after: Observation, faults: int,
               restored: set[int]) -> None:
        self.new_region_hints = sum(1 for va, p in prediction.pages.items()
                                    if p.hint and self.in_region(va) and not self.pages[va].hint)
        self.last_pass = prediction
        for _, reason in prediction.skipped:
            if reason in ("scan_delay", "pid_inactive", "seq_completed"):
                self._count(f"VMAs skipped by a pass: {reason}")
        met = {v.start for v in prediction.vmas if v.numab} - {v.start for v in self.vmas if v.numab}
        self._count("VMAs the model's passes met first (numab_state allocated)", len(met))
        self.mm = prediction.mm
        self.vmas = prediction.vmas
        for va in restored:
            index = self._vma_of(va, self.vmas)
            if index is not None:
                self.faulted_vmas.add(self.vmas[index].start)
                self.seen_fault_vmas.add(self.vmas[index].start)
        self.pages = prediction.pages
        assert prediction.ran_at is not None
        self.next_scan = next_scan_after_pass(prediction.ran_at, self._scanning_period_ms, self.tunables)
        if after.mm.numa_next_scan != self.next_scan:
            self.next_scan = self._placement_restart(before, after) or self.next_scan

    def _placement_restart(self, before: Observation, after: Observation) -> int | None:
        """update_task_scan_period's first branch: mm->numa_next_scan = jiffies (of the placing
        fault) + the new period. That jiffies is an input; it must lie in the step, whose first
        jiffy is the observation's own: the guest resumes within the jiffy it was paused in,
        and a command sent on the holder's channel can fault before the next tick."""
        at = after.mm.numa_next_scan - self.tunables.ms_to_jiffies(self.period_ms)
        if before.balancing.jiffies <= at <= after.balancing.jiffies:
            self._count("placements that restarted numa_next_scan")
            return int(after.mm.numa_next_scan)
        return None

    def _restart_only(self, before: Observation, after: Observation, placed: bool) -> list[str]:
        restarted = self._placement_restart(before, after) if placed else None
        if restarted is None:
            return [f"numa_next_scan moved {self.next_scan} -> {after.mm.numa_next_scan} without a pass "
                    f"(scan offset and sequence unchanged){'' if placed else ' and without a placement'}"]
        self.next_scan = restarted
        return []

    def _restore_late(self, after: Observation, faults: int, region_touched: bool) -> list[str]:
        """Faults the model takes as input: hints it set that the kernel shows restored. Each
        sets the faulting task's pid bit in its VMA (vma_set_access_pid_bit). Their number is
        bounded by the hint faults the kernel counted in the step."""
        off = self.hints_off
        restored = [va for va, p in self.pages.items() if p.hint and va in off and
                    (region_touched or not self.in_region(va))]
        vmas = list(self.vmas)
        for va in restored:
            index = self._vma_of(va, self.vmas)
            self.pages[va] = _restored_by_input(self.pages[va], self.vmas[index] if index is not None else None)
            if index is not None:
                vmas[index] = vma_set_access_pid_bit(vmas[index], self.faulter(vmas[index]))
                self.faulted_vmas.add(vmas[index].start)
                self.seen_fault_vmas.add(vmas[index].start)
        self.vmas = tuple(vmas)
        self._count("hint faults seen (restored hints)", len(restored))
        if len(restored) > faults:
            return [f"{len(restored)} hints were restored in the step but the kernel counted {faults} hint faults: "
                    f"a hint went away without do_numa_page"]
        unseen = faults - len(restored)
        if unseen:
            self._count("hint faults not seen (restored and hinted again, or other processes)", unseen)
            self._attribute_unseen(after)
        return []

    def _attribute_unseen(self, after: Observation) -> None:
        """A fault the observations cannot see (its page hinted again by the step's pass) still
        set its thread's pid bit in some VMA: where the kernel shows the bit the model lacks,
        that VMA had it (the only input taken from pids_active, and only the bit of the thread
        that faults in that VMA: ScanReplay.faulter)."""
        kernel = {v.start: v.numab for v in after.vmas if v.numab}
        vmas = list(self.vmas)
        for i, vma in enumerate(vmas):
            numab = kernel.get(vma.start)
            if vma.numab is None or numab is None:
                continue
            bit = self._fault_bit(vma)
            self.faulted_vmas.add(vma.start)
            if numab["pids_active"][1] & bit and not vma.numab.pids_active[1] & bit:
                vmas[i] = vma_set_access_pid_bit(vma, self.faulter(vma))
                self._count("pid bits of unseen faults")
        self.vmas = tuple(vmas)

    def _compare(self, after: Observation) -> list[str]:
        """The whole scanner state after the step."""
        diffs = []
        if (self.mm.numa_scan_offset, self.mm.numa_scan_seq) != (after.mm.numa_scan_offset, after.mm.numa_scan_seq):
            diffs.append(f"scan offset/seq model {self.mm.numa_scan_offset:#x}/{self.mm.numa_scan_seq}, kernel "
                         f"{after.mm.numa_scan_offset:#x}/{after.mm.numa_scan_seq}")
        if self.next_scan != after.mm.numa_next_scan:
            diffs.append(f"numa_next_scan model {self.next_scan}, kernel {after.mm.numa_next_scan}")
        if after.task.numa_scan_seq != self.task_seq:
            if after.task.numa_scan_seq in (self.mm.numa_scan_seq, self.mm.numa_scan_seq - 1):
                self.task_seq = after.task.numa_scan_seq  # when the placing fault came: an input
            else:
                diffs.append(f"task numa_scan_seq {after.task.numa_scan_seq}: the mm's sequence was never that in the "
                             f"step (model mm seq {self.mm.numa_scan_seq})")
        if after.task.numa_scan_period != self.period_ms:
            diffs.append(f"task numa_scan_period model {self.period_ms} ms, kernel {after.task.numa_scan_period} ms")
        diffs += _numab_diffs(self.vmas, after, self._fault_bit, tolerate_pids=False, faulted=self.faulted_vmas)
        diffs += self._fault_bits_recorded(after)
        self._follow_fault_order(after)
        diffs += self._region_entries(after)
        return diffs

    def _fault_bits_recorded(self, after: Observation) -> list[str]:
        """A hint fault records its thread in the VMA (mm/memory.c:numa_migrate_check ->
        vma_set_access_pid_bit: the thread's bit in pids_active[1]), and only a pass's rotation
        moves [1] to [0] (fair.c:task_numa_work, once per VMA_PID_RESET_PERIOD). So after a step
        with at most one pass, the bit of the thread seen faulting in a VMA is in [0] or [1]:
        the order the tolerance in _numab_diffs leaves open, never the bit's absence."""
        if self.several_passes:
            return []
        kernel = {v.start: v.numab for v in after.vmas if v.numab}
        diffs = []
        for vma in self.vmas:
            numab = kernel.get(vma.start)
            if vma.start not in self.seen_fault_vmas or numab is None:
                continue
            bit = self._fault_bit(vma)
            if not (int(numab["pids_active"][0]) | int(numab["pids_active"][1])) & bit:
                diffs.append(f"VMA {vma.start:#x}: thread {self.faulter(vma)} took hint faults in it during the step, "
                             f"but its bit {bit:#x} is in neither pids_active word {[hex(int(p)) for p in numab['pids_active']]} "
                             f"(vma_set_access_pid_bit)")
        return diffs

    def _follow_fault_order(self, after: Observation) -> None:
        """In a VMA the task faulted in, a fault before the pass's pids_active rotation leaves its
        bit in pids_active[0], one after it in [1]: which one happened is an input, taken as the
        kernel shows it (only the bit of the thread that faults in the VMA, only in those VMAs)."""
        kernel = {v.start: v.numab for v in after.vmas if v.numab}
        vmas = list(self.vmas)
        for i, vma in enumerate(vmas):
            numab = kernel.get(vma.start)
            if vma.start not in self.faulted_vmas or vma.numab is None or numab is None:
                continue
            bit = self._fault_bit(vma)
            shown = tuple(int(p) for p in numab["pids_active"])
            model = vma.numab.pids_active
            if shown != model and all((a & ~bit) == (b & ~bit) for a, b in zip(shown, model, strict=True)):
                vmas[i] = replace(vma, numab=replace(vma.numab, pids_active=(shown[0], shown[1])))
                self._count("fault orders taken from pids_active")
        self.vmas = tuple(vmas)

    def _region_entries(self, after: Observation) -> list[str]:
        diffs = []
        kernel_region = after.table.within(*self.region)
        # Every entry of the region, every step: read as lists (PageTableWalk.columns), not Entry objects.
        c = kernel_region.columns()
        for va, hint, node, cpupid in zip(c.vaddr, c.hint, c.node, c.last_cpupid, strict=True):
            page = self.pages.get(va)
            if page is None:
                continue
            last = None if cpupid is None or cpupid == self.facts.cpupid_unset else cpupid
            if (page.hint, page.node, page.last_cpupid) != (hint, node, last):
                diffs.append(f"{va:#x}: model hint={page.hint} node {page.node} last_cpupid {page.last_cpupid}, "
                             f"kernel hint={hint} node {node} last_cpupid {last}")
            if len(diffs) >= 5:
                break
        # A hint has no write bit: change_pte_range's pte_modify(PAGE_NONE) keeps only
        # _PAGE_CHG_MASK (arch/x86/include/asm/pgtable.h:pte_modify). Any other entry has the
        # bit the model carries: as observed at the start, or as the last fault left it
        # (hint_fault). In a writable VMA the region is written at first touch and its restoring
        # faults are on exclusive anonymous pages, which get the bit back in place
        # (numa_rebuild_single_mapping: can_change_pte_writable); a page a read migrated comes
        # back read-only (its migration entry was made from the PROT_NONE one); in a read-only
        # VMA vm_page_prot has no write bit to give back.
        # Under 6.1's rules (KernelRules.savedwrite) a hint keeps the write bit the entry had
        # (change_pte_range: pte_mk_savedwrite) and a restore puts it back (do_numa_page), so
        # every entry, hint or not, has the bit the model carries.
        index = self._vma_of(self.region[0], self.vmas)
        vma_writable = index is None or self.vmas[index].writable
        savedwrite = self.facts.rules.savedwrite

        def expected(va: int, hint: bool) -> bool:
            page = self.pages.get(va)
            carried = page.writable if page is not None else vma_writable
            return carried if savedwrite else not hint and carried
        wrong = [(va, hint, writable) for va, hint, writable in zip(c.vaddr, c.hint, c.writable, strict=True)
                 if writable != expected(va, hint)]
        if wrong:
            va, hint, writable = wrong[0]
            diffs.append(f"{len(wrong)} of the region's {len(kernel_region)} entries have a write bit that does not "
                         f"match their hint (first {va:#x}: hint={hint} writable={writable}; "
                         f"the VMA is {'writable' if vma_writable else 'read-only'})")
        return diffs


@dataclass(frozen=True)
class _Stamped:
    """One thread's node_stamp across a step (ScanReplay._runners): the model's value at the
    start, the periods its triggers may add (before and after a placement), its state at both ends."""

    stamp: int
    old_period_ms: int
    new_period_ms: int
    before: TaskNumaState
    after: TaskNumaState

    def fits(self, passes: int, tick: int) -> list[tuple[int, int]]:
        """(triggers, the pass's CPU time d) for every way the kernel's node_stamp is the
        model's + k periods + `passes` passes' two ticks + 32 d."""
        runtime, ran = self.after.sum_exec_runtime, self.after.sum_exec_runtime - self.before.sum_exec_runtime
        kernel = self.after.node_stamp
        old_ns, new_ns = self.old_period_ms * NSEC_PER_MSEC, self.new_period_ms * NSEC_PER_MSEC
        triggers = range(MAX_TRIGGERS_PER_STEP + 1)
        mixes = [(a, b) for a in triggers for b in triggers] if old_ns != new_ns else [(0, b) for b in triggers]
        fits = []
        for a, b in mixes:
            residual = kernel - (self.stamp + a * old_ns + b * new_ns + passes * 2 * tick)
            if (passes == 0 and residual != 0) or residual < 0 or residual % 32 or residual // 32 > max(ran, 0):
                continue
            if passes and a + b == 0 and not self.before.numa_work_pending:
                continue
            if kernel + min(old_ns, new_ns) < runtime - tick:
                continue
            fits.append((a + b, residual // 32))
        return fits

    def mismatch(self, who: str, passes: int, tick: int) -> str:
        kernel, runtime = self.after.node_stamp, self.after.sum_exec_runtime
        ran = runtime - self.before.sum_exec_runtime
        return (f"{who} node_stamp {kernel} (moved {kernel - self.stamp} ns) is {'' if self.fits(passes, tick) else 'not '}"
                f"the model's {self.stamp} + k periods of {self.new_period_ms} ms + {passes} pass(es)' two ticks and "
                f"32x its CPU time (sum_exec_runtime {runtime}, {ran} ns in the step"
                f"{'; a pass needs a trigger' if passes else ''}: task_tick_numa, task_numa_work)")


def _gate_times(vmas: Sequence[Vma], lo: int, hi: int) -> list[int]:
    """`lo` and the jiffies in [lo, hi] where a VMA's gate changes (task_numa_work: a VMA is
    scanned once jiffies pass numab next_scan; its PID window resets once they pass
    pids_active_reset): between two of them a pass's outcome does not depend on its time."""
    edges = {lo}
    for vma in vmas:
        if vma.numab is not None:
            edges |= {vma.numab.next_scan, vma.numab.next_scan + 1, vma.numab.pids_active_reset + 1}
    return sorted(t for t in edges if lo <= t <= hi)


def _restored_by_input(page: Page, vma: Vma | None) -> Page:
    """`page` restored by a fault the replay takes as input (a touch, or a fault it only sees
    happened): the entry is present again, with the write bit of its VMA. In a writable VMA
    these faults are writes, or reads of pages restored in place (numa_rebuild_single_mapping:
    can_change_pte_writable holds for an exclusive anonymous page); only a read that migrated
    leaves a page read-only, and reads are replayed by the caller's model (step_faulted)."""
    return replace(page, hint=False, writable=page.writable if vma is None else vma.writable)


def _kernel_hints_off(obs: Observation) -> set[int]:
    """The addresses of the kernel's entries that are not hints."""
    table = obs.table
    return {int(v) for v in table.vaddr[~table.hint]}


def _kernel_hints_on(obs: Observation) -> set[int]:
    table = obs.table
    return {int(v) for v in table.vaddr[table.hint]}



_NUMAB_FIELDS = ("start_scan_seq", "prev_scan_seq", "next_scan", "pids_active_reset")


def _numab_diffs(vmas: tuple[Vma, ...], after: Observation, fault_bit: Callable[[Vma], int], *, tolerate_pids: bool,
                 faulted: set[int] | None = None) -> list[str]:
    """Every VMA's numab_state, model vs kernel. pids_active may differ by the bit of the thread
    that faults in the VMA (`fault_bit`; a fault whose order against the pass's pids_active
    rotation the step cannot show) in every VMA with `tolerate_pids`, else in the VMAs faulted
    in during the step."""
    diffs = []
    kernel = {v.start: v.numab for v in after.vmas}
    for vma in vmas:
        bit = fault_bit(vma)
        numab = kernel.get(vma.start)
        if (vma.numab is None) != (numab is None):
            diffs.append(f"VMA {vma.start:#x}: numab_state {'allocated' if numab else 'NULL'} in the kernel, "
                         f"{'allocated' if vma.numab else 'NULL'} in the model")
            continue
        if vma.numab is None or numab is None:
            continue
        for name in _NUMAB_FIELDS:
            if getattr(vma.numab, name) != numab[name]:
                diffs.append(f"VMA {vma.start:#x}: numab {name} model {getattr(vma.numab, name)}, kernel {numab[name]}")
        model_pids, kernel_pids = vma.numab.pids_active, tuple(numab["pids_active"])
        mask = ~bit if tolerate_pids or vma.start in (faulted or set()) else ~0
        if tuple(p & mask for p in model_pids) != tuple(p & mask for p in kernel_pids):
            diffs.append(f"VMA {vma.start:#x}: pids_active model {[hex(p) for p in model_pids]}, kernel "
                         f"{[hex(p) for p in kernel_pids]}")
    return diffs


