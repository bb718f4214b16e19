"""The frame every scenario shares: hold a region in a workload process, set the scan knobs for
the duration, always put both back. Written once here instead of in each check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from harness.checks.observe import Context
from harness.checks.workload import HeldRegion, Region
from harness.guest.view import GuestView

KNOBS = "/sys/kernel/debug/sched/numa_balancing"
# Scan 100 ms after a VMA is first met and at most every 100-400 ms, instead of every 1-60 s:
# the checks then see several scanner passes in seconds of spinning.
FAST_SCAN = {"scan_delay_ms": 100, "scan_period_min_ms": 100, "scan_period_max_ms": 400}



@contextlib.contextmanager
def tunables(guest: GuestView, **knobs: int) -> Iterator[None]:
    """Set debugfs scan knobs for the duration (restored after, also on error)."""
    names = " ".join(f"{KNOBS}/{k}" for k in knobs)
    saved = dict(zip(knobs, guest.ssh.run(f"cat {names}").check().stdout.split(), strict=True))
    guest.ssh.run("; ".join(f"echo {v} > {KNOBS}/{k}" for k, v in knobs.items())).check()
    try:
        yield
    finally:
        guest.ssh.run("; ".join(f"echo {v} > {KNOBS}/{k}" for k, v in saved.items()) +
                      "; echo 1 > /proc/sys/kernel/numa_balancing").check()


def drain_lru_batches(guest: GuestView) -> None:
    """Per-CPU LRU add batches hold recently faulted folios off the LRU, and folio_isolate_lru then
    fails (migrate_misplaced_folio_prepare: TNF_MIGRATE_FAIL). Writing compact_memory runs
    lru_add_drain_all() (mm/compaction.c:compact_nodes), so every folio can be isolated.
    Call it before hinting: compaction may migrate a page within its node, and a migrated PTE is
    rebuilt from vm_page_prot (remove_migration_pte), which would silently drop a hint."""
    guest.ssh.run("echo 1 > /proc/sys/vm/compact_memory").check()



def drain_lru_adds(guest: GuestView, pid: int) -> None:
    """Drain every CPU's LRU add batch without compaction: migrate_pages(2) from node 0 to node
    0 (numactl's migratepages) runs mm/mempolicy.c:do_migrate_pages, which starts with
    lru_cache_disable() (lru_add_drain_all) and then has nothing to move (node_remap(s) == s).
    Unlike drain_lru_batches it migrates nothing, so no hint is dropped. Under 6.1's rules a
    page a batch holds is not hinted (KernelRules.cow_page_count)."""
    guest.ssh.run(f"migratepages {pid} 0 0").check()


@contextlib.contextmanager
def scenario(ctx: Context, region: Region, knobs: Mapping[str, int] = FAST_SCAN, *,
             knobs_at_exec: bool = False) -> Iterator[HeldRegion]:
    """A workload holding `region`, run with the debugfs scan `knobs`; the region is closed and
    the knobs restored however the block ends. With `knobs_at_exec` the knobs are set before the
    workload starts: a new task's first scan period is the scan delay at its fork
    (fair.c:init_numa_balancing), and a task that never takes a placement keeps it."""
    with contextlib.ExitStack() as stack:
        if knobs_at_exec:
            stack.enter_context(tunables(ctx.guest, **knobs))
        held = HeldRegion.start(ctx.guest, region)
        stack.callback(held.close)
        if not knobs_at_exec:
            stack.enter_context(tunables(ctx.guest, **knobs))
        yield held


@contextlib.contextmanager
def sysfs(guest: GuestView, settings: Mapping[str, str]) -> Iterator[None]:
    """Write sysfs `settings` for the duration; the old values (the bracketed choice) come back
    however the block ends."""
    names = " ".join(settings)
    shown = guest.ssh.run(f"cat {names}").check().stdout.splitlines()
    saved = {path: next(w[1:-1] for w in line.split() if w.startswith("[")) for path, line in zip(settings, shown,
                                                                                                  strict=True)}
    guest.ssh.run("; ".join(f"echo {v} > {k}" for k, v in settings.items())).check()
    try:
        yield
    finally:
        guest.ssh.run("; ".join(f"echo {v} > {k}" for k, v in saved.items())).check()
