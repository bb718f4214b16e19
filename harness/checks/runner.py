"""Runs registered checks in one booted guest and decides how each ended.

A check's own finding gives pass or fail. How it stopped otherwise gives the rest, by exception
class: `KernelNeverReached` is a fail (the kernel never reached a state it must reach), and so is
`WorkloadKilled` (the kernel killed the workload with a signal); a workload
step that does not finish, or a guest that stops answering, is a hang; anything else (a Python
exception, a drgn read, an SSH failure while the guest still answers) is the harness's error and
says nothing about the kernel. A kernel bug on the console during a check makes it a fail
whatever the check concluded. After a bug, a livelock or a dead guest the remaining checks are
not run: on such a kernel they would only wait out their own limits.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import inspect as nh
from harness.cache import atomic_write_bytes
from harness.checks.catalog import CHECKS
from harness.checks.observe import (
    INCONCLUSIVE_TRIES,
    Context,
    GuestFacts,
    Inconclusive,
    KernelNeverReached,
    Observation,
    observation_from_json,
    observation_json,
)
from harness.checks.registry import Check, CheckResult, Mechanism, Verdict, limit_diffs
from harness.checks.workload import WorkloadKilled, WorkloadStuck
from harness.errors import HarnessError
from harness.guest.spent import SpentReading
from harness.guest.ssh import CommandTimeout, GuestCommandError
from harness.guest.view import GuestView, VmError
from harness.model import MODELLED_RELEASE, RULES, release_series

# How long a trivial SSH command may take before the guest counts as no longer answering.
LIVENESS_TIMEOUT = 15.0

VMSTAT_REPORTED = ("numa_pte_updates", "numa_huge_pte_updates", "numa_hint_faults", "numa_hint_faults_local",
                   "numa_pages_migrated", "pgmigrate_success", "pgmigrate_fail", "thp_migration_success",
                   "thp_migration_fail")


def guest_answers(guest: GuestView, timeout: float = LIVENESS_TIMEOUT) -> bool:
    """Whether the guest still runs a trivial command over SSH."""
    try:
        return guest.ssh.run("true", timeout=timeout).exit_status == 0
    except HarnessError:
        return False


def _vmstat(ctx: Context, label: str) -> dict[str, int]:
    with nh.snapshot(ctx.guest):
        counters = nh.read_vmstat(ctx.prog)
    reported = {name: counters[name] for name in VMSTAT_REPORTED if name in counters}
    ctx.timeline.append({"t": round(time.monotonic() - ctx.opened, 2), "check": label, "vmstat": reported})
    return reported


def _harness_error(name: str, err: BaseException) -> CheckResult:
    frames = traceback.format_exception(err)
    return CheckResult(name, Verdict.ERROR, f"harness error: {type(err).__name__}: {err}",
                       {"traceback": "".join(frames[-6:])})


def _stopped(ctx: Context, name: str, err: BaseException) -> CheckResult:
    """A check that stopped on a step that did not finish or an SSH/QMP failure: a hang when the
    guest no longer answers or a workload step livelocked, the harness's error otherwise.
    Bounded: a stuck step is noticed after STEP_TIMEOUT, a silent guest after one SSH timeout
    (60 s), and the liveness probe adds LIVENESS_TIMEOUT."""
    alive = guest_answers(ctx.guest)
    if isinstance(err, WorkloadStuck | CommandTimeout):
        where = "the guest still answers: a task livelocks" if alive else "the guest no longer answers SSH"
        return CheckResult(name, Verdict.HANG, f"hang: {where}", {"guest_answers": alive}, (str(err),))
    if not alive:
        return CheckResult(name, Verdict.HANG, "hang: the guest no longer answers SSH", {"guest_answers": False},
                           (str(err),))
    return _harness_error(name, err)


def run_check(ctx: Context, check: Check) -> CheckResult:
    """One check, its verdict decided as the module docstring says (kernel bugs aside). A run
    that could not decide (Inconclusive) is retried with a fresh scenario; inconclusive
    INCONCLUSIVE_TRIES times in a row is a fail: the kernel never let the check decide."""
    reasons: list[str] = []
    for _ in range(INCONCLUSIVE_TRIES):
        try:
            return _run_once(ctx, check, reasons)
        except Inconclusive as err:
            reasons.append(str(err))
    return CheckResult(check.name, Verdict.FAIL, f"inconclusive in all {INCONCLUSIVE_TRIES} tries",
                       {"inconclusive": reasons}, tuple(f"try {i + 1} inconclusive: {r}" for i, r in enumerate(reasons)))


def _run_once(ctx: Context, check: Check, inconclusive: list[str]) -> CheckResult:
    retaken, kept = ctx.looks_past_a_table_lock, ctx.looks_kept_with_a_table_lock
    try:
        finding = check.run(ctx)
    except Inconclusive:
        raise
    except KernelNeverReached as err:
        return CheckResult(check.name, Verdict.FAIL, "the kernel never reached a state it must reach", {}, (str(err),))
    except WorkloadKilled as err:
        return CheckResult(check.name, Verdict.FAIL, "the kernel killed the workload", {}, (str(err),))
    except (WorkloadStuck, GuestCommandError, VmError) as err:
        return _stopped(ctx, check.name, err)
    except Exception as err:
        return _harness_error(check.name, err)
    verdict = Verdict.FAIL if finding.diffs else Verdict.PASS
    figures = {**finding.figures, "inconclusive_tries": inconclusive} if inconclusive else dict(finding.figures)
    if ctx.looks_past_a_table_lock > retaken:
        figures["looks_past_a_table_lock"] = {"retaken": ctx.looks_past_a_table_lock - retaken,
                                              "kept_with_one_held": ctx.looks_kept_with_a_table_lock - kept}
    return CheckResult(check.name, verdict, finding.summary, figures, limit_diffs(finding.diffs))


def write_recording(directory: Path, result: CheckResult, facts: GuestFacts, kept: dict[str, Observation],
                    notes: dict[str, Any]) -> Path:
    """The observations a check kept, with the guest facts they need, as golden data
    (gzip-compressed JSON, read back by load_recording)."""
    path = directory / f"{result.name}.json.gz"
    data = {"check": result.name, "verdict": result.verdict.value, "facts": facts.as_json(),
            "observations": {label: observation_json(obs) for label, obs in kept.items()}, "notes": notes}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, gzip.compress(json.dumps(data).encode(), mtime=0))
    path.chmod(0o644)  # data to commit and share, not a secret
    return path


@dataclass(frozen=True)
class Recording:
    """A check's golden observations from a real guest (write_recording's file)."""

    check: str
    verdict: Verdict
    facts: GuestFacts
    observations: dict[str, Observation]
    notes: dict[str, Any]


def load_recording(path: Path) -> Recording:
    data = json.loads(gzip.decompress(path.read_bytes()))
    return Recording(data["check"], Verdict(data["verdict"]), GuestFacts.from_json(data["facts"]),
                     {k: observation_from_json(v) for k, v in data["observations"].items()}, data.get("notes", {}))


@dataclass(frozen=True)
class KernelProfile:
    """What the booted kernel is, for the checks' applicability: its release and which of the
    mechanisms some kernels lack it has."""

    release: str
    mechanisms: frozenset[Mechanism]

    @property
    def series(self) -> str:
        """VERSION.PATCHLEVEL, the key of the model's rules (harness.model.RULES)."""
        return release_series(self.release)


