"""The kernel cache's entries (`<cache>/kernels/<key>/`): what is there, when each was last used,
and pruning by count or size, least recently used first.

An entry is never removed while it is in use. Two rules make "in use" safe without a daemon:
the caller says which entries a live process holds (harness.guest.procs: a QEMU booted from
it), and an entry used within the last RECENT_SECONDS is kept too, which covers the moment
between a build or cache hit and the QEMU that boots it. Pruning holds the cache's prune lock,
so two prunes never race, and removes an entry by renaming it out of kernels/ first: a reader
sees a whole entry or none.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import ensure_dir, file_lock, read_json
from harness.errors import BadInput

LAST_USED = "last-used"
RECENT_SECONDS = 600.0
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$", re.IGNORECASE)


@dataclass(frozen=True)
class KernelEntry:
    directory: Path
    manifest: dict[str, Any]
    size: int  # bytes on disk
    last_used: float  # seconds since the epoch

    @property
    def key(self) -> str:
        return self.directory.name

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "directory": str(self.directory), "size": self.size, "last_used": self.last_used,
                "kernel_release": self.manifest.get("kernel_release"),
                "patches": [p.get("name") for p in self.manifest.get("patches", [])],
                "source": (self.manifest.get("source") or {}).get("identity"), "built_at": self.manifest.get("built_at")}


def mark_used(directory: Path) -> None:
    """Record that a kernel entry was just used (a build finished, or a cache hit returned it)."""
    with contextlib.suppress(OSError):  # a read-only cache still serves kernels; it only cannot be pruned by use
        (directory / LAST_USED).touch()


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def list_entries(cache_root: Path) -> list[KernelEntry]:
    """Every complete entry (one with a manifest), most recently used first."""
    entries = []
    kernels = cache_root / "kernels"
    for directory in sorted(kernels.iterdir()) if kernels.is_dir() else []:
        manifest = read_json(directory / "manifest.json")
        if not directory.is_dir() or manifest is None:
            continue
        stamp = directory / LAST_USED
        last = stamp.stat().st_mtime if stamp.exists() else (directory / "manifest.json").stat().st_mtime
        entries.append(KernelEntry(directory, manifest, _size(directory), last))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5GiB', '4096' (bytes) -> bytes (powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise BadInput(f"--max-size {text}: expected a size like 20G, 500M or 1.5GiB.")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[KernelEntry, ...]
    keep: tuple[KernelEntry, ...]
    held: tuple[KernelEntry, ...]  # would go, but a live process uses it or it was used just now

    @property
    def kept_size(self) -> int:
        return sum(e.size for e in (*self.keep, *self.held))


def plan_prune(entries: Iterable[KernelEntry], *, keep_last: int | None, max_size: int | None,
               in_use: Callable[[Path], bool], now: float | None = None) -> PrunePlan:
    """Keep the most recently used entries while there are at most `keep_last` of them and they
    fit in `max_size` bytes (the longest such run, newest first: least recently used go first);
    the rest go, except those in use or used within RECENT_SECONDS."""
    now = time.time() if now is None else now
    ordered = sorted(entries, key=lambda e: e.last_used, reverse=True)
    keep: list[KernelEntry] = []
    total = 0
    for entry in ordered:
        if (keep_last is not None and len(keep) >= keep_last) or (max_size is not None and total + entry.size > max_size):
            break
        keep.append(entry)
        total += entry.size
    candidates = ordered[len(keep):]
    held = [e for e in candidates if in_use(e.directory) or now - e.last_used < RECENT_SECONDS]
    remove = [e for e in candidates if e not in held]
    return PrunePlan(tuple(remove), tuple(keep), tuple(held))


def remove_entries(cache_root: Path, entries: Iterable[KernelEntry]) -> list[KernelEntry]:
    """Remove entries: each is first renamed out of kernels/ (readers see all of it or none)."""
    trash = ensure_dir(cache_root / "trash")
    removed = []
    for entry in entries:
        target = trash / f"{entry.key}-{time.monotonic_ns()}"
        try:
            entry.directory.rename(target)
        except FileNotFoundError:
            continue  # someone else removed it
        shutil.rmtree(target, ignore_errors=True)
        removed.append(entry)
    return removed


def prune(cache_root: Path, *, keep_last: int | None, max_size: int | None, in_use: Callable[[Path], bool],
          dry_run: bool = False) -> PrunePlan:
    """plan_prune under the cache's prune lock, then (unless `dry_run`) remove what it says."""
    with file_lock(ensure_dir(cache_root / "locks") / "prune.lock"):
        result = plan_prune(list_entries(cache_root), keep_last=keep_last, max_size=max_size, in_use=in_use)
        if not dry_run:
            remove_entries(cache_root, result.remove)
    return result
