"""What a check is, what it can conclude, and the registry every command reads.

A check is a function from a `Context` (a booted guest with drgn attached) to a `Finding`,
registered with `@check("name")`: its name is written once, here, and the runner, `--only`,
`--checks`, `mutants` and the README table (a test compares them) all read `CHECKS`.

A check concludes one of the `Verdict`s. It decides `pass` or `fail` itself (a finding with no
diff passes); `hang`, `error` and `not-run` are decided by the runner from how the check ended,
never from a message's wording.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from harness.checks.observe import Context
from harness.errors import BadInput
from harness.model import MODELLED_RELEASE, RULES

# A failure lists at most this many diffs (and says how many more there were).
MAX_DIFFS = 20


class Verdict(StrEnum):
    """How one check ended on one kernel."""

    PASS = "pass"
    # The kernel did what the model forbids, or never reached a state it must reach.
    FAIL = "fail"
    # A workload step livelocked or the guest stopped answering: detected in bounded time.
    HANG = "hang"
    # The harness itself broke (a Python exception in a check, a drgn read, an SSH failure that
    # is not a dead guest): says nothing about the kernel.
    ERROR = "error"
    # Not run because an earlier check found the kernel broken (bug, livelock, dead guest).
    NOT_RUN = "not-run"
    # The kernel lacks a mechanism the check makes decide (the summary names it): nothing to judge.
    NOT_APPLICABLE = "not-applicable"
    # The model does not know this kernel release: the check ran under the rules of the release
    # it models (harness.model.MODELLED_RELEASE), and its outcome, in the summary, is not a
    # verdict on this kernel either way.
    UNVERIFIED = "unverified"

    @property
    def indicts_kernel(self) -> bool:
        """A verdict against the kernel: what kills a mutant."""
        return self in (Verdict.FAIL, Verdict.HANG)


@dataclass(frozen=True)
class Finding:
    """What a check function concludes: no diff means pass."""

    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    diffs: tuple[str, ...] = ()


@dataclass
class Judgement:
    """A check's model-side judgement as it accumulates (its replay of a recording returns one):
    the diffs so far, each labelled with the step it was found in, and the figures."""

    diffs: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, label: str, found: list[str], limit: int = 6) -> None:
        """Record a step's diffs under its label, the first `limit` in full."""
        self.diffs.extend(f"{label}: {d}" for d in found[:limit])
        if len(found) > limit:
            self.diffs.append(f"{label}: ... and {len(found) - limit} more")


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    diffs: tuple[str, ...] = ()
    seconds: float = 0.0
    # Global event counters (/proc/vmstat names) moved during the check: numa_*, thp_migration_*.
    vmstat_delta: dict[str, int] = field(default_factory=dict)
    # For a failed check: the last observations it made (the state its diffs refer to), as JSON.
    snapshot: tuple[dict[str, Any], ...] = ()
    # Where `seconds` went (runner.time_spent): looks with the guest paused, SSH commands, waits
    # for the workload's replies, the rest; and this thread's CPU time (overlapping them).
    spent: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "verdict": self.verdict.value, "summary": self.summary,
                "figures": self.figures, "diffs": list(self.diffs), "seconds": round(self.seconds, 2),
                "vmstat_delta": self.vmstat_delta, "spent": self.spent}


class Mechanism(StrEnum):
    """A part of NUMA balancing some kernels lack, which a check can need; the value says what
    it is and since when (Context.open probes the guest for each)."""

    VMA_NUMAB = "per-VMA scan state (struct vma_numab_state: scan delay, PID filter, prev_scan_seq; Linux 6.4)"
    MTHP = "multi-size anonymous THP (sysfs hugepages-<size>kB; Linux 6.8)"
    SHMEM_TASK_POLICY = ("scanning of shared-memory mappings without a shared policy (vma_policy_mof falls "
                         "back to the task's policy; Linux 6.7's mempolicy rework)")


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Finding]
    # What it typically takes on the default kernel (2-core TCG, 2x2, one guest): the median of ten
    # full `check` runs (tests/bench/check_bench.py). The self-check runs the cheap ones first after
    # the one a mutant's header names, to find a kill fast; `check --guests N` balances its guests
    # by it (harness.checks.parallel.plan_shares).
    seconds: float = 10.0
    # What the kernel must have for the check to judge anything: without it, not applicable.
    needs: frozenset[Mechanism] = frozenset()
    # The releases (VERSION.PATCHLEVEL) whose rules its judgement follows (harness.model.RULES):
    # every function it makes decide was compared between them and each difference modelled. On
    # any other release its verdict is unverified.
    releases: frozenset[str] = frozenset({MODELLED_RELEASE})
    # Its premise bounds the guest CPU time a thread may use (the check says why): under TCG a
    # guest charges its running task for host time its vCPU did not get (there is no steal
    # clock), so a guest sharing the host's cores with another charges more for the same work.
    # `check --guests N` runs such a check while no other guest runs one (harness.checks.parallel).
    alone: bool = False

    @property
    def description(self) -> str:
        """The first paragraph of the check's docstring."""
        return " ".join((self.run.__doc__ or "").strip().split("\n\n", 1)[0].split())


CHECKS: dict[str, Check] = {}

# For a check that follows the rules of every release the model knows (harness.model.RULES).
EVERY_MODELLED_RELEASE = tuple(RULES)


def check(name: str, *, seconds: float, needs: Iterable[Mechanism] = (),
          releases: Iterable[str] = (MODELLED_RELEASE,), alone: bool = False) -> Callable[[Callable[[Context], Finding]],
                                                                                     Callable[[Context], Finding]]:
    """Register a check under `name` (the order of registration is the order checks run in);
    `seconds` is what it typically takes, as measured (see Check.seconds); `needs`, the
    mechanisms it makes decide (see Check.needs); `releases`, those whose rules it follows
    (see Check.releases); `alone`, whether it must not share the host (see Check.alone)."""
    def register(function: Callable[[Context], Finding]) -> Callable[[Context], Finding]:
        if name in CHECKS:
            raise ValueError(f"check {name!r} registered twice ({CHECKS[name].run.__qualname__}, {function.__qualname__})")
        unknown = sorted(set(releases) - set(RULES))
        if unknown:
            raise ValueError(f"check {name!r}: the model has no rules for release {', '.join(unknown)}")
        CHECKS[name] = Check(name, function, seconds, frozenset(needs), frozenset(releases), alone)
        return function
    return register


def kill_order(expected: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """The checks to run on a mutant, most likely to kill it fast first: those its header names,
    then the rest by typical cost, cheapest first (`names` restricts the set)."""
    chosen = list(names) if names else list(CHECKS)
    first = [n for n in expected if n in chosen]
    return first + sorted((n for n in chosen if n not in first), key=lambda n: (CHECKS[n].seconds, n))


def limit_diffs(diffs: Iterable[str]) -> tuple[str, ...]:
    listed = list(diffs)
    if len(listed) > MAX_DIFFS:
        return (*listed[:MAX_DIFFS], f"... and {len(listed) - MAX_DIFFS} more")
    return tuple(listed)


def validate_names(names: Iterable[str], option: str) -> tuple[str, ...]:
    """The names as given, or BadInput naming the unknown ones and listing the checks."""
    given = tuple(names)
    unknown = [name for name in given if name not in CHECKS]
    if unknown:
        raise BadInput(f"{option} {', '.join(unknown)}: no such check. Checks: {', '.join(CHECKS)}.")
    return given
