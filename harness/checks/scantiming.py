"""Scan timing: when task_numa_work may run, and what it sets the scanner's clock to.

kernel/sched/fair.c:task_tick_numa queues the scan work each time a task's own CPU time passes
node_stamp + numa_scan_period (adding the period to node_stamp); task_numa_work then runs a pass
only if jiffies is not before mm->numa_next_scan, installs next_scan = now +
msecs_to_jiffies(p->numa_scan_period) with a cmpxchg, and charges the winner 2 * TICK_NSEC plus
32 times the pass's CPU time on its node_stamp. With two threads of one mm spinning on their own
CPUs, the mm's clock, not one task's CPU time, decides when passes run: that is the clock this
check samples, many times per period, and holds to those rules.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from harness import inspect as nh
from harness.checks.observe import Context, GuestFacts, Inconclusive
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, Judgement, check
from harness.checks.scenario import scenario
from harness.checks.workload import STEP_TIMEOUT, Region
from harness.model import time_after
from harness.model.timing import NSEC_PER_MSEC, pass_allowed, tick_nsec

# The knobs before the holder is exec'd: its threads' numa_scan_period is the scan delay at their
# fork (fair.c:init_numa_balancing) and, as they never take a hint fault, no placement changes
# it. One second: under TCG a pass over this process costs a few ms of CPU time, so the charge
# 32 times that adds to the winner's node_stamp stays well under the period.
TIMING_KNOBS = {"scan_delay_ms": 1000, "scan_period_min_ms": 1000, "scan_period_max_ms": 1000}
# Both threads spin until TARGET_PASSES passes have been sampled (a period plus the winner's
# 32 x CPU-time charge apart: about 1.3 s each), SPIN_LIMIT_S at most; a sample every
# SAMPLE_GAP_S of host time (the guest runs between samples and is paused for each).
TARGET_PASSES = 6
SPIN_LIMIT_S = 40.0
SAMPLE_GAP_S = 0.1
# Fewer passes than this in the whole spin: the threads did not get the CPU (a loaded host), and
# the rules that did hold judged too little; the scenario is retried.
MIN_PASSES = 4


@dataclass(frozen=True)
class ClockSample:
    """One paused moment: jiffies, the mm's clock and sequence, and both threads' node_stamp,
    CPU time, period and whether their scan work is queued and not yet run."""

    jiffies: int
    numa_next_scan: int
    numa_scan_seq: int
    node_stamp: tuple[int, ...]
    runtime: tuple[int, ...]
    period_ms: tuple[int, ...]
    work_pending: tuple[bool, ...]

    def as_json(self) -> dict[str, Any]:
        return {"jiffies": self.jiffies, "numa_next_scan": self.numa_next_scan, "numa_scan_seq": self.numa_scan_seq,
                "node_stamp": list(self.node_stamp), "runtime": list(self.runtime),
                "period_ms": list(self.period_ms), "work_pending": list(self.work_pending)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClockSample:
        return cls(int(data["jiffies"]), int(data["numa_next_scan"]), int(data["numa_scan_seq"]),
                   tuple(int(x) for x in data["node_stamp"]), tuple(int(x) for x in data["runtime"]),
                   tuple(int(x) for x in data["period_ms"]), tuple(bool(x) for x in data["work_pending"]))


def sample_clock(ctx: Context, pid: int, threads: tuple[int, ...]) -> ClockSample:
    """The scanner's clock at one moment (the guest paused): lighter than a full observation,
    so that samples can come many times per period."""
    with nh.snapshot(ctx.guest):
        mm = nh.read_mm(ctx.prog, pid)
        tasks = [nh.read_task(ctx.prog, tid) for tid in threads]
        jiffies = nh.read_balancing(ctx.prog).jiffies
    return ClockSample(jiffies, mm.numa_next_scan, mm.numa_scan_seq, tuple(t.node_stamp for t in tasks),
                       tuple(t.sum_exec_runtime for t in tasks), tuple(t.numa_scan_period for t in tasks),
                       tuple(t.numa_work_pending for t in tasks))


def _winner(a: ClockSample, b: ClockSample, hz: int) -> tuple[list[int], list[str]]:
    """Which thread ran the pass between two samples, from node_stamp: every thread's grows by
    whole periods (task_tick_numa), the winner's also by 2 * TICK_NSEC + 32 * d, d the pass's CPU
    time, at most what the thread ran between the samples (task_numa_work)."""
    winners, diffs = [], []
    tick = tick_nsec(hz)
    for index, (s0, s1, r0, r1, period) in enumerate(zip(a.node_stamp, b.node_stamp, a.runtime, b.runtime,
                                                         b.period_ms, strict=True)):
        residual = (s1 - s0) % (period * NSEC_PER_MSEC)
        if residual == 0:
            continue
        charge = residual - 2 * tick
        if charge < 0 or charge % 32 or charge // 32 > r1 - r0:
            diffs.append(f"thread {index + 1}: node_stamp grew by {s1 - s0} ns, which is not whole periods of "
                         f"{period} ms, nor whole periods + 2 ticks + 32 x a pass's CPU time (at most {r1 - r0} ns)")
            continue
        winners.append(index)
    return winners, diffs


def _triggers(a: ClockSample, b: ClockSample, hz: int, period_ms: int) -> list[str]:
    """task_tick_numa's side. A thread whose node_stamp crossed a period between two samples
    queued its scan work then; if numa_next_scan was already open at the first sample, that work
    runs a pass on the way back to user mode (task_numa_work: the clock allows it, and the
    cmpxchg fails only when another thread's pass moved the clock): with no pass by the second
    sample the work must still be queued there. (How far a thread's CPU time may run past
    node_stamp + period before a tick sees it is not bounded here: under TCG a busy host delays
    the guest's tick interrupts while sched_clock, which the CPU time is read from, runs on.)"""
    diffs = []
    period_ns = period_ms * NSEC_PER_MSEC
    for index in range(len(b.node_stamp)):
        crossed = b.node_stamp[index] - a.node_stamp[index] >= period_ns
        gate_open = not time_after(a.numa_next_scan, a.jiffies)
        if crossed and gate_open and b.numa_next_scan == a.numa_next_scan and not b.work_pending[index]:
            diffs.append(f"jiffies {a.jiffies}..{b.jiffies}: thread {index + 1} was triggered (node_stamp "
                         f"{a.node_stamp[index]} -> {b.node_stamp[index]}) while numa_next_scan {a.numa_next_scan} "
                         f"was open, and neither ran a pass nor has the work still queued")
    return diffs


def judge_timing(facts: GuestFacts, samples: list[ClockSample], period_ms: int) -> Judgement:
    """Every pass (numa_next_scan moved between two samples): it ran at a jiffy numa_next_scan
    allowed (pass_allowed) and inside the interval, and set the clock to that jiffy plus the
    winner's period in jiffies, so `numa_next_scan - period` must fall between the two samples;
    exactly one thread won it (node_stamp, _winner). Between samples, every trigger that found
    the clock open ran a pass or is still queued (_triggers)."""
    verdict = Judgement()
    hz = facts.hz
    period_j = -(-period_ms * hz // 1000)  # msecs_to_jiffies rounds up
    passes = 0
    ran: list[int] = []
    for a, b in itertools.pairwise(samples):
        for index, period in enumerate(b.period_ms):
            if period != period_ms:
                verdict.diffs.append(f"thread {index + 1}: numa_scan_period {period} ms, model {period_ms} (the scan "
                                     f"delay at its fork; no hint fault, so no placement changed it)")
        verdict.diffs.extend(_triggers(a, b, hz, period_ms))
        if b.numa_next_scan == a.numa_next_scan:
            continue
        passes += 1
        ran_at = b.numa_next_scan - period_j
        if not (a.jiffies <= ran_at <= b.jiffies):
            verdict.diffs.append(f"pass between jiffies {a.jiffies} and {b.jiffies}: numa_next_scan became "
                                 f"{b.numa_next_scan}, which is not now + {period_ms} ms ({period_j} jiffies) for any "
                                 f"now in that interval (task_numa_work: next_scan = now + "
                                 f"msecs_to_jiffies(numa_scan_period))")
        elif not pass_allowed(ran_at, a.numa_next_scan):
            verdict.diffs.append(f"a pass ran at jiffies {ran_at}, before numa_next_scan {a.numa_next_scan} allowed it")
        else:
            ran.append(ran_at)
        winners, diffs = _winner(a, b, hz)
        verdict.diffs.extend(f"pass between jiffies {a.jiffies} and {b.jiffies}: {d}" for d in diffs)
        if len(winners) != 1 and not diffs:
            verdict.diffs.append(f"pass between jiffies {a.jiffies} and {b.jiffies}: {len(winners)} threads charged "
                                 f"for a pass in node_stamp, expected exactly one (the cmpxchg's winner)")
    gaps = [b.jiffies - a.jiffies for a, b in itertools.pairwise(samples)]
    verdict.figures = {"samples": len(samples), "passes": passes,
                       "pass_gaps_jiffies": [y - x for x, y in itertools.pairwise(ran)], "period_jiffies": period_j,
                       "sample_gap_jiffies_max": max(gaps, default=0)}
    if passes < MIN_PASSES:
        raise Inconclusive(f"{passes} passes in {len(samples)} samples over {samples[-1].jiffies - samples[0].jiffies} "
                           f"jiffies, at least {MIN_PASSES} needed: the spinning threads got too little CPU time to "
                           f"reach their triggers (task_tick_numa counts their own runtime)")
    return verdict


@check("scan-timing", seconds=9.9, releases=EVERY_MODELLED_RELEASE)
def check_scan_timing(ctx: Context) -> Finding:
    """Two worker threads of one holder spin on one CPU each (the holder's other memory is not
    scanned, nothing faults) while the harness samples the scanner's clock every ~0.1 s: jiffies,
    numa_next_scan, the sequence, each thread's node_stamp, CPU time and period, until
    TARGET_PASSES passes have been seen. Predicted: the
    period stays the scan delay at the fork; every pass sets numa_next_scan to the jiffy it ran at
    plus exactly that period, and ran no earlier than the clock allowed; exactly one thread is
    charged for it; every trigger that found the clock open ran a pass. The samples bound each
    pass's jiffy to their gap (figures: far below the period), so a clock set even a fraction
    of a period off shows."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    cpus = (max(c for c, n in ctx.node_of_cpu.items() if n == near), max(c for c, n in ctx.node_of_cpu.items() if n == far))
    with scenario(ctx, Region(2, node=near, exec_on=near, workers=2, quiet=True), TIMING_KNOBS,
                  knobs_at_exec=True) as region:
        tids = (region.worker_tid(1), region.worker_tid(2))
        for worker, cpu in zip((1, 2), cpus, strict=True):
            region.on(worker, f"spin {SPIN_LIMIT_S}", cpu=cpu, wait=False)
        for tid, cpu in zip(tids, cpus, strict=True):
            region.wait_running(tid, cpu)
        samples = [sample_clock(ctx, region.pid, tids)]
        # Sample until enough passes were seen (or the spin is nearly over): the event, not a time.
        limit_j = int((SPIN_LIMIT_S - 2.0) * ctx.hz)
        seen = 0
        while seen < TARGET_PASSES and samples[-1].jiffies - samples[0].jiffies < limit_j:
            time.sleep(SAMPLE_GAP_S)  # the sampling cadence: the guest runs between two samples
            samples.append(sample_clock(ctx, region.pid, tids))
            seen += samples[-1].numa_next_scan != samples[-2].numa_next_scan
        for worker in (1, 2):
            region.stop_worker(worker)
            region.wait_worker(worker, timeout=SPIN_LIMIT_S + STEP_TIMEOUT)
    if ctx.kept is not None:
        ctx.notes["samples"] = {"samples": [s.as_json() for s in samples], "period_ms": TIMING_KNOBS["scan_delay_ms"]}
    verdict = judge_timing(ctx.facts, samples, TIMING_KNOBS["scan_delay_ms"])
    f = verdict.figures
    summary = (f"{f['passes']} passes in {f['samples']} samples (gaps up to {f['sample_gap_jiffies_max']} jiffies); "
               f"pass gaps {f['pass_gaps_jiffies']} jiffies, period {f['period_jiffies']}")
    return Finding(summary, verdict.figures, tuple(verdict.diffs))
