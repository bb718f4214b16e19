"""The verdict commands: `check` (one kernel, one topology), `mutants` (the self-check) and `ci`
(unattended: both, on several topologies, with reports). Every input is validated before the
first build starts."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.checks.bisect import BisectStep, BisectVerdict, bisect, candidate_paths, check_prefix
from harness.checks.catalog import CHECKS
from harness.checks.checkrun import check_kernel, kernel_identity
from harness.checks.gitbisect import bisect_commits, commit_range, git_tree
from harness.checks.mutants import MutantOutcome, discover, mutants_dir_for, run_mutants, select
from harness.checks.parallel import check_kernel_in_guests, validate_guests
from harness.checks.registry import CheckResult, Verdict, validate_names
from harness.cli.options import say
from harness.cli.requests import launch_request
from harness.errors import BadInput, ExitCode
from harness.guest.launch import LaunchRequest, resolve_kernel, validate
from harness.kernel.patches import extra_patch, load_series
from harness.kernel.pipeline import request_release
from harness.kernel.source import resolve_source
from harness.report.ci import CiRequest, load_baseline, newest_run, run_ci
from harness.report.junit import write_junit
from harness.report.overview import newest_overview, run_of_source, write_overview
from harness.report.shards import Shard, merge
from harness.report.terminal import print_mutant_table, print_table, write_json, write_mutants_json


def verdict_exit(results: list[CheckResult]) -> ExitCode:
    """A fail or hang: 1; a harness error or an unverified check (the model does not follow this
    release, so the harness cannot judge it): 125; a check that does not apply counts as no
    finding."""
    return ExitCode.most_telling(
        ExitCode.CHECK_FAILED if r.verdict.indicts_kernel
        else ExitCode.HARNESS_FAILED if r.verdict in (Verdict.ERROR, Verdict.UNVERIFIED)
        else ExitCode.OK for r in results)


def cmd_check(args: argparse.Namespace) -> int:
    names = validate_names(args.only, "--only")
    request = launch_request(args, name="check")
    validate(request)
    validate_guests(request, args.guests)
    kernel = resolve_kernel(request)
    if args.guests == 1:
        run = check_kernel(request, kernel, names or None, on_boot=lambda seconds, accel: say(
            f"guest up in {seconds:.1f} s ({accel}, {args.topology}); running {len(names) or len(CHECKS)} checks"),
            progress=lambda r: say(f"{r.name}: {r.verdict.value} ({r.seconds:.1f} s) {r.summary}"),
            record=args.record, fail_fast=args.fail_fast)
    else:
        run = check_kernel_in_guests(
            request, kernel, names or None, args.guests, record=args.record, fail_fast=args.fail_fast,
            on_plan=lambda plan: say(f"{sum(len(s.names) for s in plan)} checks over {len(plan)} guests: " + "; ".join(
                f"guest {s.index} {', '.join(n for n in s.names if n not in s.alone)}"
                + (f", then alone {', '.join(s.alone)}" if s.alone else "") for s in plan)),
            on_boot=lambda share, seconds, accel: say(
                f"guest {share.index} up in {seconds:.1f} s ({accel}, {args.topology}); running {len(share.names)} checks"),
            progress=lambda share, r: say(f"[guest {share.index}] {r.name}: {r.verdict.value} ({r.seconds:.1f} s) "
                                          f"{r.summary}"))
    manifest = kernel.manifest
    title = (f"numa-harness check: kernel {manifest.get('kernel_release')} "
             f"({', '.join(p['name'] for p in manifest.get('patches', [])) or 'no patches'}), {args.topology}")
    print_table(run.results, title)
    if args.json:
        write_json(args.json, run.results, {"kernel": kernel_identity(kernel), "topology": args.topology,
                                            "accel": run.accel, "guests": run.guests,
                                            "seconds": round(run.seconds, 2)})
    if args.junit:
        write_junit(args.junit, run.results, f"numa-harness.{args.topology}")
    return verdict_exit(list(run.results))


def cmd_bisect(args: argparse.Namespace) -> int:
    """The candidates are the --patch files, on top of the series (default or --series); or,
    without --patch, the patches of --series DIR on top of the harness's default series."""
    checks = validate_names(args.checks, "--checks")
    if args.kernel:
        raise BadInput("bisect: --kernel cannot be used; every step is built from the source and a prefix of the series.")
    request = launch_request(args, name="bisect")
    if args.commits:
        return _bisect_commits(args, request, checks)
    if args.patch:
        patches = tuple(extra_patch(Path(p)) for p in args.patch)
        request = replace(request, build=replace(request.build, extra_patches=()))
    elif args.series:
        patches = load_series(args.series)
        request = replace(request, build=replace(request.build, series_dir=None))
    else:
        raise BadInput("bisect: give the patches to search, in order: --patch FILE (repeatable, on top of the series) "
                       "or --series DIR (its patches, on top of the harness's default series).")
    if not patches:
        raise BadInput(f"bisect: --series {args.series} has no patches to search.")
    paths = candidate_paths(patches)
    validate(request)
    say(f"bisecting {len(paths)} patches: {', '.join(p.name for p in patches)}")

    def tell(step: BisectStep) -> None:
        say(f"{step.applied} of {len(paths)} applied: {step.outcome.value} ({step.seconds:.0f} s)"
            + (f" {', '.join(step.failed)}: {step.detail[:200]}" if step.detail else ""))
    result = bisect([p.name for p in patches], lambda applied, names, fail_fast: check_prefix(
        request, paths, applied, names, fail_fast=fail_fast), checks or None, progress=tell)
    print(f"numa-harness bisect: {result.verdict.value}")
    if result.verdict is BisectVerdict.FOUND or result.verdict is BisectVerdict.AMBIGUOUS:
        bad = next(s for s in reversed(result.steps) if s.applied == result.first_bad)
        which = result.culprits[0] if len(result.culprits) == 1 else f"one of {', '.join(result.culprits)}"
        print(f"  culprit  {which} (patch {result.first_bad} of {len(paths)})")
        print(f"  fails    {', '.join(bad.failed)}: {bad.detail}")
    for step in result.steps:
        print(f"  step     {step.applied} of {len(paths)} applied: {step.outcome.value} ({step.seconds:.0f} s)")
    return _bisect_end(args.json, result.verdict, result.as_json())


