"""Verify a built vmlinux with pyelftools instead of trusting make.

Checks: DWARF is present (and which version); the config that IKCONFIG embedded in the image
(`kernel/configs.c`: gzip data between the symbols `kernel_config_data` and
`kernel_config_data_end`) equals the build's `.config` and enables NUMA balancing; the NUMA
balancing entry points exist as functions; and the GNU build-id, which ties a running guest
(and drgn) to this exact file.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from harness.errors import VerifyError
from harness.kernel.kconfig import parse_dotconfig

# The hint-fault and scanner entry points (see shared/numa-balancing-6.12.md §3-4):
# mm/memory.c:do_numa_page, mm/huge_memory.c:do_huge_pmd_numa_page,
# mm/mempolicy.c:change_prot_numa, kernel/sched/fair.c:task_numa_work.
# At -O2 gcc inlines the static do_numa_page into handle_pte_fault, leaving no ELF symbol: such a
# function is accepted when its defining compilation unit's DWARF has it as a subprogram.
REQUIRED_FUNCTIONS = {
    "do_numa_page": "mm/memory.c",
    "do_huge_pmd_numa_page": "mm/huge_memory.c",
    "change_prot_numa": "mm/mempolicy.c",
    "task_numa_work": "kernel/sched/fair.c",
}
REQUIRED_OPTIONS = {"NUMA_BALANCING": "y"}


@dataclass(frozen=True)
class Verification:
    build_id: str
    dwarf_version: int
    debug_info_bytes: int
    embedded_config_matches: bool
    functions: tuple[str, ...]
    # name -> "symbol 0x..." or "inlined, DWARF mm/memory.c:5570"
    function_evidence: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "build_id": self.build_id,
            "dwarf_version": self.dwarf_version,
            "debug_info_bytes": self.debug_info_bytes,
            "embedded_config_matches": self.embedded_config_matches,
            "functions": list(self.functions),
            "function_evidence": dict(self.function_evidence),
        }


def read_vmlinux_facts(vmlinux: Path, symbols: Iterable[str]) -> tuple[dict[str, int], str, int, int, bytes | None]:
    """(symbol -> address, build-id, DWARF version, .debug_info size, embedded config or None)."""
    wanted = set(symbols) | {"kernel_config_data", "kernel_config_data_end"}
    found: dict[str, int] = {}
    with vmlinux.open("rb") as handle:
        elf = ELFFile(handle)
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for symbol in symtab.iter_symbols():
                if symbol.name in wanted and symbol["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE", "STT_OBJECT"):
                    found.setdefault(symbol.name, symbol["st_value"])
        build_id = ""
        for section in elf.iter_sections():
            if isinstance(section, NoteSection):
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        build_id = str(note["n_desc"])
        debug_info = elf.get_section_by_name(".debug_info")
        dwarf_version, debug_size = 0, 0
        if debug_info is not None and debug_info["sh_size"] > 0:
            debug_size = debug_info["sh_size"]
            handle.seek(debug_info["sh_offset"])
            header = handle.read(12)
            # unit_length (4 bytes, or 0xffffffff + 8 for 64-bit DWARF), then a 2-byte version.
            offset = 12 if struct.unpack_from("<I", header)[0] == 0xFFFFFFFF else 4
            dwarf_version = struct.unpack_from("<H", header, offset)[0]
        config = None
        start, end = found.get("kernel_config_data"), found.get("kernel_config_data_end")
        if start is not None and end is not None and end > start:
            config = _read_vaddr(elf, handle, start, end - start)
    return found, build_id, dwarf_version, debug_size, config


def _read_vaddr(elf: ELFFile, handle, address: int, size: int) -> bytes | None:  # type: ignore[no-untyped-def]
    for section in elf.iter_sections():
        lo = section["sh_addr"]
        if lo and lo <= address and address + size <= lo + section["sh_size"] and section["sh_type"] != "SHT_NOBITS":
            handle.seek(section["sh_offset"] + address - lo)
            data: bytes = handle.read(size)
            return data
    return None


def verify_vmlinux(vmlinux: Path, dotconfig_text: str) -> Verification:
    """Raise VerifyError unless vmlinux is the debuggable NUMA-balancing kernel the .config describes."""
    if not vmlinux.is_file():
        raise VerifyError(f"make reported success but {vmlinux} does not exist; see the build log.")
    found, build_id, dwarf_version, debug_size, embedded = read_vmlinux_facts(vmlinux, REQUIRED_FUNCTIONS)
    problems = []
    if debug_size == 0:
        problems.append("it has no .debug_info section (DWARF), so drgn cannot use it: keep CONFIG_DEBUG_INFO_DWARF5=y")
    if embedded is None:
        problems.append("it has no IKCONFIG data (kernel_config_data): keep CONFIG_IKCONFIG=y")
        matches = False
    else:
        try:
            embedded_text = gzip.decompress(embedded).decode()
        except (OSError, UnicodeDecodeError) as err:
            raise VerifyError(f"The IKCONFIG data in {vmlinux} is not a gzip'd config ({err}); rebuild it.") from err
        matches = embedded_text == dotconfig_text
        if not matches:
            problems.append("the config embedded by IKCONFIG differs from the build's .config (a stale image?)")
        values = parse_dotconfig(embedded_text)
        for name, value in REQUIRED_OPTIONS.items():
            if values.get(name, "n") != value:
                problems.append(f"its embedded config has CONFIG_{name}={values.get(name, 'n')}, not {value}")
    evidence = {name: f"symbol {found[name]:#x}" for name in REQUIRED_FUNCTIONS if name in found}
    not_in_symtab = {name: cu for name, cu in REQUIRED_FUNCTIONS.items() if name not in found}
    if not_in_symtab:
        evidence.update(find_dwarf_subprograms(vmlinux, not_in_symtab))
    missing = [name for name in REQUIRED_FUNCTIONS if name not in evidence]
    if missing:
        problems.append(f"it lacks the function symbols {', '.join(missing)}")
    if not build_id:
        problems.append("it has no GNU build-id note")
    if problems:
        raise VerifyError(
            f"The built {vmlinux} failed verification: {'; '.join(problems)}. Check the patches and "
            f"options that remove these, then build again."
        )
    return Verification(
        build_id, dwarf_version, debug_size, matches, tuple(REQUIRED_FUNCTIONS),
        tuple((name, evidence[name]) for name in REQUIRED_FUNCTIONS),
    )


def find_dwarf_subprograms(vmlinux: Path, wanted: dict[str, str]) -> dict[str, str]:
    """name -> evidence for functions found as DW_TAG_subprogram in the CU of their source file.
    Only the named CUs are walked DIE by DIE (about 2 s for mm/memory.c)."""
    by_cu: dict[str, set[str]] = {}
    for name, cu_file in wanted.items():
        by_cu.setdefault(cu_file, set()).add(name)
    result: dict[str, str] = {}
    with vmlinux.open("rb") as handle:
        elf = ELFFile(handle)
        if not elf.has_dwarf_info():
            return result
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        for cu in dwarf.iter_CUs():
            top_name = cu.get_top_DIE().attributes.get("DW_AT_name")
            cu_name = top_name.value.decode(errors="replace") if top_name else ""
            matched = next((f for f in by_cu if cu_name == f or cu_name.endswith("/" + f)), None)
            if matched is None:
                continue
            names = by_cu[matched]
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram":
                    continue
                attr = die.attributes.get("DW_AT_name")
                name = attr.value.decode(errors="replace") if attr else ""
                if name in names and name not in result:
                    line = die.attributes.get("DW_AT_decl_line")
                    inlined = "inlined, " if "DW_AT_inline" in die.attributes else ""
                    where = f"{matched}:{line.value if line else '?'}"
                    result[name] = f"{inlined}DWARF {where}"
            if all(n in result for names_ in by_cu.values() for n in names_):
                break
    return result

