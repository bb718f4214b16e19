"""Page-table walk of a live guest task, read in bulk and decoded with numpy.

Each page-table page is read whole (one 4 KiB physical read through drgn), and a PTE page's 512
entries are decoded as one numpy array: a 1 GiB mapping is 512 reads and 512 array operations,
not 262,144 drgn Objects. The result is columnar (`PageTableWalk`); `Entry` records are made
only when someone iterates or indexes it.

x86_64 entry bits (arch/x86/include/asm/pgtable_types.h): PRESENT 0, RW 1, ACCESSED 5, DIRTY 6,
PSE 7 (a huge leaf at PMD/PUD level), PROTNONE 8 (aliases GLOBAL, meaningful when PRESENT is
clear). A NUMA hint entry is `(entry & 0x101) == 0x100` (asm/pgtable.h:pte_protnone; the same
test for a PMD, asm/pgtable.h:pmd_protnone), and a non-present entry stores its PFN inverted
(asm/pgtable-invert.h:__pte_needs_invert, the L1TF mitigation). The PFN of a huge leaf is the
entry's bits from 21 (PMD) or 30 (PUD) up (pgtable_types.h:pmd_pfn_mask/pud_pfn_mask): the bits
below are flags or zero, and after the inversion they read as ones, so masking with the 4 KiB
PFN mask would name the last tail page of the folio instead of its head (asm/pgtable.h:pmd_pfn).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple, overload

import numpy as np
from drgn import Object, Program

__all__ = (
    "Entry",
    "NodeRanges",
    "PageTableWalk",
    "decode",
    "five_level",
    "folio_heads",
    "last_cpupids",
    "node_ranges",
    "page_field",
    "page_flags",
    "page_flags_layout",
    "summarize",
    "table_locks_held",
    "vmemmap_base",
    "walk",
    "with_folios",
    "with_last_cpupid",
    "with_mapcount",
)

PRESENT, RW, ACCESSED, DIRTY, PSE, PROTNONE = 1 << 0, 1 << 1, 1 << 5, 1 << 6, 1 << 7, 1 << 8
PFN_MASK = 0x000FFFFFFFFFF000  # PTE_PFN_MASK
PMD_PFN_MASK = 0x000FFFFFFFE00000  # PHYSICAL_PMD_PAGE_MASK
PUD_PFN_MASK = 0x000FFFFFC0000000  # PHYSICAL_PUD_PAGE_MASK
PAGE_SIZE = 4096
LEVELS = ("pte", "pmd", "pud")  # index = level code in PageTableWalk.level
PFN_MASKS = np.array([PFN_MASK, PMD_PFN_MASK, PUD_PFN_MASK], dtype=np.uint64)  # by level code
PAGES_PER_LEVEL = np.array([1, 512, 512 * 512], dtype=np.int64)


@dataclass(frozen=True)
class Entry:
    vaddr: int
    level: str  # "pte" | "pmd" | "pud"
    entry: int
    present: bool
    hint: bool
    pfn: int
    node: int
    writable: bool
    young: bool
    dirty: bool
    last_cpupid: int | None = None
    # folio_mapcount of an order-0 folio (page->_mapcount + 1); None when not read.
    mapcount: int | None = None
    # Base pages of the folio the entry maps (1, 16 for a 64 KiB mTHP, 512 for a PMD THP); None
    # when not read.
    folio_pages: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class EntryColumns(NamedTuple):
    """A walk's entries as Python lists, one per field of Entry (`level` as its code in LEVELS;
    None where a column was not read or reads -1): what a loop over every entry reads fastest."""

    vaddr: list[int]
    level: list[int]
    entry: list[int]
    present: list[bool]
    hint: list[bool]
    pfn: list[int]
    node: list[int]
    writable: list[bool]
    young: list[bool]
    dirty: list[bool]
    last_cpupid: list[int | None]
    mapcount: list[int | None]
    folio_pages: list[int | None]


def decode(raw: int, level: int = 0) -> tuple[bool, bool, int]:
    """
    Decode one x86-64 page-table entry.

    A NUMA hint is ``_PAGE_PROTNONE`` without ``_PAGE_PRESENT``
    (``arch/x86/include/asm/pgtable.h:pte_protnone``); its pfn is stored inverted
    (``asm/pgtable-invert.h``).

    :param raw: The entry's value.
    :param level: 0 for a PTE, 1 for a huge PMD, 2 for a huge PUD (the PFN's low bit differs).
    :return: (present, NUMA hint, pfn of the first base page mapped)
    """
    present = bool(raw & PRESENT)
    hint = (raw & (PRESENT | PROTNONE)) == PROTNONE
    pfn = ((~raw if raw and not present else raw) & int(PFN_MASKS[level])) >> 12
    return present, hint, pfn


def _pfns(raw: np.ndarray, level: np.ndarray) -> np.ndarray:
    """decode()'s pfn for arrays of entries and their level codes (asm/pgtable.h:pte_pfn/pmd_pfn)."""
    inverted = (raw != 0) & ((raw & np.uint64(PRESENT)) == 0)
    result: np.ndarray = (np.where(inverted, ~raw, raw) & PFN_MASKS[level]) >> np.uint64(12)
    return result


@dataclass(frozen=True)
class NodeRanges:
    ranges: tuple[tuple[int, int, int], ...]  # (start_pfn, end_pfn, nid)

    def node_of(self, pfn: int) -> int:
        for start, end, nid in self.ranges:
            if start <= pfn < end:
                return nid
        return -1

    def nodes_of(self, pfns: np.ndarray) -> np.ndarray:
        nodes = np.full(pfns.shape, -1, dtype=np.int16)
        for start, end, nid in self.ranges:
            nodes[(pfns >= start) & (pfns < end)] = nid
        return nodes


def node_ranges(prog: Program) -> NodeRanges:
    """Each online node's pfn span (mm/mm_init.c: node_start_pfn, node_spanned_pages)."""
    from drgn.helpers.linux.nodemask import for_each_online_node

    ranges = []
    for nid in for_each_online_node(prog):
        pgdat = prog["node_data"][nid]
        start = pgdat.node_start_pfn.value_()
        ranges.append((start, start + pgdat.node_spanned_pages.value_(), nid))
    return NodeRanges(tuple(ranges))


def five_level(prog: Program) -> bool:
    """arch/x86/include/asm/pgtable_64_types.h:pgtable_l5_enabled (0 without CONFIG_X86_5LEVEL)."""
    try:
        return bool(prog["__pgtable_l5_enabled"].value_())
    except KeyError:
        return False


@dataclass(frozen=True, eq=False)
class PageTableWalk(Sequence[Entry]):
    """Leaf entries of one walk, as columns (all arrays have one element per entry)."""

    vaddr: np.ndarray
    raw: np.ndarray
    level: np.ndarray
    node: np.ndarray
    last_cpupid: np.ndarray | None = None  # -1 where unknown
    mapcount: np.ndarray | None = None  # page->_mapcount + 1; -1 where unknown
    folio_pages: np.ndarray | None = None  # base pages of the mapped folio; -1 where unknown
    # The pfns of the PMD and PTE tables walk() read (their struct ptdesc holds the split page
    # table locks: table_locks_held); None for a selection or a recording.
    tables: np.ndarray | None = None

    @property
    def present(self) -> np.ndarray:
        result: np.ndarray = (self.raw & PRESENT) != 0
        return result

    @property
    def hint(self) -> np.ndarray:
        result: np.ndarray = (self.raw & (PRESENT | PROTNONE)) == PROTNONE
        return result

    @property
    def pfn(self) -> np.ndarray:
        return _pfns(self.raw, self.level)

    @property
    def pages(self) -> np.ndarray:
        """Base pages each entry maps (1, 512 or 262,144)."""
        result: np.ndarray = PAGES_PER_LEVEL[self.level]
        return result

    def __len__(self) -> int:
        return int(self.vaddr.shape[0])

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        if isinstance(index, slice):
            return self.select(np.arange(len(self))[index])
        raw = int(self.raw[index])
        present, hint, pfn = decode(raw, int(self.level[index]))
        cpupid = None if self.last_cpupid is None or self.last_cpupid[index] < 0 else int(self.last_cpupid[index])
        mapcount = None if self.mapcount is None or self.mapcount[index] < 0 else int(self.mapcount[index])
        folio = None if self.folio_pages is None or self.folio_pages[index] < 0 else int(self.folio_pages[index])
        return Entry(int(self.vaddr[index]), LEVELS[int(self.level[index])], raw, present, hint, pfn,
                     int(self.node[index]), bool(raw & RW), bool(raw & ACCESSED), bool(raw & DIRTY), cpupid, mapcount,
                     folio)

    def columns(self) -> EntryColumns:
        """
        Every entry's fields as Python lists, decoded for all entries at once (as `present`,
        `hint` and `pfn` are). A loop over a whole region reads these far faster than Entry
        objects: per entry, __getitem__ makes a numpy scalar access for every field.

        :return: one list per field of Entry, each as long as the walk
        """
        raw = self.raw
        unknown: list[int | None] = [None] * len(self)

        def known(column: np.ndarray | None) -> list[int | None]:
            return unknown if column is None else [None if v < 0 else v for v in column.tolist()]

        return EntryColumns(self.vaddr.tolist(), self.level.tolist(), raw.tolist(), self.present.tolist(),
                            self.hint.tolist(), self.pfn.tolist(), self.node.tolist(), ((raw & RW) != 0).tolist(),
                            ((raw & ACCESSED) != 0).tolist(), ((raw & DIRTY) != 0).tolist(), known(self.last_cpupid),
                            known(self.mapcount), known(self.folio_pages))

    def __iter__(self) -> Iterator[Entry]:
        c = self.columns()
        for vaddr, level, raw, present, hint, pfn, node, writable, young, dirty, cpupid, mapcount, folio in zip(
                c.vaddr, c.level, c.entry, c.present, c.hint, c.pfn, c.node, c.writable, c.young, c.dirty,
                c.last_cpupid, c.mapcount, c.folio_pages, strict=True):
            yield Entry(vaddr, LEVELS[level], raw, present, hint, pfn, node, writable, young, dirty, cpupid, mapcount,
                        folio)

    def select(self, mask_or_index: np.ndarray) -> PageTableWalk:
        return PageTableWalk(
            self.vaddr[mask_or_index], self.raw[mask_or_index], self.level[mask_or_index], self.node[mask_or_index],
            None if self.last_cpupid is None else self.last_cpupid[mask_or_index],
            None if self.mapcount is None else self.mapcount[mask_or_index],
            None if self.folio_pages is None else self.folio_pages[mask_or_index],
        )

    def within(self, start: int, end: int) -> PageTableWalk:
        return self.select((self.vaddr >= np.uint64(start)) & (self.vaddr < np.uint64(end)))


def walk(prog: Program, mm: Object, start: int = 0, end: int = 1 << 57, *, nodes: NodeRanges | None = None) -> PageTableWalk:
    """
    Walk an address space's page tables (4 or 5 levels) and return every non-empty leaf entry
    (present, NUMA hint or swap) mapping [start, end) of its user half, as columns. Each table page is read whole
    (one physical read per table, not one object per entry).

    :param mm: ``struct mm_struct *``
    :param start: First virtual address.
    :param end: Virtual address after the last.
    :param nodes: The pfn span of each node, when already known (``node_ranges()``).
    """
    from drgn.helpers.linux.mm import virt_to_phys

    nodes = nodes or node_ranges(prog)
    # With 4 levels the p4d level is folded into the pgd, whose entries then cover 512 GiB each.
    shifts = [48, 39, 30, 21, 12] if five_level(prog) else [39, 30, 21, 12]
    # The top table's upper half maps the kernel (shared into every mm: the direct map, vmalloc,
    # the kernel image), not the task: user space ends at 1 << 47 (4 levels) or 1 << 56 (5 levels)
    # (arch/x86/include/asm/page_64_types.h:TASK_SIZE_MAX, one page less).
    end = min(end, 1 << (shifts[0] + 8))
    vaddr_chunks: list[np.ndarray] = []
    raw_chunks: list[np.ndarray] = []
    level_chunks: list[np.ndarray] = []
    tables: list[int] = []
    index = np.arange(512, dtype=np.uint64)

    def read_table(phys: int) -> np.ndarray:
        return np.frombuffer(prog.read(phys, PAGE_SIZE, True), dtype="<u8")

    def visit(table_phys: int, depth: int, base: int) -> None:
        shift = shifts[depth]
        span = 1 << shift
        if shift in (21, 12):
            tables.append(table_phys >> 12)
        entries = read_table(table_phys)
        vaddrs = np.uint64(base) + (index << np.uint64(shift))
        wanted = (entries != 0) & (vaddrs + np.uint64(span) > np.uint64(start)) & (vaddrs < np.uint64(end))
        if shift == 12:
            vaddr_chunks.append(vaddrs[wanted])
            raw_chunks.append(entries[wanted])
            level_chunks.append(np.zeros(int(wanted.sum()), dtype=np.uint8))
            return
        for slot in np.flatnonzero(wanted):
            raw = int(entries[slot])
            vaddr = base + int(slot) * span
            present = bool(raw & PRESENT)
            hint = (raw & (PRESENT | PROTNONE)) == PROTNONE
            if shift in (21, 30) and raw & PSE and (present or hint):
                vaddr_chunks.append(np.array([vaddr], dtype=np.uint64))
                raw_chunks.append(np.array([raw], dtype=np.uint64))
                level_chunks.append(np.array([1 if shift == 21 else 2], dtype=np.uint8))
            elif present:
                visit(raw & PFN_MASK, depth + 1, vaddr)

    visit(int(virt_to_phys(mm.pgd).value_()), 0, 0)
    table_pfns = np.array(tables, dtype=np.int64)
    if not vaddr_chunks:
        empty = np.zeros(0, dtype=np.uint64)
        return PageTableWalk(empty, empty, np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int16), tables=table_pfns)
    vaddr_all = np.concatenate(vaddr_chunks)
    raw_all = np.concatenate(raw_chunks)
    level_all = np.concatenate(level_chunks)
    order = np.argsort(vaddr_all, kind="stable")  # leaves of different levels interleave by address
    vaddr_all, raw_all, level_all = vaddr_all[order], raw_all[order], level_all[order]
    return PageTableWalk(vaddr_all, raw_all, level_all, nodes.nodes_of(_pfns(raw_all, level_all)), tables=table_pfns)


