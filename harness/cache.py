"""The content-addressed artifact cache.

Layout under the cache root (default ~/.cache/numa-harness, or $NUMA_HARNESS_CACHE,
or --cache-dir):

    kernels/<key>/     one finished kernel: bzImage, vmlinux, config, build.log, manifest.json
    src/<id>/          a pristine source tree and the harness's working tree for it
    build/<id>/        one kbuild output directory per (working tree, requested config)
    locks/             flock files that serialise builds on one working tree

Entries under kernels/ appear atomically: they are assembled in a temporary directory next to
their final place and renamed into it, so a crash or Ctrl-C never leaves half an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import CacheError

CACHE_ENV = "NUMA_HARNESS_CACHE"


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "numa-harness"


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(
            f"Cannot create cache directory {path}: {err.strerror}. Point --cache-dir (or "
            f"${CACHE_ENV}) at a writable directory."
        ) from err
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, cache_root: Path) -> str:
    """sha256 of a large file, remembered by (path, size, mtime) so a cache hit stays fast."""
    stat = path.stat()
    memo_dir = ensure_dir(cache_root / "hashes")
    memo_key = hashlib.sha256(
        f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    ).hexdigest()
    memo = memo_dir / memo_key
    try:
        return memo.read_text().strip()
    except FileNotFoundError:
        pass
    value = sha256_file(path)
    atomic_write_text(memo, value + "\n")
    return value


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock held for the duration; released by the kernel if we die."""
    ensure_dir(path.parent)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_entry(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` atomically when the block succeeds."""
    ensure_dir(final.parent)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield staging
        os.chmod(staging, 0o755)
        if final.exists():
            # Someone else finished the same entry first: theirs is as good as ours.
            shutil.rmtree(staging)
        else:
            os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
