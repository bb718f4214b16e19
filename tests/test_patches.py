"""Series parsing, touched files, staged application and the failure message, on golden patches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DATA

from harness.errors import PatchApplyError, SeriesError
from harness.kernel.patches import extra_patch, hunks, load_series, parse_series, stage_series, touched_files


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    (base / "mm").mkdir(parents=True)
    (base / "kernel").mkdir()
    (base / "mm/memory.c").write_text("line one\nline two\nline three\n")
    (base / "kernel/fair.c").write_text("alpha\nbeta\n")
    return base


def test_parse_golden_series() -> None:
    patches = load_series(DATA / "patches")
    assert [(p.name, p.strip) for p in patches] == [("0001-good.patch", 1), ("0002-strip0.patch", 0)]
    assert patches[0].origin.endswith("patches/series:2")


def test_series_naming_a_missing_patch(tmp_path: Path) -> None:
    with pytest.raises(SeriesError, match=r"series:1: patch nope.patch is listed but .* does not exist"):
        parse_series("nope.patch\n", tmp_path, "series")


def test_series_with_bad_option(tmp_path: Path) -> None:
    (tmp_path / "a.patch").write_text("")
    with pytest.raises(SeriesError, match=r"unknown option '--fuzz'"):
        parse_series("a.patch --fuzz\n", tmp_path, "series")


def test_missing_series_dir_and_patch(tmp_path: Path) -> None:
    with pytest.raises(SeriesError, match="no `series` file"):
        load_series(tmp_path)
    with pytest.raises(SeriesError, match=r"--patch .*no such file"):
        extra_patch(tmp_path / "x.patch")


def test_touched_files_and_hunks() -> None:
    text = (DATA / "patches/0001-good.patch").read_text()
    assert touched_files(text, 1) == ["mm/memory.c", "mm/new_file.c"]
    assert [(h.file, h.number, h.header) for h in hunks(text, 1)] == [
        ("mm/memory.c", 1, "@@ -1,3 +1,3 @@"),
        ("mm/new_file.c", 1, "@@ -0,0 +1 @@"),
    ]
    assert touched_files((DATA / "patches/0002-strip0.patch").read_text(), 0) == ["kernel/fair.c"]


def test_patch_escaping_the_tree_is_refused() -> None:
    with pytest.raises(SeriesError, match="outside the kernel tree"):
        touched_files("--- a/../etc/passwd\n+++ b/../etc/passwd\n", 1)


def test_stage_series_applies_in_order_without_touching_base(tmp_path: Path) -> None:
    base = _base(tmp_path)
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    staged = stage_series(base, load_series(DATA / "patches"))
    assert staged == {
        "mm/memory.c": b"line one\nline two, changed\nline three\n",
        "mm/new_file.c": b"new\n",
        "kernel/fair.c": b"ALPHA\nbeta\n",
    }
    assert {p: p.read_bytes() for p in base.rglob("*") if p.is_file()} == before


def test_failing_patch_names_patch_file_and_hunk(tmp_path: Path) -> None:
    base = _base(tmp_path)
    series_dir = tmp_path / "series"
    shutil.copytree(DATA / "patches", series_dir)
    (series_dir / "series").write_text("0001-good.patch\n0003-does-not-apply.patch\n")
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    with pytest.raises(PatchApplyError) as info:
        stage_series(base, load_series(series_dir))
    message = str(info.value)
    assert message.startswith("Patch 0003-does-not-apply.patch (")
    assert "series:2) does not apply: mm/memory.c hunk #2 (@@ -10,3 +10,3 @@) failed at line 10" in message
    assert "Nothing was changed" in message
    assert {p: p.read_bytes() for p in base.rglob("*") if p.is_file()} == before


def test_patch_for_missing_file(tmp_path: Path) -> None:
    base = _base(tmp_path)
    patch = tmp_path / "x.patch"
    patch.write_text("--- a/mm/absent.c\n+++ b/mm/absent.c\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(PatchApplyError, match=r"Patch x.patch \(--patch\) does not apply: .*does not exist"):
        stage_series(base, (extra_patch(patch),))


def test_patch_applied_twice_is_named(tmp_path: Path) -> None:
    base = _base(tmp_path)
    good = DATA / "patches/0002-strip0.patch"
    twice = tmp_path / "twice"
    twice.mkdir()
    shutil.copy(good, twice / "a.patch")
    shutil.copy(good, twice / "b.patch")
    (twice / "series").write_text("a.patch -p0\nb.patch -p0\n")
    with pytest.raises(PatchApplyError, match=r"Patch b.patch .*already contains this change"):
        stage_series(base, load_series(twice))
