"""Placement checks: the preferred node, and task_numa_placement + update_task_scan_period replayed exactly."""

from __future__ import annotations

from typing import Any

from harness.checks.adapters import model_task, model_tunables
from harness.checks.observe import Context, KernelNeverReached, Observation, observe, region_hinted, spin_until
from harness.checks.registry import Finding, check
from harness.checks.scenario import drain_lru_batches, scenario
from harness.checks.workload import Region
from harness.model import (
    task_numa_placement,
    task_scan_max,
    task_scan_min,
    time_after,
)


@check("placement")
def check_placement(ctx: Context) -> Finding:
    """Placement: right after task_numa_placement the preferred node is the node with the most
    memory faults (numa_faults[MEM], private + shared; ties to the lower node id since the
    kernel's test is a strict '>'). The kernel runs placement on a fault once the mm started a
    new sequence (p->numa_scan_seq != mm->numa_scan_seq); when the observed task has caught up
    (equal sequences), its MEM buckets are exactly those placement used, so the preferred nid
    must be their argmax. A task whose memory all lives on node 1 must prefer node 1."""
    remote = ctx.nodes_with_cpus()[-1]
    # The helper thread keeps the spinning task faulting (see check_two_stage_filter), so its
    # numa_scan_seq keeps catching up with the mm's.
    with scenario(ctx, Region(16, node=0, helper=True)) as region:
        obs = spin_until(region, ctx, remote, lambda o: o.task.total_numa_faults > 0 and
                          o.task.numa_scan_seq == o.mm.numa_scan_seq and o.task.numa_preferred_nid >= 0, step=0.5)
        region.touch(node=remote)
        settled = spin_until(region, ctx, remote, lambda o: o.task.numa_scan_seq == o.mm.numa_scan_seq and
                              o.mm.numa_scan_seq > obs.mm.numa_scan_seq + 1, step=0.5)
    diffs = []
    figures: dict[str, Any] = {}
    for label, o in (("first", obs), (f"after touching from node {remote}", settled)):
        mem = [sum(pair) for pair in o.task.faults["mem"]]
        expected = max(range(len(mem)), key=lambda n: (mem[n], -n)) if any(mem) else -1
        figures[label] = {"mem_faults": mem, "preferred": o.task.numa_preferred_nid, "seq": o.task.numa_scan_seq}
        if o.task.numa_preferred_nid != expected:
            diffs.append(f"{label}: numa_preferred_nid {o.task.numa_preferred_nid}, model {expected} from mem faults {mem}")
    if settled.task.numa_preferred_nid != remote:
        diffs.append(f"after all its memory moved to node {remote} the task prefers node {settled.task.numa_preferred_nid}")
    return Finding(f"preferred node {settled.task.numa_preferred_nid} "
                       f"(mem faults {figures[next(iter(reversed(figures)))]['mem_faults']})", figures, tuple(diffs))



