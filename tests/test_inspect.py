"""drgn inspection of the live guest, checked against the guest's own view of the same process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.inspect import (
    InspectError,
    attach,
    find_mm,
    five_level,
    last_cpupids,
    page_flags_layout,
    snapshot,
    vmemmap_base,
    walk,
)
from harness.vm import GuestView

pytestmark = [pytest.mark.kernel, pytest.mark.guest]


@pytest.fixture(scope="module")
def prog(guest: GuestView) -> Any:
    return attach(guest, guest.vmlinux)  # type: ignore[attr-defined]


class Region:
    def __init__(self, guest: GuestView, mib: int, *extra: str) -> None:
        tag = f"/tmp/nhmem-{time.monotonic_ns()}"
        guest.ssh.run(f"sleep 100000 | nhmem hold {mib} {' '.join(extra)} > {tag}.out 2>&1 & echo $! > {tag}.pid").check()
        deadline = time.monotonic() + 60
        words: list[str] = []
        while time.monotonic() < deadline and len(words) < 6:
            words = guest.ssh.run(f"cat {tag}.out").stdout.split()
            time.sleep(0.1)
        assert words[:1] == ["pid"], words
        self.guest, self.tag = guest, tag
        self.pid, self.addr, self.length = int(words[1]), int(words[3], 16), int(words[5])

    def close(self) -> None:
        self.guest.ssh.run(f"kill {self.pid}")


@pytest.fixture
def region(guest: GuestView) -> Iterator[Region]:
    held = Region(guest, 32)
    yield held
    held.close()


def _pagemap(guest: GuestView, r: Region) -> dict[int, int]:
    out = guest.ssh.run(f"nhmem pagemap {r.pid} {r.addr} {r.length}").check().stdout
    return {int(a, 16): int(b, 16) for a, b in (line.split() for line in out.splitlines())}


def _nodes(guest: GuestView, r: Region) -> dict[int, int]:
    out = guest.ssh.run(f"nhmem nodes {r.pid} {r.addr} {r.length}").check().stdout
    return {int(a, 16): int(b) for a, b in (line.split() for line in out.splitlines())}


def test_walk_agrees_with_pagemap_and_move_pages(guest: GuestView, prog: Any, region: Region) -> None:
    with snapshot(guest):
        entries = walk(prog, find_mm(prog, region.pid), region.addr, region.addr + region.length)
    assert len(entries) == region.length // 4096
    assert all(e.level == "pte" and e.present and not e.hint and e.writable and e.dirty for e in entries)
    # Nothing runs between the snapshot and these reads that would move the pages (no NUMA
    # migration happens without hint faults, and the holder sleeps).
    assert {e.vaddr: e.pfn for e in entries} == _pagemap(guest, region)
    assert {e.vaddr: e.node for e in entries} == _nodes(guest, region)


def test_thp_region_has_pmd_entries(guest: GuestView, prog: Any) -> None:
    held = Region(guest, 8, "thp")
    try:
        with snapshot(guest):
            entries = walk(prog, find_mm(prog, held.pid), held.addr, held.addr + held.length)
        pmds = [e for e in entries if e.level == "pmd"]
        assert pmds, "no PMD-level entries for an MADV_HUGEPAGE region"
        pagemap = _pagemap(guest, held)
        for pmd in pmds:
            assert pmd.vaddr % (2 << 20) == 0 and pmd.pfn % 512 == 0
            for page in range(512):
                assert pagemap[pmd.vaddr + page * 4096] == pmd.pfn + page
    finally:
        held.close()


def test_page_flags_layout_patch_decodes_nodes_live(guest: GuestView, prog: Any, region: Region) -> None:
    """The default patch's vmcoreinfo numbers decode page->flags into the same node as the node
    pfn ranges (and last_cpupid is readable)."""
    layout = page_flags_layout(prog)
    for name in ("NODES_PGSHIFT", "NODES_WIDTH", "LAST_CPUPID_PGSHIFT", "LAST_CPUPID_WIDTH", "LAST__CPU_SHIFT"):
        assert name in layout, name
    with snapshot(guest):
        entries = last_cpupids(prog, walk(prog, find_mm(prog, region.pid), region.addr, region.addr + 64 * 4096))
        page_size = prog.type("struct page").size
        flags = [prog.read_u64(vmemmap_base(prog) + e.pfn * page_size) for e in entries]
    mask = (1 << layout["NODES_WIDTH"]) - 1
    assert [(f >> layout["NODES_PGSHIFT"]) & mask for f in flags] == [e.node for e in entries]
    assert all(e.last_cpupid is not None for e in entries)


def test_tcg_guest_uses_five_level_paging(prog: Any) -> None:
    assert five_level(prog) is True  # -cpu max has LA57 and the config has X86_5LEVEL


def test_snapshot_really_pauses(guest: GuestView, prog: Any) -> None:
    with snapshot(guest):
        first = prog["jiffies"].value_()
        time.sleep(0.5)
        assert prog["jiffies"].value_() == first
    time.sleep(0.5)
    assert prog["jiffies"].value_() > first
    assert guest.ssh.run("true").exit_status == 0


def test_bad_pid_is_a_clear_error(prog: Any) -> None:
    with pytest.raises(InspectError, match="No task with pid 999999"):
        find_mm(prog, 999999)
    with pytest.raises(InspectError, match="kernel thread"):
        find_mm(prog, 2)
