"""Observations of the live guest and the session they are made in.

`Context` is one booted guest with drgn attached and the facts every check needs (which node each
CPU is on, HZ). `observe` pauses the guest and reads, at one moment, everything a check compares:
the task's page tables (node, last_cpupid, mapcount per entry), its NUMA state, its mm's and VMAs'
scan state, the tunables and the event counters. `spin_until` lets a workload run until the kernel
reaches a state the model says it must reach, and turns "never" into a `KernelNeverReached`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import drgn
import numpy as np

from harness import inspect as nh
from harness.checks.workload import HeldRegion
from harness.guest.topology import parse_cpulist
from harness.guest.view import GuestView
from harness.model import DEFAULT_RULES, RULES, KernelRules, release_series


class KernelNeverReached(Exception):
    """A state the kernel must reach (by the rules the model mirrors) did not come within the
    check's bound; the message says what was waited for and what the kernel showed instead."""


class Inconclusive(Exception):
    """This run of the scenario cannot decide a comparison (the message says which, and why: a
    race the observations cannot resolve). The runner retries the check with a fresh scenario,
    INCONCLUSIVE_TRIES times in all; a check inconclusive every time fails and says so."""


INCONCLUSIVE_TRIES = 3


@dataclass(frozen=True)
class GuestFacts:
    """What a comparison needs to know about the guest beyond an observation: which node each CPU
    is on, HZ (a macro: read from the guest's CONFIG_HZ), the zero page's pfn, and the width of
    page->flags' last_cpupid field (all ones is "pid unset": page_cpupid_reset_last)."""

    node_of_cpu: dict[int, int]
    hz: int
    zero_pfn: int
    cpupid_width: int
    # sched_numa_topology_type == NUMA_DIRECT (kernel/sched/topology.c:init_numa_topology_type:
    # at most two distinct distances): then preferred_group_nid keeps the node with the most group
    # faults. Recordings made before this was read were all of two-node guests: direct.
    numa_direct: bool = True
    # init_uts_ns's release: which release's rules the model judges by (KernelRules). Recordings
    # made before this was read were all of the default 6.12 kernel.
    release: str = ""

    @property
    def rules(self) -> KernelRules:
        """The model's rules for this kernel's release; the default release's for one the model
        does not know (its checks' verdicts are then reported as unverified)."""
        return RULES.get(release_series(self.release), DEFAULT_RULES)

    @property
    def cpupid_unset(self) -> int:
        return (1 << self.cpupid_width) - 1

    def as_json(self) -> dict[str, Any]:
        return {"node_of_cpu": {str(c): n for c, n in self.node_of_cpu.items()}, "hz": self.hz,
                "zero_pfn": self.zero_pfn, "cpupid_width": self.cpupid_width, "numa_direct": self.numa_direct,
                "release": self.release}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestFacts:
        return cls({int(c): int(n) for c, n in data["node_of_cpu"].items()}, int(data["hz"]), int(data["zero_pfn"]),
                   int(data["cpupid_width"]), bool(data.get("numa_direct", True)), str(data.get("release", "")))


