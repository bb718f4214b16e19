"""`numa-harness ci` end to end: a real short run (one topology, two checks, two mutants) whose
report files are validated (JUnit counts, the JSON schema, the HTML rendered by headless
Chromium with its plots visible), then a run on a broken kernel against that baseline, which
must be flagged as a regression."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from harness.checks.faults import FAULT_PAGES
from harness.checks.mutants import MUTANTS_DIR
from harness.cli.main import main
from harness.errors import HarnessError
from harness.kernel.pipeline import KernelArtifact
from harness.report.summary import SCHEMA, regressions

CHECKS = ["--checks", "fault-migration", "--checks", "thp"]
MUTANTS = ["--mutant", "0002", "--mutant", "0005", "--mutant-checks", "fault-migration", "--mutant-checks", "thp"]


def _cache_args(cache: Path | None) -> list[str]:
    return ["--cache-dir", str(cache)] if cache else []


@pytest.fixture(scope="module")
def good_run(built_kernel: KernelArtifact, nh_cache_dir: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ci") / "good"
    status = main(["ci", "--topology", "2x2", *CHECKS, *MUTANTS, "--out", str(out), "--kcidb", str(out.parent / "kcidb.json"),
                   *_cache_args(nh_cache_dir)])
    assert status == 0, (out / "summary.json").read_text() if (out / "summary.json").exists() else status
    return out


@pytest.mark.kernel
@pytest.mark.guest
def test_ci_writes_every_report_file(good_run: Path) -> None:
    names = {p.name for p in good_run.iterdir()}
    assert {"junit.xml", "summary.json", "report.html", "console-2x2.log",
            "console-mutant-0002-hint-fault-local-test-inverted.log",
            "console-mutant-0005-thp-fault-accounted-to-old-node.log"} <= names, names
    assert "numa-harness: ready" in (good_run / "console-2x2.log").read_text(errors="replace")
    assert not list(good_run.parent.glob(".good.partial-*")), "the staging directory was left behind"


@pytest.mark.kernel
@pytest.mark.guest
def test_ci_junit_counts_match(good_run: Path) -> None:
    root = ET.parse(good_run / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    checks, mutants = suites["numa-harness.2x2"], suites["numa-harness.mutants"]
    assert (checks.get("tests"), checks.get("failures")) == ("2", "0")
    assert [c.get("name") for c in checks.findall("testcase")] == ["fault-migration", "thp"]
    assert (mutants.get("tests"), mutants.get("failures"), mutants.get("errors")) == ("2", "0", "0")


@pytest.mark.kernel
@pytest.mark.guest
def test_ci_summary_matches_its_schema(good_run: Path) -> None:
    summary = json.loads((good_run / "summary.json").read_text())
    jsonschema.validate(summary, SCHEMA)
    assert summary["status"] == "pass" and summary["exit_code"] == 0
    assert summary["kernel"]["build_id"] and summary["kernel"]["config_sha256"]
    [topology] = summary["topologies"]
    assert [c["verdict"] for c in topology["checks"]] == ["pass", "pass"]
    migration = topology["checks"][0]
    assert migration["vmstat_delta"]["numa_pages_migrated"] >= len(FAULT_PAGES), migration["vmstat_delta"]
    assert summary["mutants"]["killed"] == 2
    killers = {m["mutant"][:4]: m["failed_checks"] for m in summary["mutants"]["mutants"]}
    assert "fault-migration" in killers["0002"] and "thp" in killers["0005"], killers


def _screenshot(html: Path, out: Path) -> np.ndarray:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not installed (harness/bootstrap.sh --test installs it)"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={out}", "--window-size=1400,5000", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    import matplotlib.image

    image: np.ndarray = matplotlib.image.imread(out)
    return image


@pytest.mark.kernel
@pytest.mark.guest
def test_ci_report_opens_in_chromium_with_its_plots(good_run: Path, tmp_path: Path) -> None:
    html = (good_run / "report.html").read_text()
    assert "data:image/png;base64," in html and "PASS" in html
    image = _screenshot(good_run / "report.html", tmp_path / "shot.png")
    rgb = (image[..., :3] * 255).round().astype(int)
    # matplotlib's first colours: the counter lines of the plot, rendered by the browser.
    for colour in ((31, 119, 180), (255, 127, 14)):
        near = (np.abs(rgb - np.array(colour)).sum(axis=-1) < 40).sum()
        assert near > 200, f"the screenshot shows {near} pixels of plot colour {colour}: no plot rendered"
    assert (rgb.sum(axis=-1) < 200).sum() > 2000, "the screenshot has almost no text"


@pytest.mark.kernel
@pytest.mark.guest
def test_ci_flags_a_check_that_now_fails_as_a_regression(good_run: Path, nh_cache_dir: Path | None,
                                                        tmp_path: Path) -> None:
    """The same short run on a kernel whose THP path is broken, against the good run."""
    out = tmp_path / "bad"
    patch = MUTANTS_DIR / "0005-thp-fault-accounted-to-old-node.patch"
    status = main(["ci", "--topology", "2x2", *CHECKS, "--no-mutants", "--patch", str(patch), "--baseline",
                   str(good_run), "--out", str(out), *_cache_args(nh_cache_dir)])
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, SCHEMA)
    assert status == 3 and summary["status"] == "regression", summary["regressions"]
    assert any(r["kind"] == "check" and r["where"] == "2x2/thp" for r in summary["regressions"])
    html = (out / "report.html").read_text()
    assert html.index("Regressions against the baseline") < html.index("id='checks'")
    failure = ET.parse(out / "junit.xml").getroot().find("testsuite/testcase[@name='thp']/failure")
    # 0005 books a migrated THP's faults on the node it left: the task's NUMA_MEMBUF says so.
    assert failure is not None and "NUMA_MEMBUF node" in (failure.text or ""), failure
    snapshot = summary["topologies"][0]["checks"][1]["snapshot_file"]
    assert snapshot and json.loads((out / snapshot).read_text())["observations"]
    _overview_of_two_kernels(good_run, out, tmp_path / "overview")


def _overview_of_two_kernels(good: Path, bad: Path, out: Path) -> None:
    """`ci overview`: the good and the broken kernel side by side, the lab's status the worse one."""
    assert main(["ci", "overview", str(good), str(good), "--out", str(out)]) == 2  # one kernel twice
    assert not out.exists()
    assert main(["ci", "overview", str(good), str(bad), "--out", str(out)]) == 3
    data = json.loads((out / "overview.json").read_text())
    good_label, bad_label = (r["label"] for r in data["runs"])
    assert good_label != bad_label and data["status"] == "regression"
    assert data["matrix"]["cells"]["thp"] == {good_label: {"2x2": "pass"}, bad_label: {"2x2": "fail"}}
    assert data["matrix"]["cells"]["fault-migration"][good_label] == {"2x2": "pass"}
    page = (out / "index.html").read_text()
    assert page.index("id='regressions'") < page.index("id='matrix'") and "2x2/thp" in page
    for run in data["runs"]:
        assert (out / run["report"]).is_file()  # every link works inside the one directory