def table_locks_held(prog: Program, mm: Object, table: PageTableWalk) -> int:
    """
    Count the address space's page table locks that are held (or contended) at this moment:
    ``mm->page_table_lock`` and the split lock of every PMD and PTE table the walk read, in the
    table's ``struct ptdesc`` (``include/linux/mm.h:pte_lockptr``, ``pmd_lockptr``, ``ptlock_ptr``;
    with ``CONFIG_SPLIT_PTE_PTLOCKS``/``SPLIT_PMD_PTLOCKS``, else the word is unused and reads 0).

    Every rewrite of a user entry happens under its table's lock, and some leave it empty or
    non-present for a moment: ``ptep_modify_prot_start`` ... ``commit`` (``mm/mprotect.c:change_pte_range``,
    ``mm/memory.c:do_numa_page``), ``pmdp_invalidate`` ... ``set_pmd_at`` (``mm/huge_memory.c:change_huge_pmd``),
    the clear before a migration entry (``mm/rmap.c:try_to_migrate_one``). A walk of a paused
    guest with none of these locks held saw no entry half-rewritten.

    :param mm: ``struct mm_struct *``
    :param table: ``walk(prog, mm)``'s result, whose ``tables`` it reads.
    """
    from drgn import offsetof

    # A qspinlock's whole 32-bit word (locked byte, pending, tail) is 0 only when free and
    # uncontended (include/asm-generic/qspinlock_types.h); spinlock_t starts with it unless
    # lock debugging adds fields (then it is still first: raw_spinlock.raw_lock).
    held = int(mm.page_table_lock.rlock.raw_lock.val.counter.value_() != 0)
    if table.tables is None or table.tables.size == 0:
        return held
    try:
        desc = prog.type("struct ptdesc")  # 6.6 on
    except LookupError:
        desc = prog.type("struct page")  # before: page->ptl
    ptl = desc.member("ptl").type
    if ptl.unqualified().kind.name == "POINTER":  # ALLOC_SPLIT_PTLOCKS: a lock allocated apart
        pointers = page_field(prog, table.tables, offsetof(desc, "ptl"), "<u8")
        return held + sum(1 for p in pointers if p and int.from_bytes(prog.read(int(p), 4), "little"))
    words = page_field(prog, table.tables, offsetof(desc, "ptl"), "<u4")
    return held + int(np.count_nonzero(words))