@dataclass
class Context:
    guest: GuestView
    prog: drgn.Program
    facts: GuestFacts
    # The current check's two latest observations: the state a failure's diffs refer to.
    recent: list[Observation] = field(default_factory=list)
    # With `check --record DIR`: the observations each check chose to keep, by label (golden data),
    # and the facts about its scenario a replay needs (region, nodes, CPUs), by label.
    kept: dict[str, Observation] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # Counters read at every check's start and end: {"t": seconds since open, "check", "vmstat"}.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    # Looks taken again because a page table lock of the process was held (observe), and looks
    # kept with one held after LOOKS_PAST_A_TABLE_LOCK tries; the runner reports them per check.
    looks_past_a_table_lock: int = 0
    looks_kept_with_a_table_lock: int = 0

    @classmethod
    def open(cls, guest: GuestView) -> Context:
        prog = nh.attach(guest, guest.vmlinux)
        node_of_cpu: dict[int, int] = {}
        out = guest.ssh.run("cd /sys/devices/system/node && for n in node*; do echo ${n#node} $(cat $n/cpulist); done")
        for line in out.check().stdout.splitlines():
            nid, _, cpus = line.partition(" ")
            for cpu in parse_cpulist(cpus):
                node_of_cpu[cpu] = int(nid)
        # HZ is a macro, invisible to drgn; the guest's own config says it (CONFIG_IKCONFIG_PROC).
        hz_line = guest.ssh.run("zcat /proc/config.gz | grep '^CONFIG_HZ='").check().stdout
        width = nh.page_flags_layout(prog).get("LAST_CPUPID_WIDTH", 0)
        direct = prog["sched_numa_topology_type"].value_() == prog["NUMA_DIRECT"].value_()
        release = prog["init_uts_ns"].name.release.string_().decode()
        facts = GuestFacts(node_of_cpu, int(hz_line.strip().split("=")[1]), int(prog["zero_pfn"].value_()), width,
                           direct, release)
        return cls(guest, prog, facts)

    @property
    def node_of_cpu(self) -> dict[int, int]:
        return self.facts.node_of_cpu

    @property
    def hz(self) -> int:
        return self.facts.hz

    def nodes_with_cpus(self) -> list[int]:
        return sorted(set(self.node_of_cpu.values()))

    def keep(self, label: str, obs: Observation, **notes: Any) -> None:
        """Keep `obs` as golden data under `label` when the run records (check --record), with
        what a replay needs to know about the scenario at that point."""
        if self.kept is not None:
            self.kept[label] = obs
            if notes:
                self.notes[label] = notes


@dataclass(frozen=True)
class Observation:
    table: nh.PageTableWalk
    task: nh.TaskNumaState
    mm: nh.MmNumaState
    vmas: list[nh.VmaNumaState]
    balancing: nh.BalancingState
    vmstat: dict[str, int]
    mm_address: int
    # (numa_next_scan, numa_scan_seq) of every user mm: who ran scanner passes between two observations.
    stamps: dict[tuple[int, int], tuple[int, int]]
    # With observe(threads=...): those threads' NUMA state and numa_groups, in that order, and
    # the pid each CPU runs (cpu_rq(cpu)->curr) at the moment of the observation.
    threads: tuple[nh.TaskNumaState, ...] = ()
    groups: tuple[nh.NumaGroupState | None, ...] = ()
    running: dict[int, int] = field(default_factory=dict)

    def other_passes_since(self, earlier: Observation) -> list[int]:
        """The tgids of other processes, alive at both observations, that had a scanner pass in
        between. Processes that started in between are the harness's own SSH commands: a new
        task's first pass needs scan_delay_ms of its own CPU time (fair.c:init_numa_balancing
        sets numa_scan_period to it, task_tick_numa waits for it), which they never use."""
        return sorted({tgid for (tgid, mm), stamp in self.stamps.items() if mm != self.mm_address and
                       (tgid, mm) in earlier.stamps and earlier.stamps[(tgid, mm)][0] != stamp[0]})


# A look pauses the guest wherever its vCPUs are, possibly while one holds a page table lock of
# the process and has an entry half-rewritten (inspect's table_locks_held lists where: the
# scanner's ptep_modify_prot_start ... commit, a hint fault's, a migration's clear): the walk
# would miss that entry or see it non-present. Such a look is taken again, after the guest has
# run on: a spinlock is held for microseconds of guest time (no section under it sleeps), and
# the guest runs milliseconds between two pauses (a QMP round trip). A lock still held in the
# last look is most likely a fresh holder, not the same section; its look is kept, and counted.
LOOKS_PAST_A_TABLE_LOCK = 3


