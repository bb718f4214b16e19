"""Fragment parsing, merging, the subset rule and failure explanations, against golden files."""

from __future__ import annotations

import re

import pytest
from conftest import DATA

from harness.errors import KconfigError
from harness.kernel.kconfig import (
    KconfigIndex,
    Option,
    merge,
    parse_dotconfig,
    parse_fragment,
    parse_fragment_file,
    parse_option_argument,
    unmet_options,
)
from harness.kernel.pipeline import KCONFIG_DIR, default_fragments


def test_parse_golden_fragment() -> None:
    fragment = parse_fragment_file(DATA / "kconfig/fragment-ok.config", "ok.config")
    assert [(o.name, o.value) for o in fragment.options] == [
        ("NUMA_BALANCING", "y"),
        ("NR_CPUS", "16"),
        ("CMDLINE", '"console=ttyS0 numa_balancing=enable"'),
        ("RANDOMIZE_BASE", "n"),
        ("DEBUG_VM", "m"),
    ]
    assert fragment.options[0].origin == "ok.config:4"
    assert fragment.options[3].line() == "# CONFIG_RANDOMIZE_BASE is not set"


def test_unparseable_line_is_named_with_file_and_line() -> None:
    with pytest.raises(KconfigError, match=r"fragment-bad-line.config:3: cannot parse 'NUMA_BALANCING=y'"):
        parse_fragment_file(DATA / "kconfig/fragment-bad-line.config")


def test_bad_value_is_rejected() -> None:
    with pytest.raises(KconfigError, match=r"CONFIG_NUMA=yes has a value Kconfig cannot take"):
        parse_fragment_file(DATA / "kconfig/fragment-bad-value.config")


def test_missing_fragment_file_names_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KconfigError, match=r"Cannot read Kconfig fragment .*nope.config"):
        parse_fragment_file(tmp_path / "nope.config")


@pytest.mark.parametrize(
    ("spec", "name", "value"),
    [("CONFIG_DEBUG_VM=n", "DEBUG_VM", "n"), ("NR_CPUS=8", "NR_CPUS", "8"), ('CONFIG_X="a b"', "X", '"a b"')],
)
def test_option_argument(spec: str, name: str, value: str) -> None:
    option = parse_option_argument(spec)
    assert (option.name, option.value, option.origin) == (name, value, f"--kconfig {spec}")


@pytest.mark.parametrize("spec", ["CONFIG_X", "CONFIG_=y", "CONFIG X=y", "CONFIG_X=maybe"])
def test_bad_option_argument(spec: str) -> None:
    with pytest.raises(KconfigError, match="--kconfig"):
        parse_option_argument(spec)


def test_merge_later_wins_and_conflicts_are_reported() -> None:
    first = parse_fragment("CONFIG_A=y\nCONFIG_B=y\n", "first")
    second = parse_fragment("# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=m\n", "second")
    merged = merge([first, second])
    assert [(o.name, o.value) for o in merged.options] == [("A", "n"), ("B", "y"), ("C", "m")]
    assert len(merged.conflicts) == 1  # B agrees, so only A conflicts
    assert merged.conflicts[0].describe() == "CONFIG_A is set to y by first:1 and to n by second:1; using n"
    assert merged.canonical() == "# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=m\n"


def test_digest_ignores_origins_but_not_values() -> None:
    a = merge([parse_fragment("CONFIG_A=y\n", "one")])
    b = merge([parse_fragment("# comment\nCONFIG_A=y\n", "two")])
    c = merge([parse_fragment("CONFIG_A=m\n", "one")])
    assert a.digest() == b.digest() != c.digest()


def test_subset_rule_against_golden_dotconfig() -> None:
    final = parse_dotconfig((DATA / "kconfig/dotconfig-snippet").read_text())
    assert final["RANDOMIZE_BASE"] == "n" and final["NR_CPUS"] == "16"
    requested = parse_fragment_file(DATA / "kconfig/fragment-ok.config").options
    missing = unmet_options(requested, final)
    # DEBUG_VM was asked as m but is y; everything else is there (=n satisfied by "is not set").
    assert [o.name for o in missing] == ["DEBUG_VM"]
    # =n is satisfied by absence too.
    assert unmet_options([Option("NOT_IN_FILE", "n", "t")], final) == []
    assert [o.name for o in unmet_options([Option("NOT_IN_FILE", "y", "t")], final)] == ["NOT_IN_FILE"]


def test_index_explains_an_option_that_does_not_exist() -> None:
    index = KconfigIndex.scan(DATA / "kconfig/tree")
    text = index.explain_missing(Option("NUMA_BALANCNG", "y", "--kconfig CONFIG_NUMA_BALANCNG=y"), {})
    assert "CONFIG_NUMA_BALANCNG (from --kconfig CONFIG_NUMA_BALANCNG=y) does not exist" in text
    assert "Did you mean CONFIG_NUMA_BALANCING?" in text
    # Words in help text are not definitions, and other architectures do not count.
    assert "NOT_A_SYMBOL" not in index.definitions
    assert "ARM64_ONLY_SYMBOL" not in index.definitions
    assert "X86_64_ACPI_NUMA" in index.definitions


def test_index_explains_unmet_dependencies() -> None:
    index = KconfigIndex.scan(DATA / "kconfig/tree")
    final = {"SMP": "y", "NUMA": "y", "PREEMPT_RT": "y"}
    text = index.explain_missing(Option("NUMA_BALANCING", "y", "frag:3"), final)
    assert text.startswith("CONFIG_NUMA_BALANCING=y (from frag:3) did not stick: the final .config has it unset.")
    assert "mm/Kconfig:6: depends on NUMA && MIGRATION && !PREEMPT_RT" in text
    # NUMA is met; MIGRATION is n; !PREEMPT_RT fails because PREEMPT_RT=y.
    assert "of these, MIGRATION=n, PREEMPT_RT=y" in text


def test_index_explains_a_symbol_without_prompt() -> None:
    index = KconfigIndex.scan(DATA / "kconfig/tree")
    text = index.explain_missing(Option("MIGRATION", "y", "frag:1"), {})
    assert "it has no prompt" in text and "selected by COMPACTION" in text


def test_every_shipped_option_says_why() -> None:
    """Each option line of kernel-config/*.config is directly under a comment (or another option
    that shares that comment), never alone after a blank line."""
    fragments = default_fragments()
    assert [p.name for p in fragments] == ["00-guest.config", "10-numa.config", "20-debug.config"]
    for path in fragments:
        previous = ""
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            is_option = bool(re.match(r"CONFIG_|# CONFIG_\w+ is not set", line))
            if is_option:
                assert previous.startswith("#") or previous.startswith("CONFIG_"), f"{path.name}:{number} has no why"
            previous = line
        parse_fragment_file(path)  # and they parse


def test_shipped_fragments_request_the_base_set() -> None:
    merged = merge(parse_fragment_file(p) for p in sorted(KCONFIG_DIR.glob("*.config")))
    values = {o.name: o.value for o in merged.options}
    for name in ("NUMA", "ACPI_NUMA", "NUMA_BALANCING", "TRANSPARENT_HUGEPAGE", "MIGRATION", "DEBUG_INFO_DWARF5",
                 "DEBUG_FS", "SCHED_DEBUG", "KEXEC", "FW_CFG_SYSFS", "IKCONFIG", "VIRTIO_NET", "SERIAL_8250_CONSOLE",
                 "VM_EVENT_COUNTERS", "SPARSEMEM_VMEMMAP", "X86_5LEVEL"):
        assert values[name] == "y", name
    assert values["RANDOMIZE_BASE"] == "n"
    assert merged.conflicts == ()