def page_flags_layout(prog: Program) -> dict[str, int]:
    """NODES_PGSHIFT, LAST_CPUPID_PGSHIFT, ... from vmcoreinfo (exported by the default patch)."""
    data = prog.read(prog["vmcoreinfo_data"].value_(), prog["vmcoreinfo_size"].value_())
    layout = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("NUMBER(") and ")=" in line:
            name, value = line[len("NUMBER("):].split(")=", 1)
            with contextlib.suppress(ValueError):
                layout[name] = int(value)
    return layout


def vmemmap_base(prog: Program) -> int:
    """The struct page array (SPARSEMEM_VMEMMAP). A variable with CONFIG_DYNAMIC_MEMORY_LAYOUT
    (5-level paging, KASLR), else the fixed __VMEMMAP_BASE_L4 (asm/pgtable_64_types.h)."""
    try:
        return int(prog["vmemmap_base"].value_())
    except KeyError:
        return 0xFFFFEA0000000000


def page_flags(prog: Program, pfns: np.ndarray) -> np.ndarray:
    """page->flags for each pfn, reading runs of consecutive struct pages in one go."""
    return page_field(prog, pfns, 0, "<u8")


def page_field(prog: Program, pfns: np.ndarray, offset: int, dtype: str) -> np.ndarray:
    """One field of struct page (at byte `offset`, of numpy `dtype`) for each pfn, reading runs
    of consecutive struct pages in one go."""
    result = np.zeros(pfns.shape, dtype=dtype)
    if pfns.size == 0:
        return result
    base = vmemmap_base(prog)
    size = prog.type("struct page").size
    width = np.dtype(dtype).itemsize
    order = np.argsort(pfns, kind="stable")
    sorted_pfns = pfns[order].astype(np.int64)
    breaks = np.flatnonzero(np.diff(sorted_pfns) != 1) + 1
    for run in np.split(np.arange(sorted_pfns.size), breaks):
        first, count = int(sorted_pfns[run[0]]), int(sorted_pfns[run[-1]]) - int(sorted_pfns[run[0]]) + 1
        data = np.frombuffer(prog.read(base + first * size, count * size), dtype=np.uint8)
        starts = (sorted_pfns[run] - first) * size + offset
        picked = data[starts[:, None] + np.arange(width)].copy()
        result[order[run]] = picked.view(dtype).reshape(-1)
    return result


