"""The task follows its memory: the scheduler half of NUMA balancing.

kernel/sched/fair.c:task_numa_fault ends, every numa_migrate_retry, with task_numa_placement
(which may change the preferred node) and numa_migrate_preferred: a task with a preferred node
it is not running on calls task_numa_migrate, which looks for a CPU on that node
(task_numa_find_cpu -> task_numa_compare) and moves the task there (migrate_task_to), or swaps
it with a task running there (migrate_swap). The memory checks never let the task move: every
other scenario pins its task to one node.
"""

from __future__ import annotations

import time
from typing import Any

from harness.checks.observe import Context, KernelNeverReached, Observation, observe
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import STEP_TIMEOUT, HeldRegion, Region
from harness.model import numa_migrate_interval

# One loop step: long enough for a few scanner passes (FAST_SCAN: 100-400 ms) and their faults.
LOOP_STEP_S = 0.5
# Waiting for the placement: the books need faults from a few passes (seconds at FAST_SCAN).
PLACEMENT_LIMIT_S = 60.0
# Waiting for the move once the task may run anywhere. Derivation: the first hint fault after
# numa_migrate_retry runs numa_migrate_preferred, which moves the task (an idle CPU on the
# preferred node: task_numa_compare takes it, load_too_imbalanced cannot object to moving one
# task onto an idle node); numa_migrate_retry is at most HZ jiffies away
# (numa_migrate_interval) and the scanner hints the region again within one period (at most
# 400 ms), so the move is due within 1.4 s of reading; the loop reads for about three times that.
FREE_LOOP_S = 4.0


def _region_nodes(obs: Observation, region: HeldRegion) -> dict[int, int]:
    part = obs.table.within(region.addr, region.end)
    nodes: dict[int, int] = {}
    for node in part.node.tolist():
        nodes[int(node)] = nodes.get(int(node), 0) + 1
    return nodes


@check("task-placement", seconds=7, releases=EVERY_MODELLED_RELEASE)
def check_task_placement(ctx: Context) -> Finding:
    """The task moves to its memory. A 16 MiB region is bound to the near node with
    MPOL_BIND | MPOL_F_NUMA_BALANCING (mm/mempolicy.c:mpol_misplaced then never moves its pages:
    a CPU outside the policy's nodes is not a target; but the scanner hints them, and every fault
    is booked on the near node, task_numa_fault's mem_node). Its task, exec'd on the far node,
    reads it over and over pinned to the far node until task_numa_placement makes the near node
    its preferred node (the only node with memory faults); all the while its pages must stay on
    the near node and the task on the far one. Then it reads on for FREE_LOOP_S with every CPU
    allowed, observed while it runs (it never sleeps, so no wake-up can place it: only a
    migration moves it): within that time (derivation at FREE_LOOP_S) it must be running on the
    near node, its
    preferred node unchanged, its pages still on the near node; and numa_migrate_retry must
    never be further ahead than numa_migrate_preferred sets it (numa_migrate_interval)."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    diffs: list[str] = []
    trail: list[dict[str, Any]] = []
    with scenario(ctx, Region(16, bind=near, exec_on=far)) as region:
        drain_lru_batches(ctx.guest)
        pages = region.length // 4096

        def look(phase: str) -> Observation:
            o = observe(ctx, region.pid)
            node = ctx.node_of_cpu[o.task.cpu]
            trail.append({"phase": phase, "jiffies": o.balancing.jiffies, "cpu": o.task.cpu, "node": node,
                          "preferred": o.task.numa_preferred_nid, "retry_in": o.task.numa_migrate_retry -
                          o.balancing.jiffies, "faults": o.vmstat.get("numa_hint_faults")})
            placed = _region_nodes(o, region)
            if placed.get(near, 0) != pages:
                diffs.append(f"{phase} (jiffies {o.balancing.jiffies}): region pages per node {placed}, all {pages} "
                             f"must stay on node {near} (MPOL_BIND | MPOL_F_NUMA_BALANCING: mpol_misplaced)")
            interval = numa_migrate_interval(o.task.numa_scan_period, ctx.hz)
            if o.task.numa_preferred_nid >= 0 and o.task.numa_migrate_retry - o.balancing.jiffies > interval:
                diffs.append(f"{phase} (jiffies {o.balancing.jiffies}): numa_migrate_retry {o.task.numa_migrate_retry} "
                             f"is more than {interval} jiffies ahead (numa_migrate_preferred: jiffies + "
                             f"min(HZ, period / 16))")
            return o

        spent = 0.0
        while True:
            o = look("pinned to the far node")
            node_of = ctx.node_of_cpu[o.task.cpu]
            if node_of != far:
                diffs.append(f"the task ran on node {node_of} while pinned to node {far}")
            if o.task.numa_preferred_nid == near:
                break
            if o.task.numa_preferred_nid not in (-1, near):
                diffs.append(f"the task prefers node {o.task.numa_preferred_nid}, but every fault it took is on node "
                             f"{near}'s memory (task_numa_placement: the node with the most memory faults)")
                break
            if spent >= PLACEMENT_LIMIT_S:
                raise KernelNeverReached(f"after {spent:.0f} s of reads from node {far} of memory bound to node {near}, "
                                         f"the task still prefers node {o.task.numa_preferred_nid} (its fault books: "
                                         f"{o.task.faults['mem']})")
            region.loop(LOOP_STEP_S, node=far)
            spent += LOOP_STEP_S
        # One long loop, observed while it runs: the task never sleeps in it, so only a
        # migration can move it (a wake-up between commands could place it anywhere).
        line = region.loop(FREE_LOOP_S, wait=False)
        moved_after = None
        started = time.monotonic()
        while time.monotonic() - started < FREE_LOOP_S - LOOP_STEP_S:
            time.sleep(LOOP_STEP_S)
            o = look("free")
            if ctx.node_of_cpu[o.task.cpu] == near:
                moved_after = round(time.monotonic() - started, 1)
                break
        region.wait(line, FREE_LOOP_S + STEP_TIMEOUT)
        if moved_after is None:
            raise KernelNeverReached(f"the task, free to run anywhere and preferring node {near} (where all its memory "
                                     f"is), still ran on node {ctx.node_of_cpu[o.task.cpu]} after {FREE_LOOP_S} s of "
                                     f"reading: numa_migrate_preferred / task_numa_migrate never moved it "
                                     f"(numa_migrate_retry {o.task.numa_migrate_retry - o.balancing.jiffies} jiffies "
                                     f"ahead)")
        if o.task.numa_preferred_nid != near:
            diffs.append(f"after the move the task prefers node {o.task.numa_preferred_nid}, not {near}")
    summary = (f"preferred node {near} after {sum(1 for t in trail if t['phase'] != 'free')} pinned steps; "
               f"moved to it {moved_after} s after it was let run anywhere")
    return Finding(summary, {"trail": trail}, tuple(diffs))