def observe(ctx: Context, pid: int, threads: tuple[int, ...] = ()) -> Observation:
    """Everything at one moment (the guest paused) at which no page table lock of the process is
    held (LOOKS_PAST_A_TABLE_LOCK); with `threads`, also those threads of the process (their NUMA
    state and groups) and which task each CPU runs."""
    (obs,) = _look(ctx, (pid,), lambda p: threads)
    ctx.recent[:] = [*ctx.recent[-1:], obs]
    return obs


def observe_processes(ctx: Context, pids: tuple[int, ...]) -> tuple[Observation, ...]:
    """observe() for several processes at one moment: each observation has its process as its
    one thread (its NUMA state and group), and which task each CPU runs."""
    found = _look(ctx, pids, lambda p: (p,))
    ctx.recent[:] = list(found[-2:])
    return found


def _look(ctx: Context, pids: tuple[int, ...], threads_of: Callable[[int], tuple[int, ...]]) -> tuple[Observation, ...]:
    """One observation of each process in one pause, taken again (up to LOOKS_PAST_A_TABLE_LOCK
    looks) while any of their page table locks was held; the counts go to ctx."""
    for look in range(LOOKS_PAST_A_TABLE_LOCK):
        with nh.snapshot(ctx.guest):
            looked = [_observe_paused(ctx, pid, threads_of(pid)) for pid in pids]
        if not any(held for _, held in looked):
            break
        ctx.looks_past_a_table_lock += 1
        if look == LOOKS_PAST_A_TABLE_LOCK - 1:
            ctx.looks_kept_with_a_table_lock += 1
    return tuple(obs for obs, _ in looked)


def _observe_paused(ctx: Context, pid: int, threads: tuple[int, ...]) -> tuple[Observation, int]:
    """The observation, and how many of the process's page table locks were held at it."""
    mm = nh.find_mm(ctx.prog, pid)
    walked = nh.walk(ctx.prog, mm)
    table = nh.with_folios(ctx.prog, nh.with_mapcount(ctx.prog, nh.with_last_cpupid(ctx.prog, walked)))
    obs = Observation(table, nh.read_task(ctx.prog, pid), nh.read_mm(ctx.prog, pid), nh.read_vmas(ctx.prog, pid),
                      nh.read_balancing(ctx.prog), nh.read_vmstat(ctx.prog), int(mm.value_()),
                      nh.scan_stamps(ctx.prog), tuple(nh.read_task(ctx.prog, tid) for tid in threads),
                      tuple(nh.read_numa_group(ctx.prog, tid) for tid in threads),
                      nh.running_pids(ctx.prog) if threads else {})
    return obs, nh.table_locks_held(ctx.prog, mm, walked)


def observation_json(obs: Observation) -> dict[str, Any]:
    """An observation as JSON: the task's and mm's NUMA state, VMAs, tunables, counters, every
    leaf entry (hex addresses and raw entries, node, last_cpupid, mapcount, folio size) and the scan stamps
    of the guest's other processes. `observation_from_json` reads it back."""
    t = obs.table
    return {
        "task": obs.task.as_json(), "mm": obs.mm.as_json(), "vmas": [v.as_json() for v in obs.vmas],
        "balancing": obs.balancing.as_json(), "vmstat": obs.vmstat, "mm_address": hex(obs.mm_address),
        "stamps": [[tgid, hex(mm), *stamp] for (tgid, mm), stamp in obs.stamps.items()],
        "threads": [t.as_json() for t in obs.threads],
        "groups": [None if g is None else g.as_json() for g in obs.groups],
        "running": {str(cpu): pid for cpu, pid in obs.running.items()},
        "entries": {"vaddr": [hex(int(v)) for v in t.vaddr], "raw": [hex(int(r)) for r in t.raw],
                    "level": [int(x) for x in t.level], "node": [int(n) for n in t.node],
                    "last_cpupid": None if t.last_cpupid is None else [int(c) for c in t.last_cpupid],
                    "mapcount": None if t.mapcount is None else [int(c) for c in t.mapcount],
                    "folio_pages": None if t.folio_pages is None else [int(c) for c in t.folio_pages]},
    }


