"""The `numa-harness` command line's grammar: every command and option, and the checks on input
that need no kernel, guest or model (a bad --topology or --memory is refused before anything
heavy is even imported). Each command names its implementation as "module:function";
harness.cli.main imports it only when that command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from harness import __version__
from harness.cli.options import build_options, cache_options, guest_options, machine_options, snapshot_options
from harness.guest.topology import parse_topology

# What add_subparsers returns (generic only to the type checker, so written as a string).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numa-harness",
                                     description="Build, boot and cross-check Linux NUMA balancing on a real kernel.")
    parser.add_argument("--version", action="version", version=f"numa-harness {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for group in (_build, _guests, _checks, _inspect, _cache):
        group(sub)
    return parser


def validate_early(args: argparse.Namespace) -> None:
    """What can be judged from the command line alone: the topology and memory of every command
    that boots a guest (check, run, up, mutants, ci)."""
    topologies = getattr(args, "topology", None)
    if topologies is None:
        return
    for spec in [topologies] if isinstance(topologies, str) else topologies or ["2x2"]:
        parse_topology(spec, getattr(args, "memory", None))


def _build(sub: Subparsers) -> None:
    p = sub.add_parser("build", parents=[build_options()], help="build (or find cached) the kernel")
    p.add_argument("--json", action="store_true", help="print the manifest and artifact paths as JSON")
    p.set_defaults(command="harness.cli.build:cmd_build")

    p = sub.add_parser("config", parents=[build_options()], help="print the merged Kconfig fragment")
    p.add_argument("--dry-run", action="store_true", help="only print, never build (the default)")
    p.set_defaults(command="harness.cli.build:cmd_config")


def _guests(sub: Subparsers) -> None:
    p = sub.add_parser("run", parents=[build_options(), guest_options(), snapshot_options()],
                       help="boot a guest, run CMD over SSH, tear down; exit with CMD's status")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="command timeout (default 3600)")
    p.add_argument("--show-command", action="store_true", help="print the QEMU command line and exit")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(command="harness.cli.guests:cmd_run")

    p = sub.add_parser("up", parents=[build_options(), guest_options(), snapshot_options()],
                       help="boot a guest in the background")
    p.add_argument("--name", default="", help="guest name (default guestN)")
    p.set_defaults(command="harness.cli.guests:cmd_up")

    p = sub.add_parser("ssh", parents=[cache_options()],
                       help="run a command in a running guest (interactive shell without CMD)")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(command="harness.cli.guests:cmd_ssh")

    p = sub.add_parser("console", parents=[cache_options()],
                       help="attach to a running guest's serial console (Ctrl-] detaches)")
    p.add_argument("name")
    p.set_defaults(command="harness.cli.guests:cmd_console")

    p = sub.add_parser("list", parents=[cache_options()], help="list running guests")
    p.add_argument("--json", action="store_true")
    p.set_defaults(command="harness.cli.guests:cmd_list")

    p = sub.add_parser("down", parents=[cache_options()], help="shut down a running guest (or --all)")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--all", action="store_true")
    p.set_defaults(command="harness.cli.guests:cmd_down")


def _checks(sub: Subparsers) -> None:
    p = sub.add_parser("check", parents=[build_options(), guest_options()],
                       help="build, boot and cross-check NUMA balancing against the model; exit 0 only if all pass")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write the results as JUnit XML")
    p.add_argument("--only", action="append", default=[], metavar="CHECK", help="run only this check (repeatable)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first check that fails or hangs (the rest are reported as not run)")
    p.add_argument("--guests", type=int, default=1, metavar="N",
                   help="split the checks over N guests of the kernel, booted side by side (default 1)")
    p.add_argument("--record", type=Path, metavar="DIR",
                   help="write the observations each check keeps to DIR/CHECK.json.gz (golden data for tests/data)")
    p.set_defaults(command="harness.cli.checks:cmd_check")

    p = sub.add_parser("mutants", parents=[build_options(), guest_options()],
                       help="mutation self-check: build each mutant kernel, run check; exit 0 only if all are killed")
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="mutant patches (default: the source release's, kernel-config/patches/mutants for 6.12, "
                        "kernel-config/patches-6.1/mutants for 6.1)")
    p.add_argument("--only", action="append", default=[], metavar="MUTANT", help="run only this mutant (name or prefix)")
    p.add_argument("--checks", action="append", default=[], metavar="CHECK", help="run only this check (repeatable)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the mutant table as JSON")
    p.add_argument("--full-matrix", action="store_true",
                   help="run every check on every mutant (default: stop a mutant at its first kill)")
    p.set_defaults(command="harness.cli.checks:cmd_mutants")

    p = sub.add_parser("bisect", parents=[build_options(), guest_options()],
                       help="name the first patch of a series (--patch ... or --series DIR), or the first commit "
                            "of a git tree (--source TREE GOOD BAD), after which a check fails")
    p.add_argument("commits", nargs="*", metavar="GOOD BAD",
                   help="with --source TREE (a git tree): the passing and the failing commit; the commits between "
                        "are bisected with `git bisect run` in the harness's own copy of the tree")
    p.add_argument("--checks", action="append", default=[], metavar="CHECK",
                   help="the checks to run with every patch applied (default all); the ones that fail there run at "
                        "every step")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the steps and the culprit as JSON")
    p.set_defaults(command="harness.cli.checks:cmd_bisect")

    p = sub.add_parser("ci", parents=[build_options(several_sources=True), machine_options()],
                       help="unattended: build, check on each topology, mutation self-check; write junit.xml, "
                            "summary.json, report.html into --out")
    p.add_argument("merge", nargs="?", choices=["merge", "overview"], metavar="merge|overview",
                   help="`ci merge PART... --out DIR`: join the --out directories of `ci --shard K/N` runs; "
                        "`ci overview RUN... --out DIR`: several kernels' runs side by side (index.html)")
    p.add_argument("parts", nargs="*", type=Path, metavar="PART",
                   help="with merge: the shards' --out directories; with overview: each kernel's run")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a fresh (absent or empty) directory")
    p.add_argument("--shard", metavar="K/N", help="do only the K-th of N deterministic shares of the work units "
                   "(topology check runs, then mutants); `ci merge` joins the parts")
    p.add_argument("--topology", action="append", default=[], metavar="SPEC",
                   help="NxC or a TOML file (repeatable; default 2x2 and 4x1)")
    p.add_argument("--checks", action="append", default=[], metavar="CHECK", help="run only this check (repeatable)")
    p.add_argument("--no-mutants", action="store_true", help="skip the mutation self-check")
    p.add_argument("--mutants-dir", type=Path, metavar="DIR", help="default kernel-config/patches/mutants")
    p.add_argument("--mutant", action="append", default=[], metavar="NAME", help="run only this mutant (repeatable)")
    p.add_argument("--mutant-checks", action="append", default=[], metavar="CHECK",
                   help="checks to run on each mutant (default: all)")
    p.add_argument("--mutants-full-matrix", action="store_true",
                   help="run every check on every mutant (default: stop a mutant at its first kill)")
    p.add_argument("--baseline", type=Path, metavar="DIR", help="an earlier run's --out directory (or summary.json)")
    p.add_argument("--baseline-from", type=Path, metavar="DIR",
                   help="compare with the newest earlier run under DIR (none on the first night)")
    p.add_argument("--prune-mutants", action="store_true",
                   help="remove the mutant kernels this run built once they are checked (about 120 MB each)")
    p.add_argument("--kcidb", type=Path, metavar="FILE",
                   help="also write the run as KCIDB JSON (checkout, build, a test per check and mutant)")
    p.set_defaults(command="harness.cli.checks:cmd_ci")


def _inspect(sub: Subparsers) -> None:
    p = sub.add_parser("inspect", parents=[cache_options()],
                       help="look inside a running guest's kernel with drgn: inspect NAME WHAT ...")
    p.add_argument("name", help="a guest started with `numa-harness up`")
    inspect_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = inspect_sub.add_parser("ptes", help="page-table entries of a task: hint, pfn, node, flags")
    q.add_argument("--pid", type=int, required=True)
    q.add_argument("--range", metavar="START-END")
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=64, help="table rows to show (default 64)")
    q.set_defaults(command="harness.cli.inspect:cmd_inspect_ptes")
    q = inspect_sub.add_parser("task", help="a task's NUMA state, its mm's scan state, VMAs and where their pages are")
    q.add_argument("--pid", type=int, required=True)
    q.add_argument("--json", action="store_true")
    q.set_defaults(command="harness.cli.inspect:cmd_inspect_task")
    q = inspect_sub.add_parser("vmstat", help="NUMA and migration event counters, read from the kernel")
    q.add_argument("--json", action="store_true")
    q.set_defaults(command="harness.cli.inspect:cmd_inspect_vmstat")

    p = sub.add_parser("drgn", parents=[cache_options()],
                       help="drgn's interactive mode on a running guest, or run SCRIPT.py like `drgn script.py`")
    p.add_argument("name")
    p.add_argument("script", nargs="?", type=Path)
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    p.set_defaults(command="harness.cli.inspect:cmd_drgn")


def _cache(sub: Subparsers) -> None:
    p = sub.add_parser("cache", help="the kernel cache: list its entries, prune it")
    cache_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = cache_sub.add_parser("list", parents=[cache_options()], help="kernel entries, most recently used first")
    q.add_argument("--json", action="store_true")
    q.set_defaults(command="harness.cli.cache:cmd_cache_list")
    q = cache_sub.add_parser("prune", parents=[cache_options()],
                             help="remove the least recently used kernels (never one in use)")
    q.add_argument("--keep-last", type=int, metavar="N", help="keep at most the N most recently used kernels")
    q.add_argument("--max-size", metavar="SIZE", help="keep the kernels under SIZE in all (e.g. 20G)")
    q.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    q.set_defaults(command="harness.cli.cache:cmd_cache_prune")
