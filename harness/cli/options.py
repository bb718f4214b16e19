"""Option parents shared by the commands (after kunit_tool's add_common_opts/add_build_opts): each
option is declared once, here. Light on purpose: the parser imports this, and nothing heavy."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cache import default_cache_root

DEFAULT_TOPOLOGY = "2x2"


def cache_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--cache-dir", metavar="DIR", type=Path,
                        help="artifact cache (default $NUMA_HARNESS_CACHE or ~/.cache/numa-harness)")
    return parent


def build_options(*, several_sources: bool = False) -> argparse.ArgumentParser:
    """The build's options; with `several_sources` (`ci`), --source is repeatable: a list."""
    parent = argparse.ArgumentParser(add_help=False, parents=[cache_options()])
    group = parent.add_argument_group("kernel build options")
    source_help = ("kernel git tree, unpacked tree or tarball, or a built-in source's short name (6.12, 6.1) "
                   "(default: Debian's linux-source-6.12 tarball, installed when missing)")
    if several_sources:
        group.add_argument("--source", metavar="PATH", action="append", default=[],
                           help=source_help + "; repeatable: one matrix row per source, side by side")
    else:
        group.add_argument("--source", metavar="PATH", help=source_help)
    group.add_argument("--series", metavar="DIR", type=Path, help="patch series directory with a quilt "
                       "`series` file (replaces kernel-config/patches)")
    group.add_argument("--patch", metavar="FILE", type=Path, action="append", default=[],
                       help="append a patch to the series (repeatable)")
    group.add_argument("--config", metavar="FILE", type=Path, action="append", default=[],
                       help="merge a Kconfig fragment after the defaults (repeatable, later wins)")
    group.add_argument("--kconfig", metavar="CONFIG_X=V", action="append", default=[],
                       help="set one option after all fragments (repeatable)")
    group.add_argument("--base-config", metavar="FILE|tree",
                       help="start from this .config instead of tinyconfig (`tree`: --source's own .config); "
                       "the harness's fragments are merged on top and verified")
    group.add_argument("--make-opt", metavar="VAR=VALUE", action="append", default=[],
                       help="a make variable for every make run and the cache key (repeatable; e.g. LLVM=1)")
    group.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="make -j (default: nproc)")
    return parent


def machine_options() -> argparse.ArgumentParser:
    """What every boot takes, whatever the topology."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("machine options")
    group.add_argument("--memory", metavar="SIZE", help="total guest memory for NxC (default 2G)")
    group.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                       help="accelerator; auto probes KVM once and falls back to TCG")
    group.add_argument("--boot-timeout", type=float, default=120.0, metavar="S", help="seconds (default 120)")
    group.add_argument("--append", action="append", default=[], metavar="PARAM",
                       help="extra kernel command-line parameter (repeatable)")
    return parent


def guest_options() -> argparse.ArgumentParser:
    """One guest: a topology and, optionally, a kernel built elsewhere."""
    parent = argparse.ArgumentParser(add_help=False, parents=[machine_options()])
    group = parent.add_argument_group("guest options")
    group.add_argument("--kernel", metavar="DIR", type=Path,
                       help="boot this kernel (a `numa-harness build` or kbuild output directory) instead of building")
    group.add_argument("--topology", default=DEFAULT_TOPOLOGY, metavar="SPEC",
                       help=f"NxC (N nodes of C CPUs) or a TOML file (default {DEFAULT_TOPOLOGY})")
    return parent


def snapshot_options() -> argparse.ArgumentParser:
    """For the commands that boot a guest for a person (run, up): restore it from a snapshot."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--no-snapshot", action="store_true",
                        help="boot the kernel instead of restoring this guest from the snapshot an earlier "
                             "boot saved (and save none)")
    return parent


def cache_root(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir) if args.cache_dir else default_cache_root()


def remote_command(words: list[str]) -> list[str]:
    """CMD after an optional `--`."""
    return words[1:] if words and words[0] == "--" else words


def say(message: str) -> None:
    print(f"numa-harness: {message}", file=sys.stderr)
