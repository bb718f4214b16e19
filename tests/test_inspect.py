"""drgn inspection of the live guest, checked against the guest's own view of the same process
(/proc/PID/pagemap, move_pages, /proc/PID/sched, /proc/vmstat)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.checks.workload import FillKilled, HeldRegion, Region, WorkloadKilled, filled
from harness.guest.qemu import Guest
from harness.guest.view import GuestView
from harness.inspect import (
    InspectError,
    PageTableWalk,
    attach,
    find_mm,
    five_level,
    page_flags_layout,
    read_mm,
    read_task,
    read_vmas,
    read_vmstat,
    snapshot,
    summarize_by_vma,
    table_locks_held,
    vmemmap_base,
    walk,
    with_last_cpupid,
)

pytestmark = [pytest.mark.kernel, pytest.mark.guest]
SCAN_KNOBS = "/sys/kernel/debug/sched/numa_balancing"
CLI = [sys.executable, "-m", "harness.cli"]
EXAMPLES = Path(__file__).resolve().parent.parent / "harness/examples"


@pytest.fixture(scope="module")
def prog(guest: GuestView) -> Any:
    return attach(guest, guest.vmlinux)


@pytest.fixture
def region(guest: GuestView) -> Iterator[HeldRegion]:
    held = HeldRegion.start(guest, Region(32, node=0))
    yield held
    held.close()


@pytest.fixture
def fast_scanner(guest: GuestView) -> Iterator[None]:
    """Scan after 100 ms instead of 1 s, every 100 ms at most; restored afterwards (debugfs knobs
    exist with CONFIG_SCHED_DEBUG; scan_size_mb stays 256, which covers every test region)."""
    saved = guest.ssh.run(f"cat {SCAN_KNOBS}/scan_delay_ms {SCAN_KNOBS}/scan_period_min_ms").check().stdout.split()
    guest.ssh.run(f"echo 100 > {SCAN_KNOBS}/scan_delay_ms; echo 100 > {SCAN_KNOBS}/scan_period_min_ms").check()
    yield
    guest.ssh.run(f"echo {saved[0]} > {SCAN_KNOBS}/scan_delay_ms; echo {saved[1]} > {SCAN_KNOBS}/scan_period_min_ms; "
                  "echo 1 > /proc/sys/kernel/numa_balancing").check()


def _spin_until_hinted(guest: GuestView, prog: Any, held: HeldRegion, done: Callable[[PageTableWalk], bool],
                       node: int = 1, limit: float = 60.0) -> PageTableWalk:
    """Let the holder spin on `node` (so its scanner runs) until its region's walk satisfies `done`;
    a state the scanner must reach, so not reaching it within `limit` seconds of spinning fails."""
    spun = 0.0
    while True:
        with snapshot(guest):
            table = walk(prog, find_mm(prog, held.pid), held.addr, held.end)
        if done(table):
            return table
        assert spun < limit, f"after {spun:.0f} s of spinning: {int(table.hint.sum())} of {len(table)} entries hinted"
        held.spin(0.5, node=node)
        spun += 0.5


def _pagemap(guest: GuestView, r: HeldRegion) -> dict[int, int]:
    out = guest.ssh.run(f"nhmem pagemap {r.pid} {r.addr} {r.length}").check().stdout
    return {int(a, 16): int(b, 16) for a, b in (line.split() for line in out.splitlines())}


def _nodes(guest: GuestView, r: HeldRegion) -> dict[int, int]:
    out = guest.ssh.run(f"nhmem nodes {r.pid} {r.addr} {r.length}").check().stdout
    return {int(a, 16): int(b) for a, b in (line.split() for line in out.splitlines())}


def test_splitat_first_touches_each_part_on_its_node(guest: GuestView) -> None:
    """`nhmem hold ... split M splitat K`: pages before the K-th on the first node, the rest on M
    (numa-group's layout stands on it), by move_pages' own answer."""
    held = HeldRegion.start(guest, Region(4, node=0, split=1, split_at=300))
    try:
        nodes = _nodes(guest, held)
    finally:
        held.close()
    by_page = [nodes[held.addr + i * 4096] for i in range(held.length // 4096)]
    assert set(by_page[:300]) == {0} and set(by_page[300:]) == {1}, by_page


def test_splitat_outside_the_region_is_refused(guest: GuestView) -> None:
    out = guest.ssh.run("nhmem hold 4 node 0 split 1 splitat 1024 < /dev/null")
    assert out.exit_status == 1 and "splitat 1024: must name a page inside the region (1..1023)" in out.stderr, out


def test_a_holder_killed_by_a_signal_is_reported_naming_it_not_waited_out(guest: GuestView) -> None:
    """The holder's shell reports how nhmem ended on its channel: a step whose holder a signal
    killed raises WorkloadKilled with the signal's name, where waiting for its `ok` would only
    end at the step's timeout as a hang."""
    held = HeldRegion.start(guest, Region(4, node=0))
    try:
        line = "spin 600 node 0"
        held.send(line)
        guest.ssh.run(f"kill -BUS {held.pid}").check()
        with pytest.raises(WorkloadKilled, match="SIGBUS") as caught:
            held.wait(line)
        assert line in str(caught.value)
    finally:
        held.close()


def test_a_holder_answers_on_its_channel_and_close_leaves_no_process(guest: GuestView) -> None:
    """Commands and their answers travel on the holder's own channel (worker tids, `map`'s
    address); after close() neither the holder nor its shell is left in the guest."""
    held = HeldRegion.start(guest, Region(4, node=0, workers=2))
    try:
        tids = {held.worker_tid(w) for w in (1, 2)}
        assert len(tids) == 2 and held.pid not in tids
        mapped = held.map_late(0)
        assert mapped and not held.addr <= mapped < held.end
        held.touch(node=1, pages=16)
    finally:
        held.close()
    # The holder's shell is the one process whose command line says how nhmem ended ([ ] keeps
    # this command's own line from matching).
    left = guest.ssh.run(f"cat /proc/{held.pid}/stat 2>/dev/null; "
                         "for c in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $c; echo; done | grep 'nhmem[ ]exited'")
    assert left.stdout.strip() == "", left.stdout


def test_a_fill_the_oom_killer_ends_is_reported_at_once(guest: GuestView) -> None:
    """`nhmem fill` asked to leave a node no free page cannot get there: the OOM killer
    (CONSTRAINT_MEMORY_POLICY: the fill is bound to the node) ends it, and filled() raises
    FillKilled naming the signal, where it used to wait out its 120 s for a line that never came."""
    with pytest.raises(FillKilled, match="killed by SIGKILL"), filled(guest, 1, 0):
        pass
    # Neither the fill nor its shell is left (the shell's command line names the fill too).
    assert "nhmem fill 1 0" not in guest.ssh.run("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout


def test_walk_agrees_with_pagemap_and_move_pages(guest: GuestView, prog: Any, region: HeldRegion) -> None:
    with snapshot(guest):
        table = walk(prog, find_mm(prog, region.pid), region.addr, region.end)
    assert len(table) == region.length // 4096
    assert all(e.level == "pte" and e.present and not e.hint and e.writable and e.dirty for e in table)
    # The holder sleeps between the snapshot and these reads, and without hint faults nothing migrates.
    assert {e.vaddr: e.pfn for e in table} == _pagemap(guest, region)
    assert {e.vaddr: e.node for e in table} == _nodes(guest, region)
    assert set(_nodes(guest, region).values()) == {0}  # first touched from node 0's CPUs


def test_no_page_table_lock_of_a_sleeping_holder_reads_held(guest: GuestView, prog: Any, region: HeldRegion) -> None:
    """The holder sleeps on its channel, so none of its page table locks is held: the lock words
    table_locks_held reads (mm->page_table_lock, and each table's struct ptdesc->ptl) are all 0,
    where a wrong field of the table's struct page (flags with its zone bits, _refcount) is not.
    The walk read at least one PMD table and one PTE table per 2 MiB of the region."""
    with snapshot(guest):
        mm = find_mm(prog, region.pid)
        table = walk(prog, mm)
        held = table_locks_held(prog, mm, table)
    assert table.tables is not None and table.tables.size >= 1 + region.length // (2 << 20)
    assert held == 0


def test_thp_region_has_pmd_entries(guest: GuestView, prog: Any) -> None:
    held = HeldRegion.start(guest, Region(8, thp=True, node=0))
    try:
        with snapshot(guest):
            table = walk(prog, find_mm(prog, held.pid), held.addr, held.end)
        pmds = [e for e in table if e.level == "pmd"]
        assert len(pmds) == 4, "an MADV_HUGEPAGE region of 8 MiB should be four PMD mappings"
        pagemap = _pagemap(guest, held)
        for pmd in pmds:
            assert pmd.vaddr % (2 << 20) == 0 and pmd.pfn % 512 == 0
            for page in range(512):
                assert pagemap[pmd.vaddr + page * 4096] == pmd.pfn + page
    finally:
        held.close()


def test_hints_appear_after_scanning_and_vanish_on_access(
    guest: GuestView, prog: Any, region: HeldRegion, fast_scanner: None
) -> None:
    """The region was first touched on node 0; its task then runs on node 1 without touching it,
    so task_numa_work marks it (pages not on the scanning CPU's node are not skipped:
    mm/mprotect.c:change_pte_range). Touching it again restores every entry (do_numa_page)."""
    before = read_vmstat(prog)
    table = _spin_until_hinted(guest, prog, region, lambda w: len(w) > 0 and bool(w.hint.all()))
    with snapshot(guest):
        after_scan = read_vmstat(prog)
    assert int(table.hint.sum()) == len(table) == region.length // 4096
    assert not table.present.any()
    # The hint entries still name the same pages, stored inverted; pagemap agrees because x86's
    # pte_present() is true for protnone entries (asm/pgtable.h).
    assert {e.vaddr: e.pfn for e in table} == _pagemap(guest, region)
    assert set(table.node.tolist()) == {0}
    assert after_scan["numa_pte_updates"] - before["numa_pte_updates"] >= region.length // 4096
    # No more scanning from here: only the faults of the touch below change the entries (with
    # balancing off do_numa_page still restores them; fair.c:task_numa_fault records nothing).
    guest.ssh.run("echo 0 > /proc/sys/kernel/numa_balancing").check()
    region.touch(node=1)
    with snapshot(guest):
        touched = walk(prog, find_mm(prog, region.pid), region.addr, region.end)
        after_touch = read_vmstat(prog)
    assert not touched.hint.any() and touched.present.all()
    assert after_touch["numa_hint_faults"] - after_scan["numa_hint_faults"] >= region.length // 4096


def test_thp_region_gets_a_pmd_level_hint(guest: GuestView, prog: Any, fast_scanner: None) -> None:
    held = HeldRegion.start(guest, Region(8, thp=True, node=0))
    try:
        before = read_vmstat(prog)
        table = _spin_until_hinted(guest, prog, held, lambda w: int(w.hint[w.level == 1].sum()) == 4)
        with snapshot(guest):
            after = read_vmstat(prog)
        pmds = [e for e in table if e.level == "pmd"]
        assert len(pmds) == 4 and all(e.hint and not e.present for e in pmds)
        # The hinted PMD still names the THP's head page (its pfn is stored inverted above bit
        # 21 only): the same pfns pagemap reports, and the head's page->flags hold last_cpupid.
        pagemap = _pagemap(guest, held)
        assert [e.pfn for e in pmds] == [pagemap[e.vaddr] for e in pmds]
        assert all(e.pfn % 512 == 0 for e in pmds)
        # mm/mprotect.c:change_pmd_range counts each PMD once, and 512 base pages (change_prot_numa).
        assert after["numa_huge_pte_updates"] - before["numa_huge_pte_updates"] >= 4
    finally:
        held.close()


def test_task_state_matches_proc_sched(guest: GuestView, prog: Any, region: HeldRegion, fast_scanner: None) -> None:
    _spin_until_hinted(guest, prog, region, lambda w: len(w) > 0 and bool(w.hint.all()))
    # Balancing stays on: with it off, do_numa_page still restores the entries but
    # kernel/sched/fair.c:task_numa_fault returns before recording anything.
    region.touch(node=1)  # hint faults: numa_faults buckets and locality get filled
    sched = guest.ssh.run(f"cat /proc/{region.pid}/sched").check().stdout
    with snapshot(guest):
        task = read_task(prog, region.pid)
        mm = read_mm(prog, region.pid)
    fields = {}
    for line in sched.splitlines():
        if ":" in line and not line.startswith("numa_faults"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    assert int(fields["mm->numa_scan_seq"]) == mm.numa_scan_seq >= 1
    assert int(fields["numa_pages_migrated"]) == task.numa_pages_migrated
    assert int(fields["numa_preferred_nid"]) == task.numa_preferred_nid
    assert int(fields["total_numa_faults"]) == task.total_numa_faults
    per_node = [line for line in sched.splitlines() if line.startswith("numa_faults node=")]
    for line in per_node:
        values = dict(word.split("=") for word in line.replace("numa_faults ", "").split())
        node = int(values["node"])
        assert (int(values["task_shared"]), int(values["task_private"])) == task.faults["mem"][node]
    assert sum(task.locality) > 0


def test_kernel_counters_bracket_proc_vmstat(guest: GuestView, prog: Any) -> None:
    """read_vmstat sums the same per-CPU counters /proc/vmstat does; read just before and after,
    the kernel's values bracket the guest's (counters only grow)."""
    with snapshot(guest):
        low = read_vmstat(prog)
    proc = dict(line.split() for line in guest.ssh.run("cat /proc/vmstat").check().stdout.splitlines())
    with snapshot(guest):
        high = read_vmstat(prog)
    for name in low:
        assert low[name] <= int(proc[name]) <= high[name], name


def test_per_vma_summary(guest: GuestView, prog: Any, region: HeldRegion) -> None:
    with snapshot(guest):
        vmas = read_vmas(prog, region.pid)
        rows = summarize_by_vma(walk(prog, find_mm(prog, region.pid)), vmas)
    holding = [row for row in rows if row["start"] <= region.addr and region.end <= row["end"]]
    assert len(holding) == 1 and not holding[0]["file_backed"]
    assert holding[0]["present"] >= region.length // 4096
    assert any(row["file_backed"] for row in rows)  # the nhmem binary's own mappings


def test_shared_policy_of_a_quiet_holder_stays_with_its_copy(guest: GuestView, prog: Any) -> None:
    """vma_policy_mof as task_numa_work sees it: a quiet holder's mbind of its program's
    file-backed mappings lands in the shmem inode's shared policy (the guest's root is tmpfs),
    which read_vmas finds (MPOL_BIND without MPOL_F_MOF: not scannable). The holder runs its own
    copy of nhmem, so a holder started after it finds its program's mappings without a policy."""
    quiet = HeldRegion.start(guest, Region(2, node=0, quiet=True))
    try:
        with snapshot(guest):
            quiet_vmas = read_vmas(prog, quiet.pid)
        plain = HeldRegion.start(guest, Region(2, node=0))
        try:
            with snapshot(guest):
                plain_vmas = read_vmas(prog, plain.pid)
        finally:
            plain.close()
    finally:
        quiet.close()
    quiet_files = [v for v in quiet_vmas if v.file_backed]
    assert quiet_files and all(v.policy_mof is False for v in quiet_files), quiet_files
    plain_files = [v for v in plain_vmas if v.file_backed]
    assert plain_files and all(v.policy_mof is None for v in plain_files), plain_files


def test_page_flags_layout_patch_decodes_nodes_live(guest: GuestView, prog: Any, region: HeldRegion) -> None:
    """The default patch's vmcoreinfo numbers decode page->flags into the same node as the node
    pfn ranges (and last_cpupid is readable)."""
    layout = page_flags_layout(prog)
    for name in ("NODES_PGSHIFT", "NODES_WIDTH", "LAST_CPUPID_PGSHIFT", "LAST_CPUPID_WIDTH", "LAST__CPU_SHIFT"):
        assert name in layout, name
    with snapshot(guest):
        table = with_last_cpupid(prog, walk(prog, find_mm(prog, region.pid), region.addr, region.addr + 64 * 4096))
        page_size = prog.type("struct page").size
        flags = [prog.read_u64(vmemmap_base(prog) + e.pfn * page_size) for e in table]
    mask = (1 << layout["NODES_WIDTH"]) - 1
    assert [(f >> layout["NODES_PGSHIFT"]) & mask for f in flags] == [e.node for e in table]
    assert all(e.last_cpupid is not None for e in table)


def test_paging_levels_follow_the_guest_cpu(guest: GuestView, prog: Any) -> None:
    """The walker's level count is the guest's: 5 when its CPU has LA57 (TCG's -cpu max) and the
    config has X86_5LEVEL, 4 otherwise (KVM with -cpu host on a host without LA57)."""
    flags = guest.ssh.run("grep -m1 '^flags' /proc/cpuinfo").check().stdout.split()
    assert five_level(prog) is ("la57" in flags)


def test_snapshot_really_pauses(guest: GuestView, prog: Any) -> None:
    """Inside a snapshot the guest's jiffies stay put while the host's clock moves on by ten of
    the guest's ticks; after it, a guest-side sleep (which needs guest ticks to end) moves them."""
    hz = int(guest.ssh.run("zcat /proc/config.gz | grep '^CONFIG_HZ='").check().stdout.strip().split("=")[1])
    with snapshot(guest):
        assert guest.running() is False
        first = prog["jiffies"].value_()
        host_ticks_later = time.monotonic() + 10 / hz
        while time.monotonic() < host_ticks_later:
            assert prog["jiffies"].value_() == first
    assert guest.ssh.run("sleep 0.1").exit_status == 0  # 0.1 s of the guest's own time
    assert prog["jiffies"].value_() > first


def test_bad_pid_is_a_clear_error(prog: Any) -> None:
    with pytest.raises(InspectError, match="No task with pid 999999"):
        find_mm(prog, 999999)
    with pytest.raises(InspectError, match="kernel thread"):
        find_mm(prog, 2)


def test_guest_that_is_down_is_a_clear_error(guest_factory: Callable[..., Guest]) -> None:
    gone = guest_factory()
    gone.shutdown()
    with pytest.raises(InspectError, match="is the guest still up"):
        attach(gone, gone.vmlinux)


def test_cli_ptes_json_and_errors(guest: GuestView, region: HeldRegion) -> None:
    name = f"cli{region.pid}"
    kernel_dir = str(guest.config.kernel_dir)  # type: ignore[attr-defined]
    up = subprocess.run([*CLI, "up", "--name", name, "--kernel", kernel_dir], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        ssh = [*CLI, "ssh", name, "--"]
        pid = subprocess.run([*ssh, "sh", "-c", "sleep 100000 | nhmem hold 4 > /tmp/h & sleep 1; cat /tmp/h"],
                             capture_output=True, text=True, timeout=120).stdout.split()
        addr, length = int(pid[3], 16), int(pid[5])
        out = subprocess.run([*CLI, "inspect", name, "ptes", "--pid", pid[1], "--range", f"{addr:#x}-{addr + length:#x}",
                              "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["summary"]["pages"] == length // 4096 == len(data["entries"])
        assert set(data["entries"][0]) >= {"vaddr", "level", "entry", "present", "hint", "pfn", "node", "writable",
                                           "young", "dirty", "last_cpupid"}
        unmapped = subprocess.run([*CLI, "inspect", name, "ptes", "--pid", pid[1], "--range", "0x1000-0x2000"],
                                  capture_output=True, text=True, timeout=120)
        assert unmapped.returncode == 2 and "Nothing is mapped in 0x1000-0x2000" in unmapped.stderr
        nopid = subprocess.run([*CLI, "inspect", name, "task", "--pid", "999999"], capture_output=True, text=True)
        assert nopid.returncode == 2 and "No task with pid 999999" in nopid.stderr
        task = subprocess.run([*CLI, "inspect", name, "task", "--pid", pid[1], "--json"], capture_output=True, text=True)
        assert json.loads(task.stdout)["task"]["pid"] == int(pid[1])
        tasks = subprocess.run([*CLI, "drgn", name, str(EXAMPLES / "numa_tasks.py")], capture_output=True, text=True)
        assert tasks.returncode == 0, tasks.stderr
        assert any(line.split()[:2] == [pid[1], "nhmem"] for line in tasks.stdout.splitlines()), tasks.stdout
        hints = subprocess.run([*CLI, "drgn", name, str(EXAMPLES / "hint_map.py"), pid[1]], capture_output=True, text=True)
        assert hints.returncode == 0, hints.stderr
        # The held region's VMA is anonymous, and its 2 MiB cells show the node of its present pages.
        anon_cells = [line.split()[-1] for line in hints.stdout.splitlines() if " anon " in line]
        assert any(set(cells) & set("0123456789") for cells in anon_cells), hints.stdout
        repl = subprocess.run([*CLI, "drgn", name], input="print('jiffies', int(prog['jiffies']) > 0)\n",
                              capture_output=True, text=True, timeout=60)
        assert "jiffies True" in repl.stdout, repl.stdout + repl.stderr
    finally:
        subprocess.run([*CLI, "down", name], capture_output=True, timeout=60)
    down = subprocess.run([*CLI, "inspect", name, "vmstat"], capture_output=True, text=True)
    assert down.returncode == 2 and f"No running guest named '{name}'" in down.stderr


def test_four_level_guest_walks_the_same(guest_factory: Callable[..., Guest]) -> None:
    """`no5lvl` (arch/x86/boot/compressed/pgtable_64.c, arch/x86/kernel/cpu/common.c) makes the
    same kernel use 4-level paging even though the CPU has LA57: the walker must then fold the
    p4d level and still agree with pagemap."""
    four = guest_factory(cmdline=("no5lvl",))
    prog4 = attach(four, four.vmlinux)
    assert five_level(prog4) is False
    held = HeldRegion.start(four, Region(16, node=1))
    try:
        with snapshot(four):
            table = walk(prog4, find_mm(prog4, held.pid), held.addr, held.end)
        assert len(table) == held.length // 4096
        assert {e.vaddr: e.pfn for e in table} == _pagemap(four, held)
        assert {e.vaddr: e.node for e in table} == _nodes(four, held) == dict.fromkeys(_nodes(four, held), 1)
    finally:
        held.close()