def _bisect_end(json_path: Path | None, verdict: BisectVerdict, log: dict[str, Any]) -> ExitCode:
    """Both forms: write the --json log; exit 0 with a culprit, 125 when BAD could not be tested,
    else 1 (nothing fails at BAD, the base already fails, or skips hide the culprit)."""
    if json_path:
        atomic_write_text(json_path, json.dumps(log, indent=2) + "\n")
    if verdict is BisectVerdict.UNTESTABLE:
        return ExitCode.HARNESS_FAILED
    return ExitCode.OK if verdict is BisectVerdict.FOUND else ExitCode.CHECK_FAILED


def _bisect_commits(args: argparse.Namespace, request: LaunchRequest, checks: Sequence[str]) -> int:
    """`bisect --source TREE GOOD BAD`: `git bisect run` over the tree's commits (harness.checks.gitbisect)."""
    if len(args.commits) != 2:
        raise BadInput(f"bisect: expected two commits, GOOD then BAD; got {len(args.commits)}: "
                       f"{' '.join(args.commits)}.")
    if args.patch:
        raise BadInput("bisect GOOD BAD: the candidates are the tree's commits, so --patch has nothing to add; "
                       "to apply your own patches on every commit give them as --series DIR.")
    tree = git_tree(args.source)
    good, bad = commit_range(tree, *args.commits)
    validate(request)
    say(f"bisecting {tree}: {good.describe()} (good) .. {bad.describe()} (bad), in the harness's own copy")

    result = bisect_commits(request, tree, good.sha, bad.sha, checks or None,
                            progress=lambda step: say(step.describe()))
    print(f"numa-harness bisect: {result.verdict.value}")
    if result.verdict is BisectVerdict.FOUND or result.verdict is BisectVerdict.AMBIGUOUS:
        which = " or ".join(c.describe() for c in result.culprits)
        print(f"  culprit  {which}" if result.verdict is BisectVerdict.FOUND else f"  culprit  one of {which}")
        step = result.culprit_step()
        if step is not None:
            print(f"  fails    {', '.join(step.failed)}: {step.detail}")
    for step in result.steps:
        print(f"  step     {step.commit.describe()}: {step.outcome.value} ({step.seconds:.0f} s)")
    return _bisect_end(args.json, result.verdict, result.as_json())