def with_last_cpupid(prog: Program, table: PageTableWalk) -> PageTableWalk:
    """The table with `last_cpupid` decoded from page->flags (raw field: cpu << 8 | pid & 0xff,
    include/linux/mm.h:cpu_pid_to_cpupid), using the layout the default patch exports."""
    layout = page_flags_layout(prog)
    width = layout.get("LAST_CPUPID_WIDTH", 0)
    if "LAST_CPUPID_PGSHIFT" not in layout or not width:
        return table
    # Only entries that map RAM of a known node have a struct page (not vvar's PFN, not swap entries).
    has_page = (table.present | table.hint) & (table.node >= 0)
    cpupid = np.full(len(table), -1, dtype=np.int64)
    # A large folio keeps it in its head page (folio_xchg_last_cpupid works on folio->flags); a
    # PMD entry already names its head, a PTE may map a tail page of an mTHP.
    pfns = table.pfn[has_page]
    is_pte = table.level[has_page] == 0
    pfns[is_pte] = folio_heads(prog, pfns[is_pte])[0]
    flags = page_flags(prog, pfns)
    cpupid[has_page] = ((flags >> np.uint64(layout["LAST_CPUPID_PGSHIFT"])) & np.uint64((1 << width) - 1)).astype(np.int64)
    return replace(table, last_cpupid=cpupid)


