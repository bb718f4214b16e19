"""The built-in sources (`--source 6.12`, `--source 6.1`) and the default series per release."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.kernel.patches import load_series
from harness.kernel.pipeline import DEFAULT_SERIES_DIR, DEFAULT_SERIES_DIRS, default_series_dir
from harness.kernel.source import BUILTIN_SOURCES, SourceIdentity, SourceSpec, resolve_source, source_release


@pytest.mark.parametrize("name", sorted(BUILTIN_SOURCES))
def test_a_builtin_name_is_its_debian_tarball(name: str) -> None:
    builtin = BUILTIN_SOURCES[name]
    if not builtin.tarball.exists():
        pytest.skip(f"{builtin.package} not installed (harness/bootstrap.sh installs it)")
    spec = resolve_source(name, install_default=False)
    assert spec == SourceSpec("tarball", builtin.tarball)
    identity = SourceIdentity("tarball", str(spec.path), "00" * 32, "tarball")
    assert source_release(spec, identity, Path("/nonexistent")) == name


@pytest.mark.parametrize(("file", "release"), [
    ("linux-6.1.192.tar.xz", "6.1.192"), ("linux-source-6.1.tar.xz", "6.1"), ("linux-6.12.tar.gz", "6.12"),
])
def test_a_tarball_names_its_release(tmp_path: Path, file: str, release: str) -> None:
    spec = SourceSpec("tarball", tmp_path / file)
    identity = SourceIdentity("tarball", str(spec.path), "00" * 32, "tarball")
    assert source_release(spec, identity, tmp_path / "cache") == release


def test_a_tree_says_its_release_in_its_makefile(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\n")
    spec = SourceSpec("tree", tmp_path)
    assert source_release(spec, SourceIdentity("tree", str(tmp_path), "00" * 32, "tree"), tmp_path) == "6.1.192"


@pytest.mark.parametrize(("release", "directory"), [
    ("6.12.117", DEFAULT_SERIES_DIR), ("6.1.192", DEFAULT_SERIES_DIRS["6.1"]), ("6.1", DEFAULT_SERIES_DIRS["6.1"]),
    ("6.6.50", DEFAULT_SERIES_DIR),
])
def test_each_release_gets_its_default_series(release: str, directory: Path) -> None:
    assert default_series_dir(release) == directory


def test_every_default_series_loads_and_exports_the_page_flags_layout() -> None:
    for release, directory in DEFAULT_SERIES_DIRS.items():
        patches = load_series(directory)
        assert patches, release
        text = "".join(p.path.read_text() for p in patches)
        assert "VMCOREINFO_NUMBER(LAST_CPUPID_PGSHIFT);" in text, release


def test_an_unknown_source_names_the_builtin_ones() -> None:
    from harness.errors import SourceError

    with pytest.raises(SourceError, match=r"built-in source \(6\.12, 6\.1\)"):
        resolve_source("6.7", install_default=False)


def test_a_git_tree_that_ignores_its_own_top_level_is_named_with_the_fix(tmp_path: Path) -> None:
    """Debian's linux-source .gitignore ends with '/*' (and '!/debian/'): `git init && git add -A`
    on such a tree tracks nothing at the top, and the harness, which takes a git tree's tracked
    and untracked-not-ignored files, would build an empty tree. Said at once, with the lines to drop."""
    import subprocess

    from harness.errors import SourceError
    from harness.kernel.source import resolve_source

    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\n")
    (tree / "Kconfig").write_text("")
    (tree / ".gitignore").write_text("*.o\n/*\n!/debian/\n")
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    with pytest.raises(SourceError, match=r"Drop the '/\*' and '!/debian/' lines"):
        resolve_source(str(tree))
    (tree / ".gitignore").write_text("*.o\n")
    assert resolve_source(str(tree)).kind == "git"  # untracked, not ignored: taken