def kernel_profile(ctx: Context) -> KernelProfile:
    """Probe the guest: init_uts_ns's release; struct vm_area_struct's numab_state member (drgn's
    own helpers test members the same way when a struct changed between releases); the mTHP
    sysfs directory the mthp check writes."""
    release = ctx.facts.release  # read from init_uts_ns when the context opened
    found = set()
    if any(member.name == "numab_state" for member in ctx.prog.type("struct vm_area_struct").members):
        found.add(Mechanism.VMA_NUMAB)
    if ctx.guest.ssh.run("test -d /sys/kernel/mm/transparent_hugepage/hugepages-64kB").exit_status == 0:
        found.add(Mechanism.MTHP)
    # 6.1's mm/mempolicy.c:vma_policy_mof returns false for a VMA whose get_policy (shmem's)
    # finds no shared policy, so task_numa_work skips every MAP_SHARED anonymous mapping; 6.12's
    # falls back to the task's policy (MPOL_F_MOF by default). Both came with the mempolicy
    # rework that gave vm_operations_struct.get_policy its interleave-index argument (pgoff_t
    # *ilx, a third parameter): the probe reads that signature, as the two sources compared show
    # the two changes together.
    get_policy = ctx.prog.type("struct vm_operations_struct").member("get_policy").type.type
    if len(get_policy.parameters) >= 3:
        found.add(Mechanism.SHMEM_TASK_POLICY)
    return KernelProfile(release, frozenset(found))


def judge_applicability(check: Check, profile: KernelProfile, run: Callable[[], CheckResult]) -> CheckResult:
    """Not applicable when the kernel lacks what the check needs (never run, never a silent
    pass); on a release whose rules the check does not follow (Check.releases), a pass or fail
    is only the outcome under the rules it judged by (the model's default release's, for a
    release it does not know): unverified. A hang or a harness error stays what it is."""
    missing = sorted(m.value for m in check.needs - profile.mechanisms)
    if missing:
        return CheckResult(check.name, Verdict.NOT_APPLICABLE,
                           f"not applicable: Linux {profile.release} has no {'; no '.join(missing)}")
    result = run()
    if profile.series in check.releases or result.verdict not in (Verdict.PASS, Verdict.FAIL):
        return result
    judged_by = profile.series if profile.series in RULES else MODELLED_RELEASE
    follows = ", ".join(sorted(check.releases))
    return replace(result, verdict=Verdict.UNVERIFIED,
                   summary=f"unverified on Linux {profile.release}: this check follows the rules of Linux {follows}; "
                           f"under Linux {judged_by}'s rules as the model has them it would {result.verdict.value}: "
                           f"{result.summary}",
                   figures={**result.figures, "outcome_under_modelled_rules": result.verdict.value})


