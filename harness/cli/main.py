"""The `numa-harness` command line. Each subcommand is a thin layer over a stage's Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness import __version__
from harness.cache import default_cache_root, read_json
from harness.errors import HarnessError
from harness.guest.launch import LaunchRequest, make_guest, resolve_kernel
from harness.guest.procs import pid_alive
from harness.guest.qemu import AttachedGuest
from harness.guest.supervisor import registry_dir
from harness.guest.topology import parse_topology
from harness.kernel.pipeline import BuildRequest, build, merged_config

# Exit statuses of `numa-harness run` (documented in the README): the command's own status, or
EXIT_HARNESS_FAILED = 125  # the harness failed before or around the command (build, boot, SSH, bad input)
EXIT_KERNEL_BUG = 126  # the guest kernel logged a bug (oops, WARNING, panic...) while the command ran
EXIT_INTERRUPTED = 130


def _build_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("kernel build options")
    group.add_argument("--source", metavar="PATH", help="kernel git tree, unpacked tree or tarball "
                       "(default: Debian's linux-source-6.12 tarball, installed when missing)")
    group.add_argument("--series", metavar="DIR", type=Path, help="patch series directory with a quilt "
                       "`series` file (replaces kernel-config/patches)")
    group.add_argument("--patch", metavar="FILE", type=Path, action="append", default=[],
                       help="append a patch to the series (repeatable)")
    group.add_argument("--config", metavar="FILE", type=Path, action="append", default=[],
                       help="merge a Kconfig fragment after the defaults (repeatable, later wins)")
    group.add_argument("--kconfig", metavar="CONFIG_X=V", action="append", default=[],
                       help="set one option after all fragments (repeatable)")
    group.add_argument("--cache-dir", metavar="DIR", type=Path,
                       help="artifact cache (default $NUMA_HARNESS_CACHE or ~/.cache/numa-harness)")
    group.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="make -j (default: nproc)")
    return parent


def build_request(args: argparse.Namespace) -> BuildRequest:
    return BuildRequest(
        source=args.source,
        series_dir=args.series,
        extra_patches=tuple(args.patch),
        config_files=tuple(args.config),
        kconfig=tuple(args.kconfig),
        cache_dir=args.cache_dir,
        jobs=args.jobs,
    )


def cmd_build(args: argparse.Namespace) -> int:
    artifact = build(build_request(args))
    if args.json:
        print(json.dumps(artifact.as_json(), indent=2))
        return 0
    manifest = artifact.manifest
    verification = manifest.get("verification", {})
    how = "cache hit" if artifact.cache_hit else f"built in {manifest.get('build_seconds')} s"
    print(f"kernel {manifest.get('kernel_release')} ({how})")
    print(f"  directory  {artifact.directory}")
    print(f"  vmlinux    {artifact.vmlinux}")
    print(f"  bzImage    {artifact.bzimage}")
    print(f"  source     {manifest['source']['identity']}")
    patches = ", ".join(p["name"] for p in manifest.get("patches", [])) or "none"
    print(f"  patches    {patches}")
    print(f"  build-id   {manifest.get('build_id')}")
    print(
        f"  verified   DWARF v{verification.get('dwarf_version')} "
        f"({int(verification.get('debug_info_bytes', 0)) >> 20} MiB .debug_info), embedded config "
        f"{'matches .config' if verification.get('embedded_config_matches') else 'DIFFERS'}, "
        f"CONFIG_NUMA_BALANCING=y"
    )
    for name, evidence in verification.get("function_evidence", {}).items():
        print(f"  function   {name}: {evidence}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    merged = merged_config(build_request(args))
    for conflict in merged.conflicts:
        print(f"# conflict: {conflict.describe()}")
    sys.stdout.write(merged.text())
    return 0


def _guest_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("guest options")
    group.add_argument("--kernel", metavar="DIR", type=Path,
                       help="boot this kernel (a `numa-harness build` or kbuild output directory) instead of building")
    group.add_argument("--topology", default="2x2", metavar="SPEC",
                       help="NxC (N nodes of C CPUs) or a TOML file (default 2x2)")
    group.add_argument("--memory", metavar="SIZE", help="total guest memory for NxC (default 2G)")
    group.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                       help="accelerator; auto probes KVM once and falls back to TCG")
    group.add_argument("--boot-timeout", type=float, default=120.0, metavar="S", help="seconds (default 120)")
    group.add_argument("--append", action="append", default=[], metavar="PARAM",
                       help="extra kernel command-line parameter (repeatable)")
    return parent


def launch_request(args: argparse.Namespace, name: str = "") -> LaunchRequest:
    return LaunchRequest(
        build=build_request(args), kernel_dir=args.kernel, topology=args.topology, memory=args.memory,
        accel=args.accel, boot_timeout=args.boot_timeout, name=name, cmdline=tuple(args.append),
    )


def _say(message: str) -> None:
    print(f"numa-harness: {message}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _say("error: nothing to run; usage: numa-harness run [options] -- CMD...")
        return EXIT_HARNESS_FAILED
    try:
        guest = make_guest(launch_request(args, name="run"))
        if args.show_command:
            print(" ".join(shlex.quote(a) for a in guest.argv()))
            guest.remove_run_dir()
            return 0
        with guest:
            _say(f"guest up in {guest.boot_seconds:.1f} s ({guest.accel}, {guest.config.topology.describe()})")
            guest.mark_bugs_seen()
            remote = command[0] if len(command) == 1 else shlex.join(command)
            result = guest.ssh.run(remote, timeout=args.timeout)
            sys.stdout.write(result.stdout)
            sys.stdout.flush()
            sys.stderr.write(result.stderr)
            sys.stderr.flush()
            time.sleep(0.2)  # let the console log catch up with a report printed as the command ended
            bugs = guest.new_bugs()
            if bugs or not guest.alive:
                for bug in bugs:
                    _say(f"kernel bug during the command: {bug.title}")
                if not bugs:
                    _say("the guest died during the command")
                _say(f"console log: {guest.paths.console_log}")
                return EXIT_KERNEL_BUG
            return result.exit_status
    except HarnessError as err:
        _say(f"error: {err}")
        return EXIT_HARNESS_FAILED


EXIT_CHECK_FAILED = 1


def cmd_check(args: argparse.Namespace) -> int:
    from harness.checks.checkrun import check_kernel, kernel_identity
    from harness.checks.faults import CHECKS
    from harness.report.terminal import print_table, write_json, write_junit

    unknown = [name for name in args.only if name not in CHECKS]
    if unknown:
        raise HarnessError(f"--only {', '.join(unknown)}: no such check. Checks: {', '.join(CHECKS)}.")
    request = launch_request(args, name="check")
    try:
        kernel = resolve_kernel(request)
        run = check_kernel(request, kernel, args.only or None, on_boot=lambda seconds, accel: _say(
            f"guest up in {seconds:.1f} s ({accel}, {args.topology}); running {len(args.only) or len(CHECKS)} checks"),
            progress=lambda r: _say(f"{r.name}: {r.verdict} ({r.seconds:.1f} s) {r.summary}"))
    except HarnessError as err:
        _say(f"error: {err}")
        return EXIT_HARNESS_FAILED
    manifest = kernel.manifest
    title = (f"numa-harness check: kernel {manifest.get('kernel_release')} "
             f"({', '.join(p['name'] for p in manifest.get('patches', [])) or 'no patches'}), {args.topology}")
    print_table(run.results, title)
    context = {"kernel": kernel_identity(kernel), "topology": args.topology, "accel": run.accel}
    if args.json:
        write_json(args.json, run.results, context)
    if args.junit:
        write_junit(args.junit, run.results, f"numa-harness.{args.topology}")
    return 0 if run.passed else EXIT_CHECK_FAILED


def cmd_mutants(args: argparse.Namespace) -> int:
    from harness.checks.faults import CHECKS
    from harness.checks.mutants import MUTANTS_DIR, discover, run_mutants, select
    from harness.report.terminal import print_mutant_table, write_mutants_json

    unknown = [name for name in args.checks if name not in CHECKS]
    if unknown:
        raise HarnessError(f"--checks {', '.join(unknown)}: no such check. Checks: {', '.join(CHECKS)}.")
    mutants = discover(args.dir or MUTANTS_DIR)
    if args.only:
        mutants = select(mutants, args.only)
    if args.kernel:
        raise HarnessError("mutants: --kernel cannot be used; each mutant is built from the source and series.")
    request = launch_request(args)
    _say(f"{len(mutants)} mutants, each built incrementally and checked ({len(args.checks) or len(CHECKS)} checks)")
    results = run_mutants(mutants, request, args.checks or None, progress=lambda r: _say(
        f"{r.mutant.name}: {r.outcome} ({r.seconds:.0f} s) {r.detail[:160]}"))
    print_mutant_table(results)
    if args.json:
        write_mutants_json(args.json, results)
    if any(r.outcome == "error" for r in results):
        return EXIT_HARNESS_FAILED
    return 0 if all(r.killed for r in results) else EXIT_CHECK_FAILED


def cmd_ci(args: argparse.Namespace) -> int:
    from harness.checks.faults import CHECKS
    from harness.checks.mutants import MUTANTS_DIR, Mutant, discover, select
    from harness.report.ci import CiRequest, run_ci

    for name in [*args.checks, *args.mutant_checks]:
        if name not in CHECKS:
            raise HarnessError(f"--checks/--mutant-checks {name}: no such check. Checks: {', '.join(CHECKS)}.")
    mutants: list[Mutant] = []
    if not args.no_mutants:
        mutants = discover(args.mutants_dir or MUTANTS_DIR)
        if args.mutant:
            mutants = select(mutants, args.mutant)
    launch = LaunchRequest(build=build_request(args), memory=args.memory, accel=args.accel,
                           boot_timeout=args.boot_timeout)
    request = CiRequest(launch=launch, out=args.out, topologies=tuple(args.topology or ("2x2", "4x1")),
                        checks=tuple(args.checks) or None, mutants=tuple(mutants),
                        mutant_checks=tuple(args.mutant_checks) or None, baseline=args.baseline)
    outcome = run_ci(request, _say)
    summary = outcome.summary
    _say(f"{summary['status']} (exit {outcome.exit_code}); report: {outcome.out / 'report.html'}")
    for regression in summary["regressions"]:
        _say(f"regression: {regression['message']}")
    return outcome.exit_code


def _registry(args: argparse.Namespace) -> Path:
    return registry_dir(args.cache_dir or default_cache_root())


def _live_guests(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Registered guests whose supervisor is alive (stale entries are removed)."""
    guests = {}
    for entry in sorted(_registry(args).glob("*.json")):
        data = read_json(entry)
        pid = int(str(data.get("supervisor_pid", 0))) if data else 0
        if not data or not pid or not pid_alive(pid):
            entry.unlink(missing_ok=True)
            continue
        info = read_json(Path(str(data["info"])))
        if info is None:
            continue
        guests[entry.stem] = info
    return guests


