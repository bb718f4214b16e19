"""The kernel pipeline for real: Debian's 6.12 source, the default series and fragments, make.

The first run on a machine builds the kernel (~6 min on 2 cores); later runs hit the cache.
The built vmlinux is checked here with tools independent of harness/verify.py: binutils
(`readelf`, `nm`) and the kernel's own `scripts/extract-ikconfig`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.kernel.kconfig import parse_dotconfig
from harness.kernel.pipeline import DEFAULT_SERIES_DIR, BuildRequest, KernelArtifact, build, plan
from harness.kernel.source import DEFAULT_TARBALL

pytestmark = pytest.mark.kernel

HARNESS = [sys.executable, "-m", "harness.cli"]


def _cli(*args: str, cache_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMA_HARNESS_CACHE"] = str(cache_dir)
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, env=env, timeout=3600)


def test_default_kernel_is_built_and_verified_independently(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    vmlinux = built_kernel.vmlinux
    sections = subprocess.run(["readelf", "-S", "-W", str(vmlinux)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"\.debug_info\s", sections), "no DWARF in vmlinux"
    notes = subprocess.run(["readelf", "-n", str(vmlinux)], capture_output=True, text=True, check=True).stdout
    build_id = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert build_id and build_id.group(1) == built_kernel.manifest["build_id"]
    symbols = subprocess.run(["nm", str(vmlinux)], capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in symbols.splitlines()}
    for function in ("do_huge_pmd_numa_page", "change_prot_numa", "task_numa_work"):
        assert function in names, function
    # do_numa_page is static and inlined into handle_pte_fault at -O2: the harness found it in the
    # DWARF of mm/memory.c; its declaration line must be where the source declares it.
    evidence = built_kernel.manifest["verification"]["function_evidence"]
    assert "handle_mm_fault" in names  # the fault path it is inlined into
    source_lines = (_pristine(built_kernel) / "mm/memory.c").read_text()
    declared = 1 + source_lines.splitlines().index("static vm_fault_t do_numa_page(struct vm_fault *vmf)")
    assert evidence["do_numa_page"] in (f"inlined, DWARF mm/memory.c:{declared}", f"DWARF mm/memory.c:{declared}") \
        or evidence["do_numa_page"].startswith("symbol 0x")
    # The kernel's own extractor on the image, compared with the build's .config.
    extractor = _extract_ikconfig_script(built_kernel)
    embedded = subprocess.run(["sh", str(extractor), str(vmlinux)], capture_output=True, text=True, check=True).stdout
    assert embedded == built_kernel.config.read_text()
    values = parse_dotconfig(embedded)
    assert values["NUMA_BALANCING"] == "y" and values.get("RANDOMIZE_BASE", "n") == "n"
    assert values["DEBUG_INFO_DWARF5"] == "y" and values["KEXEC"] == "y" and values["FW_CFG_SYSFS"] == "y"
    assert built_kernel.manifest["kernel_release"].startswith("6.12")


def _pristine(artifact: KernelArtifact) -> Path:
    # The cache may hold several releases' extractions (6.1 as well): take this kernel's own.
    tree = artifact.pristine_source
    assert tree is not None and tree.is_dir(), f"no extraction of this kernel's source: {tree}"
    return tree


def _extract_ikconfig_script(artifact: KernelArtifact) -> Path:
    return _pristine(artifact) / "scripts/extract-ikconfig"


def test_default_patch_exports_page_flags_layout(built_kernel: KernelArtifact) -> None:
    """The default series' patch puts the page->flags layout into vmcoreinfo: its NUMBER() names are
    in the image's read-only data, next to the existing ones."""
    strings = subprocess.run(["strings", "-n", "6", str(built_kernel.vmlinux)], capture_output=True, check=True).stdout
    for name in (b"NODES_PGSHIFT", b"LAST_CPUPID_PGSHIFT", b"LAST_CPUPID_WIDTH", b"LAST__CPU_SHIFT"):
        assert name in strings, name
    assert built_kernel.manifest["patches"][0]["name"] == "0001-vmcore_info-export-the-page-flags-layout.patch"