def _run_one(ctx: Context, check: Check) -> CheckResult:
    ctx.recent.clear()
    try:
        before = _vmstat(ctx, f"{check.name} start")
    except Exception as err:  # the guest may be gone: the check cannot run
        return _stopped(ctx, check.name, err)
    result = run_check(ctx, check)
    with contextlib.suppress(Exception):
        after = _vmstat(ctx, f"{check.name} end")
        result = replace(result, vmstat_delta={k: after[k] - before[k] for k in after if k in before})
    if result.verdict is Verdict.FAIL and ctx.recent:
        result = replace(result, snapshot=tuple(observation_json(o) for o in ctx.recent))
    return result


def stop_reason(result: CheckResult, fail_fast: bool = False) -> str | None:
    """Why the checks after this result are not run, or None: a hang (a dead guest or a
    livelocked task: every later check would wait out its own step timeout on the same broken
    kernel), a kernel bug on the console (what later checks see is no longer NUMA balancing),
    or, with `fail_fast`, a fail."""
    if result.verdict is Verdict.HANG:
        if not result.figures.get("guest_answers", True):
            return f"the guest stopped answering during {result.name}"
        return f"a task livelocked during {result.name}"
    bugs = result.figures.get("kernel_bugs")
    if bugs:
        return f"the kernel reported {bugs[0]!r} during {result.name}"
    if fail_fast and result.verdict.indicts_kernel:
        return f"--fail-fast: {result.name} failed"
    return None


def time_spent(spent: SpentReading, wall_s: float, cpu_s: float) -> dict[str, float]:
    """A check's wall time by where it went (issue 14: measure before cutting): `paused_s` in
    `looks` (QMP stop .. cont, drgn reading the stopped guest), `ssh_s` in `ssh_commands` (each a
    channel, a dropbear child and a shell in the guest), `workload_wait_s` blocked on the
    workload's replies (the guest runs the step meanwhile), and `other_s` (idle waits for a
    scanner pass, the model, set-up); `cpu_s` is this thread's CPU time, which overlaps them all.
    `overlap_s` is how much of the first three ran at once on two threads (convergence's sampler
    pauses the guest while the bench's SSH command runs), so that the three less `overlap_s`, plus
    `other_s`, is the wall time."""
    measured = spent.paused_s + spent.ssh_s + spent.stream_wait_s
    return {"looks": spent.pauses, "paused_s": round(spent.paused_s, 2), "ssh_commands": spent.ssh_commands,
            "ssh_s": round(spent.ssh_s, 2), "workload_wait_s": round(spent.stream_wait_s, 2),
            "overlap_s": round(max(0.0, measured - spent.blocked_s), 2),
            "other_s": round(max(0.0, wall_s - spent.blocked_s), 2),
            "cpu_s": round(cpu_s, 2)}


def run_checks(guest: GuestView, names: Sequence[str] | None = None,
               progress: Callable[[CheckResult], None] | None = None,
               timeline: list[dict[str, Any]] | None = None, record: Path | None = None,
               fail_fast: bool = False, before: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Run the checks (all registered ones, or `names`) in that order; with `record`, write the
    observations each check keeps (Context.keep) there as golden data. After a result that
    stop_reason names a reason for, the rest are not run (with `fail_fast`, also after a fail).
    `before(name)` is called before each check that runs (it may wait)."""
    ctx = Context.open(guest)
    profile = kernel_profile(ctx)
    if timeline is not None:
        ctx.timeline = timeline
    results: list[CheckResult] = []
    stopped: str | None = None
    for check in (CHECKS[name] for name in (names or CHECKS)):
        started = time.monotonic()
        if stopped is not None:
            result = CheckResult(check.name, Verdict.NOT_RUN, f"not run: {stopped}")
        else:
            if before is not None:
                before(check.name)
                started = time.monotonic()  # a wait is not the check's time
            spent_before, cpu_before = guest.spent.reading(), time.thread_time()
            ctx.kept, ctx.notes = ({} if record is not None else None), {}
            result = judge_applicability(check, profile, functools.partial(_run_one, ctx, check))
            if record is not None and (ctx.kept or ctx.notes):
                write_recording(record, result, ctx.facts, ctx.kept or {}, ctx.notes)
        bugs = guest.new_bugs()
        if bugs:
            verdict = Verdict.NOT_RUN if result.verdict is Verdict.NOT_RUN else Verdict.FAIL
            result = replace(result, verdict=verdict, diffs=(*result.diffs, *(f"kernel bug: {b.title}" for b in bugs)),
                             figures={**result.figures, "kernel_bugs": [b.title for b in bugs]})
        if stopped is None:
            stopped = stop_reason(result, fail_fast)
        seconds = time.monotonic() - started
        if result.verdict is not Verdict.NOT_RUN:
            result = replace(result, spent=time_spent(guest.spent.reading().since(spent_before), seconds,
                                                      time.thread_time() - cpu_before))
        result = replace(result, seconds=seconds)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