def attached(args: argparse.Namespace, name: str) -> AttachedGuest:
    guests = _live_guests(args)
    if name not in guests:
        known = ", ".join(sorted(guests)) or "none"
        raise HarnessError(f"No running guest named {name!r} (running: {known}). Start one with `numa-harness up --name {name}`.")
    return AttachedGuest(guests[name])


def cmd_up(args: argparse.Namespace) -> int:
    guests = _live_guests(args)
    name = args.name or next(f"guest{i}" for i in range(1, 1000) if f"guest{i}" not in guests)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", name):
        raise HarnessError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (up to 41 characters).")
    if name in guests:
        raise HarnessError(f"A guest named {name!r} is already running. Pick another --name or `numa-harness down {name}`.")
    request = launch_request(args, name=name)
    parse_topology(request.topology, request.memory)  # fail here, before anything starts
    # Build in the foreground (progress on this terminal); the supervisor then finds it cached.
    kernel = resolve_kernel(request)
    request = replace(request, kernel_dir=kernel.directory)
    work = Path(tempfile.mkdtemp(prefix=f"numa-harness-up-{name}-"))
    (work / "request.json").write_text(request.to_json())
    status_file = work / "status.json"
    log = (work / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "harness.guest.supervisor", str(work / "request.json"), str(status_file)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    deadline = time.monotonic() + request.boot_timeout + 60
    while time.monotonic() < deadline:
        status = read_json(status_file)
        if status and status.get("state") == "ready":
            info = read_json(Path(str(status["info"]))) or {}
            _say(f"{name} is up: ssh port 127.0.0.1:{info.get('ssh_port')}, {info.get('accel')}, "
                 f"{info.get('topology')}; console log {info.get('console_log')}")
            print(name)
            return 0
        if status and status.get("state") == "failed":
            raise HarnessError(str(status.get("error")))
        if supervisor.poll() is not None:
            raise HarnessError(f"The guest supervisor exited ({supervisor.returncode}); see {work / 'supervisor.log'}.")
        time.sleep(0.1)
    supervisor.terminate()
    raise HarnessError(f"The guest {name} did not come up in time; see {work / 'supervisor.log'}.")


def cmd_ssh(args: argparse.Namespace) -> int:
    guest = attached(args, args.name)
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        # Interactive: hand over to the system ssh client with the pinned key.
        known = Path(tempfile.mkdtemp(prefix="numa-harness-ssh-")) / "known_hosts"
        known.write_text(f"[127.0.0.1]:{guest.ssh_port} {guest.host_key}\n")
        os.execvp("ssh", ["ssh", "-t", "-p", str(guest.ssh_port), "-i", str(guest.identity_file),
                          "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                          "-o", "IdentitiesOnly=yes", "root@127.0.0.1"])
    guest.mark_bugs_seen()
    remote = command[0] if len(command) == 1 else shlex.join(command)
    result = guest.ssh.run(remote, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    for bug in guest.new_bugs():
        _say(f"kernel bug during the command: {bug.title}")
        return EXIT_KERNEL_BUG
    return result.exit_status


def cmd_console(args: argparse.Namespace) -> int:
    from harness.guest.console import attach_console

    guest = attached(args, args.name)
    return attach_console(guest.paths.console)


def cmd_list(args: argparse.Namespace) -> int:
    guests = _live_guests(args)
    if args.json:
        print(json.dumps(guests, indent=2))
        return 0
    for name, info in guests.items():
        print(f"{name}\tssh 127.0.0.1:{info.get('ssh_port')}\t{info.get('accel')}\tqemu pid {info.get('qemu_pid')}"
              f"\t{info.get('topology')}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    guests = _live_guests(args)
    names = sorted(guests) if args.all else [args.name]
    if not args.all and args.name not in guests:
        raise HarnessError(f"No running guest named {args.name!r} (running: {', '.join(sorted(guests)) or 'none'}).")
    for name in names:
        info = guests[name]
        pid = int(str(info.get("supervisor_pid", 0)))
        qemu_pid = int(str(info.get("qemu_pid", 0)))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (pid_alive(pid) or pid_alive(qemu_pid)):
            time.sleep(0.1)
        for leftover in (pid, qemu_pid):
            if pid_alive(leftover):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
        _say(f"{name} is down")
    return 0


def _parse_range(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1 << 57
    match = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)-(0x[0-9a-fA-F]+|\d+)", text)
    if not match or int(match.group(1), 0) >= int(match.group(2), 0):
        raise HarnessError(f"--range {text}: expected START-END with START < END, e.g. 0x7f0000000000-0x7f0000400000.")
    return int(match.group(1), 0), int(match.group(2), 0)


def cmd_inspect_ptes(args: argparse.Namespace) -> int:
    from harness.inspect import attach, find_mm, snapshot, summarize, walk, with_last_cpupid

    guest = attached(args, args.name)
    start, end = _parse_range(args.range)
    prog = attach(guest, guest.vmlinux)
    with snapshot(guest):
        table = with_last_cpupid(prog, walk(prog, find_mm(prog, args.pid), start, end))
    if args.range and not len(table):
        raise HarnessError(f"Nothing is mapped in {args.range} of pid {args.pid}. Check /proc/{args.pid}/maps in the guest.")
    summary = summarize(table)
    if args.json:
        print(json.dumps({"entries": [e.as_json() for e in table], "summary": summary}))
        return 0
    from rich.console import Console
    from rich.table import Table

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
    from harness.inspect import attach, find_mm, read_balancing, read_mm, read_task, read_vmas, snapshot, summarize_by_vma, walk

    guest = attached(args, args.name)
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
    from rich.console import Console
    from rich.table import Table

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
    from harness.inspect import attach, read_vmstat, snapshot

    guest = attached(args, args.name)
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
    from harness.inspect import attach

    guest = attached(args, args.name)
    prog = attach(guest, guest.vmlinux)
    import importlib

    import drgn

    from harness import inspect as nh_inspect

    # What `drgn` itself offers at its prompt: the common and Linux helpers, imported by name.
    namespace: dict[str, object] = {}
    for module_name in ("drgn.helpers.common", "drgn.helpers.linux"):
        module = importlib.import_module(module_name)
        namespace.update({name: getattr(module, name) for name in getattr(module, "__all__", [])})
    namespace.update({"prog": prog, "guest": guest, "drgn": drgn, "nh": nh_inspect})
    if args.script:
        sys.argv = [str(args.script), *args.script_args]
        namespace["__name__"] = "__main__"
        namespace["__file__"] = str(args.script)
        code = compile(Path(args.script).read_text(), str(args.script), "exec")
        exec(code, namespace)
        return 0
    import code as interactive
    import readline
    import rlcompleter

    readline.set_completer(rlcompleter.Completer(namespace).complete)
    readline.parse_and_bind("tab: complete")
    interactive.interact(banner=f"drgn {drgn.__version__} attached to guest {args.name} (prog, guest, nh = harness.inspect)",
                         local=namespace, exitmsg="")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numa-harness",
        description="Build, boot and cross-check Linux NUMA balancing on a real kernel.",
    )
    parser.add_argument("--version", action="version", version=f"numa-harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build_opts = _build_options()

    p = sub.add_parser("build", parents=[build_opts], help="build (or find cached) the kernel")
    p.add_argument("--json", action="store_true", help="print the manifest and artifact paths as JSON")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("config", parents=[build_opts], help="print the merged Kconfig fragment")
    p.add_argument("--dry-run", action="store_true", help="only print, never build (the default)")
    p.set_defaults(func=cmd_config)

    guest_opts = _guest_options()
    p = sub.add_parser("run", parents=[build_opts, guest_opts],
                       help="boot a guest, run CMD over SSH, tear down; exit with CMD's status")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="command timeout (default 3600)")
    p.add_argument("--show-command", action="store_true", help="print the QEMU command line and exit")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", parents=[build_opts, guest_opts],
                       help="build, boot and cross-check NUMA balancing against the model; exit 0 only if all pass")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write the results as JUnit XML")
    p.add_argument("--only", action="append", default=[], metavar="CHECK", help="run only this check (repeatable)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("mutants", parents=[build_opts, guest_opts],
                       help="mutation self-check: build each mutant kernel, run check; exit 0 only if all are killed")
    p.add_argument("--dir", type=Path, metavar="DIR", help="mutant patches (default kernel-config/patches/mutants)")
    p.add_argument("--only", action="append", default=[], metavar="MUTANT", help="run only this mutant (name or prefix)")
    p.add_argument("--checks", action="append", default=[], metavar="CHECK", help="run only this check (repeatable)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the mutant table as JSON")
    p.set_defaults(func=cmd_mutants)

    p = sub.add_parser("ci", parents=[build_opts],
                       help="unattended: build, check on each topology, mutation self-check; write junit.xml, "
                            "summary.json, report.html into --out")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a fresh (absent or empty) directory")
    p.add_argument("--topology", action="append", default=[], metavar="SPEC",
                   help="NxC or a TOML file (repeatable; default 2x2 and 4x1)")
    p.add_argument("--memory", metavar="SIZE", help="total guest memory for NxC (default 2G)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--boot-timeout", type=float, default=120.0, metavar="S")
    p.add_argument("--checks", action="append", default=[], metavar="CHECK", help="run only this check (repeatable)")
    p.add_argument("--no-mutants", action="store_true", help="skip the mutation self-check")
    p.add_argument("--mutants-dir", type=Path, metavar="DIR", help="default kernel-config/patches/mutants")
    p.add_argument("--mutant", action="append", default=[], metavar="NAME", help="run only this mutant (repeatable)")
    p.add_argument("--mutant-checks", action="append", default=[], metavar="CHECK",
                   help="checks to run on each mutant (default: all)")
    p.add_argument("--baseline", type=Path, metavar="DIR", help="an earlier run's --out directory (or summary.json)")
    p.set_defaults(func=cmd_ci)

    p = sub.add_parser("up", parents=[build_opts, guest_opts], help="boot a guest in the background")
    p.add_argument("--name", default="", help="guest name (default guestN)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ssh", help="run a command in a running guest (interactive shell without CMD)")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("console", help="attach to a running guest's serial console (Ctrl-] detaches)")
    p.add_argument("name")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("list", help="list running guests")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", help="look inside a running guest's kernel with drgn: inspect NAME WHAT ...")
    p.add_argument("name", help="a guest started with `numa-harness up`")
    p.add_argument("--cache-dir", type=Path)
    inspect_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = inspect_sub.add_parser("ptes", help="page-table entries of a task: hint, pfn, node, flags")
    q.add_argument("--pid", type=int, required=True)
    q.add_argument("--range", metavar="START-END")
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=64, help="table rows to show (default 64)")
    q.set_defaults(func=cmd_inspect_ptes)
    q = inspect_sub.add_parser("task", help="a task's NUMA state, its mm's scan state, VMAs and where their pages are")
    q.add_argument("--pid", type=int, required=True)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_inspect_task)
    q = inspect_sub.add_parser("vmstat", help="NUMA and migration event counters, read from the kernel")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_inspect_vmstat)

    p = sub.add_parser("drgn", help="interactive drgn on a running guest, or run SCRIPT.py like `drgn script.py`")
    p.add_argument("name")
    p.add_argument("script", nargs="?", type=Path)
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_drgn)

    p = sub.add_parser("down", help="shut down a running guest (or --all)")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--all", action="store_true")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_down)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command == "down" and not args.all and not args.name:
        parser.error("down: name a guest or pass --all")
    try:
        return int(args.func(args))
    except HarnessError as err:
        print(f"numa-harness: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("numa-harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
