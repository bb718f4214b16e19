"""Convergence: numa01 and numa02 (guest-tests/nhbench) free, hard-bound and inverse-bound."""

from __future__ import annotations

import threading
import time
from typing import Any

from drgn.helpers.linux.pid import for_each_task

from harness import inspect as nh
from harness.checks.observe import Context
from harness.checks.registry import Finding, Mechanism, check
from harness.checks.scenario import FAST_SCAN, drain_lru_batches, tunables
from harness.checks.workload import BenchRun, run_bench

# Convergence runs: every workload and variant, this long each. With FAST_SCAN and 16 MiB scan
# windows the free variants reach 90 % local in 0.6-2.2 s under TCG (measured); 8 s leaves them
# more than three times that.
BENCH_SECONDS = 8.0
BENCH_MIB = 64
CONVERGED_SHARE = 0.9  # the free variant's final local share must reach this ...
BOUND_SHARE = 0.99  # ... the bind variant's must stay at this (it was moved by mbind) ...
INVERSE_MARGIN = 0.5  # ... and the inverse variant's mean share must trail the free one's by this much.


class ScanSampler:
    """Samples the scan state of nhbench's processes from the host (drgn, paused snapshots)
    while the workload runs: numa_scan_offset within the buffer and numa_scan_seq over time."""

    def __init__(self, ctx: Context, interval: float = 0.25) -> None:
        self.ctx, self.interval = ctx, interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> ScanSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with nh.snapshot(self.ctx.guest):
                    for task in for_each_task(self.ctx.prog):
                        if task.comm.string_() != b"nhbench" or task.pid != task.tgid or not task.mm:
                            continue
                        pid = int(task.pid.value_())
                        vmas = nh.read_vmas(self.ctx.prog, pid)
                        largest = max(vmas, key=lambda v: v.end - v.start)
                        # The VMAs of 2 MiB or more: the buffer (numa01: one shared VMA, its policy
                        # in shmem's tree) or its slices (numa02: mbind split it), and the threads'
                        # stacks; nhbench maps nothing else that large.
                        big = [v for v in vmas if v.end - v.start >= 2 << 20]
                        mm = task.mm
                        offset = int(mm.numa_scan_offset.value_())
                        inside = largest.start <= offset < largest.end
                        self.samples.append({"t": round(time.monotonic() - self._started, 2), "pid": pid,
                                             "seq": int(mm.numa_scan_seq.value_()),
                                             "offset_mib": round((offset - largest.start) / 2**20, 2) if inside else None,
                                             "big_vmas": len(big),
                                             "big_met": sum(v.numab is not None for v in big)})
            except Exception:  # a process exiting mid-read: skip this sample
                continue



