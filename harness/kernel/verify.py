"""Verify a built vmlinux with pyelftools instead of trusting make.

Checks: DWARF is present (and which version); the config that IKCONFIG embedded in the image
(`kernel/configs.c`: gzip data between the symbols `kernel_config_data` and
`kernel_config_data_end`) equals the build's `.config` and enables NUMA balancing; the NUMA
balancing entry points exist as functions; and the GNU build-id, which ties a running guest
(and drgn) to this exact file.
"""

from __future__ import annotations

import gzip
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from elftools.dwarf.dwarfinfo import DWARFInfo
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
    with vmlinux.open("rb") as handle:
        elf = ELFFile(handle)
        found = _find_symbols(elf, handle, wanted)
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


# Elf64_Sym (elf.h). pyelftools parses each of vmlinux's 34,000 symbols through construct (2.2 s);
# read as one array they take milliseconds.
_ELF64_SYM = np.dtype([("st_name", "<u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "<u2"),
                       ("st_value", "<u8"), ("st_size", "<u8")])
_STT_NOTYPE, _STT_OBJECT, _STT_FUNC = 0, 1, 2


def _find_symbols(elf: ELFFile, handle: BinaryIO, wanted: set[str]) -> dict[str, int]:
    """name -> st_value of the first .symtab entry of each wanted name that is a function, object
    or untyped symbol (what `iter_symbols` finds first, filtered the same way)."""
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection) or elf.elfclass != 64 or not elf.little_endian:
        return {}
    strtab = elf.get_section(symtab["sh_link"])
    handle.seek(symtab["sh_offset"])
    table = np.frombuffer(handle.read(symtab["sh_size"]), dtype=_ELF64_SYM)
    handle.seek(strtab["sh_offset"])
    strings = handle.read(strtab["sh_size"])
    typed = np.isin(table["st_info"] & 0xF, (_STT_NOTYPE, _STT_OBJECT, _STT_FUNC))
    found: dict[str, int] = {}
    for name in wanted:
        # Every offset at which `name` NUL-terminated starts (the linker merges string tails,
        # so a name may start inside a longer one); a symbol's st_name is one of them.
        needle = name.encode() + b"\0"
        offsets: list[int] = []
        at = strings.find(needle)
        while at >= 0:
            offsets.append(at)
            at = strings.find(needle, at + 1)
        hits = np.flatnonzero(typed & np.isin(table["st_name"], offsets))
        if offsets and len(hits):
            found[name] = int(table["st_value"][hits[0]])
    return found


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
    Only the named CUs are walked DIE by DIE (about 1 s for mm/memory.c); the others are told
    apart by their names alone (`_cu_name`)."""
    by_cu: dict[str, set[str]] = {}
    for name, cu_file in wanted.items():
        by_cu.setdefault(cu_file, set()).add(name)
    result: dict[str, str] = {}
    with vmlinux.open("rb") as handle:
        elf = ELFFile(handle)
        if not elf.has_dwarf_info():
            return result
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        sections = _DwarfBytes.of(elf, handle)
        try:
            _walk_named_cus(dwarf, sections, by_cu, result)
        finally:
            if sections is not None:
                sections.data.close()
    return result


def _walk_named_cus(dwarf: DWARFInfo, sections: _DwarfBytes | None, by_cu: dict[str, set[str]],
                    result: dict[str, str]) -> None:
    """Walk the CUs named in `by_cu` DIE by DIE for their subprograms, telling the rest apart by name."""
    for cu in dwarf.iter_CUs():
        cu_name = sections.cu_name(cu.cu_offset) if sections is not None else None
        if cu_name is None:
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


# DWARF forms (DWARF 5, section 7.5.6) of a fixed size in a DIE, by that size in bytes.
_FIXED_FORMS = {0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8,
                0x19: 0, 0x1E: 16, 0x20: 8, 0x21: 0, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1,
                0x2A: 2, 0x2B: 3, 0x2C: 4}
_DW_FORM_addr, _DW_FORM_string, _DW_FORM_strp, _DW_FORM_sec_offset, _DW_FORM_line_strp = 0x01, 0x08, 0x0E, 0x17, 0x1F
_DW_FORM_sdata, _DW_FORM_udata, _DW_FORM_strx, _DW_FORM_addrx, _DW_FORM_implicit_const = 0x0D, 0x0F, 0x1A, 0x1B, 0x21
_DW_AT_name = 0x03


def _uleb(data: bytes | mmap.mmap, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


@dataclass(frozen=True)
class _DwarfBytes:
    """A compilation unit's name read straight from the sections: the CU header, the first
    declaration of its abbreviation table and its first DIE. pyelftools gets there only by
    parsing each CU's whole abbreviation table through construct: 4 s over vmlinux's 1,200 CUs,
    the largest part of verifying a one-file rebuild. Anything unusual (a form not listed, a
    name through .debug_str_offsets) returns None, and the caller asks pyelftools."""

    data: mmap.mmap
    info: int
    abbrev: int
    strings: int | None
    line_strings: int | None

    @classmethod
    def of(cls, elf: ELFFile, handle: BinaryIO) -> _DwarfBytes | None:
        offsets = {}
        for name in (".debug_info", ".debug_abbrev", ".debug_str", ".debug_line_str"):
            section = elf.get_section_by_name(name)
            offsets[name] = None if section is None else section["sh_offset"]
        if offsets[".debug_info"] is None or offsets[".debug_abbrev"] is None or not elf.little_endian:
            return None
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(data, offsets[".debug_info"], offsets[".debug_abbrev"], offsets[".debug_str"],
                   offsets[".debug_line_str"])

    def cu_name(self, cu_offset: int) -> str | None:
        data, at = self.data, self.info + cu_offset
        length = struct.unpack_from("<I", data, at)[0]
        offset_size = 8 if length == 0xFFFFFFFF else 4
        at += 12 if offset_size == 8 else 4
        version = struct.unpack_from("<H", data, at)[0]
        at += 2
        if version >= 5:
            unit_type, address_size = data[at], data[at + 1]
            at += 2
            if unit_type != 0x01:  # DW_UT_compile
                return None
            abbrev_offset = int.from_bytes(data[at:at + offset_size], "little")
            at += offset_size
        elif version in (2, 3, 4):
            abbrev_offset = int.from_bytes(data[at:at + offset_size], "little")
            address_size = data[at + offset_size]
            at += offset_size + 1
        else:
            return None
        code, at = _uleb(data, at)
        spec = self._abbreviation(self.abbrev + abbrev_offset, code)
        if spec is None:
            return None
        for attribute, form in spec:
            if attribute == _DW_AT_name:
                return self._string(form, at, offset_size)
            size = self._form_size(form, at, address_size, offset_size)
            if size is None:
                return None
            at += size
        return None

    def _abbreviation(self, at: int, code: int) -> list[tuple[int, int]] | None:
        """The (attribute, form) pairs of abbreviation `code` in the table starting at `at`."""
        data = self.data
        while True:
            entry, at = _uleb(data, at)
            if entry == 0:
                return None
            _tag, at = _uleb(data, at)
            at += 1  # DW_CHILDREN_yes/no
            pairs = []
            while True:
                attribute, at = _uleb(data, at)
                form, at = _uleb(data, at)
                if form == _DW_FORM_implicit_const:
                    _, at = _uleb(data, at)  # an SLEB128: same length rule as ULEB128
                if attribute == 0 and form == 0:
                    break
                pairs.append((attribute, form))
            if entry == code:
                return pairs

    def _form_size(self, form: int, at: int, address_size: int, offset_size: int) -> int | None:
        if form in _FIXED_FORMS:
            return _FIXED_FORMS[form]
        if form == _DW_FORM_addr:
            return address_size
        if form in (_DW_FORM_strp, _DW_FORM_sec_offset, _DW_FORM_line_strp):
            return offset_size
        if form in (_DW_FORM_sdata, _DW_FORM_udata, _DW_FORM_strx, _DW_FORM_addrx):
            return _uleb(self.data, at)[1] - at
        if form == _DW_FORM_string:
            return self.data.find(b"\0", at) - at + 1
        return None

    def _string(self, form: int, at: int, offset_size: int) -> str | None:
        data = self.data
        if form == _DW_FORM_string:
            start = at
        elif form in (_DW_FORM_strp, _DW_FORM_line_strp):
            base = self.strings if form == _DW_FORM_strp else self.line_strings
            if base is None:
                return None
            start = base + int.from_bytes(data[at:at + offset_size], "little")
        else:
            return None
        return data[start:data.find(b"\0", start)].decode(errors="replace")
