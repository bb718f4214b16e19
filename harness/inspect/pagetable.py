"""Live inspection of the guest kernel from the host with drgn (over QEMU's QMP socket).

The page-table walk reads each page-table page whole (one 4 KiB physical read through drgn) and
decodes its 512 entries in Python, instead of building a drgn Object per entry: a 1 GiB mapping
is 512 PTE pages, not 262,144 objects.

x86_64 entry bits (arch/x86/include/asm/pgtable_types.h): PRESENT 0, RW 1, ACCESSED 5, DIRTY 6,
PSE 7 (a huge leaf at PMD/PUD level), PROTNONE 8 (aliases GLOBAL, meaningful when PRESENT is
clear). A NUMA hint entry is `(entry & 0x101) == 0x100` (asm/pgtable.h:pte_protnone), and a
non-present entry stores its PFN inverted (asm/pgtable-invert.h:__pte_needs_invert, L1TF).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import HarnessError
from .vm import GuestView

PRESENT, RW, ACCESSED, DIRTY, PSE, PROTNONE = 1 << 0, 1 << 1, 1 << 5, 1 << 6, 1 << 7, 1 << 8
PFN_MASK = 0x000FFFFFFFFFF000
PAGE_SIZE = 4096
LEVEL_SHIFTS = {"pgd": 48, "p4d": 39, "pud": 30, "pmd": 21, "pte": 12}


class InspectError(HarnessError):
    """The guest cannot be inspected as asked (down, no such pid, unmapped range)."""


def attach(view: GuestView, vmlinux: Path | None) -> Any:
    """A drgn Program on the live guest (its second QMP socket) with the build's vmlinux."""
    import drgn

    if vmlinux is None or not vmlinux.is_file():
        raise InspectError("This guest has no vmlinux recorded; boot a kernel built by `numa-harness build`.")
    if not view.paths.drgn_qmp.exists():
        raise InspectError(f"The guest's drgn QMP socket {view.paths.drgn_qmp} is gone: is the guest still up?")
    prog = drgn.Program()
    try:
        prog.set_qemu_qmp(str(view.paths.drgn_qmp))
    except Exception as err:  # drgn raises plain exceptions for connection problems
        raise InspectError(f"drgn could not attach to {view.paths.drgn_qmp}: {err}. Is the guest still up?") from err
    prog.load_debug_info([str(vmlinux)])
    return prog


@contextlib.contextmanager
def snapshot(view: GuestView) -> Iterator[None]:
    """The guest paused (QMP stop) while reading, so what is read is one consistent state."""
    with view.paused():
        yield


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

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def decode(raw: int) -> tuple[bool, bool, int]:
    """(present, NUMA hint, pfn) of one entry."""
    present = bool(raw & PRESENT)
    hint = (raw & (PRESENT | PROTNONE)) == PROTNONE
    pfn = ((~raw if not present else raw) & PFN_MASK) >> 12
    return present, hint, pfn


@dataclass(frozen=True)
class NodeRanges:
    ranges: tuple[tuple[int, int, int], ...]  # (start_pfn, end_pfn, nid)

    def node_of(self, pfn: int) -> int:
        for start, end, nid in self.ranges:
            if start <= pfn < end:
                return nid
        return -1


def node_ranges(prog: Any) -> NodeRanges:
    from drgn.helpers.linux.nodemask import for_each_online_node

    ranges = []
    for nid in for_each_online_node(prog):
        pgdat = prog["node_data"][nid]
        start = pgdat.node_start_pfn.value_()
        ranges.append((start, start + pgdat.node_spanned_pages.value_(), nid))
    return NodeRanges(tuple(ranges))


def five_level(prog: Any) -> bool:
    try:
        return bool(prog["__pgtable_l5_enabled"].value_())
    except KeyError:
        return False


def find_mm(prog: Any, pid: int) -> Any:
    from drgn.helpers.linux.pid import find_task

    task = find_task(prog, pid)
    if not task:
        raise InspectError(f"No task with pid {pid} in the guest. Check the pid (`numa-harness ssh NAME -- ps`).")
    if not task.mm:
        raise InspectError(f"Task {pid} ({task.comm.string_().decode()}) is a kernel thread: it has no address space.")
    return task.mm


