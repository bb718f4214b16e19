"""The working tree keeps every unchanged file's mtime, so make rebuilds only what changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.kernel.source import SourceIdentity, SourceSpec
from harness.kernel.worktree import apply_overlay, create_if_missing, sync_from_directory, worktree_for


def _tarball_like_tree(tmp_path: Path):  # type: ignore[no-untyped-def]
    base = tmp_path / "pristine"
    (base / "mm").mkdir(parents=True)
    (base / "mm/memory.c").write_text("memory\n")
    (base / "mm/mprotect.c").write_text("mprotect\n")
    spec = SourceSpec("tarball", tmp_path / "linux.tar.xz")
    identity = SourceIdentity("tarball", str(spec.path), "ab" * 32, "tarball")
    tree = worktree_for(spec, identity, base, tmp_path / "cache")
    create_if_missing(tree, spec)
    return tree


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# A date no write made today can carry: a file that still has it was not rewritten.
LONG_AGO_NS = 10**18


def _date_long_ago(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(LONG_AGO_NS, LONG_AGO_NS))


def test_switching_series_rewrites_only_differing_files(tmp_path: Path) -> None:
    tree = _tarball_like_tree(tmp_path)
    assert (tree.path / "mm/memory.c").read_text() == "memory\n"
    series_a = {"mm/memory.c": b"memory A\n", "mm/new.c": b"new\n"}
    series_b = {"mm/memory.c": b"memory A\n", "mm/mprotect.c": b"mprotect B\n"}
    assert apply_overlay(tree, series_a) == ["mm/memory.c", "mm/new.c"]
    # Overlay files are the tree's own (the pristine base is hard-linked only where untouched).
    _date_long_ago(tree.path / "mm")
    # B keeps memory.c as A had it, changes mprotect.c, and drops new.c.
    assert apply_overlay(tree, series_b) == ["mm/mprotect.c", "mm/new.c"]
    after = _mtimes(tree.path)
    assert after["mm/memory.c"] == LONG_AGO_NS
    assert after["mm/mprotect.c"] != LONG_AGO_NS
    assert not (tree.path / "mm/new.c").exists()
    # Back to no series: the tree equals the pristine base again, and the base was never written.
    apply_overlay(tree, {})
    assert (tree.path / "mm/memory.c").read_text() == "memory\n"
    assert (tree.path / "mm/mprotect.c").read_text() == "mprotect\n"
    assert (tree.base / "mm/memory.c").read_text() == "memory\n"
    assert json.loads(tree.state_path.read_text())["touched"] == []


def test_hard_linked_pristine_is_never_modified(tmp_path: Path) -> None:
    tree = _tarball_like_tree(tmp_path)
    assert os.stat(tree.path / "mm/memory.c").st_ino == os.stat(tree.base / "mm/memory.c").st_ino
    apply_overlay(tree, {"mm/memory.c": b"patched\n"})
    assert (tree.base / "mm/memory.c").read_text() == "memory\n"


def test_directory_source_is_mirrored_by_content(tmp_path: Path) -> None:
    user = tmp_path / "linux"
    (user / "mm").mkdir(parents=True)
    (user / "mm/memory.c").write_text("v1\n")
    (user / "mm/gone.c").write_text("x\n")
    spec = SourceSpec("tree", user)
    identity = SourceIdentity("tree", str(user), "cd" * 32, "tree")
    tree = worktree_for(spec, identity, user, tmp_path / "cache")
    create_if_missing(tree, spec)
    assert sync_from_directory(tree, spec) == 2
    _date_long_ago(tree.path)
    os.utime(user / "mm/memory.c")  # touched, same content: not rewritten
    (user / "mm/gone.c").unlink()
    assert sync_from_directory(tree, spec) == 1
    assert _mtimes(tree.path)["mm/memory.c"] == LONG_AGO_NS
    assert not (tree.path / "mm/gone.c").exists()
    assert (user / "mm/memory.c").read_text() == "v1\n"


def test_directory_source_keeps_the_executable_bit(tmp_path: Path) -> None:
    """kbuild runs scripts/*.sh by their mode: a tree mirrored without it cannot be configured
    ("cc-version.sh: Permission denied"). A mode change alone reaches the working tree too."""
    user = tmp_path / "linux"
    (user / "scripts").mkdir(parents=True)
    (user / "scripts/cc-version.sh").write_text("#!/bin/sh\n")
    (user / "scripts/cc-version.sh").chmod(0o755)
    (user / "scripts/notes.txt").write_text("x\n")
    (user / "scripts/notes.txt").chmod(0o640)
    spec = SourceSpec("tree", user)
    tree = worktree_for(spec, SourceIdentity("tree", str(user), "ef" * 32, "tree"), user, tmp_path / "cache")
    create_if_missing(tree, spec)
    sync_from_directory(tree, spec)
    assert os.stat(tree.path / "scripts/cc-version.sh").st_mode & 0o777 == 0o755
    assert os.stat(tree.path / "scripts/notes.txt").st_mode & 0o777 == 0o640
    (user / "scripts/cc-version.sh").chmod(0o644)
    assert sync_from_directory(tree, spec) == 1
    assert os.stat(tree.path / "scripts/cc-version.sh").st_mode & 0o777 == 0o644


def _kernel_like_git_tree(root: Path) -> Path:
    """A git checkout with the kernel's ignore rules for build products, built in place."""
    import subprocess

    (root / "mm").mkdir(parents=True)
    (root / "Makefile").write_text("# top\n")
    (root / "Kconfig").write_text("# top\n")
    (root / "mm/memory.c").write_text("memory\n")
    # The lines of the kernel's own .gitignore that cover these products.
    (root / ".gitignore").write_text(".*\n*.o\n!.gitignore\n/vmlinux\ninclude/config/\ninclude/generated/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"],
                   check=True)
    (root / ".config").write_text("CONFIG_NUMA=y\n")
    (root / "include/config").mkdir(parents=True)
    (root / "include/config/auto.conf").write_text("CONFIG_NUMA=y\n")
    (root / "mm/memory.o").write_bytes(b"\x7fELF")
    (root / ".memory.o.cmd").write_text("cmd\n")
    (root / "vmlinux").write_bytes(b"\x7fELF")
    (root / "mm/new.c").write_text("a developer's new file\n")  # untracked, not ignored: mirrored
    return root


def test_a_git_tree_built_in_place_is_accepted_and_mirrors_only_sources(tmp_path: Path) -> None:
    from harness.kernel.source import identify, list_tree_files, resolve_source

    user = _kernel_like_git_tree(tmp_path / "linux")
    spec = resolve_source(str(user))
    assert spec.kind == "git"
    assert list_tree_files(spec) == [".gitignore", "Kconfig", "Makefile", "mm/memory.c", "mm/new.c"]
    before = identify(spec, tmp_path / "cache").digest
    (user / "mm/memory.o").write_bytes(b"\x7fELF rebuilt")  # a rebuild does not change the source
    assert identify(spec, tmp_path / "cache").digest == before
    identity = identify(spec, tmp_path / "cache")
    tree = worktree_for(spec, identity, user, tmp_path / "cache")
    create_if_missing(tree, spec)
    sync_from_directory(tree, spec)
    assert (tree.path / "mm/new.c").exists() and not (tree.path / ".config").exists()
    assert not (tree.path / "include").exists() and not (tree.path / "mm/memory.o").exists()


def test_a_plain_tree_built_in_place_is_refused_saying_why(tmp_path: Path) -> None:
    import pytest

    from harness.errors import SourceError
    from harness.kernel.source import resolve_source

    user = tmp_path / "linux"
    user.mkdir()
    (user / "Makefile").write_text("# top\n")
    (user / "Kconfig").write_text("# top\n")
    (user / ".config").write_text("CONFIG_NUMA=y\n")
    with pytest.raises(SourceError, match=r"not a git checkout.*make mrproper.*git init"):
        resolve_source(str(user))