@check("placement-exact")
def check_placement_exact(ctx: Context) -> Finding:
    """Placement and scan period, exactly. fair.c:task_numa_placement runs on the first hint
    fault after the mm started a new sequence (and after numa_migrate_retry). When the task is
    observed with a placement pending and no fault can come before it (its memory is all local
    or untouched while it spins), the next fault runs placement on exactly the observed books:
    the model (task_numa_placement + update_task_scan_period, with task_scan_min/max from the
    observed RSS and tunables) must then give the kernel's NUMA_MEM buckets (mem - mem/2 +
    membuf), total_numa_faults, preferred node, numa_scan_period and numa_scan_period_max.

    The scenario makes the period take the "speed up" branch: a 4 MiB read-only region (no
    numa_group: TNF_NO_GROUP) is moved to the far node by a short-lived thread, so the main
    thread's next faults on it are remote and shared (another tid in last_cpupid) and are refused
    by the two-stage filter. Then, round by round, the task spins on the near node until a
    placement is pending and reads one more page, whose single fault runs placement. A round
    counts only if exactly one placement can have run (the mm's sequence did not move on)."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    diffs: list[str] = []
    rounds: list[dict[str, Any]] = []
    skipped = 0
    with scenario(ctx, Region(4, node=near, readonly=True)) as region:
        all_hinted = region_hinted(region)
        drain_lru_batches(ctx.guest)
        # A short-lived thread spins on the far node so that passes hint the region without the
        # main thread leaving the near node (its own pages stay local, so it has no stray faults).
        for _ in range(120):
            if all_hinted(observe(ctx, region.pid)):
                break
            region.spin(0.5, node=far, thread=True)
        else:
            raise KernelNeverReached("the region was not hinted after 60 s of a thread spinning on the far node")
        region.read(node=far, thread=True)
        spin_until(region, ctx, near, all_hinted, step=0.5)
        region.read(node=near)
        for page in range(1, 12):
            va = region.addr + page * 4096

            def pending(o: Observation, va: int = va) -> bool:
                entry = o.table.within(va, va + 4096)
                return (o.task.numa_scan_seq != o.mm.numa_scan_seq and bool(len(entry)) and bool(entry.hint.all())
                        and time_after(o.balancing.jiffies, o.task.numa_migrate_retry))
            a = spin_until(region, ctx, near, pending, step=0.3)
            region.read(node=near, pages=page + 1)
            b = observe(ctx, region.pid)
            if b.mm.numa_scan_seq != a.mm.numa_scan_seq or b.task.numa_scan_seq != a.mm.numa_scan_seq:
                skipped += 1
                continue
            rounds.append(_compare_placement(ctx, a, b, diffs, len(rounds) + 1))
            if len(rounds) >= 3 and any(r["mem_history"] for r in rounds):
                break
    if not any(r["mem_history"] for r in rounds):
        diffs.append(f"no exact round had fault history to decay ({len(rounds)} rounds, {skipped} skipped): "
                     f"the check lost its subject")
    if not any(r["branch"] == "speed up" for r in rounds):
        diffs.append("no round took update_task_scan_period's speed-up branch: the check lost its subject")
    summary = (f"{len(rounds)} placements replayed exactly ({skipped} skipped: another sequence started); "
               + ", ".join(f"period {r['period_before']}->{r['period_kernel']} ms (model {r['period_model']})"
                           for r in rounds))
    return Finding(summary, {"rounds": rounds, "skipped": skipped}, tuple(diffs))



def _compare_placement(ctx: Context, a: Observation, b: Observation, diffs: list[str], number: int) -> dict[str, Any]:
    tun = model_tunables(a, ctx.hz)
    rss = a.mm.rss_pages
    before = model_task(a, len(ctx.nodes_with_cpus()))
    model = task_numa_placement(before, a.mm.numa_scan_seq, scan_min=task_scan_min(rss, tun),
                                scan_max=task_scan_max(rss, tun))
    kernel = b.task
    label = f"placement {number} (jiffies {a.balancing.jiffies})"
    pairs: list[tuple[str, Any, Any]] = [
        ("numa_preferred_nid", model.numa_preferred_nid, kernel.numa_preferred_nid),
        ("numa_scan_period", model.numa_scan_period, kernel.numa_scan_period),
        ("numa_scan_period_max", model.numa_scan_period_max, kernel.numa_scan_period_max),
        ("total_numa_faults", model.total_numa_faults, kernel.total_numa_faults),
    ]
    for nid in range(before.nr_nodes):
        for priv, kind in ((1, "private"), (0, "shared")):
            pairs.append((f"NUMA_MEM node {nid} {kind}", model.faults[0][nid][priv], kernel.faults["mem"][nid][priv]))
    for name, want, got in pairs:
        if want != got:
            diffs.append(f"{label}: {name} kernel {got}, model {want} (from mem {a.task.faults['mem']}, membuf "
                         f"{a.task.faults['membuf']}, locality {a.task.locality}, period {a.task.numa_scan_period} ms, "
                         f"rss {rss} pages)")
    remote, local, _ = a.task.locality
    shared = sum(p[0] for p in a.task.faults["membuf"])
    private = sum(p[1] for p in a.task.faults["membuf"])
    ratio_lr = local * 10 // (local + remote) if local + remote else None
    ratio_ps = private * 10 // (private + shared) if private + shared else None
    branch = ("slow down (no local or shared faults, or failed migrations)" if local + shared == 0 or a.task.locality[2]
              else "slow down" if (ratio_ps or 0) >= 7 or (ratio_lr or 0) >= 7 else "speed up")
    return {"period_before": a.task.numa_scan_period, "period_model": model.numa_scan_period,
            "period_kernel": kernel.numa_scan_period, "branch": branch, "locality": list(a.task.locality),
            "membuf": a.task.faults["membuf"], "mem_before": a.task.faults["mem"], "mem_kernel": kernel.faults["mem"],
            "mem_history": any(sum(p) for p in a.task.faults["mem"]), "rss_pages": rss}