def observation_from_json(data: dict[str, Any]) -> Observation:
    """An observation recorded by observation_json (golden data from real guests)."""
    e = data["entries"]

    def column(values: list[int] | None, dtype: str) -> np.ndarray | None:
        return None if values is None else np.array(values, dtype=dtype)

    table = nh.PageTableWalk(np.array([int(v, 16) for v in e["vaddr"]], dtype=np.uint64),
                             np.array([int(r, 16) for r in e["raw"]], dtype=np.uint64),
                             np.array(e["level"], dtype=np.uint8), np.array(e["node"], dtype=np.int16),
                             column(e["last_cpupid"], "int64"), column(e["mapcount"], "int64"),
                             column(e.get("folio_pages"), "int64"))

    def task_state(recorded: dict[str, Any]) -> nh.TaskNumaState:
        task = dict(recorded)
        task["faults"] = {name: [(int(s), int(p)) for s, p in pairs] for name, pairs in task["faults"].items()}
        task["locality"] = tuple(task["locality"])
        return nh.TaskNumaState(**task)

    def group_state(recorded: dict[str, Any] | None) -> nh.NumaGroupState | None:
        if recorded is None:
            return None
        group = dict(recorded)
        group["faults"] = {name: [(int(s), int(p)) for s, p in pairs] for name, pairs in group["faults"].items()}
        return nh.NumaGroupState(**group)

    return Observation(table, task_state(data["task"]), nh.MmNumaState(**data["mm"]),
                       [nh.VmaNumaState(**v) for v in data["vmas"]], nh.BalancingState(**data["balancing"]),
                       dict(data["vmstat"]), int(data.get("mm_address", "0x0"), 16),
                       {(int(s[0]), int(s[1], 16)): (int(s[2]), int(s[3])) for s in data.get("stamps", [])},
                       tuple(task_state(t) for t in data.get("threads", [])),
                       tuple(group_state(g) for g in data.get("groups", [])),
                       {int(cpu): int(pid) for cpu, pid in data.get("running", {}).items()})


# How far past mm->numa_next_scan next_pass_pace aims a thread's trigger (see there).
DUE_MARGIN_S = 0.15


@dataclass(frozen=True)
class Pace:
    """How the harness drives scanners to their next pass from an observation: `idle_s` seconds
    with every task of the workload asleep (the guest's clock runs, their CPU time does not),
    then `spin_s` seconds of spinning. Pacing only: no prediction depends on it."""

    idle_s: float
    spin_s: float

    @property
    def seconds(self) -> float:
        return self.idle_s + self.spin_s


def next_pass_pace(observations: Sequence[Observation], hz: int, *, slack_s: float, cap_s: float) -> Pace:
    """The shortest idle-then-spin that lets every observed mm run a scanner pass, each of its
    `threads` spinning alone on its own CPU, plus `slack_s` of spinning; `cap_s` at most.

    kernel/sched/fair.c:task_tick_numa, at a tick of a thread whose sum_exec_runtime passed
    node_stamp + numa_scan_period, adds the period to node_stamp and queues task_numa_work only
    if jiffies already reached mm->numa_next_scan (task_numa_work itself returns before that).
    A trigger before the mm's clock is due is spent: that thread's next comes a whole period of
    its CPU time later. A thread spinning alone on its CPU gains CPU time at the wall clock's
    rate, so from a thread r seconds of CPU time from its trigger and an mm clock w > r seconds
    away, spinning at once passes at r + period, and idling w - r first passes at w. So each
    idle time a thread's w - r suggests (and none) is tried, and the one whose last mm passes
    soonest is kept. A trigger aimed at the due jiffy itself was seen spent, within 10 ms of it
    (the tick that tests jiffies on the spinning CPU may run before the tick that advances them
    on another, and a vCPU's tick under TCG runs late), so each idle time aims `DUE_MARGIN_S`
    past it: a wait that long costs a pass nothing, a spent trigger a whole period."""
    def cpu_time_to_trigger_s(thread: nh.TaskNumaState) -> float:
        return max((thread.node_stamp + thread.numa_scan_period * 1_000_000 - thread.sum_exec_runtime) / 1e9, 0.0)

    def trigger_s(idle: float, thread: nh.TaskNumaState, due: float) -> float:
        at = idle + cpu_time_to_trigger_s(thread)
        return at if at >= due else at + thread.numa_scan_period / 1000

    dues = [max((o.mm.numa_next_scan - o.balancing.jiffies) / hz, 0.0) for o in observations]

    def last_pass_s(idle: float) -> float:
        return max(min(trigger_s(idle, t, due) for t in o.threads) for o, due in zip(observations, dues, strict=True))

    candidates = {0.0} | {max(due + DUE_MARGIN_S - cpu_time_to_trigger_s(t), 0.0)
                          for o, due in zip(observations, dues, strict=True) for t in o.threads}
    idle = min(sorted(candidates), key=last_pass_s)
    spin = last_pass_s(idle) - idle + slack_s
    return Pace(min(idle, cap_s), min(spin, cap_s))


