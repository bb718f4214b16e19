"""Booted guests kept as QEMU migration streams, so that the next boot of the same guest is a restore.

A fresh boot under TCG spends about 2.4 s in the kernel and init before SSH answers; restoring the
guest as it was at its ready marker takes about 0.5 s. The state is QEMU's own migration stream
(`migrate` to `exec:cat > FILE` from a stopped guest, then a new QEMU with `-incoming exec:cat FILE`,
as in QEMU's docs/devel/migration.rst), not a savevm snapshot: savevm needs a qcow2 disk and this
guest has none.

A snapshot stands for exactly one guest: its key covers the QEMU binary (version, size, mtime),
the bzImage and the initramfs (by content) and the whole QEMU command line with only the run
directory, the SSH port and the boot token left out (those differ per boot and the guest never
sees the first two; a restored guest keeps the token it booted with). Anything else that differs
(topology, memory, accelerator, kernel command line, guest name) is a different snapshot.

Each snapshot is a directory `snapshots/KEY/` holding `state` (the stream), `console.log` (what
the guest printed while it booted, so a restored guest's console log starts with its boot) and
`meta.json`. It appears atomically (harness.cache.staged_entry) and only after the guest it was
taken from passed its topology probe; at most `KEEP` are kept, least recently used evicted first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.cache import atomic_write_text, cached_sha256, ensure_dir, read_json, staged_entry

SNAPSHOT_FORMAT = 1
# About 80 MiB each for a 2 GiB guest (a booted guest's RAM is mostly zero pages, which the
# stream sends as one flag each): six is under half a GiB and covers `run`, the pytest session
# guest and a few factory guests of one kernel.
KEEP = 6
STALE_SECONDS = 3600
# Placeholders for what differs per boot (qemu_argv is called with these to make the key).
RUN_DIR_PLACEHOLDER = Path("/numa-harness-run-dir")
TOKEN_PLACEHOLDER = "numa-harness-token"


@cache
def qemu_identity(qemu: str) -> str:
    """The QEMU binary as a migration stream depends on it: version line, resolved path, size, mtime."""
    path = shutil.which(qemu)
    if path is None:
        return f"{qemu} not found"
    stat = Path(path).stat()
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{version}\0{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"


def snapshot_key(argv_template: list[str], kernel: Path, initramfs: Path, qemu: str, cache_root: Path) -> str:
    """The key of the guest `argv_template` (qemu_argv with the placeholders) boots."""
    parts = [
        f"format {SNAPSHOT_FORMAT}",
        qemu_identity(qemu),
        cached_sha256(kernel, cache_root),
        cached_sha256(initramfs, cache_root),
        json.dumps(argv_template),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Snapshot:
    directory: Path
    token: str

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"


@dataclass(frozen=True)
class SnapshotStore:
    root: Path  # <cache>/snapshots

    def lookup(self, key: str) -> Snapshot | None:
        directory = self.root / key
        meta = read_json(directory / "meta.json")
        if meta is None or meta.get("format") != SNAPSHOT_FORMAT or not (directory / "state").is_file():
            return None
        # Touch for least-recently-used eviction.
        with contextlib.suppress(OSError):
            os.utime(directory / "meta.json")
        return Snapshot(directory, str(meta["token"]))

    def staging_file(self, key: str) -> Path:
        """Where a stream being written goes until `commit` (unique per process and moment)."""
        return ensure_dir(self.root) / f".{key}.{os.getpid()}.{time.monotonic_ns()}.state"

    def commit(self, key: str, stream: Path, console_log: Path, token: str) -> None:
        """Make `stream` the snapshot of `key` (atomically; a snapshot another process made first wins)."""
        try:
            with staged_entry(self.root / key) as staging:
                os.replace(stream, staging / "state")
                if console_log.exists():
                    shutil.copyfile(console_log, staging / "console.log")
                else:
                    (staging / "console.log").write_text("")
                atomic_write_text(staging / "meta.json", json.dumps(
                    {"format": SNAPSHOT_FORMAT, "token": token, "created": time.time()}))
        finally:
            stream.unlink(missing_ok=True)
        self.evict()

    def discard(self, key: str) -> None:
        """Remove a snapshot that failed to load, so that the next boot makes a new one."""
        shutil.rmtree(self.root / key, ignore_errors=True)

    def evict(self, keep: int = KEEP) -> None:
        """Keep the `keep` snapshots used last; drop what a process killed mid-save left (an hour
        old: no save takes that long)."""
        entries = []
        for directory in self.root.iterdir() if self.root.is_dir() else ():
            meta = directory / "meta.json"
            if directory.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - directory.stat().st_mtime > STALE_SECONDS:
                        if directory.is_dir():
                            shutil.rmtree(directory, ignore_errors=True)
                        else:
                            directory.unlink(missing_ok=True)
                continue
            if not meta.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                entries.append((meta.stat().st_mtime, directory))
        entries.sort(reverse=True)
        for _, directory in entries[keep:]:
            # A QEMU restoring from it already has the stream open (cat reads the unlinked file);
            # one that opens it after this fails to load and boots fresh.
            shutil.rmtree(directory, ignore_errors=True)
