"""Keeping the kernel cache bounded: entries listed most recently used first, pruned least
recently used first by count or size, never one in use, and what stays is whole."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.errors import BadInput
from harness.kernel.entries import RECENT_SECONDS, list_entries, parse_size, prune


def _entry(root: Path, key: str, mib: int, age_hours: float) -> Path:
    directory = root / "kernels" / key
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps({"kernel_release": "6.12.117", "patches": [{"name": key}]}))
    (directory / "vmlinux").write_bytes(b"\0" * (mib << 20))
    (directory / "bzImage").write_bytes(b"k")
    stamp = directory / "last-used"
    stamp.touch()
    when = time.time() - age_hours * 3600
    os.utime(stamp, (when, when))
    return directory


def test_prune_by_size_keeps_the_most_recently_used_that_fit(tmp_path: Path) -> None:
    for key, mib, age in (("newest", 3, 1), ("middle", 3, 2), ("old", 3, 3), ("oldest", 3, 4)):
        _entry(tmp_path, key, mib, age)
    assert [e.key for e in list_entries(tmp_path)] == ["newest", "middle", "old", "oldest"]
    result = prune(tmp_path, keep_last=None, max_size=parse_size("7M"), in_use=lambda d: False)
    assert [e.key for e in result.remove] == ["old", "oldest"]
    left = list_entries(tmp_path)
    assert [e.key for e in left] == ["newest", "middle"] and sum(e.size for e in left) <= 7 << 20
    assert all((e.directory / "vmlinux").stat().st_size == 3 << 20 and (e.directory / "bzImage").exists() for e in left)
    assert not any((tmp_path / "trash").iterdir())


def test_prune_never_removes_an_entry_in_use_or_just_used(tmp_path: Path) -> None:
    _entry(tmp_path, "a", 1, 1)
    booted = _entry(tmp_path, "b", 1, 2)
    fresh = _entry(tmp_path, "c", 1, 0)
    os.utime(fresh / "last-used", (time.time() - RECENT_SECONDS / 2,) * 2)
    result = prune(tmp_path, keep_last=0, max_size=None, in_use=lambda d: d == booted)
    assert {e.key for e in result.held} == {"b", "c"} and [e.key for e in result.remove] == ["a"]
    assert {e.key for e in list_entries(tmp_path)} == {"b", "c"}


def test_dry_run_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for key, age in (("x", 1), ("y", 2)):
        _entry(tmp_path, key, 1, age)
    assert main(["cache", "prune", "--keep-last", "1", "--dry-run", "--cache-dir", str(tmp_path)]) == 0
    assert "would remove y" in capsys.readouterr().err and len(list_entries(tmp_path)) == 2
    assert main(["cache", "prune", "--keep-last", "1", "--cache-dir", str(tmp_path)]) == 0
    assert [e.key for e in list_entries(tmp_path)] == ["x"]
    assert main(["cache", "list", "--json", "--cache-dir", str(tmp_path)]) == 0
    assert [e["key"] for e in json.loads(capsys.readouterr().out)] == ["x"]
    assert main(["cache", "prune", "--max-size", "lots", "--cache-dir", str(tmp_path)]) == 2
    with pytest.raises(BadInput):
        parse_size("12 parsecs")
    assert parse_size("1.5G") == 3 << 29 and parse_size("4096") == 4096
