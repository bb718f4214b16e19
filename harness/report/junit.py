"""JUnit XML through junitparser: a test suite per topology (a test case per check) and one for the
mutants. Verdicts map as CI systems read them: fail and hang are `<failure>` (typed with the
verdict), a harness error is `<error>`, a check not run is `<skipped>`.

Console tails and diffs may carry bytes XML 1.0 cannot hold (ESC from colour codes, NUL from a
torn console line); `xml_text` makes them visible escapes instead of an unparsable file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from harness.cache import atomic_write_text
from harness.checks.registry import CheckResult, Verdict

# Characters outside XML 1.0's Char production (https://www.w3.org/TR/xml/#charsets).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """`text` with every character XML 1.0 forbids written as a visible escape (\\x1b)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _check_case(suite_name: str, check: dict[str, Any]) -> TestCase:
    """A test case from a check's JSON (CheckResult.as_json, as summary.json holds it)."""
    case = TestCase(check["name"], suite_name, float(check["seconds"]))
    verdict = Verdict(check["verdict"])
    bugs = check.get("figures", {}).get("kernel_bugs") or check.get("kernel_bugs") or []
    message = xml_text((f"kernel bug: {bugs[0]}; " if bugs else "") + check["summary"])
    text = xml_text("\n".join(check["diffs"]) or check["summary"])
    if verdict.indicts_kernel:
        failure = Failure(message, verdict.value)
        failure.text = text
        case.result = [failure]
    elif verdict is Verdict.ERROR:
        error = Error(message, "harness-error")
        error.text = xml_text(str(check.get("figures", {}).get("traceback") or text))
        case.result = [error]
    elif verdict in (Verdict.NOT_RUN, Verdict.NOT_APPLICABLE, Verdict.UNVERIFIED):
        case.result = [Skipped(message)]
    case.system_out = xml_text(json.dumps({"figures": check.get("figures", {}), "vmstat_delta": check.get("vmstat_delta", {}),
                                           "snapshot_file": check.get("snapshot_file")}))
    return case


def _write(path: Path, suites: Sequence[TestSuite], name: str) -> None:
    xml = JUnitXml(name)
    for suite in suites:
        suite.update_statistics()
        xml.add_testsuite(suite)
    xml.update_statistics()
    atomic_write_text(path, xml.tostring().decode() + "\n")


def write_junit(path: Path, results: Sequence[CheckResult], suite_name: str) -> None:
    suite = TestSuite(suite_name)
    for result in results:
        suite.add_testcase(_check_case(suite_name, result.as_json()))
    _write(path, [suite], "numa-harness")


def _boot_case(suite_name: str, topology: dict[str, Any]) -> TestCase:
    case = TestCase("boot", suite_name, 0.0)
    error = Error(xml_text(topology.get("kernel_bug") or "the guest did not boot"), "boot")
    error.text = xml_text(str(topology["error"]))
    case.result = [error]
    return case


def _mutant_case(mutant: dict[str, Any]) -> TestCase:
    case = TestCase(mutant["mutant"], "numa-harness.mutants", float(mutant["seconds"]))
    if mutant["outcome"] == "survived":
        failure = Failure(xml_text(f"survived: {mutant['subject']}"), "survived")
        failure.text = xml_text(f"No check failed on this mutant kernel: {mutant['subject']}")
        case.result = [failure]
    elif mutant["outcome"] == "error":
        error = Error("nothing is known: a build, boot or harness error", "harness-error")
        error.text = xml_text(mutant.get("detail", ""))
        case.result = [error]
    return case


def write_ci_junit(path: Path, summary: dict[str, Any]) -> None:
    """One test suite per topology (a test case per check; a failure's text is the diff, with the
    kernel-bug title if any) and one for the mutants (a survivor is a failure)."""
    suites = []
    for topology in summary["topologies"]:
        suite_name = f"numa-harness.{topology['topology']}"
        suite = TestSuite(suite_name)
        if topology.get("error"):
            suite.add_testcase(_boot_case(suite_name, topology))
        for check in topology["checks"]:
            suite.add_testcase(_check_case(suite_name, check))
        suites.append(suite)
    if summary.get("mutants"):
        suite = TestSuite("numa-harness.mutants")
        for mutant in summary["mutants"]["mutants"]:
            suite.add_testcase(_mutant_case(mutant))
        suites.append(suite)
    _write(path, suites, "numa-harness ci")
