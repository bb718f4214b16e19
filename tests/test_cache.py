"""Cache entries appear atomically; hashes are remembered; the cache root follows env and flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cache import CACHE_ENV, cached_sha256, default_cache_root, sha256_file, staged_entry


def test_staged_entry_appears_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "kernels" / "key"
    with pytest.raises(RuntimeError), staged_entry(final) as staging:
        (staging / "vmlinux").write_text("half")
        raise RuntimeError("build died")
    assert not final.exists()
    assert list((tmp_path / "kernels").iterdir()) == []  # no staging debris either
    with staged_entry(final) as staging:
        (staging / "vmlinux").write_text("whole")
    assert (final / "vmlinux").read_text() == "whole"


def test_cached_sha256_follows_content_changes(tmp_path: Path) -> None:
    blob = tmp_path / "linux.tar.xz"
    blob.write_bytes(b"one")
    assert cached_sha256(blob, tmp_path / "cache") == sha256_file(blob)
    blob.write_bytes(b"two!")
    assert cached_sha256(blob, tmp_path / "cache") == sha256_file(blob)


def test_cache_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x" / "numa-harness"