def folio_heads(prog: Program, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    The folio of each page: its head page's pfn and its size in base pages.

    A tail page's ``compound_head`` holds its head's address with bit 0 set
    (``include/linux/page-flags.h:_compound_head``); a head page has ``PG_head``, and its order
    is ``folio->_flags_1 & 0xff``, the first tail page's flags (``include/linux/mm.h:folio_large_order``).

    :param pfns: Page frame numbers of pages with a ``struct page``.
    :return: (head pfns, base pages per folio), one element per pfn.
    """
    from drgn import offsetof

    pfns = pfns.astype(np.int64)
    page = prog.type("struct page")
    base, size = np.uint64(vmemmap_base(prog)), np.uint64(page.size)
    compound = page_field(prog, pfns, offsetof(page, "compound_head"), "<u8")
    tail = (compound & np.uint64(1)) == np.uint64(1)
    heads = pfns.copy()
    heads[tail] = ((compound[tail] - np.uint64(1) - base) // size).astype(np.int64)
    head_flags = page_flags(prog, heads)
    large = ((head_flags >> np.uint64(prog["PG_head"].value_())) & np.uint64(1)) == np.uint64(1)
    nr_pages = np.ones(pfns.shape, dtype=np.int64)
    if large.any():
        order = page_flags(prog, heads[large] + 1) & np.uint64(0xFF)
        nr_pages[large] = np.left_shift(np.int64(1), order.astype(np.int64))
    return heads, nr_pages


def with_folios(prog: Program, table: PageTableWalk) -> PageTableWalk:
    """The table with `folio_pages`: the base pages of the folio each entry maps (a PTE may map
    one page of a large folio: an mTHP, mm/memory.c:alloc_anon_folio; a PMD maps a whole THP)."""
    has_page = (table.present | table.hint) & (table.node >= 0)
    folio = np.full(len(table), -1, dtype=np.int64)
    folio[has_page & (table.level == 1)] = 512
    ptes = has_page & (table.level == 0)
    folio[ptes] = folio_heads(prog, table.pfn[ptes])[1]
    return replace(table, folio_pages=folio)


def with_mapcount(prog: Program, table: PageTableWalk) -> PageTableWalk:
    """The table with each PTE's page->_mapcount + 1: the folio_mapcount of an order-0 folio,
    which change_pte_range tests (folio_likely_mapped_shared) to skip COW pages other processes
    map too, such as the vDSO's."""
    from drgn import offsetof

    has_page = (table.present | table.hint) & (table.node >= 0) & (table.level == 0)
    mapcount = np.full(len(table), -1, dtype=np.int64)
    offset = offsetof(prog.type("struct page"), "_mapcount")
    mapcount[has_page] = page_field(prog, table.pfn[has_page], offset, "<i4").astype(np.int64) + 1
    return replace(table, mapcount=mapcount)


def last_cpupids(prog: Program, entries: PageTableWalk) -> PageTableWalk:
    return with_last_cpupid(prog, entries)


def summarize(table: PageTableWalk) -> dict[str, Any]:
    """Counts of entries and base pages: present, hinted, and per node."""
    pages = table.pages
    by_node = {str(int(nid)): int(pages[table.node == nid].sum()) for nid in np.unique(table.node)}
    return {
        "entries": len(table),
        "pages": int(pages.sum()),
        "present": int(pages[table.present].sum()),
        "hint": int(pages[table.hint].sum()),
        "hint_entries": int(table.hint.sum()),
        "pmd_entries": int((table.level == 1).sum()),
        "pages_by_node": by_node,
    }
