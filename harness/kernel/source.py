"""Kernel source: where it is, what it is (its identity for the cache key), and a base tree.

Three kinds of source: a tarball (Debian's linux-source-6.12 by default; `6.12` and `6.1` name
Debian's two LTS source packages), a git tree, and a plain unpacked tree. The user's files are
only ever read. A tarball is extracted once into the cache (`src/<sha>/pristine`, immutable); a
directory source is mirrored into the cache by the working tree module, so the base tree of a
directory source is the directory itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cached_sha256, ensure_dir, staged_entry
from harness.errors import SourceError


@dataclass(frozen=True)
class BuiltinSource:
    """A Debian linux-source package `--source NAME` stands for (installed with apt when missing)."""

    package: str
    tarball: Path


BUILTIN_SOURCES = {
    "6.12": BuiltinSource("linux-source-6.12", Path("/usr/src/linux-source-6.12.tar.xz")),
    "6.1": BuiltinSource("linux-source-6.1", Path("/usr/src/linux-source-6.1.tar.xz")),
}
DEFAULT_SOURCE = "6.12"
DEFAULT_PACKAGE = BUILTIN_SOURCES[DEFAULT_SOURCE].package
DEFAULT_TARBALL = BUILTIN_SOURCES[DEFAULT_SOURCE].tarball
_TARBALL_SUFFIXES = (".tar", ".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst")


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "tarball" | "git" | "tree"
    path: Path


@dataclass(frozen=True)
class SourceIdentity:
    """What the source is, for the cache key and the manifest."""

    kind: str
    path: str
    digest: str
    description: str

    @property
    def short(self) -> str:
        return self.digest[:16]


def resolve_source(arg: str | None, *, install_default: bool = True) -> SourceSpec:
    """Turn --source (or its absence) into a SourceSpec, installing a built-in source's Debian
    package when allowed."""
    if arg is None or arg in BUILTIN_SOURCES:
        builtin = BUILTIN_SOURCES[arg or DEFAULT_SOURCE]
        if not builtin.tarball.exists() and install_default:
            _install_package(builtin.package)
        if not builtin.tarball.exists():
            raise SourceError(
                f"The kernel source {builtin.tarball} is missing. Install it with "
                f"`apt-get install --no-install-recommends {builtin.package}` (as root), or pass "
                f"--source with a kernel git tree, unpacked tree or tarball."
            )
        return SourceSpec("tarball", builtin.tarball)
    path = Path(arg).expanduser().resolve()
    if not path.exists():
        raise SourceError(
            f"--source {arg}: no such file or directory. Pass a kernel git tree, an unpacked "
            f"kernel tree, a kernel tarball (.tar.xz/.tar.gz) or a built-in source "
            f"({', '.join(BUILTIN_SOURCES)})."
        )
    if path.is_file():
        if not path.name.endswith(_TARBALL_SUFFIXES):
            raise SourceError(
                f"--source {arg} is a file but not a tarball ({', '.join(_TARBALL_SUFFIXES)}). "
                f"Pass a kernel tarball or a kernel source directory."
            )
        return SourceSpec("tarball", path)
    if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
        raise SourceError(
            f"--source {arg} is a directory but not a kernel source tree (no top-level Makefile "
            f"and Kconfig). Pass the top of a kernel tree."
        )
    if (path / ".git").exists():
        # Built in place or not: only tracked and untracked-not-ignored files are mirrored into
        # the harness's working tree (list_tree_files), and the kernel's .gitignore covers every
        # build product (.config, include/config, include/generated, *.o, .*.cmd, vmlinux, ...),
        # so kbuild there sees a clean source tree and the developer's objects stay where they are.
        seen = _git_bytes(path, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                          "Makefile", "Kconfig").split(b"\0")
        if b"Makefile" not in seen or b"Kconfig" not in seen:
            raise SourceError(
                f"--source {arg} is a git tree whose top-level Makefile or Kconfig is neither tracked nor "
                f"an untracked file git would add: its .gitignore ignores it (Debian's linux-source adds "
                f"'/*', which ignores the whole top level). The harness takes a git tree's tracked and "
                f"untracked-not-ignored files only. Drop the '/*' and '!/debian/' lines from its "
                f".gitignore (and commit, or leave the files untracked)."
            )
        return SourceSpec("git", path)
    if (path / ".config").exists() or (path / "include" / "config").exists():
        raise SourceError(
            f"--source {arg} has been configured or built in place (it has .config or "
            f"include/config) and is not a git checkout, so its build products cannot be told from "
            f"its sources: its own .gitignore is no guide (Debian's linux-source adds '/*', which "
            f"ignores the whole top level), and kbuild refuses to build out of tree from a "
            f"configured source. Run `make mrproper` in it, or pass it as a git checkout (`git "
            f"init && git add -A` works once the top-level .gitignore has no '/*' line, which "
            f"Debian's linux-source adds: build products are then ignored by the kernel's rules)."
        )
    return SourceSpec("tree", path)


def _install_package(package: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    print(f"numa-harness: installing {package} with apt-get", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        check=False,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def identify(spec: SourceSpec, cache_root: Path) -> SourceIdentity:
    if spec.kind == "tarball":
        digest = cached_sha256(spec.path, cache_root)
        return SourceIdentity("tarball", str(spec.path), digest, f"tarball sha256:{digest}")
    files = list_tree_files(spec)
    if spec.kind == "git":
        head = _git(spec.path, "rev-parse", "HEAD").strip()
        dirty = hashlib.sha256()
        dirty.update(_git_bytes(spec.path, "diff", "HEAD", "--binary"))
        untracked = _git_bytes(spec.path, "ls-files", "-z", "--others", "--exclude-standard")
        for raw in sorted(filter(None, untracked.split(b"\0"))):
            dirty.update(raw + b"\0" + (spec.path / raw.decode()).read_bytes())
        is_dirty = bool(_git_bytes(spec.path, "status", "--porcelain"))
        digest = hashlib.sha256(f"{head}\0{dirty.hexdigest() if is_dirty else ''}".encode()).hexdigest()
        state = f" + uncommitted changes {dirty.hexdigest()[:12]}" if is_dirty else ""
        return SourceIdentity("git", str(spec.path), digest, f"git HEAD {head}{state}")
    # A plain tree: every file's path, size and mtime. Touching a file changes the identity; the
    # working-tree sync then finds the content unchanged and make rebuilds nothing.
    digest_h = hashlib.sha256()
    for name in files:
        st = (spec.path / name).stat()
        digest_h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    digest = digest_h.hexdigest()
    return SourceIdentity("tree", str(spec.path), digest, f"tree {spec.path} ({len(files)} files)")


def list_tree_files(spec: SourceSpec) -> list[str]:
    """The files of a directory source, relative, sorted. For git: tracked plus untracked-not-ignored."""
    if spec.kind == "git":
        out = _git_bytes(spec.path, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        return sorted({rel.decode() for rel in out.split(b"\0") if rel and (spec.path / rel.decode()).is_file()})
    files = []
    for dirpath, dirnames, filenames in os.walk(spec.path):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                files.append(str(full.relative_to(spec.path)))
    return sorted(files)


def pristine_tree(spec: SourceSpec, identity: SourceIdentity, cache_root: Path) -> Path:
    """The unmodified base tree: an extracted tarball in the cache, or the user's directory."""
    if spec.kind != "tarball":
        return spec.path
    final = cache_root / "src" / identity.short / "pristine"
    if (final / "Makefile").is_file():
        return final
    ensure_dir(final.parent)
    print(f"numa-harness: extracting {spec.path.name} (once per source)", file=sys.stderr)
    with staged_entry(final) as staging:
        result = subprocess.run(
            ["tar", "-xf", str(spec.path), "-C", str(staging)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SourceError(
                f"Cannot extract {spec.path}: {result.stderr.strip()[-400:]}. Check that the "
                f"tarball is complete (re-download or reinstall it)."
            )
        _flatten_single_top_dir(staging)
        if not (staging / "Makefile").is_file():
            raise SourceError(
                f"{spec.path} does not contain a kernel source tree (no Makefile at its top). "
                f"Pass a kernel tarball."
            )
    return final


def _flatten_single_top_dir(staging: Path) -> None:
    entries = list(staging.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        for child in list(inner.iterdir()):
            child.rename(staging / child.name)
        inner.rmdir()


def source_release(spec: SourceSpec, identity: SourceIdentity, cache_root: Path) -> str:
    """The kernel release a source holds (VERSION.PATCHLEVEL[.SUBLEVEL]): a built-in source's by
    its name, another tarball's from its file name when it says (linux-6.1.192.tar.xz), else from
    its top Makefile (extracting it, once, as the build will)."""
    for name, builtin in BUILTIN_SOURCES.items():
        if spec.kind == "tarball" and spec.path == builtin.tarball:
            return name
    if spec.kind != "tarball":
        return kernel_version_of_tree(spec.path)
    named = re.search(r"(?:^|[-_])(\d+\.\d+(?:\.\d+)?)\.(?:tar|tgz)", spec.path.name)
    if named:
        return named.group(1)
    return kernel_version_of_tree(pristine_tree(spec, identity, cache_root))


def kernel_version_of_tree(tree: Path) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL from the top Makefile."""
    fields: dict[str, str] = {}
    with (tree / "Makefile").open() as handle:
        for _, line in zip(range(10), handle, strict=False):
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip()
    return f"{fields.get('VERSION', '?')}.{fields.get('PATCHLEVEL', '?')}.{fields.get('SUBLEVEL', '?')}"


def _git(path: Path, *args: str) -> str:
    return _git_bytes(path, *args).decode()


def _git_bytes(path: Path, *args: str) -> bytes:
    result = subprocess.run(["git", "-C", str(path), *args], capture_output=True)
    if result.returncode != 0:
        raise SourceError(
            f"git {' '.join(args)} failed in {path}: {result.stderr.decode(errors='replace').strip()}. "
            f"Check that {path} is a readable git checkout (or pass it as a tarball)."
        )
    return result.stdout
