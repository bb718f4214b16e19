"""PTE-mapped large folios (mTHP): one hint fault per folio, whatever it decides.

With 64 KiB anonymous folios (sysfs hugepages-64kB/enabled) a region is mapped by PTEs, sixteen
per folio. change_pte_range hints each PTE; mm/memory.c:do_numa_page then handles the folio as a
whole: a migration moves all sixteen pages and remove_migration_ptes maps every PTE again; a
fault that leaves the folio in place restores every PTE of it (numa_rebuild_large_mapping).
Either way the folio takes one fault and task_numa_fault books folio_nr_pages. The model's side
is PlacementRun's (checks/placement.py: _folio_after_fault), run free from one observation.
"""

from __future__ import annotations

import numpy as np

from harness.checks.faults import LARGE_FOLIO_KNOBS, LARGE_FOLIO_MARGIN_MS
from harness.checks.migratefilter import Access, judge_filter, run_accesses, takes
from harness.checks.observe import Context, Observation
from harness.checks.registry import Finding, Mechanism, check
from harness.checks.scenario import sysfs
from harness.checks.workload import Region
from harness.model import Decision

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
# 64 KiB folios for MADV_HUGEPAGE regions, and no PMD THP to take their place.
MTHP_SETTINGS = {f"{THP_SYSFS}/hugepages-64kB/enabled": "madvise", f"{THP_SYSFS}/hugepages-2048kB/enabled": "never"}
MTHP_PAGES = 16
MTHP_REGION_MIB = 4  # 64 folios
# The reads run with thp's period and margin (LARGE_FOLIO_KNOBS): a read that migrates the 64
# folios took 36-53 jiffies, once 86 (344 ms), too close to PLACEMENT_KNOBS' 400 ms margin.
_REGION_PAGES = MTHP_REGION_MIB * 256
_FOLIOS = _REGION_PAGES // MTHP_PAGES


def folio_layout(obs: Observation, region: tuple[int, int]) -> list[str]:
    """What the scenario needs to be about mTHPs: every page of the region mapped by a PTE of a
    16-page folio, naturally aligned (alloc_anon_folio maps a folio at ALIGN_DOWN(address, size),
    from a physically aligned allocation)."""
    part = obs.table.within(*region)
    pages = (region[1] - region[0]) // 4096
    if len(part) != pages or bool((part.level != 0).any()):
        return [f"the region is mapped by {len(part)} entries ({int((part.level != 0).sum())} PMD), not {pages} PTEs"]
    sizes = part.folio_pages
    if sizes is None or bool((sizes != MTHP_PAGES).any()):
        found = {} if sizes is None else {int(s): int((sizes == s).sum()) for s in np.unique(sizes)}
        return [f"the region's PTEs map folios of {found} pages, not all of {MTHP_PAGES} (hugepages-64kB)"]
    if bool(((part.vaddr >> np.uint64(12)) % MTHP_PAGES != part.pfn % MTHP_PAGES).any()):
        return ["the region's 64 KiB folios are not mapped at their natural alignment"]
    return []


MTHP_READS = (
    # The folios, first touched on the far node, hinted while the task spins on the near one
    # and read from there: remote first faults, every folio migrates whole.
    Access("remote", False, range(_REGION_PAGES), subject=takes(_FOLIOS, _REGION_PAGES)),
    # Hinted while it spins on the far node (a pass skips pages on the spinning node only),
    # read from the near node where they now are: local, every PTE restored in place.
    Access("local", False, range(_REGION_PAGES), subject=takes(_FOLIOS, 0, Decision.LOCAL), spin_far=True),
)


@check("mthp", seconds=8.6, needs=[Mechanism.MTHP])
def check_mthp(ctx: Context) -> Finding:
    """mTHP, free-running from one observation: a 4 MiB MADV_HUGEPAGE region mapped by 64 KiB
    folios (hugepages-64kB enabled for madvise, PMD THPs off), first touched on the far node by
    a quiet task exec'd on the near node (its other memory is never hinted). Two reads of the
    whole region (MTHP_READS), each once the model says every PTE is hinted and a placement is
    pending, with numa_next_scan far enough away that no pass can come inside the read
    (migratefilter.run_accesses): from the near node while the folios are on the far one (every
    folio migrates whole: one fault, sixteen pages booked and migrated, every PTE back
    read-only), then, after the task spun on the far node so that the scanner hinted them
    again, from the near node where they now are (every folio restored in place by one fault,
    sixteen PTEs writable again: numa_rebuild_large_mapping). After every step the whole state
    is compared (PlacementRun): each PTE's node, hint, write bit and its folio's last_cpupid,
    the hint-fault count (one per folio), the books (folio_nr_pages per fault),
    numa_pages_migrated, locality, the period and the scanner's state. A region not mapped by
    64 KiB folios (compaction may split one) is inconclusive."""
    nodes = ctx.nodes_with_cpus()
    near, far = nodes[0], nodes[-1]
    request = Region(MTHP_REGION_MIB, thp=True, node=far, exec_on=near, quiet=True)
    with sysfs(ctx.guest, MTHP_SETTINGS):
        # No drain_lru_batches (compaction) here: it splits some of the region's mTHPs, and a
        # large folio never waits in a per-CPU LRU batch anyway (mm/swap.c:
        # __folio_batch_add_and_move moves it to the LRU at once).
        run = run_accesses(ctx, request, MTHP_READS, intact=folio_layout, knobs=LARGE_FOLIO_KNOBS,
                           margin_ms=LARGE_FOLIO_MARGIN_MS)
    return judge_filter(run, MTHP_READS)