def _summary_with(verdicts: dict[str, bool], killed: bool = True) -> dict[str, Any]:
    return {"topologies": [{"topology": "2x2", "checks": [
        {"name": name, "passed": ok, "verdict": "pass" if ok else "fail", "summary": "", "figures": {}, "seconds": 5.0}
        for name, ok in verdicts.items()]}],
        "mutants": {"mutants": [{"mutant": "0001-x", "killed": killed, "outcome": "killed" if killed else "survived"}]}}


def test_regressions_name_what_got_worse() -> None:
    baseline = _summary_with({"thp": True, "placement": False})
    now = _summary_with({"thp": False, "placement": False}, killed=False)
    found = regressions(now, baseline)
    assert {(r["kind"], r["where"]) for r in found} == {("check", "2x2/thp"), ("mutant", "0001-x")}
    assert regressions(baseline, baseline) == []


def test_regressions_respect_the_stated_noise() -> None:
    def with_share(share: float, seconds: float | None) -> dict[str, Any]:
        summary = _summary_with({"convergence": True})
        summary["topologies"][0]["checks"][0]["figures"] = {
            "runs": {"numa02-free": {"final_share": share, "time_to_converged": seconds}}}
        return summary
    base = with_share(0.98, 2.0)
    assert regressions(with_share(0.95, 4.0), base) == []  # within 0.05 and 3 s
    moved = regressions(with_share(0.90, 2.0), base)
    assert [r["where"] for r in moved] == ["2x2/convergence numa02-free final_share"]
    never = regressions(with_share(0.98, None), copy.deepcopy(base))
    assert [r["where"] for r in never] == ["2x2/convergence numa02-free time_to_converged"]


