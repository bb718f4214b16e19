"""The task follows its memory: the scheduler half of NUMA balancing.

kernel/sched/fair.c:task_numa_fault ends, every numa_migrate_retry, with task_numa_placement
(which may change the preferred node) and numa_migrate_preferred: a task with a preferred node
it is not running on calls task_numa_migrate, which looks for a CPU on that node
(task_numa_find_cpu -> task_numa_compare) and moves the task there (migrate_task_to), or swaps
it with a task running there (migrate_swap). The memory checks never let the task move: every
other scenario pins its task to one node.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from harness import inspect as nh
from harness.checks.observe import Context, Inconclusive, KernelNeverReached, Observation, observe, observe_processes
from harness.checks.registry import EVERY_MODELLED_RELEASE, Finding, check
from harness.checks.scenario import FAST_SCAN, drain_lru_batches, scenario, tunables
from harness.checks.workload import STEP_TIMEOUT, HeldRegion, Region
from harness.errors import InfrastructureError
from harness.model import (
    MEM,
    Candidate,
    Choice,
    Migration,
    NodeStats,
    NodeView,
    Task,
    numa_imbalance_pct,
    numa_migrate_interval,
    task_numa_migrate,
)

# One loop step: long enough for a few scanner passes (FAST_SCAN: 100-400 ms) and their faults.
LOOP_STEP_S = 0.5
# Waiting for the placement, in guest time (task-placement: the pinned loops' seconds; task-swap:
# the looks' jiffies): the books need faults from a few passes (seconds at FAST_SCAN).
PLACEMENT_LIMIT_S = 60.0
# Waiting for the move once the task may run anywhere, in guest time (the jiffies of the looks:
# each look pauses the guest, so on a busy host the host's clock runs far ahead of the guest's).
# Derivation: the first hint fault after numa_migrate_retry runs numa_migrate_preferred, which
# moves the task (an idle CPU on the preferred node: task_numa_compare takes it,
# load_too_imbalanced cannot object to moving one task onto an idle node); numa_migrate_retry is
# at most HZ jiffies away (numa_migrate_interval) and the scanner hints the region again within
# one period (at most 400 ms), so the move is due within 1.4 s of reading; the watch lasts about
# three times that. It counts from the last pinned look, before the loop's command is sent, so
# it also counts the command's delivery (tens of ms of guest time), which the 2.6 s between the
# due time and the watch's end absorb.
FREE_LOOP_S = 4.0
# The free loop outlasts the watch by one look's spacing (LOOP_STEP_S of guest time, the guest
# being paused while it is read), so that the last look normally still finds it reading; one
# that comes later judges a task that read, free, for longer than FREE_LOOP_S and then sleeps
# where it last ran (nhmem waits for its next command without a wake-up), which is the same verdict.
FREE_LOOP_TAIL_S = LOOP_STEP_S


def _guest_seconds(ctx: Context, since: int, until: int) -> float:
    """The guest time between two readings of jiffies: what this module's limits are derived in
    (the guest's clock stops while a look pauses it; the host's does not)."""
    return (until - since) / ctx.hz


def _region_nodes(obs: Observation, region: HeldRegion) -> dict[int, int]:
    part = obs.table.within(region.addr, region.end)
    nodes: dict[int, int] = {}
    for node in part.node.tolist():
        nodes[int(node)] = nodes.get(int(node), 0) + 1
    return nodes


@check("task-placement", seconds=6.7, releases=EVERY_MODELLED_RELEASE)
def check_task_placement(ctx: Context) -> Finding:
    """The task moves to its memory. A 16 MiB region is bound to the near node with
    MPOL_BIND | MPOL_F_NUMA_BALANCING (mm/mempolicy.c:mpol_misplaced then never moves its pages:
    a CPU outside the policy's nodes is not a target; but the scanner hints them, and every fault
    is booked on the near node, task_numa_fault's mem_node). Its task, exec'd on the far node,
    reads it over and over pinned to the far node until task_numa_placement makes the near node
    its preferred node (the only node with memory faults); all the while its pages must stay on
    the near node and the task on the far one. Then it reads on with every CPU allowed, observed
    while it runs (it never sleeps, so no wake-up can place it: only a migration moves it):
    within FREE_LOOP_S of guest time (derivation there) it must be running on the near node, its
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
        released = o.balancing.jiffies
        line = region.loop(FREE_LOOP_S + FREE_LOOP_TAIL_S, wait=False)
        moved_after = None
        while True:
            time.sleep(LOOP_STEP_S)
            o = look("free")
            free_s = _guest_seconds(ctx, released, o.balancing.jiffies)
            if ctx.node_of_cpu[o.task.cpu] == near:
                moved_after = round(free_s, 2)
                break
            if free_s >= FREE_LOOP_S:
                break
        region.wait(line, FREE_LOOP_S + FREE_LOOP_TAIL_S + STEP_TIMEOUT)
        if moved_after is None:
            raise KernelNeverReached(f"the task, free to run anywhere and preferring node {near} (where all its memory "
                                     f"is), still ran on node {ctx.node_of_cpu[o.task.cpu]} after {free_s:.2f} s of "
                                     f"reading (guest time): numa_migrate_preferred / task_numa_migrate never moved it "
                                     f"(numa_migrate_retry {o.task.numa_migrate_retry - o.balancing.jiffies} jiffies "
                                     f"ahead)")
        if o.task.numa_preferred_nid != near:
            diffs.append(f"after the move the task prefers node {o.task.numa_preferred_nid}, not {near}")
    summary = (f"preferred node {near} after {sum(1 for t in trail if t['phase'] != 'free')} pinned steps; "
               f"moved to it {moved_after} s (guest time) after it was let run anywhere")
    return Finding(summary, {"trail": trail}, tuple(diffs))


# The swap scenario's regions: small, so that each scanner pass hints all of one quickly.
SWAP_REGION_MIB = 8
# How long the workloads read or spin: until closed, in practice (both waits, then some).
SWAP_RUN_S = 150
# Waiting for the swap once both tasks may run anywhere. Derivation: each task takes a hint fault
# at least once per scan period (at most scan_period_max_ms, 400 ms at FAST_SCAN), and the first
# one past numa_migrate_retry (at most min(HZ, period / 16) jiffies ahead) runs task_numa_migrate,
# which swaps them (the model's prediction, taken from the loads just read). What can refuse one
# attempt is transient: load_too_imbalanced when the two tasks' PELT loads differ the wrong way
# for the nodes' loads (two always-running tasks' loads converge to the same ceiling), or a
# concurrent search's claim on the runqueue (numa_migrate_on). 20 s is 50 scan periods, each
# with an attempt by each task. Counted in guest time (the looks' jiffies, from the jiffies read
# with the premise just before the release), as PLACEMENT_LIMIT_S is: the guest is paused while
# it is looked at, which on a busy host (a second guest beside it) is most of the host's time.
SWAP_LIMIT_S = 20.0
# The model must predict the swap from the loads read before the tasks are let go: the PELT
# sums of the four always-running tasks reach their ceiling within a few hundred ms of running
# (32 ms half-life), so a second of reading is enough; 10 s of guest time without it means a premise is wrong.
PREMISE_LIMIT_S = 10.0
POLL_S = 0.25


def _one_node_task(pid: int, memory_node: int, nr_nodes: int) -> Task:
    """The model's view of a task whose every memory fault was on `memory_node` (a quiet region
    bound there: task_numa_fault books each fault at the page's node), and which therefore
    prefers it (task_numa_placement): task_weight is 1000 there and 0 elsewhere, whatever the
    count, so one fault stands for them all."""
    books = [[(0, 0)] * nr_nodes for _ in range(4)]
    books[MEM][memory_node] = (0, 1)
    return Task(pid, nr_nodes, numa_preferred_nid=memory_node, faults=tuple(tuple(b) for b in books),
                total_numa_faults=1)


@dataclass(frozen=True)
class _SwapCast:
    """Who runs where in the swap scenario: the mover (memory on `near`, pinned to `far` until let
    go), the partner (memory on `far`, pinned to `near` until let go) and one spinner pinned to
    each node for good, so that both nodes are full."""

    near: int
    far: int
    mover: HeldRegion
    partner: HeldRegion
    blockers: tuple[HeldRegion, HeldRegion]

    def premise(self, ctx: Context) -> tuple[SwapPremise, int]:
        """The kernel's inputs to the mover's task_numa_migrate at this moment, read with the
        guest paused: the runqueues, the mover's CPU and NUMA domain, both tasks' loads; and
        the jiffies of that moment."""
        prog = ctx.prog
        with nh.snapshot(ctx.guest):
            jiffies = nh.read_balancing(prog).jiffies
            loads = nh.read_runqueues(prog)
            mover_cpu = nh.read_task(prog, self.mover.pid).cpu
            domain = nh.read_numa_domain(prog, mover_cpu)
            h_loads = {pid: nh.task_h_load(prog, pid) for pid in (self.mover.pid, self.partner.pid)}
        if domain is None:
            raise InfrastructureError(f"cpu {mover_cpu} has no NUMA scheduling domain: the guest's topology is not "
                                      f"the 2x2 NUMA machine the scenario needs")
        return SwapPremise(dict(ctx.node_of_cpu), self.near, self.far, self.mover.pid, self.partner.pid,
                           (self.blockers[0].pid, self.blockers[1].pid), loads, mover_cpu, domain, h_loads), jiffies


@dataclass(frozen=True)
class SwapPremise:
    """What the swap scenario's prediction takes from the kernel at one moment (the scheduler's
    load tracking, which the model does not model) and who is who in it."""

    node_of_cpu: dict[int, int]
    near: int
    far: int
    mover: int
    partner: int
    blockers: tuple[int, int]  # pinned to near, to far
    loads: dict[int, nh.RunqueueLoad]
    mover_cpu: int
    domain: nh.NumaDomain
    h_loads: dict[int, int]

    def as_json(self) -> dict[str, Any]:
        return {"node_of_cpu": {str(c): n for c, n in self.node_of_cpu.items()}, "near": self.near, "far": self.far,
                "mover": self.mover, "partner": self.partner, "blockers": list(self.blockers),
                "runqueues": [self.loads[c].as_json() for c in sorted(self.loads)], "mover_cpu": self.mover_cpu,
                "domain": {"imbalance_pct": self.domain.imbalance_pct, "imb_numa_nr": self.domain.imb_numa_nr},
                "h_load": {str(pid): load for pid, load in self.h_loads.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SwapPremise:
        return cls({int(c): int(n) for c, n in data["node_of_cpu"].items()}, data["near"], data["far"], data["mover"],
                   data["partner"], (data["blockers"][0], data["blockers"][1]),
                   {r["cpu"]: nh.RunqueueLoad(**r) for r in data["runqueues"]}, data["mover_cpu"],
                   nh.NumaDomain(**data["domain"]), {int(p): int(v) for p, v in data["h_load"].items()})

    @property
    def cast_runs_every_cpu(self) -> bool:
        """Each CPU's rq->curr is one of the four: otherwise the model's answer is about that
        moment's bystander (a kworker, the harness's commands), not the scenario."""
        return {load.curr_pid for load in self.loads.values()} == {self.mover, self.partner, *self.blockers}

    def predict(self) -> Migration:
        """What fair.c:task_numa_migrate does for the mover once both tasks may run anywhere."""
        nr_nodes = len(set(self.node_of_cpu.values()))
        candidates = {pid: Candidate(_one_node_task(pid, node, nr_nodes), h_load=self.h_loads[pid])
                      for pid, node in ((self.mover, self.near), (self.partner, self.far))}
        for pid, node in zip(self.blockers, (self.near, self.far), strict=True):
            cpus = frozenset(c for c, n in self.node_of_cpu.items() if n == node)
            candidates[pid] = Candidate(Task(pid, nr_nodes), allowed=cpus)
        pct = numa_imbalance_pct(self.domain.imbalance_pct)
        views = {nid: NodeView.gathered(self.node_stats(nid), {
            cpu: candidates.get(self.loads[cpu].curr_pid) for cpu, node in self.node_of_cpu.items() if node == nid}, pct)
            for nid in sorted(set(self.node_of_cpu.values()))}
        return task_numa_migrate(candidates[self.mover], self.mover_cpu, self.node_of_cpu, views,
                                 imb_numa_nr=self.domain.imb_numa_nr)

    def node_types(self) -> dict[int, str]:
        """Each node's numa_classify at the search's imbalance_pct."""
        pct = numa_imbalance_pct(self.domain.imbalance_pct)
        return {nid: self.node_stats(nid).classify(pct).value for nid in sorted(set(self.node_of_cpu.values()))}

    def node_stats(self, nid: int) -> NodeStats:
        """fair.c:update_numa_stats's sums over the node's CPUs."""
        cpus = [cpu for cpu, node in self.node_of_cpu.items() if node == nid]
        return NodeStats(sum(self.loads[c].load for c in cpus), sum(self.loads[c].runnable for c in cpus),
                         sum(self.loads[c].util for c in cpus), sum(self.loads[c].nr_running for c in cpus),
                         sum(self.loads[c].capacity for c in cpus), len(cpus))


def _look_at_cast(ctx: Context, cast: _SwapCast, phase: str, pages: int, diffs: list[str],
                  trail: list[dict[str, Any]]) -> tuple[Observation, Observation]:
    """Observe mover and partner at one moment; their pages must stay on the node they are bound
    to (MPOL_BIND | MPOL_F_NUMA_BALANCING: mpol_misplaced never names a node outside the policy)."""
    mover, partner = observe_processes(ctx, (cast.mover.pid, cast.partner.pid))
    trail.append({"phase": phase, "jiffies": mover.balancing.jiffies,
                  "mover": {"cpu": mover.task.cpu, "preferred": mover.task.numa_preferred_nid},
                  "partner": {"cpu": partner.task.cpu, "preferred": partner.task.numa_preferred_nid},
                  "running": mover.running})
    for name, obs, held, node in (("mover", mover, cast.mover, cast.near), ("partner", partner, cast.partner, cast.far)):
        placed = _region_nodes(obs, held)
        if placed.get(node, 0) != pages:
            diffs.append(f"{phase} (jiffies {obs.balancing.jiffies}): the {name}'s region pages per node {placed}, all "
                         f"{pages} must stay on node {node} (MPOL_BIND | MPOL_F_NUMA_BALANCING: mpol_misplaced)")
        stray = [nid for nid, (shared, private) in enumerate(obs.task.faults["mem"]) if nid != node and shared + private]
        if stray:
            diffs.append(f"{phase}: the {name} has memory faults booked on node(s) {stray}, but it faults only on its "
                         f"region, bound to node {node} (task_numa_fault books at the page's node)")
    return mover, partner


def _wait_placed(ctx: Context, cast: _SwapCast, pages: int, diffs: list[str], trail: list[dict[str, Any]]) -> float:
    """Observe the pinned tasks until each prefers its memory's node (task_numa_placement: the node
    with the most memory faults, the only one with any); returns the seconds of guest time it
    took from the first look, or at the first diff."""
    started: int | None = None
    while True:
        mover, partner = _look_at_cast(ctx, cast, "pinned", pages, diffs, trail)
        started = mover.balancing.jiffies if started is None else started
        spent = _guest_seconds(ctx, started, mover.balancing.jiffies)
        if mover.task.numa_preferred_nid == cast.near and partner.task.numa_preferred_nid == cast.far:
            return round(spent, 2)
        for name, obs, node in (("mover", mover, cast.near), ("partner", partner, cast.far)):
            if obs.task.numa_preferred_nid not in (-1, node):
                diffs.append(f"the {name} prefers node {obs.task.numa_preferred_nid}, but every memory fault it "
                             f"took is on node {node} (task_numa_placement: the node with the most memory faults)")
        if diffs:
            return round(spent, 2)
        if spent > PLACEMENT_LIMIT_S:
            raise KernelNeverReached(f"after {spent:.0f} s of reading (guest time), pinned, the mover prefers node "
                                     f"{mover.task.numa_preferred_nid} (not {cast.near}) and the partner node "
                                     f"{partner.task.numa_preferred_nid} (not {cast.far})")
        time.sleep(POLL_S)


def _wait_swap_predicted(ctx: Context, cast: _SwapCast) -> tuple[Migration, SwapPremise, int]:
    """Read the loads until the model, given them, predicts the swap (the scenario's premise: two
    full nodes, the four tasks on the four CPUs), and return it with the jiffies of that
    reading; Inconclusive if they never do within PREMISE_LIMIT_S of guest time."""
    started: int | None = None
    while True:
        premise, jiffies = cast.premise(ctx)
        started = jiffies if started is None else started
        predicted = premise.predict()
        if premise.cast_runs_every_cpu and predicted.choice is Choice.SWAP:
            return predicted, premise, jiffies
        if _guest_seconds(ctx, started, jiffies) > PREMISE_LIMIT_S:
            raise Inconclusive(f"in {PREMISE_LIMIT_S:.0f} s (guest time) the loads never made the model predict a swap for the "
                               f"mover (last: {predicted.choice.value}, node types {premise.node_types()}, "
                               f"runqueues {premise.as_json()['runqueues']}): the scenario's premise, two full "
                               f"nodes, did not hold")
        time.sleep(POLL_S)


@check("task-swap", seconds=3.1, releases=EVERY_MODELLED_RELEASE)
def check_task_swap(ctx: Context) -> Finding:
    """Two tasks each on the other's memory node, both nodes full: they swap. The mover reads 8 MiB
    bound to the near node from the far node, the partner 8 MiB bound to the far node from the
    near node (MPOL_BIND | MPOL_F_NUMA_BALANCING, quiet: only the regions take hint faults, each
    booked at its node), and a spinner pinned to each node keeps both nodes' CPUs busy. Pinned,
    each task comes to prefer its memory's node (task_numa_placement) while every page stays
    put. Then both are let run anywhere, without a wake-up (taskset on the running tasks): the
    model (fair.c:task_numa_migrate -> task_numa_find_cpu -> task_numa_compare), given the
    runqueue loads read at that moment, must predict what the mover does: both nodes fully busy
    (numa_classify), so no plain move (load_too_imbalanced) and a swap with the partner, the one
    task on the near node that may run on the mover's CPU, for a gain of 1000 + 1000 plus an
    eighth (the partner moves to its preferred node). Within SWAP_LIMIT_S (derivation there)
    each must run on its memory's node, preferences unchanged, pages unmoved."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    diffs: list[str] = []
    trail: list[dict[str, Any]] = []
    every_cpu = sum(1 << cpu for cpu in ctx.node_of_cpu)
    with contextlib.ExitStack() as stack:
        stack.enter_context(tunables(ctx.guest, **FAST_SCAN))

        def hold(request: Region) -> HeldRegion:
            held = HeldRegion.start(ctx.guest, request)
            stack.callback(held.close)
            return held

        cast = _SwapCast(near, far, hold(Region(SWAP_REGION_MIB, bind=near, exec_on=far, quiet=True)),
                         hold(Region(SWAP_REGION_MIB, bind=far, exec_on=near, quiet=True)),
                         (hold(Region(1, exec_on=near, quiet=True)), hold(Region(1, exec_on=far, quiet=True))))
        drain_lru_batches(ctx.guest)
        pages = cast.mover.length // 4096
        cast.mover.send(f"loop {SWAP_RUN_S} node {far}")
        cast.partner.send(f"loop {SWAP_RUN_S} node {near}")
        cast.blockers[0].send(f"spin {SWAP_RUN_S} node {near}")
        cast.blockers[1].send(f"spin {SWAP_RUN_S} node {far}")

        placed_after = _wait_placed(ctx, cast, pages, diffs, trail)
        if diffs:
            return Finding("the tasks' placement went wrong before the swap", {"trail": trail}, tuple(diffs))
        predicted, premise, released = _wait_swap_predicted(ctx, cast)
        if predicted.swap_with != cast.partner.pid:
            diffs.append(f"the model has the mover swap with pid {predicted.swap_with}, not the partner "
                         f"{cast.partner.pid}: the harness's cast is not what the scenario says")
        ctx.guest.ssh.run(f"taskset -p {every_cpu:x} {cast.mover.pid} >/dev/null && "
                          f"taskset -p {every_cpu:x} {cast.partner.pid} >/dev/null").check()
        while True:
            mover, partner = _look_at_cast(ctx, cast, "free", pages, diffs, trail)
            free_s = _guest_seconds(ctx, released, mover.balancing.jiffies)
            if ctx.node_of_cpu[mover.task.cpu] == near and ctx.node_of_cpu[partner.task.cpu] == far:
                break
            if free_s > SWAP_LIMIT_S:
                raise KernelNeverReached(
                    f"{free_s:.0f} s (guest time) after both were let run anywhere, the mover (memory on node {near}) runs on "
                    f"node {ctx.node_of_cpu[mover.task.cpu]} and the partner (memory on node {far}) on node "
                    f"{ctx.node_of_cpu[partner.task.cpu]}; the model predicted a swap with it (gain "
                    f"{predicted.imp}, node types {premise.node_types()}): task_numa_migrate never swapped them")
            time.sleep(POLL_S)
        swapped_after = round(free_s, 2)
        # kernel/sched/core.c:migrate_swap puts each task on the CPU the other ran on. Shown as a
        # figure, not compared: the load balancer may also move a task between the CPUs of its
        # node in the same interval (seen on 6.1 right after the release: the mover and the
        # far node's spinner changed places, then the swap followed).
        before = trail[-2]
        exchanged = (mover.task.cpu, partner.task.cpu) == (before["partner"]["cpu"], before["mover"]["cpu"])
        for name, obs, node in (("mover", mover, near), ("partner", partner, far)):
            if obs.task.numa_preferred_nid != node:
                diffs.append(f"after the swap the {name} prefers node {obs.task.numa_preferred_nid}, not {node}")
    summary = (f"both tasks preferred their memory's node after {placed_after} s pinned; the model predicted a swap "
               f"(gain {predicted.imp}), and {swapped_after} s (guest time) after they were let go each ran on its memory's node")
    return Finding(summary, {"placed_after_s": placed_after, "swapped_after_s": swapped_after,
                             "exchanged_cpus": exchanged,
                             "premise": premise.as_json(),
                             "prediction": predicted.as_json(),
                             "trail": trail}, tuple(diffs))
