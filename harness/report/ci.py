"""`numa-harness ci`: build, check on each topology, run the mutation self-check, and write
junit.xml, summary.json, report.html, console-*.log and, for failures, state-*.json into a
fresh output directory. Everything is written into a staging directory next to the output and
renamed into place at the end, so a killed run never leaves a half-written report."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import __version__
from harness.cache import atomic_write_text
from harness.checks.checkrun import BootFailure, check_kernel, kernel_identity
from harness.checks.mutants import Mutant, MutantOutcome, MutantResult, run_mutants
from harness.errors import BadInput, ExitCode, HarnessError
from harness.guest.launch import LaunchRequest
from harness.guest.procs import booted_from
from harness.guest.topology import parse_topology
from harness.kernel.entries import list_entries, remove_entries
from harness.kernel.pipeline import KernelArtifact, build
from harness.report.kcidb import compiler_of, write_kcidb
from harness.report.outputs import write_outputs
from harness.report.shards import Shard, work_units
from harness.report.summary import SCHEMA_ID, STATUS, exit_code_of, read_summary_json, regressions


@dataclass(frozen=True)
class CiRequest:
    launch: LaunchRequest
    out: Path
    topologies: tuple[str, ...] = ("2x2", "4x1")
    checks: tuple[str, ...] | None = None
    mutants: tuple[Mutant, ...] = ()
    mutant_checks: tuple[str, ...] | None = None
    baseline: Path | None = None
    # Every check on every mutant, instead of stopping each at its first kill.
    mutants_full_matrix: bool = False
    # Also write the run as KCIDB JSON here.
    kcidb: Path | None = None
    # Remove the mutant kernels this run built once they are checked (about 120 MB each).
    prune_mutants: bool = False
    # Do only this shard's share of the work units (harness.report.shards).
    shard: Shard | None = None


@dataclass
class CiOutcome:
    summary: dict[str, Any]
    exit_code: ExitCode
    out: Path
    files: list[str] = field(default_factory=list)


def newest_run(directory: Path, exclude: Path | None = None) -> Path | None:
    """The newest earlier `ci` run under `directory`: among its subdirectories holding a
    numa-harness summary.json, the one that started last (its `started`, not its name or mtime).
    Logs, half-written `DIR.incomplete-PID` directories and anything else are passed over; None
    when there is none yet (a nightly job's first night)."""
    runs: list[tuple[str, Path]] = []
    for candidate in sorted(directory.iterdir()) if directory.is_dir() else []:
        summary = candidate / "summary.json"
        if not candidate.is_dir() or (exclude is not None and candidate.resolve() == exclude.resolve()) \
                or not summary.is_file():
            continue
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA_ID and isinstance(data.get("started"), str):
            runs.append((data["started"], candidate))
    return max(runs)[1] if runs else None


def validate(request: CiRequest) -> dict[str, Any] | None:
    """Everything that can be wrong with the inputs, before anything is built. Returns the baseline."""
    out = request.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out}: exists and is not an empty directory. Pass a fresh directory (a nightly "
                           f"job uses one per night) so that no earlier report is overwritten.")
    if not out.parent.is_dir():
        raise BadInput(f"--out {out}: its parent directory {out.parent} does not exist. Create it first.")
    for spec in request.topologies:
        parse_topology(spec, request.launch.memory)
    if request.kcidb is not None and not request.kcidb.parent.is_dir():
        raise BadInput(f"--kcidb {request.kcidb}: its directory {request.kcidb.parent} does not exist. Create it first.")
    return None if request.baseline is None else load_baseline(request.baseline)


def load_baseline(baseline_path: Path) -> dict[str, Any]:
    """An earlier run's summary.json (its --out directory, or the file)."""
    path = baseline_path / "summary.json" if baseline_path.is_dir() else baseline_path
    baseline = read_summary_json(path, lambda err: (
        f"--baseline {baseline_path}: cannot read {path} ({err}). Pass the --out directory of an earlier "
        f"`numa-harness ci` run, or its summary.json."))
    if baseline.get("schema") != SCHEMA_ID:
        raise BadInput(f"--baseline {path}: not a numa-harness summary (schema {baseline.get('schema')!r}, "
                       f"expected {SCHEMA_ID!r}).")
    return baseline


def run_ci(request: CiRequest, say: Callable[[str], None]) -> CiOutcome:
    baseline = validate(request)
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.monotonic()
    staging = request.out.parent / f".{request.out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    errors: list[str] = []
    kernel: KernelArtifact | None = None
    build_seconds = 0.0
    topology_runs: list[dict[str, Any]] = []
    mutant_results: list[MutantResult] | None = None
    try:
        say("building the kernel (cached when unchanged)")
        build_started = time.monotonic()
        try:
            kernel = build(request.launch.build)
        except HarnessError as err:
            errors.append(f"build: {err}")
        build_seconds = time.monotonic() - build_started
        topologies, mutants, shard_info = _my_share(request)
        if kernel is not None:
            for spec in topologies:
                topology_runs.append(_check_topology(request, kernel, spec, staging, say, errors))
            if mutants:
                say(f"mutation self-check: {len(mutants)} mutants")
                mutant_results = run_mutants(mutants, request.launch, request.mutant_checks, staging,
                                             progress=lambda r: say(f"mutant {r.mutant.name}: {r.outcome} "
                                                                    f"({r.seconds:.0f} s)"),
                                             full_matrix=request.mutants_full_matrix)
                errors.extend(f"mutant {r.mutant.name}: {r.detail}" for r in mutant_results if r.outcome is MutantOutcome.ERROR)
                if request.prune_mutants:
                    _prune_mutant_kernels(request, mutant_results, say)
        summary = _summary(request, kernel, build_seconds, topology_runs, mutant_results, errors, started_at,
                           time.monotonic() - started, staging)
        if shard_info is not None:
            summary["shard"] = shard_info
        summary["regressions"] = regressions(summary, baseline) if baseline is not None else []
        summary["baseline"] = str(request.baseline) if request.baseline else None
        exit_code = exit_code_of(summary)
        summary["exit_code"], summary["status"] = int(exit_code), STATUS[exit_code]
        write_outputs(summary, staging)
        if request.kcidb is not None:
            write_kcidb(request.kcidb, summary, compiler_of(kernel.config) if kernel is not None else None)
        if request.out.exists():
            _move_into(staging, request.out)
        else:
            staging.rename(request.out)
    except BaseException:
        # Nothing half-written at --out: keep what was produced, under a name that says so.
        if staging.exists():
            failed = request.out.parent / f"{request.out.name}.incomplete-{os.getpid()}"
            staging.rename(failed)
            say(f"interrupted: partial output kept in {failed}")
        raise
    return CiOutcome(summary, exit_code, request.out, sorted(p.name for p in request.out.iterdir()))