def walk(prog: Any, mm: Any, start: int = 0, end: int = 1 << 57, *, nodes: NodeRanges | None = None) -> list[Entry]:
    """Every mapped leaf entry (present or not, non-zero) of `mm` in [start, end)."""
    nodes = nodes or node_ranges(prog)
    from drgn.helpers.linux.mm import virt_to_phys

    # With 4 levels the p4d level is folded into the pgd, which then covers 512 GiB per entry.
    levels = ["pgd", "p4d", "pud", "pmd", "pte"] if five_level(prog) else ["pgd", "pud", "pmd", "pte"]
    shifts = dict(LEVEL_SHIFTS) if five_level(prog) else {"pgd": 39, "pud": 30, "pmd": 21, "pte": 12}
    top = virt_to_phys(mm.pgd).value_()
    out: list[Entry] = []

    def read_table(phys: int) -> tuple[int, ...]:
        return struct.unpack("<512Q", prog.read(phys, PAGE_SIZE, True))

    def visit(table_phys: int, depth: int, base: int) -> None:
        level = levels[depth]
        shift = shifts[level]
        span = 1 << shift
        entries = read_table(table_phys)
        first = max(0, (start - base) >> shift) if start > base else 0
        for index in range(first, 512):
            vaddr = base + index * span
            if vaddr >= end:
                break
            raw = entries[index]
            if raw == 0 or vaddr + span <= start:
                continue
            present, hint, pfn = decode(raw)
            leaf = level == "pte" or (level in ("pmd", "pud") and raw & PSE and (present or hint))
            if leaf:
                out.append(Entry(
                    vaddr, level, raw, present, hint, pfn, nodes.node_of(pfn),
                    bool(raw & RW), bool(raw & ACCESSED), bool(raw & DIRTY),
                ))
            elif present:
                visit(raw & PFN_MASK, depth + 1, vaddr)

    visit(top, 0, 0)
    return out


def page_flags_layout(prog: Any) -> dict[str, int]:
    """NODES_PGSHIFT, LAST_CPUPID_PGSHIFT, ... from vmcoreinfo (exported by the default patch)."""
    data = prog.read(prog["vmcoreinfo_data"].value_(), prog["vmcoreinfo_size"].value_())
    layout = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("NUMBER(") and ")=" in line:
            name, value = line[len("NUMBER("):].split(")=", 1)
            with contextlib.suppress(ValueError):
                layout[name] = int(value)
    return layout


def last_cpupids(prog: Any, entries: list[Entry]) -> list[Entry]:
    """Entries with `last_cpupid` decoded from page->flags (raw field value: cpu << 8 | pid & 0xff)."""
    layout = page_flags_layout(prog)
    if "LAST_CPUPID_PGSHIFT" not in layout or not layout.get("LAST_CPUPID_WIDTH"):
        return entries
    shift, width = layout["LAST_CPUPID_PGSHIFT"], layout["LAST_CPUPID_WIDTH"]
    vmemmap = vmemmap_base(prog)
    page_size = prog.type("struct page").size
    result = []
    for entry in entries:
        flags = prog.read_u64(vmemmap + entry.pfn * page_size)
        cpupid = (flags >> shift) & ((1 << width) - 1)
        result.append(Entry(**{**asdict(entry), "last_cpupid": cpupid}))
    return result


def vmemmap_base(prog: Any) -> int:
    """The struct page array (SPARSEMEM_VMEMMAP). A variable with CONFIG_DYNAMIC_MEMORY_LAYOUT
    (5-level paging, KASLR), else the fixed __VMEMMAP_BASE_L4 (asm/pgtable_64_types.h)."""
    try:
        return int(prog["vmemmap_base"].value_())
    except KeyError:
        return 0xFFFFEA0000000000


def summarize(entries: list[Entry]) -> dict[str, Any]:
    by_node: dict[str, int] = {}
    for entry in entries:
        pages = 512 if entry.level == "pmd" else 1
        by_node[str(entry.node)] = by_node.get(str(entry.node), 0) + pages
    return {
        "entries": len(entries),
        "pages": sum(512 if e.level == "pmd" else 1 for e in entries),
        "present": sum(1 for e in entries if e.present),
        "hint": sum(1 for e in entries if e.hint),
        "pmd_entries": sum(1 for e in entries if e.level == "pmd"),
        "pages_by_node": by_node,
    }