def cmd_mutants(args: argparse.Namespace) -> int:
    checks = validate_names(args.checks, "--checks")
    if args.kernel:
        raise BadInput("mutants: --kernel cannot be used; each mutant is built from the source and series.")
    request = launch_request(args)
    validate(request)
    mutants = discover(args.dir or mutants_dir_for(request_release(request.build)))
    if args.only:
        mutants = select(mutants, args.only)
    say(f"{len(mutants)} mutants, each built incrementally and checked ({len(checks) or len(CHECKS)} checks)")
    results = run_mutants(mutants, request, checks or None, progress=lambda r: say(
        f"{r.mutant.name}: {r.outcome.value} ({r.seconds:.0f} s) {r.detail[:160]}"), full_matrix=args.full_matrix)
    print_mutant_table(results)
    if args.json:
        write_mutants_json(args.json, results)
    return ExitCode.most_telling(
        ExitCode.CHECK_FAILED if r.outcome is MutantOutcome.SURVIVED else ExitCode.HARNESS_FAILED
        if r.outcome is MutantOutcome.ERROR else ExitCode.OK for r in results)


def _baseline(args: argparse.Namespace, out: Path) -> Path | None:
    """--baseline, or the newest earlier run under --baseline-from."""
    if args.baseline_from is None:
        return args.baseline  # type: ignore[no-any-return]
    if args.baseline is not None:
        raise BadInput("--baseline and --baseline-from name a baseline each; pass one of them.")
    if not args.baseline_from.is_dir():
        raise BadInput(f"--baseline-from {args.baseline_from}: not a directory. Pass the directory that holds "
                       f"one --out directory per run (e.g. one per night).")
    baseline = newest_run(args.baseline_from, exclude=out)
    say(f"baseline: {baseline}" if baseline else f"no earlier run under {args.baseline_from}: no baseline this time")
    return baseline


def cmd_ci_merge(args: argparse.Namespace) -> int:
    if not args.parts:
        raise BadInput("ci merge: name the --out directories of the shards, e.g. `ci merge part1 part2 --out all`.")
    baseline_dir = _baseline(args, args.out)
    baseline = load_baseline(baseline_dir) if baseline_dir is not None else None
    summary, exit_code = merge(args.parts, args.out, baseline, str(baseline_dir) if baseline_dir else None, args.kcidb)
    say(f"{summary['status']} (exit {int(exit_code)}); report: {args.out / 'report.html'}")
    for regression in summary["regressions"]:
        say(f"regression: {regression['message']}")
    return exit_code


def cmd_ci_overview(args: argparse.Namespace) -> int:
    if args.baseline or args.baseline_from or args.kcidb or args.shard:
        raise BadInput("ci overview: takes only the runs and --out; give --baseline, --kcidb and --shard to each "
                       "kernel's `ci` or `ci merge`.")
    data, exit_code = write_overview(args.parts, args.out)
    say(f"{data['status']} (exit {int(exit_code)}) over {len(data['runs'])} kernels; overview: {args.out / 'index.html'}")
    return exit_code


def cmd_ci(args: argparse.Namespace) -> int:
    if args.merge == "merge":
        return cmd_ci_merge(args)
    if args.merge == "overview":
        return cmd_ci_overview(args)
    if args.parts:
        raise BadInput(f"ci: unexpected {' '.join(map(str, args.parts))}; only `ci merge` and `ci overview` take "
                       f"directories.")
    if len(args.source) > 1:
        return _ci_sources(args)
    one = argparse.Namespace(**{**vars(args), "source": args.source[0] if args.source else None})
    request = _ci_request(one, args.out, _baseline(args, args.out))
    outcome = run_ci(request, say)
    summary = outcome.summary
    say(f"{summary['status']} (exit {outcome.exit_code}); report: {outcome.out / 'report.html'}")
    for regression in summary["regressions"]:
        say(f"regression: {regression['message']}")
    return outcome.exit_code