def _my_share(request: CiRequest) -> tuple[list[str], list[Mutant], dict[str, Any] | None]:
    """The topologies and mutants this run checks: all of them, or its shard's share."""
    if request.shard is None:
        return list(request.topologies), list(request.mutants), None
    units = request.shard.take(work_units(request.topologies, [m.name for m in request.mutants]))
    topologies = [name for _, kind, name in units if kind == "topology"]
    names = {name for _, kind, name in units if kind == "mutant"}
    info = {"index": request.shard.index, "count": request.shard.count, "units": [list(u) for u in units]}
    return topologies, [m for m in request.mutants if m.name in names], info


def _prune_mutant_kernels(request: CiRequest, results: Sequence[MutantResult], say: Callable[[str], None]) -> None:
    """Remove the mutant kernels this run built (never one a live QEMU still boots from)."""
    built = [r.kernel_dir for r in results if r.kernel_dir is not None and not booted_from(r.kernel_dir)]
    entries = [e for e in list_entries(request.launch.build.cache_root) if e.directory in built]
    removed = remove_entries(request.launch.build.cache_root, entries)
    say(f"pruned {len(removed)} mutant kernels ({sum(e.size for e in removed) >> 20} MiB)")


def _move_into(staging: Path, out: Path) -> None:
    for item in staging.iterdir():
        item.rename(out / item.name)
    staging.rmdir()


def _check_topology(request: CiRequest, kernel: KernelArtifact, spec: str, staging: Path,
                    say: Callable[[str], None], errors: list[str]) -> dict[str, Any]:
    label = _file_label(spec)
    console = staging / f"console-{label}.log"
    launch = replace(request.launch, topology=spec, name=f"ci-{label}")
    say(f"checking on topology {spec}")
    try:
        run = check_kernel(launch, kernel, request.checks, console_copy=console,
                           progress=lambda r: say(f"{spec} {r.name}: {r.verdict} ({r.seconds:.1f} s)"))
    except HarnessError as err:  # the guest did not come up (BootFailure), or its image could not be made
        errors.append(f"{spec}: {err}")
        return {"topology": spec, "accel": None, "boot_seconds": None, "seconds": 0.0, "passed": False,
                "console_log": console.name if console.exists() else None, "error": str(err),
                "kernel_bug": err.bug_title if isinstance(err, BootFailure) else None, "vmstat_delta": {},
                "timeline": [], "checks": []}
    data = run.as_json()
    data["error"], data["kernel_bug"] = None, None
    for result, check in zip(run.results, data["checks"], strict=True):
        check["snapshot_file"] = None
        check["kernel_bugs"] = result.figures.get("kernel_bugs", [])
        if result.snapshot:
            name = f"state-{label}-{result.name}.json"
            atomic_write_text(staging / name, json.dumps({"check": result.name, "topology": spec,
                                                          "diffs": list(result.diffs),
                                                          "observations": list(result.snapshot)}) + "\n")
            check["snapshot_file"] = name
    return data


def _file_label(spec: str) -> str:
    return Path(spec).stem if spec.endswith(".toml") else spec


def _summary(request: CiRequest, kernel: KernelArtifact | None, build_seconds: float, runs: list[dict[str, Any]],
             mutant_results: Sequence[MutantResult] | None, errors: list[str], started_at: datetime.datetime,
             seconds: float, staging: Path) -> dict[str, Any]:
    identity: dict[str, Any] = kernel_identity(kernel) if kernel else {
        "kernel_release": None, "build_id": None, "config_sha256": None, "patches": [], "source": None}
    identity["build_seconds"] = round(build_seconds, 1)
    identity["cache_hit"] = bool(kernel and kernel.cache_hit)
    mutants = None
    if mutant_results is not None:
        entries = []
        for r in mutant_results:
            entry = r.as_json()
            log = staging / f"console-mutant-{r.mutant.name}.log"
            entry["console_log"] = log.name if log.exists() else None
            entries.append(entry)
        mutants = {"killed": sum(r.killed for r in mutant_results), "total": len(mutant_results), "mutants": entries}
    return {
        "schema": SCHEMA_ID, "harness_version": __version__, "status": "", "exit_code": 0,
        "started": started_at.isoformat(timespec="seconds"), "seconds": round(seconds, 1),
        "host": _host(), "kernel": identity, "topologies": runs, "mutants": mutants, "regressions": [],
        "errors": errors,
    }


def _host() -> dict[str, Any]:
    from importlib.metadata import version

    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False)
    return {"qemu": qemu.stdout.splitlines()[0] if qemu.stdout else None, "python": platform.python_version(),
            "drgn": version("drgn"), "machine": platform.machine(), "cpus": os.cpu_count()}


