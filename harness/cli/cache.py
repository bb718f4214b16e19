"""`numa-harness cache list|prune`: the kernel cache's entries, and keeping it bounded."""

from __future__ import annotations

import argparse
import datetime
import json

from harness.cli.options import cache_root, say
from harness.guest.procs import booted_from
from harness.kernel.entries import list_entries, parse_size, prune


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def cmd_cache_list(args: argparse.Namespace) -> int:
    entries = list_entries(cache_root(args))
    if args.json:
        print(json.dumps([{**e.as_json(), "in_use": booted_from(e.directory)} for e in entries], indent=2))
        return 0
    for e in entries:
        used = datetime.datetime.fromtimestamp(e.last_used).isoformat(timespec="minutes")
        patches = ", ".join(p.get("name", "") for p in e.manifest.get("patches", [])) or "no patches"
        print(f"{e.key}  {_mib(e.size):>9}  used {used}  {e.manifest.get('kernel_release')}  {patches}"
              f"{'  (in use)' if booted_from(e.directory) else ''}")
    print(f"{len(entries)} kernels, {_mib(sum(e.size for e in entries))}")
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    max_size = parse_size(args.max_size) if args.max_size else None
    if args.keep_last is None and max_size is None:
        say("cache prune: nothing asked; pass --keep-last N and/or --max-size SIZE")
        return 2
    result = prune(cache_root(args), keep_last=args.keep_last, max_size=max_size, in_use=booted_from,
                   dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in result.remove:
        say(f"{verb} {e.key} ({_mib(e.size)}, {e.manifest.get('kernel_release')})")
    for e in result.held:
        say(f"kept {e.key}: in use or used in the last minutes")
    say(f"{len(result.keep) + len(result.held)} kernels kept, {_mib(result.kept_size)}")
    return 0
