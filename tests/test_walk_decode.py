"""Decoding page-table entries: present, NUMA hint and pfn for each level (pure, no guest).

Entries are built from the kernel's own rules: a NUMA hint is PAGE_NONE (_PAGE_PROTNONE |
_PAGE_ACCESSED, no _PAGE_PRESENT) and pte_modify/pmd_modify invert the pfn field through
flip_protnone_guard with the level's pfn mask (arch/x86/include/asm/pgtable.h,
asm/pgtable-invert.h): bits 12+ for a PTE, 21+ for a huge PMD.
"""

from __future__ import annotations

import numpy as np

from harness.inspect.pagetable import PFN_MASK, PMD_PFN_MASK, PageTableWalk, decode

PRESENT, RW, ACCESSED, DIRTY, PSE, PROTNONE, NX = 1, 2, 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 63


def _hint(entry: int, mask: int) -> int:
    """pte_modify(entry, PAGE_NONE): present cleared, protnone set, pfn bits under `mask` inverted."""
    value = (entry & ~(PRESENT | RW)) | PROTNONE | ACCESSED
    return (value & ~mask) | (~value & mask)


def test_present_and_hinted_pte_name_the_same_page() -> None:
    pte = (0x12345 << 12) | PRESENT | RW | ACCESSED | DIRTY | NX
    assert decode(pte) == (True, False, 0x12345)
    assert decode(_hint(pte, PFN_MASK)) == (False, True, 0x12345)


def test_hinted_huge_pmd_names_its_head_page_not_the_last_tail() -> None:
    """The walker once masked a PMD with the 4 KiB pfn mask: bits 12-20, zero in the entry, read
    as ones after the inversion and named head + 511, whose page->flags carry no last_cpupid."""
    head = 0x40000  # 2 MiB aligned
    pmd = (head << 12) | PRESENT | RW | ACCESSED | DIRTY | PSE
    assert decode(pmd, level=1) == (True, False, head)
    hinted = _hint(pmd, PMD_PFN_MASK)
    assert decode(hinted, level=1) == (False, True, head)
    table = PageTableWalk(np.array([0x7F0000000000, 0x7F0000200000], dtype=np.uint64),
                          np.array([pmd, hinted], dtype=np.uint64), np.array([1, 1], dtype=np.uint8),
                          np.array([0, 0], dtype=np.int16))
    assert table.pfn.tolist() == [head, head]
    assert [entry.pfn for entry in table] == [head, head]  # Entry records decode with their level too


def test_an_empty_entry_is_not_inverted() -> None:
    assert decode(0) == (False, False, 0)


def test_iterating_a_walk_reads_each_entry_as_indexing_decodes_it() -> None:
    """PageTableWalk.columns (and so iteration) decodes all entries at once; indexing decodes one
    with decode(). Both must give the same Entry for every kind of entry: present, hinted and
    empty PTEs and PMDs, each flag bit, known and unknown last_cpupid, mapcount and folio size."""
    pte = (0x12345 << 12) | PRESENT | ACCESSED | NX
    pmd = (0x40000 << 12) | PRESENT | RW | ACCESSED | DIRTY | PSE
    raws = [pte, pte | RW | DIRTY, _hint(pte, PFN_MASK), 0, pmd, _hint(pmd, PMD_PFN_MASK)]
    table = PageTableWalk(np.arange(len(raws), dtype=np.uint64) << np.uint64(21), np.array(raws, dtype=np.uint64),
                          np.array([0, 0, 0, 0, 1, 1], dtype=np.uint8), np.array([0, 1, 0, -1, 1, 0], dtype=np.int16),
                          np.array([-1, 0, 4095, -1, 77, 2**21 - 1], dtype=np.int64), None,
                          np.array([1, 16, -1, -1, 512, 512], dtype=np.int64))
    assert list(table) == [table[i] for i in range(len(table))]
    assert [(e.last_cpupid, e.mapcount, e.folio_pages) for e in table][:3] == [(None, None, 1), (0, None, 16),
                                                                               (4095, None, None)]


def test_iterating_recorded_walks_matches_indexing() -> None:
    """The same on what real guests showed (golden observations: THP and mTHP folios, hints,
    migrated pages, every column read)."""
    from pathlib import Path

    from harness.checks.runner import load_recording

    for name in ("thp", "mthp", "scanner-pids", "cow-sharing"):
        recording = load_recording(Path(__file__).parent / "data" / "observations" / f"{name}.json.gz")
        for obs in recording.observations.values():
            assert list(obs.table) == [obs.table[i] for i in range(len(obs.table))], name
