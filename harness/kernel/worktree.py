"""The harness's one working tree per source, where make sees only real changes.

A working tree is the base tree plus the current patch series. Switching series rewrites only
the files whose content differs from what is on disk (with a fresh mtime), and restores files
the previous series touched but the new one does not; every other file keeps its mtime, so a
series change that differs in one file recompiles only what depends on that file.

For a tarball the working tree starts as a hard-link copy of the pristine extraction (cheap);
files are only ever replaced by rename, never written in place, so the pristine tree is never
modified through a shared inode. A directory source is mirrored file by file, by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_bytes, atomic_write_text, ensure_dir, staged_entry
from harness.errors import SourceError
from harness.kernel.source import SourceIdentity, SourceSpec, list_tree_files

STATE_FILE = "numa-harness-worktree.json"


@dataclass(frozen=True)
class WorkTree:
    root: Path  # src/<id>: holds the work/ tree and its state file
    path: Path  # the tree kbuild reads (srctree)
    base: Path  # the unmodified source the tree was made from

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @property
    def lock_path(self) -> Path:
        return self.root.parent.parent / "locks" / f"src-{self.root.name}.lock"


def worktree_for(spec: SourceSpec, identity: SourceIdentity, base: Path, cache_root: Path) -> WorkTree:
    if spec.kind == "tarball":
        root = cache_root / "src" / identity.short
    else:
        # One tree per source location, not per identity: editing the user's tree then costs an
        # incremental rebuild, not a cold one.
        root = cache_root / "src" / ("dir-" + hashlib.sha256(str(spec.path).encode()).hexdigest()[:16])
    return WorkTree(root, root / "work", base)


def create_if_missing(tree: WorkTree, spec: SourceSpec) -> None:
    """Make the working tree exist (caller holds the tree's lock)."""
    ensure_dir(tree.root)
    if tree.path.is_dir():
        return
    with staged_entry(tree.path) as staging:
        if spec.kind == "tarball":
            result = subprocess.run(
                ["cp", "-al", f"{tree.base}/.", str(staging)], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise SourceError(
                    f"Cannot create the working tree {tree.path}: {result.stderr.strip()[-300:]}. "
                    f"Check free space and permissions under the cache directory."
                )
    # A new tree has nothing applied on top of its base yet.
    atomic_write_text(tree.state_path, json.dumps({"touched": [], "base": {}}))


def sync_from_directory(tree: WorkTree, spec: SourceSpec) -> int:
    """Mirror a directory source into the working tree by content. Returns files written."""
    state = _load_state(tree)
    old_stats: dict[str, list[int]] = state.get("base", {})
    new_stats: dict[str, list[int]] = {}
    written = 0
    for rel in list_tree_files(spec):
        st = (spec.path / rel).stat()
        new_stats[rel] = [st.st_size, st.st_mtime_ns]
        new_stats[rel].append(st.st_mode & 0o777)
        if old_stats.get(rel) == new_stats[rel] and (tree.path / rel).exists():
            continue
        # The mode too: kbuild runs scripts (scripts/cc-version.sh, ...) by their executable bit.
        if write_if_different(tree.path / rel, (spec.path / rel).read_bytes(), mode=st.st_mode & 0o777):
            written += 1
    for rel in set(old_stats) - set(new_stats):
        if write_if_different(tree.path / rel, None):
            written += 1
    state["base"] = new_stats
    atomic_write_text(tree.state_path, json.dumps(state))
    return written


def apply_overlay(tree: WorkTree, staged: Mapping[str, bytes | None]) -> list[str]:
    """Make the tree equal base + `staged` (a series' files). Returns the files that changed."""
    state = _load_state(tree)
    previous: list[str] = state.get("touched", [])
    # Record the union first: if we die half-way, the next run still restores every file this
    # run may have written.
    state["touched"] = sorted(set(previous) | set(staged))
    atomic_write_text(tree.state_path, json.dumps(state))
    changed = []
    for rel in sorted(set(previous) | set(staged)):
        if rel in staged:
            desired = staged[rel]
        else:
            base_file = tree.base / rel
            desired = base_file.read_bytes() if base_file.is_file() else None
        if write_if_different(tree.path / rel, desired):
            changed.append(rel)
    state["touched"] = sorted(staged)
    atomic_write_text(tree.state_path, json.dumps(state))
    return changed


def write_if_different(path: Path, desired: bytes | None, mode: int | None = None) -> bool:
    """Replace `path` by rename (never in place: it may be a hard link into the pristine tree).
    `mode`: the permission bits it must have (default: what it has, or 0o644 for a new file). A
    file whose content is right but whose mode is not gets a new copy with the mode, not a chmod:
    a chmod would reach the pristine tree through a hard link. Returns whether anything changed."""
    if desired is None:
        if path.exists() or path.is_symlink():
            path.unlink()
            return True
        return False
    try:
        if path.read_bytes() == desired and (mode is None or path.stat().st_mode & 0o777 == mode):
            return False
    except (FileNotFoundError, IsADirectoryError):
        pass
    ensure_dir(path.parent)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    atomic_write_bytes(path, desired)
    os.chmod(path, mode)
    return True


def _load_state(tree: WorkTree) -> dict:  # type: ignore[type-arg]
    try:
        data = json.loads(tree.state_path.read_text())
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