def spin_until(region: HeldRegion, ctx: Context, node: int, done: Callable[[Observation], bool], *,
                step: float = 1.0, limit: float = 60.0, spinner: Callable[[float], None] | None = None,
                threads: tuple[int, ...] = (), pace: Callable[[Observation], Pace] | None = None) -> Observation:
    """Spin (the holder's main thread on `node`, or `spinner(seconds)`) `step` seconds at a time,
    or as `pace` says from the last observation (idle, then spin), until `done` holds for an
    observation (of `threads` too); `limit` seconds of idling and spinning at most."""
    spent = 0.0
    while True:
        obs = observe(ctx, region.pid, threads)
        if done(obs):
            return obs
        if spent >= limit:
            part = obs.table.within(region.addr, region.end)
            nodes = {int(n): int((part.node == n).sum()) for n in np.unique(part.node)}
            raise KernelNeverReached(
                f"the kernel never reached the state the check waits for ({getattr(done, '__name__', 'condition')}) "
                f"after {limit:.0f} s of spinning on node {node}: the region has {int(part.hint.sum())} of {len(part)} "
                f"entries hinted, entries per node {nodes}; task numa_scan_seq {obs.task.numa_scan_seq}, mm "
                f"numa_scan_seq {obs.mm.numa_scan_seq}, preferred node {obs.task.numa_preferred_nid}, numa_group "
                f"{obs.task.numa_group_id}, numa_migrate_retry in {obs.task.numa_migrate_retry - obs.balancing.jiffies} "
                f"jiffies, numa_next_scan in {obs.mm.numa_next_scan - obs.balancing.jiffies} jiffies, mm_users "
                f"{obs.mm.mm_users}, hint faults {obs.vmstat.get('numa_hint_faults')}")
        paced = Pace(0.0, step) if pace is None else pace(obs)
        if paced.idle_s:
            time.sleep(paced.idle_s)
        if spinner is None:
            region.spin(paced.spin_s, node=node)
        else:
            spinner(paced.spin_s)
        spent += paced.seconds


def region_hinted(region: HeldRegion) -> Callable[[Observation], bool]:
    """The wait condition "every entry of the region is a hint"."""
    def every_page_of_the_region_hinted(o: Observation) -> bool:
        part = o.table.within(region.addr, region.end)
        return bool(len(part)) and bool(part.hint.all())
    return every_page_of_the_region_hinted


def outside_region(table: nh.PageTableWalk, region: HeldRegion) -> nh.PageTableWalk:
    """The task's entries outside the workload's region (its stack, data, ...)."""
    return table.select(~((table.vaddr >= np.uint64(region.addr)) & (table.vaddr < np.uint64(region.end))))