@pytest.mark.kernel
@pytest.mark.guest
def test_ci_kcidb_output_validates(good_run: Path) -> None:
    import kcidb_io

    data = json.loads((good_run.parent / "kcidb.json").read_text())
    kcidb_io.schema.LATEST.validate(data)
    [checkout], [build] = data["checkouts"], data["builds"]
    assert build["checkout_id"] == checkout["id"] and build["status"] == "PASS" and build["compiler"].startswith("gcc")
    assert len(checkout["patchset_hash"]) == 64
    paths = {t["path"]: t["status"] for t in data["tests"]}
    assert paths["numa_balancing.2x2.fault_migration"] == "PASS" and paths["numa_balancing.2x2.thp"] == "PASS"
    assert paths["numa_balancing.mutants.0002_hint_fault_local_test_inverted"] == "PASS"  # killed: the self-check passed


def test_baseline_from_picks_the_newest_report_never_a_log(tmp_path: Path) -> None:
    """A nightly directory holds report directories, their logs and an interrupted run; the
    baseline is the report that started last, and on the first night there is none."""
    from harness.report.ci import newest_run
    from harness.report.summary import SCHEMA_ID

    nightly = tmp_path / "nightly"
    nightly.mkdir()
    assert newest_run(nightly) is None  # the first night
    for night, started in (("2026-11-25", "2026-11-25T01:30:00+00:00"), ("2026-11-26", "2026-11-26T01:30:00+00:00")):
        (nightly / night).mkdir()
        (nightly / night / "summary.json").write_text(json.dumps({"schema": SCHEMA_ID, "started": started}))
        (nightly / f"{night}.log").write_text("numa-harness: pass (exit 0)\n")
    (nightly / "2026-11-27.incomplete-4242").mkdir()  # a run killed half-way: no summary.json
    (nightly / "2026-11-28").mkdir()  # tonight's --out, empty until the run ends
    assert newest_run(nightly, exclude=nightly / "2026-11-28") == nightly / "2026-11-26"
    status = main(["ci", "--out", str(nightly / "2026-11-28"), "--baseline-from", str(nightly / "2026-11-26.log")])
    assert status == 2  # a log is not a directory of runs: bad input, nothing written
    assert not any((nightly / "2026-11-28").iterdir())


def test_shards_take_every_unit_once_in_order() -> None:
    from harness.report.shards import Shard, work_units

    units = work_units(["2x2", "4x1"], [f"m{i}" for i in range(5)])
    taken = [Shard(k, 3).take(units) for k in (1, 2, 3)]
    assert sorted(u for part in taken for u in part) == [(i, kind, name) for i, (kind, name) in enumerate(units)]
    assert taken[0] == Shard(1, 3).take(units)  # deterministic
    assert Shard.parse("2/3") == Shard(2, 3)
    with pytest.raises(HarnessError):
        Shard.parse("0/2")