@check("convergence", seconds=66, needs=[Mechanism.VMA_NUMAB])
def check_convergence(ctx: Context) -> Finding:
    """numa01/numa02 convergence (guest-tests/nhbench). Each workload runs in three variants for
    BENCH_SECONDS with FAST_SCAN and 16 MiB scan windows: free (default policy, memory first-touched on the first node, so
    every other node's slices start remote), bind (slices moved to their threads' nodes by mbind)
    and inverse (slices bound half a machine away). The share of slice pages on their thread's
    node is sampled every 250 ms. Stated bounds: free reaches CONVERGED_SHARE by the end, bind
    stays at BOUND_SHARE, inverse's mean share trails free's by INVERSE_MARGIN. Under TCG, remote
    memory costs no more than local memory, so "worse" is judged by locality, not by throughput
    (writes are reported).

    Bind and inverse use MPOL_BIND | MPOL_F_NUMA_BALANCING, which makes vma_policy_mof true: the
    scanner works on their slices (mm/mempolicy.c:vma_policy_mof; task_numa_work skips a plain
    MPOL_BIND VMA as unsuitable before it allocates its numab_state), so in each run some sample
    must find every VMA of 2 MiB or more (the buffer or its slices, and the stacks) with a
    numab_state. And no slice page may move:
    mm/mempolicy.c:mpol_misplaced, for MPOL_BIND with MPOL_F_MORON (set for the flag), leaves a
    page where it is when the faulting CPU's node is outside the policy's nodes, and otherwise
    targets that node, which for a single-node policy is where the page already is (mbind moved
    every slice there). So the slice pages per node are the same in every sample; exact. (The
    process's other pages, its stacks and arrays, have the default policy and may migrate.)"""
    diffs: list[str] = []
    runs: dict[str, Any] = {}
    # 16 MiB scan windows: a pass covers a quarter of the buffer, so the scan offset's progress
    # through it is visible in the samples (with the default 256 MiB every pass covers everything).
    with tunables(ctx.guest, **FAST_SCAN, scan_size_mb=16):
        for workload in ("numa02", "numa01"):
            results = {}
            for variant in ("bind", "free", "inverse"):
                drain_lru_batches(ctx.guest)
                with ScanSampler(ctx) as sampler:
                    run = run_bench(ctx.guest, workload, variant, BENCH_MIB, BENCH_SECONDS)
                results[variant] = run
                runs[f"{workload}-{variant}"] = {
                    "final_share": round(run.final_share, 4), "mean_share": round(run.mean_share, 4),
                    "time_to_converged": run.time_to(CONVERGED_SHARE), "writes": run.writes,
                    "seconds": run.seconds,
                    "series": {"t": [s.t for s in run.samples], "local_share": [s.local_share for s in run.samples],
                               "pages_on_node": [list(s.pages_on_node) for s in run.samples],
                               "thread_local_share": [list(s.thread_local_share) for s in run.samples],
                               "vmstat": [list(s.vmstat) for s in run.samples]},
                    "scan": sampler.samples,
                }
            free, bound, inverse = results["free"], results["bind"], results["inverse"]
            if free.final_share < CONVERGED_SHARE:
                diffs.append(f"{workload} free: {free.final_share:.1%} of the slice pages on their thread's node after "
                             f"{free.seconds:.0f} s, bound {CONVERGED_SHARE:.0%} (started at {free.samples[0].local_share:.1%})")
            if bound.final_share < BOUND_SHARE:
                diffs.append(f"{workload} bind: {bound.final_share:.1%} local although every slice was bound to its "
                             f"thread's node, bound {BOUND_SHARE:.0%}")
            for name, run in (("bind", bound), ("inverse", inverse)):
                diffs.extend(_balanced_but_unmoved(workload, name, run, runs[f"{workload}-{name}"]["scan"]))
            if inverse.mean_share > free.mean_share - INVERSE_MARGIN:
                diffs.append(f"{workload} inverse: mean local share {inverse.mean_share:.1%} does not trail free's "
                             f"{free.mean_share:.1%} by {INVERSE_MARGIN:.0%}")
    summary = ", ".join(f"{name} {r['final_share']:.0%}" + (f" in {r['time_to_converged']:.1f} s"
                                                             if name.endswith("free") and r["time_to_converged"] is not None
                                                             else "")
                        for name, r in runs.items())
    return Finding(f"final local share: {summary}", {"runs": runs}, tuple(diffs))


def _balanced_but_unmoved(workload: str, variant: str, run: BenchRun, scan: list[dict[str, Any]]) -> list[str]:
    """A run under MPOL_BIND | MPOL_F_NUMA_BALANCING: every large VMA met by the scanner, and not
    one slice page moved (see check_convergence)."""
    diffs = []
    if not any(s["big_vmas"] and s["big_met"] == s["big_vmas"] for s in scan):
        most = max(scan, key=lambda s: s["big_met"], default=None)
        diffs.append(f"{workload} {variant}: in {len(scan)} samples the scanner never met every VMA of 2 MiB or more "
                     f"(at most {most['big_met'] if most else 0} of {most['big_vmas'] if most else 0} had a "
                     f"numab_state): it skipped the slices bound with MPOL_F_NUMA_BALANCING as unsuitable "
                     f"(vma_policy_mof)")
    first = run.samples[0].pages_on_node
    moved = next((s for s in run.samples if s.pages_on_node != first), None)
    if moved is not None:
        diffs.append(f"{workload} {variant}: slice pages per node {list(first)} at the start, {list(moved.pages_on_node)} "
                     f"at {moved.t:.2f} s; mpol_misplaced moves no page under a single-node MPOL_BIND | "
                     f"MPOL_F_NUMA_BALANCING policy")
    return diffs
