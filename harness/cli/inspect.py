"""Looking inside a running guest from the command line: `inspect NAME ptes|task|vmstat` (tables
or JSON) and `drgn NAME [SCRIPT]` (drgn's own interactive mode, or a script, on the live guest)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import drgn
import drgn.cli
from rich.console import Console
from rich.table import Table

from harness import inspect as nh
from harness.cli.options import cache_root
from harness.errors import BadInput
from harness.guest import registry
from harness.inspect import (
    attach,
    find_mm,
    read_balancing,
    read_mm,
    read_task,
    read_vmas,
    read_vmstat,
    snapshot,
    summarize,
    summarize_by_vma,
    walk,
    with_last_cpupid,
)


def _parse_range(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1 << 57
    match = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)-(0x[0-9a-fA-F]+|\d+)", text)
    if not match or int(match.group(1), 0) >= int(match.group(2), 0):
        raise BadInput(f"--range {text}: expected START-END with START < END, e.g. 0x7f0000000000-0x7f0000400000.")
    return int(match.group(1), 0), int(match.group(2), 0)


def cmd_inspect_ptes(args: argparse.Namespace) -> int:
    guest = registry.attached(cache_root(args), args.name)
    start, end = _parse_range(args.range)
    prog = attach(guest, guest.vmlinux)
    with snapshot(guest):
        table = with_last_cpupid(prog, walk(prog, find_mm(prog, args.pid), start, end))
    if args.range and not len(table):
        raise BadInput(f"Nothing is mapped in {args.range} of pid {args.pid}. Check /proc/{args.pid}/maps in the guest.")
    summary = summarize(table)
    if args.json:
        print(json.dumps({"entries": [e.as_json() for e in table], "summary": summary}))
        return 0
    rows = Table("vaddr", "level", "entry", "present", "hint", "pfn", "node", "w", "young", "dirty", "last_cpupid")
    for e in table[: args.limit]:
        rows.add_row(f"{e.vaddr:#x}", e.level, f"{e.entry:#018x}", str(int(e.present)), str(int(e.hint)),
                     f"{e.pfn:#x}", str(e.node), str(int(e.writable)), str(int(e.young)), str(int(e.dirty)),
                     "" if e.last_cpupid is None else f"{e.last_cpupid:#x}")
    console = Console()
    console.print(rows)
    if len(table) > args.limit:
        console.print(f"... {len(table) - args.limit} more entries (--limit, or --json for all)")
    console.print(summary)
    return 0


def cmd_inspect_task(args: argparse.Namespace) -> int:
    guest = registry.attached(cache_root(args), args.name)
    prog = attach(guest, guest.vmlinux)
    with snapshot(guest):
        task = read_task(prog, args.pid)
        mm = read_mm(prog, args.pid)
        vmas = read_vmas(prog, args.pid)
        balancing = read_balancing(prog)
        by_vma = summarize_by_vma(walk(prog, find_mm(prog, args.pid)), vmas)
    result = {"task": task.as_json(), "mm": mm.as_json(), "balancing": balancing.as_json(),
              "vmas": [{**v.as_json(), "pages": row} for v, row in zip(vmas, by_vma, strict=True)]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console = Console()
    console.print(f"[bold]{task.comm}[/bold] pid {task.pid} on cpu {task.cpu}: scan_seq {task.numa_scan_seq}, "
                  f"scan_period {task.numa_scan_period} ms (max {task.numa_scan_period_max}), preferred nid "
                  f"{task.numa_preferred_nid}, pages migrated {task.numa_pages_migrated}, locality "
                  f"remote/local/failed {task.locality}")
    console.print(f"mm: numa_next_scan {mm.numa_next_scan} (jiffies now {balancing.jiffies}), scan_offset "
                  f"{mm.numa_scan_offset:#x}, scan_seq {mm.numa_scan_seq}, mm_users {mm.mm_users}")
    faults = Table("node", *[f"{stat} shared/private" for stat in task.faults])
    for nid in range(len(task.faults["mem"])):
        faults.add_row(str(nid), *[f"{v[nid][0]}/{v[nid][1]}" for v in task.faults.values()])
    console.print(faults)
    vma_table = Table("start", "end", "file", "numab (start_seq/prev_seq/next_scan)", "present", "hint", "by node")
    for vma, row in zip(vmas, by_vma, strict=True):
        numab = vma.numab
        vma_table.add_row(f"{vma.start:#x}", f"{vma.end:#x}", str(int(vma.file_backed)),
                          f"{numab['start_scan_seq']}/{numab['prev_scan_seq']}/{numab['next_scan']}" if numab else "-",
                          str(row["present"]), str(row["hint"]), json.dumps(row["pages_by_node"]))
    console.print(vma_table)
    console.print(f"balancing mode {balancing.mode}, tunables {balancing.tunables}")
    return 0


def cmd_inspect_vmstat(args: argparse.Namespace) -> int:
    guest = registry.attached(cache_root(args), args.name)
    prog = attach(guest, guest.vmlinux)
    with snapshot(guest):
        counters = read_vmstat(prog)
    if args.json:
        print(json.dumps(counters, indent=2))
    else:
        for name, value in counters.items():
            print(f"{name} {value}")
    return 0


def cmd_drgn(args: argparse.Namespace) -> int:
    """drgn's interactive mode (or SCRIPT, run as `drgn SCRIPT` runs it) with `prog` attached to the
    guest and made the default program, so helpers called without a prog work as in drgn's CLI;
    `guest` and `nh` (harness.inspect) are added to the globals."""
    guest = registry.attached(cache_root(args), args.name)
    prog = attach(guest, guest.vmlinux)
    drgn.set_default_prog(prog)
    if args.script:
        namespace = _script_globals(prog)
        namespace.update({"guest": guest, "nh": nh, "__name__": "__main__", "__file__": str(args.script)})
        sys.argv = [str(args.script), *args.script_args]
        exec(compile(Path(args.script).read_text(), str(args.script), "exec"), namespace)
        return 0

    def add_ours(globals_: dict[str, object]) -> dict[str, object]:
        return {**globals_, "guest": guest, "nh": nh}

    drgn.cli.run_interactive(prog, banner_func=lambda banner: f"{banner}\nguest {args.name}: guest, nh = harness.inspect",
                             globals_func=add_ours)
    return 0


def _script_globals(prog: drgn.Program) -> dict[str, object]:
    """What drgn gives a script: drgn's and its helpers' names, and prog (drgn.cli does the same)."""
    import importlib

    namespace: dict[str, object] = {"prog": prog, "drgn": drgn}
    for module_name in ("drgn", "drgn.helpers.common", "drgn.helpers.linux"):
        module = importlib.import_module(module_name)
        namespace.update({name: getattr(module, name) for name in getattr(module, "__all__", [])})
    return namespace