@pytest.mark.kernel
@pytest.mark.guest
def test_sharded_ci_merges_into_the_unsharded_report(built_kernel: KernelArtifact, nh_cache_dir: Path | None,
                                                     tmp_path: Path) -> None:
    """Two shards and their merge give the verdicts, JUnit counts, mutant outcomes and
    regressions of one unsharded run on the same kernel."""
    args = ["--topology", "2x2", "--topology", "4x1", "--checks", "thp", "--mutant", "0005", "--mutant-checks", "thp",
            *_cache_args(nh_cache_dir)]
    assert main(["ci", *args, "--out", str(tmp_path / "whole")]) == 0
    for k in (1, 2):
        assert main(["ci", *args, "--shard", f"{k}/2", "--out", str(tmp_path / f"part{k}")]) == 0
    part1 = json.loads((tmp_path / "part1" / "summary.json").read_text())
    assert [t["topology"] for t in part1["topologies"]] == ["2x2"] and part1["mutants"]["total"] == 1
    baseline = ["--baseline", str(tmp_path / "whole")]
    assert main(["ci", "merge", str(tmp_path / "part1"), str(tmp_path / "part2"), "--out", str(tmp_path / "merged"),
                 *baseline, "--kcidb", str(tmp_path / "merged.kcidb.json")]) == 0
    whole, merged = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("whole", "merged"))
    jsonschema.validate(merged, SCHEMA)

    def verdicts(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [(t["topology"], c["name"], c["verdict"]) for t in summary["topologies"] for c in t["checks"]]

    assert verdicts(merged) == verdicts(whole)
    assert [(m["mutant"], m["outcome"]) for m in merged["mutants"]["mutants"]] == \
        [(m["mutant"], m["outcome"]) for m in whole["mutants"]["mutants"]]
    assert merged["regressions"] == regressions(whole, whole) == []
    assert (merged["status"], merged["exit_code"]) == (whole["status"], whole["exit_code"])
    counts = [{s.get("name"): s.get("tests") for s in ET.parse(tmp_path / d / "junit.xml").getroot().findall("testsuite")}
              for d in ("whole", "merged")]
    assert counts[0] == counts[1]
    assert {"console-2x2.log", "console-4x1.log", "report.html"} <= {p.name for p in (tmp_path / "merged").iterdir()}


def test_several_sources_take_only_what_each_run_can(tmp_path: Path) -> None:
    """`ci --source A --source B`: options that name one run's files or shares are refused with
    the way to do it, before anything is built or written."""
    out = tmp_path / "night"
    for extra, says in ((["--shard", "1/2"], "--shard cannot be used with several --source"),
                        (["--mutants-dir", str(tmp_path)], "--mutants-dir cannot be used with several --source"),
                        (["--kcidb", str(tmp_path / "k.json")], "--kcidb cannot be used with several --source")):
        result = subprocess.run([sys.executable, "-m", "harness.cli", "ci", "--source", "6.12", "--source", "6.1",
                                 *extra, "--out", str(out)], capture_output=True, text=True)
        assert result.returncode == 2 and says in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "harness.cli", "ci", "--source", "6.12", "--source",
                             "/usr/src/linux-source-6.12.tar.xz", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and "are the same source" in result.stderr, result.stderr
    assert not out.exists() and not list(tmp_path.glob(".night*"))


def test_each_source_is_compared_with_its_own_earlier_run(tmp_path: Path) -> None:
    """--baseline-from over nights of several-source runs: the newest overview, and in it the run
    of the same source (tarball or tree path), whatever its build or label became."""
    from harness.kernel.source import SourceSpec
    from harness.report.overview import OVERVIEW_SCHEMA_ID, newest_overview, run_of_source
    from harness.report.summary import SCHEMA_ID

    nightly = tmp_path / "nightly"
    sources = {"6.12": "/usr/src/linux-source-6.12.tar.xz", "6.1": "/usr/src/linux-source-6.1.tar.xz"}
    for night in ("2026-11-26", "2026-11-27"):
        for label, path in sources.items():
            run = nightly / night / "runs" / f"{label}.0-{night}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"schema": SCHEMA_ID, "started": f"{night}T01:00:00+00:00",
                                                          "kernel": {"source": {"kind": "tarball", "path": path}}}))
        (nightly / night / "overview.json").write_text(json.dumps({"schema": OVERVIEW_SCHEMA_ID,
                                                                   "started": f"{night}T01:00:00+00:00"}))
    (nightly / "2026-11-27.log").write_text("numa-harness: pass\n")
    (nightly / "2026-11-28").mkdir()  # tonight's --out
    earlier = newest_overview(nightly, exclude=nightly / "2026-11-28")
    assert earlier == nightly / "2026-11-27"
    assert run_of_source(earlier, SourceSpec("tarball", Path(sources["6.1"]))) == \
        earlier / "runs" / "6.1.0-2026-11-27"
    assert run_of_source(earlier, SourceSpec("git", Path("/src/linux"))) is None  # a source new tonight
    assert newest_overview(tmp_path / "absent") is None