def _ci_request(args: argparse.Namespace, out: Path, baseline: Path | None) -> CiRequest:
    """One source's `ci` (args.source is one source or None), its input checked."""
    checks = validate_names(args.checks, "--checks")
    mutant_checks = validate_names(args.mutant_checks, "--mutant-checks")
    topologies = tuple(args.topology or ("2x2", "4x1"))
    for spec in topologies:
        validate(launch_request(args, topology=spec))
    mutants = []
    if not args.no_mutants:
        launch = launch_request(args, topology=topologies[0])
        mutants = discover(args.mutants_dir or mutants_dir_for(request_release(launch.build)))
        if args.mutant:
            mutants = select(mutants, args.mutant)
    # The mutants boot on the first topology.
    return CiRequest(launch=launch_request(args, topology=topologies[0]), out=out, topologies=topologies,
                     checks=checks or None, mutants=tuple(mutants), mutant_checks=mutant_checks or None,
                     baseline=baseline, mutants_full_matrix=args.mutants_full_matrix, kcidb=args.kcidb,
                     prune_mutants=args.prune_mutants, shard=Shard.parse(args.shard) if args.shard else None)


def _ci_sources(args: argparse.Namespace) -> int:
    """`ci --source A --source B ...`: one `ci` per source (a matrix row each), then `ci overview`
    of them into --out: index.html with the kernels side by side, overview.json, and each run in
    runs/LABEL/. With --baseline (an earlier such --out) or --baseline-from, each source is
    compared with the earlier run of the same source."""
    for option, why in (("shard", "shard each source's `ci` on its own, `ci merge` each, then `ci overview` them"),
                        ("mutants_dir", "each source takes its own release's mutants; run one `ci` per source to "
                                        "give a directory"),
                        ("kcidb", "run one `ci` per source, each with its own --kcidb FILE")):
        if getattr(args, option):
            raise BadInput(f"ci: --{option.replace('_', '-')} cannot be used with several --source: {why}.")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise BadInput(f"--out {args.out}: exists and is not an empty directory. Pass a fresh directory (a nightly "
                       f"job uses one per night) so that no earlier report is overwritten.")
    if args.baseline is not None and args.baseline_from is not None:
        raise BadInput("--baseline and --baseline-from name a baseline each; pass one of them.")
    earlier = args.baseline if args.baseline is not None else (
        newest_overview(args.baseline_from, exclude=args.out) if args.baseline_from is not None else None)
    if args.baseline_from is not None:
        say(f"baseline: {earlier}" if earlier else f"no earlier run under {args.baseline_from}: no baseline this time")
    parts = args.out.parent / f".{args.out.name}.sources-{os.getpid()}"
    requests = []
    seen: dict[tuple[str, Path], str] = {}
    for index, source in enumerate(args.source):  # every source's input checked before anything is built
        spec = resolve_source(source)
        if (spec.kind, spec.path) in seen:
            raise BadInput(f"ci: --source {seen[spec.kind, spec.path]} and --source {source} are the same source "
                           f"({spec.path}), given twice; give each once.")
        seen[spec.kind, spec.path] = source
        one = argparse.Namespace(**{**vars(args), "source": source})
        baseline = run_of_source(earlier, spec) if earlier else None
        if earlier is not None and baseline is None:
            say(f"--source {source}: no run of it in {earlier}: no baseline for it this time")
        requests.append((source, _ci_request(one, parts / str(index), baseline)))
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    try:
        for source, request in requests:
            say(f"--source {source}: ci into its own run")
            outcome = run_ci(request, say)
            say(f"--source {source}: {outcome.summary['status']} (exit {outcome.exit_code})")
            for regression in outcome.summary["regressions"]:
                say(f"--source {source}: regression: {regression['message']}")
        data, exit_code = write_overview([request.out for _, request in requests], args.out)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    say(f"{data['status']} (exit {int(exit_code)}) over {len(data['runs'])} kernels; overview: {args.out / 'index.html'}")
    return exit_code