def test_second_build_is_a_cache_hit(built_kernel: KernelArtifact) -> None:
    result = _cli("build", "--json", cache_dir=built_kernel.directory.parent.parent)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cache_hit"] is True
    assert data["vmlinux"] == str(built_kernel.vmlinux)
    for key in ("source", "patches", "config_sha256", "kernel_release", "build_id", "build_seconds", "harness_version"):
        assert key in data, key
    assert all(len(p["sha256"]) == 64 for p in data["patches"])


def test_unknown_option_is_rejected_by_name(built_kernel: KernelArtifact) -> None:
    cache = built_kernel.directory.parent.parent
    before = sorted(p.name for p in (cache / "kernels").iterdir())
    result = _cli("build", "--kconfig", "CONFIG_NO_SUCH_OPTION=y", cache_dir=cache)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "CONFIG_NO_SUCH_OPTION (from --kconfig CONFIG_NO_SUCH_OPTION=y) does not exist" in result.stderr
    assert sorted(p.name for p in (cache / "kernels").iterdir()) == before


def test_option_with_unmet_dependency_names_the_dependency(built_kernel: KernelArtifact) -> None:
    # NUMA_EMU depends on NUMA (met) and X86_64; KASAN_SW_TAGS is arm64-only: use one that is real on
    # x86 and blocked by an explicit =n in the same request.
    cache = built_kernel.directory.parent.parent
    result = _cli("build", "--kconfig", "CONFIG_NUMA_BALANCING=y", "--kconfig", "CONFIG_NUMA=n", cache_dir=cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "CONFIG_NUMA_BALANCING=y (from kernel-config/10-numa.config" in result.stderr or \
        "CONFIG_NUMA_BALANCING=y (from --kconfig" in result.stderr
    assert "did not stick" in result.stderr
    assert re.search(r"depends on .*NUMA", result.stderr)
    assert "NUMA=n" in result.stderr


def test_patch_that_does_not_apply_fails_cleanly_then_good_build_works(
    built_kernel: KernelArtifact, tmp_path: Path
) -> None:
    cache = built_kernel.directory.parent.parent
    bad = tmp_path / "9999-bad.patch"
    bad.write_text(
        "--- a/mm/memory.c\n+++ b/mm/memory.c\n@@ -5570,3 +5570,3 @@\n"
        " this context\n-does not exist\n+in mm/memory.c\n"
    )
    result = _cli("build", "--patch", str(bad), cache_dir=cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Patch 9999-bad.patch (--patch) does not apply: mm/memory.c hunk #1" in result.stderr
    # No half-patched tree: the working tree's memory.c still equals the pristine one (this
    # kernel's tree: the cache may hold other sources' trees, a git tree's without a pristine copy) ...
    pristine = built_kernel.pristine_source
    assert pristine is not None
    memory_c = pristine.parent / "work" / "mm" / "memory.c"
    assert memory_c.read_bytes() == (pristine / "mm" / "memory.c").read_bytes()
    # ... and the next good build is still a cache hit on the same entry.
    again = _cli("build", "--json", cache_dir=cache)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["directory"] == str(built_kernel.directory)


def test_one_file_patch_change_rebuilds_only_a_few_objects(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    """Adding a patch that changes one .c file recompiles that file (plus the per-link version
    objects), not the kernel: asserted on compiled-object counts from the build log."""
    cache = built_kernel.directory.parent.parent
    tree = _pristine(built_kernel)
    original = (tree / "mm/mprotect.c").read_text()
    marker = f"/* numa-harness incremental test {os.getpid()} {tmp_path.name} */\n"
    patch = tmp_path / "one-file.patch"
    first, second = original.splitlines(keepends=True)[:2]
    patch.write_text(
        "--- a/mm/mprotect.c\n+++ b/mm/mprotect.c\n@@ -1,2 +1,3 @@\n" + f" {first}" + f"+{marker}" + f" {second}"
    )
    request = BuildRequest(extra_patches=(patch,), cache_dir=cache)
    artifact = build(request)
    request_cleanup = artifact.directory  # a test artifact: do not let one pile up per run
    assert artifact.cache_hit is False
    log = artifact.build_log.read_text()
    compiled = re.findall(r"^\s+(?:CC|AS)\s+(\S+\.o)$", log, re.MULTILINE)
    assert "mm/mprotect.o" in compiled
    assert 1 <= len(compiled) <= 12, compiled
    assert artifact.manifest["build_id"] != built_kernel.manifest["build_id"]
    # And the default series is still served from the cache afterwards.
    assert build(BuildRequest(cache_dir=cache)).directory == built_kernel.directory
    first_config = artifact.config.read_text()
    shutil.rmtree(request_cleanup)
    # A second C-only patch in the same build directory is not configured again (the first one
    # may have been, if nothing had stamped the directory yet); the .config is the same.
    patch.write_text(patch.read_text().replace(marker, marker.replace("test", "test again")))
    again = build(request)
    assert "# configure skipped: the inputs of the last configure" in again.build_log.read_text()
    assert again.config.read_text() == first_config == built_kernel.config.read_text()
    shutil.rmtree(again.directory)


def test_a_patch_to_a_kconfig_file_configures_again(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    """configure's inputs include every patched Kconfig file: a new symbol reaches the .config."""
    cache = built_kernel.directory.parent.parent
    lines = (_pristine(built_kernel) / "mm/Kconfig").read_text().splitlines(keepends=True)
    patch = tmp_path / "kconfig.patch"
    patch.write_text("--- a/mm/Kconfig\n+++ b/mm/Kconfig\n@@ -1,2 +1,5 @@\n"
                     f" {lines[0]}+config NUMA_HARNESS_TEST_SYMBOL\n+\tdef_bool y\n+\n {lines[1]}")
    artifact = build(BuildRequest(extra_patches=(patch,), cache_dir=cache))
    try:
        log = artifact.build_log.read_text()
        assert "# configure skipped" not in log and "olddefconfig" in log
        assert parse_dotconfig(artifact.config.read_text())["NUMA_HARNESS_TEST_SYMBOL"] == "y"
    finally:
        shutil.rmtree(artifact.directory)


def test_fast_elf_and_dwarf_readers_agree_with_pyelftools(built_kernel: KernelArtifact) -> None:
    """verify.py reads .symtab as one array and CU names straight from .debug_info/.debug_abbrev;
    on the real vmlinux both must give what pyelftools' own parsers give."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from harness.kernel.verify import _DwarfBytes, _find_symbols

    with built_kernel.vmlinux.open("rb") as handle:
        elf = ELFFile(handle)
        reference: dict[str, int] = {}
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        for symbol in symtab.iter_symbols():
            if symbol["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE", "STT_OBJECT"):
                reference.setdefault(symbol.name, symbol["st_value"])
        # Names whose strings the linker may have tail-merged (`_end` inside `__bss_end`...),
        # a static function of several CUs, and one that does not exist.
        wanted = {"_end", "__bss_stop", "jiffies", "init_task", "task_numa_work", "kernel_config_data",
                  "no_such_symbol_numa_harness"}
        assert _find_symbols(elf, handle, wanted) == {k: v for k, v in reference.items() if k in wanted}
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        fast = _DwarfBytes.of(elf, handle)
        assert fast is not None
        try:
            for cu in dwarf.iter_CUs():
                name = cu.get_top_DIE().attributes.get("DW_AT_name")
                assert fast.cu_name(cu.cu_offset) == (name.value.decode() if name else None), cu.cu_offset
        finally:
            fast.data.close()


def test_plan_key_depends_on_patch_content(tmp_path: Path) -> None:
    if not DEFAULT_TARBALL.exists():
        pytest.skip("default source not installed")
    patch = tmp_path / "x.patch"
    patch.write_text("--- a/README\n+++ b/README\n@@ -1 +1 @@\n-a\n+b\n")
    base = plan(BuildRequest(cache_dir=tmp_path / "c"), install_default=False)
    with_patch = plan(BuildRequest(extra_patches=(patch,), cache_dir=tmp_path / "c"), install_default=False)
    patch.write_text("--- a/README\n+++ b/README\n@@ -1 +1 @@\n-a\n+c\n")
    changed = plan(BuildRequest(extra_patches=(patch,), cache_dir=tmp_path / "c"), install_default=False)
    assert len({base.key, with_patch.key, changed.key}) == 3
    assert plan(BuildRequest(cache_dir=tmp_path / "c"), install_default=False).key == base.key
    assert DEFAULT_SERIES_DIR.joinpath("series").is_file()
