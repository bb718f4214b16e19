"""Guest snapshots: what the key covers, the store's atomicity and eviction (unit), and restores of
real guests: the same guest, drgn on it, its clock, and a stream QEMU cannot load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.guest.qemu import Guest, VmConfig, qemu_argv
from harness.guest.snapshot import (
    KEEP,
    RUN_DIR_PLACEHOLDER,
    TOKEN_PLACEHOLDER,
    SnapshotStore,
    snapshot_key,
)
from harness.guest.topology import parse_topology
from harness.guest.view import RunPaths


def _files(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initramfs = tmp_path / "bzImage", tmp_path / "initramfs.cpio"
    kernel.write_bytes(b"kernel")
    initramfs.write_bytes(b"initramfs")
    return kernel, initramfs


def _key(tmp_path: Path, config: VmConfig, run_dir: Path = RUN_DIR_PLACEHOLDER, port: int = 0,
         token: str = TOKEN_PLACEHOLDER, accel: str = "tcg") -> str:
    argv = qemu_argv(config, RunPaths(run_dir), accel, port, token)
    return snapshot_key(argv, config.kernel, config.initramfs, "qemu-system-x86_64", tmp_path / "cache")


def test_the_key_is_the_guest_and_nothing_per_boot(tmp_path: Path) -> None:
    kernel, initramfs = _files(tmp_path)
    config = VmConfig(kernel=kernel, initramfs=initramfs, topology=parse_topology("2x2"), name="g")
    base = _key(tmp_path, config)
    # What differs per boot of one guest is not in the key...
    assert _key(tmp_path, config, run_dir=tmp_path / "run-1", port=40022, token="abc") != base  # not placeholders
    # ...because the guest passes the placeholders, not its own run dir, port and token:
    assert _key(tmp_path, config) == base
    # Everything the guest would see differently is.
    others = [
        VmConfig(kernel=kernel, initramfs=initramfs, topology=parse_topology("4x1"), name="g"),
        VmConfig(kernel=kernel, initramfs=initramfs, topology=parse_topology("2x2", "4G"), name="g"),
        VmConfig(kernel=kernel, initramfs=initramfs, topology=parse_topology("2x2"), name="h"),
        VmConfig(kernel=kernel, initramfs=initramfs, topology=parse_topology("2x2"), name="g",
                 cmdline_extra=("numa_balancing=disable",)),
    ]
    assert len({base, *(_key(tmp_path, c) for c in others), _key(tmp_path, config, accel="kvm")}) == 6
    kernel.write_bytes(b"another kernel")
    assert _key(tmp_path, config) != base
    kernel.write_bytes(b"kernel")
    initramfs.write_bytes(b"another image")
    assert _key(tmp_path, config) != base


def _commit(store: SnapshotStore, key: str, tmp_path: Path, token: str = "t") -> None:
    stream = store.staging_file(key)
    stream.write_bytes(b"stream of " + key.encode())
    console = tmp_path / f"{key}.console"
    console.write_text("booted\n")
    store.commit(key, stream, console, token)
    assert not stream.exists()


def test_store_commits_whole_snapshots_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    assert store.lookup("k0") is None
    _commit(store, "k0", tmp_path, token="tok0")
    saved = store.lookup("k0")
    assert saved is not None and saved.token == "tok0"
    assert saved.state.read_bytes() == b"stream of k0" and saved.console_log.read_text() == "booted\n"
    # A second commit of the same key (another process) keeps the first and leaves nothing behind.
    _commit(store, "k0", tmp_path, token="other")
    assert store.lookup("k0").token == "tok0"  # type: ignore[union-attr]
    for index in range(1, KEEP + 2):
        _commit(store, f"k{index}", tmp_path)
        os.utime(store.root / f"k{index}" / "meta.json", (time.time() - 1000 + index, time.time() - 1000 + index))
    os.utime(store.root / "k0" / "meta.json")  # used last
    store.evict()
    kept = sorted(p.name for p in store.root.iterdir())
    assert len(kept) == KEEP and "k0" in kept and "k1" not in kept and "k2" not in kept
    store.discard("k0")
    assert store.lookup("k0") is None


def test_store_ignores_incomplete_entries_and_clears_stale_leftovers(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    (store.root / "half").mkdir(parents=True)
    (store.root / "half" / "meta.json").write_text('{"format": 1, "token": "t"}')  # no state
    assert store.lookup("half") is None
    leftover = store.staging_file("k")
    leftover.write_bytes(b"partial")
    fresh = store.staging_file("k2")
    fresh.write_bytes(b"being written")
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    store.evict()
    assert not leftover.exists() and fresh.exists()


# -- real guests -------------------------------------------------------------------------------

def _epoch(guest: Guest) -> tuple[float, int, float]:
    before = time.time()
    guest_seconds = int(guest.ssh.run("date +%s").check().stdout)
    return before, guest_seconds, time.time()


@pytest.mark.kernel
@pytest.mark.guest
def test_a_second_boot_of_a_guest_is_its_restore(guest_factory: Callable[..., Guest]) -> None:
    from harness.inspect.attach import attach

    first = guest_factory(name="snapshot-test", snapshot=True)
    slot = first._snapshot_slot()  # after boot(): the key covers the accelerator it chose
    assert slot is not None
    store, key = slot
    if first.restored:  # a snapshot from an earlier session: start from none
        first.shutdown()
        store.discard(key)
        first = guest_factory(name="snapshot-test", snapshot=True)
    assert not first.restored and first.snapshot_note == f"saved as snapshot {key}"
    assert store.lookup(key) is not None
    cmdline = first.ssh.run("cat /proc/cmdline").check().stdout
    first.shutdown()

    second = guest_factory(name="snapshot-test", snapshot=True)
    assert second.restored and second.snapshot_note == f"restored from snapshot {key}"
    # The same guest: the token it booted with, its nodes, its boot in its console log.
    assert second.token == first.token
    assert second.ssh.run("cat /proc/cmdline").check().stdout == cmdline
    assert [n.cpus for n in second.observed_nodes] == [n.cpus for n in first.observed_nodes]
    assert "numa-harness: ready " + first.token in second.console_text()
    assert second.ssh.run("hostname").check().stdout == "snapshot-test\n"
    # Its wall clock was set on restore: `date -s @N` truncates to the second (up to 1 s behind)
    # and `date +%s` truncates again (another second), so the guest reads no earlier than 2 s
    # before the host did and no later than the host after.
    before, guest_seconds, after = _epoch(second)
    assert before - 2 <= guest_seconds <= after, (before, guest_seconds, after)
    # drgn reads the restored kernel (vmcoreinfo is migrated state): its own hostname, a live clock.
    prog = attach(second, second.vmlinux)
    assert prog["init_uts_ns"].name.nodename.string_().decode() == "snapshot-test"
    jiffies = prog["jiffies"].value_()
    second.ssh.run("sleep 0.2").check()
    assert prog["jiffies"].value_() > jiffies


@pytest.mark.kernel
@pytest.mark.guest
def test_a_snapshot_qemu_cannot_load_is_dropped_and_the_guest_boots(guest_factory: Callable[..., Guest]) -> None:
    made = guest_factory(name="snapshot-broken", snapshot=True)
    slot = made._snapshot_slot()
    assert slot is not None
    store, key = slot
    made.shutdown()
    saved = store.lookup(key)
    assert saved is not None
    with saved.state.open("r+b") as stream:  # a stream cut short, as by a full disk
        stream.truncate(saved.state.stat().st_size // 2)

    booted = guest_factory(name="snapshot-broken", snapshot=True)
    assert not booted.restored
    # The broken one dropped, the guest booted, a new one saved.
    assert booted.snapshot_note.startswith(f"snapshot {key} did not restore (")
    assert booted.snapshot_note.endswith(f"; booted; saved as snapshot {key}")
    assert (booted.paths.directory / "qemu-restore.stderr").read_text()  # QEMU said why
    assert booted.ssh.run("echo up").check().stdout == "up\n"
    # The console log is this boot's alone: one ready marker.
    assert booted.console_text().count("numa-harness: ready ") == 1
    renewed = store.lookup(key)
    assert renewed is not None and renewed.state.stat().st_size > saved.state.stat().st_size // 2
